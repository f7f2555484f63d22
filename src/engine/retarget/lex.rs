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
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
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
