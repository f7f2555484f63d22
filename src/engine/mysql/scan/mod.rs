//! Splits a mysqldump/mariadb-dump stream into statements the way the `mariadb` client does:
//! quotes (`'…'`, `"…"` with backslash escapes; `` `…` `` doubled), comments (`-- `, `#`,
//! `/* */`), versioned comments (`/*!50003 … */`, `/*M!100000 … */`) read as code, and
//! `DELIMITER` lines. Push-based, so that a backup counts the rows of the dump it streams
//! without holding it, and a load holds one statement at a time.
//!
//! For each statement it gives a *head* (its first bytes with comments dropped, versioned
//! markers removed and whitespace collapsed: what classifying it needs), the number of row
//! tuples after `VALUES` at the top level (an `INSERT`'s rows), and, when asked, its raw text.
//! Anything the client would run that is not a statement — a backslash command outside a
//! string, a line left unterminated at the end — is an error, never passed on.

mod code;
mod fast;

use super::tokens::{Tok, shown};

/// How many significant bytes of a statement its head keeps.
pub const HEAD: usize = 512;

/// The line mariadb-dump 10.5.25/10.6.18/10.11.8 and later write first; dbkeep passes
/// `--sandbox` itself instead.
const SANDBOX_LINE: &[u8] = b"/*M!999999\\- enable the sandbox mode */";

/// Which versioned comments the server that loads a dump runs as code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// MariaDB of this version (`10.11.19` → 101119): `/*!NNNNN` below 50700 (it skips MySQL's
    /// 50700–99999), `/*!NNNNNN` and `/*M!NNNNNN` up to its own.
    Mariadb(u32),
    /// MySQL of this version (`8.0.36` → 80036): `/*!NNNNN` up to its own; no `/*M!`.
    Mysql(u32),
    /// Reading only (verify): any well-formed version.
    Any,
}

impl Versions {
    /// From a server's `VERSION()`; an unreadable one is taken as MariaDB 10.5, the oldest
    /// supported (so only what every MariaDB runs passes).
    pub fn of(version: &str) -> Self {
        let mut parts = version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor, patch) = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        let n = major * 10000 + minor.min(99) * 100 + patch.min(99);
        if version.to_ascii_lowercase().contains("mariadb") || major >= 10 {
            Versions::Mariadb(if n == 0 { 100500 } else { n })
        } else if major > 0 {
            Versions::Mysql(n)
        } else {
            Versions::Mariadb(100500)
        }
    }

    /// Whether a versioned comment (`/*M!` when `m`) with `len` digits `n` is code here.
    pub fn runs(self, m: bool, len: u32, n: u32) -> bool {
        match (self, m, len) {
            (_, false, 0) => true,
            (Versions::Any, _, 5 | 6) => true,
            (Versions::Mariadb(_), false, 5) => n < 50700,
            (Versions::Mariadb(v), true, 6) => n <= v,
            (Versions::Mariadb(v), false, 6) => n <= v && !(50700..=99999).contains(&n),
            (Versions::Mysql(v), false, 5) => n <= v,
            _ => false,
        }
    }
}

/// A statement as the client would send it.
pub struct Statement<'a> {
    pub head: &'a [u8],
    /// Row tuples after `VALUES` at the top level.
    pub tuples: u64,
    /// Which of [`DANGER`] appear in its code (bit i for `DANGER[i]`).
    pub danger: u32,
    /// Whether its head holds all of its code (a longer statement is cut at [`HEAD`] bytes).
    pub whole: bool,
    /// Function calls or subqueries after `VALUES` (a word before `(`, or `SELECT`): never in
    /// what mysqldump writes, and a call could run a function of the live database.
    pub calls: u64,
    /// A name qualified with a database (`a`.`b`, `a.b`) in its code.
    pub qualified: bool,
    /// A byte above ASCII in its code (outside quotes and comments).
    pub high: bool,
    /// A storage engine named after `ENGINE` that keeps its rows elsewhere, or a quoted one
    /// (which no word check sees), as shown in an error.
    pub bad_engine: Option<String>,
    /// The raw text without its delimiter (empty unless the scanner keeps text).
    pub text: &'a [u8],
    /// The delimiter in force (`;`, `;;`).
    pub delimiter: &'a [u8],
    /// How its blocks nest (empty unless the scanner keeps text).
    pub tokens: &'a [Tok],
}

/// What the scanner reports.
pub enum Event<'a> {
    Statement(Statement<'a>),
    /// A `DELIMITER x` line (its raw bytes, newline included).
    Delimiter(&'a [u8]),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Quote(u8),
    QuoteEscape(u8),
    Backtick,
    LineComment,
    BlockComment,
    /// At the start of a line with no statement open: collecting it to see whether it is a
    /// `DELIMITER` line.
    LineStart,
}

pub struct Scanner {
    keep_text: bool,
    /// Every byte the slow way, the fast paths off (the tests' reference reading).
    reference: bool,
    state: State,
    delimiter: Vec<u8>,
    /// How many bytes of the delimiter matched so far.
    matched: usize,
    text: Vec<u8>,
    head: Vec<u8>,
    /// Whether the statement has a significant byte yet.
    open: bool,
    in_versioned: bool,
    /// Reading the digits after `/*!` or `/*M!`.
    version_digits: bool,
    version: u32,
    version_len: u32,
    versioned_m: bool,
    versions: Versions,
    /// The previous byte in a block comment (for `*/`).
    prev: u8,
    /// Bytes held back: `-`, `--`, `/`, `/*`, `/*M`, or `*` in a versioned comment.
    pend: Vec<u8>,
    depth: u32,
    word: [u8; 16],
    word_len: usize,
    /// How far the word so far reads as a number (`code::NUM_*`; 0: not one).
    number: u8,
    after_values: bool,
    tuples: u64,
    calls: u64,
    danger: u32,
    qualified: bool,
    high: bool,
    bad_engine: Option<String>,
    /// After the word `ENGINE` (1), and its `=` (2).
    after_engine: u8,
    /// The last significant token was a name (a word that is not a number, or a quoted name).
    name_last: bool,
    head_full: bool,
    /// The last significant thing in code: `w` a word, `v` the word VALUES, else the byte.
    last: u8,
    tokens: Vec<Tok>,
    line: Vec<u8>,
    first_line: bool,
    pub bytes: u64,
}

impl Scanner {
    pub fn new(keep_text: bool) -> Self {
        Self {
            keep_text,
            reference: false,
            state: State::LineStart,
            delimiter: b";".to_vec(),
            matched: 0,
            text: Vec::new(),
            head: Vec::with_capacity(HEAD),
            open: false,
            in_versioned: false,
            version_digits: false,
            version: 0,
            version_len: 0,
            versioned_m: false,
            versions: Versions::Mariadb(100500),
            prev: b'\n',
            pend: Vec::new(),
            depth: 0,
            word: [0; 16],
            word_len: 0,
            number: 0,
            after_values: false,
            tuples: 0,
            calls: 0,
            danger: 0,
            qualified: false,
            high: false,
            bad_engine: None,
            after_engine: 0,
            name_last: false,
            head_full: false,
            last: b' ',
            tokens: Vec::new(),
            line: Vec::new(),
            first_line: true,
            bytes: 0,
        }
    }

    /// For the server that loads the dump (default: what every MariaDB from 10.5 runs).
    pub fn for_server(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// Every byte the slow way (the tests' reference reading of the fast paths).
    #[cfg(test)]
    pub fn reference(mut self) -> Self {
        self.reference = true;
        self
    }

    /// Scans `chunk`, calling `on` for every complete statement and delimiter line.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        self.bytes += chunk.len() as u64;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::LineStart => {
                    self.line.push(b);
                    i += 1;
                    if b == b'\n' || self.line.len() >= 256 {
                        self.end_line_start(on)?;
                    }
                    continue;
                }
                State::Quote(q) if !self.reference => {
                    // Strings are most of a dump: to the closing quote in one search.
                    let rest = &chunk[i..];
                    let (n, next) = match fast::string_end(q, rest) {
                        Ok(n) => (n + 1, State::Normal),
                        Err(true) => (rest.len(), State::QuoteEscape(q)),
                        Err(false) => (rest.len(), State::Quote(q)),
                    };
                    self.keep(&rest[..n]);
                    self.head_bytes(&rest[..n]);
                    self.state = next;
                    i += n;
                    continue;
                }
                State::Quote(q) => {
                    self.keep(&[b]);
                    self.head_bytes(&[b]);
                    if b == b'\\' {
                        self.state = State::QuoteEscape(q);
                    } else if b == q {
                        self.state = State::Normal;
                    }
                }
                State::QuoteEscape(q) => {
                    self.keep(&[b]);
                    self.head_bytes(&[b]);
                    self.state = State::Quote(q);
                }
                State::Backtick => {
                    self.keep(&[b]);
                    self.head_bytes(&[b]);
                    if b == b'`' {
                        self.state = State::Normal;
                        // A quoted name counts as a word: `f`( is a call.
                        self.last = b'w';
                        self.name_last = true;
                    }
                }
                State::LineComment => {
                    self.keep(&[b]);
                    if b == b'\n' {
                        self.state = State::Normal;
                        self.at_newline();
                    }
                }
                State::BlockComment => {
                    self.keep(&[b]);
                    // The client reads `/*!` inside a comment as the start of code.
                    if self.prev == b'/' && b == b'*' {
                        return Err(format!(
                            "the dump has a comment inside a comment in {}: the client and the server read it differently",
                            shown(&self.head)
                        ));
                    }
                    if self.prev == b'*' && b == b'/' {
                        self.state = State::Normal;
                        self.prev = b' ';
                        self.head_space();
                    } else {
                        self.prev = b;
                    }
                }
                State::Normal
                    if !self.reference
                        && self.pend.is_empty()
                        && self.matched == 0
                        && !self.version_digits =>
                {
                    let n = self.fast_run(&chunk[i..]);
                    if n > 0 {
                        self.open = true;
                        i += n;
                        continue;
                    }
                    self.normal(b, on)?;
                }
                State::Normal => self.normal(b, on)?,
            }
            i += 1;
        }
        Ok(())
    }

    /// The end of the stream: nothing may be left open.
    pub fn finish(
        &mut self,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.state == State::LineStart && !self.line.is_empty() {
            self.end_line_start(on)?;
        }
        for c in std::mem::take(&mut self.pend) {
            self.code(c)?;
        }
        match self.state {
            State::Quote(_) | State::QuoteEscape(_) | State::Backtick => {
                Err("the dump ends inside a quoted string".into())
            }
            State::BlockComment => Err("the dump ends inside a comment".into()),
            _ if self.open => Err(format!(
                "the dump ends inside a statement ({})",
                shown(&self.head)
            )),
            _ => Ok(()),
        }
    }

    fn end_line_start(
        &mut self,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let line = std::mem::take(&mut self.line);
        let first = std::mem::replace(&mut self.first_line, false);
        self.state = State::Normal;
        let trimmed = line.trim_ascii();
        if first && trimmed == SANDBOX_LINE {
            self.state = State::LineStart;
            return Ok(());
        }
        let word: Vec<u8> = trimmed
            .iter()
            .take(10)
            .map(u8::to_ascii_uppercase)
            .collect();
        if word.starts_with(b"DELIMITER") && !line.ends_with(b"\n") && line.len() >= 256 {
            return Err(
                "a DELIMITER line longer than dbkeep reads: the client would read it otherwise"
                    .into(),
            );
        }
        if word.starts_with(b"DELIMITER") && trimmed.get(9).is_some_and(u8::is_ascii_whitespace) {
            // What mysqldump and mariadb-dump write, and nothing else: the client reads the
            // argument by its own rules (a first word, a quoted string).
            // Only spaces around it: the client keeps a tab or a form feed in the delimiter.
            let raw = line.strip_suffix(b"\n").unwrap_or(&line);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let arg = &raw.trim_ascii_start()[9..];
            let start = arg.iter().position(|c| *c != b' ').unwrap_or(arg.len());
            let end = arg
                .iter()
                .rposition(|c| *c != b' ')
                .map_or(start, |e| e + 1);
            let new = &arg[start..end.max(start)];
            if new != b";;" && new != b";" {
                return Err(format!(
                    "the dump sets the delimiter to {:?}: dbkeep loads only DELIMITER ;; and DELIMITER ;",
                    String::from_utf8_lossy(new)
                ));
            }
            self.delimiter = new.to_vec();
            on(Event::Delimiter(&line))?;
            self.state = State::LineStart;
            return Ok(());
        }
        // Not a delimiter line: scan it as any other.
        self.prev = b'\n';
        let mut i = 0;
        while i < line.len() && self.state == State::Normal {
            self.normal(line[i], on)?;
            i += 1;
        }
        if i < line.len() {
            let rest = line[i..].to_vec();
            self.feed(&rest, on)?;
            self.bytes -= rest.len() as u64;
        }
        Ok(())
    }

    fn at_newline(&mut self) {
        self.prev = b'\n';
        self.head_space();
        if !self.open {
            self.state = State::LineStart;
        }
    }
}

fn trim_head(head: &[u8]) -> &[u8] {
    head.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_comments_run_where_the_server_runs_them() {
        let m = Versions::of("10.11.19-MariaDB-0+deb12u1");
        assert_eq!(m, Versions::Mariadb(101119));
        assert!(m.runs(false, 5, 40101) && m.runs(false, 5, 50003));
        assert!(!m.runs(false, 5, 50700) && !m.runs(false, 5, 80016));
        assert!(m.runs(true, 6, 100616) && !m.runs(true, 6, 110400));
        let my = Versions::of("8.0.36");
        assert_eq!(my, Versions::Mysql(80036));
        assert!(my.runs(false, 5, 80016) && !my.runs(false, 5, 80100) && !my.runs(true, 6, 100100));
        assert_eq!(Versions::of(""), Versions::Mariadb(100500));
    }
}
