//! The lexer of [`Retarget`]: where a statement ends, the way psql finds it (quotes, `E'…'`
//! strings, dollar quotes, comments).

use super::*;
use std::io::BufRead;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lex {
    Normal,
    /// After `-` or `/`: maybe the start of a comment.
    Dash,
    Slash,
    LineComment,
    Block {
        depth: u32,
        star: bool,
        slash: bool,
    },
    Single {
        escapes: bool,
    },
    SingleBackslash,
    SingleEnd {
        escapes: bool,
    },
    Double,
    DoubleEnd,
    /// After `$`: gathering a dollar-quote tag (its bytes in `tag`).
    DollarTag,
    /// Inside a dollar quote; `matched` bytes of the closing `$tag$` seen.
    Dollar {
        matched: usize,
    },
}

impl<R: BufRead> Retarget<R> {
    /// Lexes one byte of SQL; returns whether it is a statement's terminating `;`.
    pub(super) fn lex_byte(&mut self, b: u8) -> bool {
        let (prev, prev2) = (self.prev, self.prev2);
        self.prev2 = prev;
        self.prev = b;
        let ident = is_ident;
        loop {
            match self.lex {
                Lex::Normal => {
                    match b {
                        b';' => return true,
                        b'\'' => {
                            let escapes = matches!(prev, b'E' | b'e') && !ident(prev2);
                            self.lex = Lex::Single { escapes };
                        }
                        b'"' => self.lex = Lex::Double,
                        b'-' => self.lex = Lex::Dash,
                        b'/' => self.lex = Lex::Slash,
                        b'$' if !ident(prev) => {
                            self.tag.clear();
                            self.lex = Lex::DollarTag;
                        }
                        _ => {}
                    }
                    return false;
                }
                Lex::Dash => {
                    if b == b'-' {
                        self.lex = Lex::LineComment;
                        return false;
                    }
                    self.lex = Lex::Normal;
                }
                Lex::Slash => {
                    if b == b'*' {
                        self.lex = Lex::Block {
                            depth: 1,
                            star: false,
                            slash: false,
                        };
                        return false;
                    }
                    self.lex = Lex::Normal;
                }
                Lex::LineComment => {
                    if b == b'\n' {
                        self.lex = Lex::Normal;
                    }
                    return false;
                }
                Lex::Block { depth, star, slash } => {
                    self.lex = if star && b == b'/' {
                        if depth == 1 {
                            Lex::Normal
                        } else {
                            Lex::Block {
                                depth: depth - 1,
                                star: false,
                                slash: false,
                            }
                        }
                    } else if slash && b == b'*' {
                        Lex::Block {
                            depth: depth + 1,
                            star: false,
                            slash: false,
                        }
                    } else {
                        Lex::Block {
                            depth,
                            star: b == b'*',
                            slash: b == b'/',
                        }
                    };
                    return false;
                }
                Lex::Single { escapes } => {
                    if b == b'\'' {
                        self.lex = Lex::SingleEnd { escapes };
                    } else if escapes && b == b'\\' {
                        self.lex = Lex::SingleBackslash;
                    }
                    return false;
                }
                Lex::SingleBackslash => {
                    self.lex = Lex::Single { escapes: true };
                    return false;
                }
                Lex::SingleEnd { escapes } => {
                    if b == b'\'' {
                        self.lex = Lex::Single { escapes };
                        return false;
                    }
                    self.lex = Lex::Normal;
                }
                Lex::Double => {
                    if b == b'"' {
                        self.lex = Lex::DoubleEnd;
                    }
                    return false;
                }
                Lex::DoubleEnd => {
                    if b == b'"' {
                        self.lex = Lex::Double;
                        return false;
                    }
                    self.lex = Lex::Normal;
                }
                Lex::DollarTag => {
                    if b == b'$' {
                        self.lex = Lex::Dollar { matched: 0 };
                        return false;
                    }
                    let first = self.tag.is_empty();
                    if (first && (b.is_ascii_alphabetic() || b == b'_' || b >= 0x80))
                        || (!first && ident(b))
                    {
                        self.tag.push(b);
                        return false;
                    }
                    // `$1`, or a `$` inside a name: not a quote.
                    self.lex = Lex::Normal;
                }
                Lex::Dollar { matched } => {
                    // The closing delimiter is `$` + tag + `$`.
                    let want = |i: usize| -> u8 {
                        if i == 0 || i == self.tag.len() + 1 {
                            b'$'
                        } else {
                            self.tag[i - 1]
                        }
                    };
                    let mut m = matched;
                    if b == want(m) {
                        m += 1;
                    } else {
                        m = usize::from(b == b'$');
                    }
                    self.lex = if m == self.tag.len() + 2 {
                        Lex::Normal
                    } else {
                        Lex::Dollar { matched: m }
                    };
                    return false;
                }
            }
        }
    }
}

/// A statement's first bytes as its keywords read, for deciding on it: ASCII letters outside
/// quotes in upper case, each run of whitespace and comments one space (none at the start), a
/// space between a word and a quoted name or string; what is quoted stays as it is. So
/// `drop/**/Database` and `GRANT ALL ON DATABASE"shop"` read `DROP DATABASE` and
/// `GRANT ALL ON DATABASE "shop"`.
pub(super) fn normalize(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut space = false;
    let mut i = 0;
    while i < head.len() {
        let b = head[i];
        if head[i..].starts_with(b"--") {
            while i < head.len() && head[i] != b'\n' {
                i += 1;
            }
            space = true;
            continue;
        }
        if head[i..].starts_with(b"/*") {
            let mut depth = 0u32;
            while i < head.len() {
                if head[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if head[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            space = true;
            continue;
        }
        if b.is_ascii_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        if b == b'\'' || b == b'"' {
            // `E'…'`: the E stays joined to its string, and a backslash escapes.
            let n = out.len();
            let escapes = b == b'\''
                && !space
                && n >= 1
                && out[n - 1] == b'E'
                && (n == 1 || !is_ident(out[n - 2]));
            if n > 0 && !escapes {
                out.push(b' ');
            }
            out.push(b);
            i += 1;
            while i < head.len() {
                let c = head[i];
                out.push(c);
                i += 1;
                if escapes && c == b'\\' {
                    if let Some(&next) = head.get(i) {
                        out.push(next);
                        i += 1;
                    }
                } else if c == b {
                    if head.get(i) == Some(&b) {
                        out.push(b);
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(b' ');
        }
        space = false;
        out.push(b.to_ascii_uppercase());
        i += 1;
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}
