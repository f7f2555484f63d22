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

use memchr::memchr2;

/// How many significant bytes of a statement its head keeps.
pub const HEAD: usize = 512;

/// Words whose presence anywhere in a statement's code ([`Statement::danger`]) the allowlist
/// looks at: in mysqldump's output, names are always quoted, so a bare word is a keyword.
pub const DANGER: &[&[u8]] = &[
    b"GLOBAL",
    b"PERSIST",
    b"PERSIST_ONLY",
    b"SELECT",
    b"UNION",
    b"CONNECTION",
    b"DIRECTORY",
    b"MERGE",
    b"MRG_MYISAM",
    b"FEDERATED",
    b"SPIDER",
    b"CONNECT",
    b"LOAD_FILE",
    b"OUTFILE",
    b"DUMPFILE",
];

/// The line mariadb-dump 10.5.25/10.6.18/10.11.8 and later write first; dbkeep passes
/// `--sandbox` itself instead.
const SANDBOX_LINE: &[u8] = b"/*M!999999\\- enable the sandbox mode */";

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
    /// The raw text without its delimiter (empty unless the scanner keeps text).
    pub text: &'a [u8],
    /// The delimiter in force (`;`, `;;`).
    pub delimiter: &'a [u8],
    /// How its blocks nest (empty unless the scanner keeps text).
    pub tokens: &'a [Tok],
}

/// The words and marks of a statement's code that say how its compound blocks nest
/// (see [`body_ends_inside`]); every other word or mark is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    Begin,
    End,
    If,
    Case,
    Loop,
    Repeat,
    While,
    Then,
    Else,
    Do,
    Row,
    Semi,
    LParen,
    RParen,
    Colon,
    Other,
}

/// Whether a compound statement's code (a routine, trigger or event under a delimiter other
/// than `;`) could hold a second statement: a `;` outside every `BEGIN … END`, `IF … END IF`,
/// `CASE … END`, loop, or blocks that do not close exactly at its end. The client sends the
/// whole text as one query, and the server runs what follows such a `;` as a statement the
/// allowlist never saw. An opener counts only in a statement's place (`REPEAT(` and `IF(` are
/// functions), so anything ambiguous is refused rather than guessed.
pub fn body_ends_inside(tokens: &[Tok]) -> bool {
    let mut depth = 0u32;
    let mut prev = Tok::Semi;
    for (i, &t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).copied();
        let statement_place = matches!(
            prev,
            Tok::Semi
                | Tok::Begin
                | Tok::Then
                | Tok::Else
                | Tok::Do
                | Tok::Loop
                | Tok::Repeat
                | Tok::Row
                | Tok::RParen
                | Tok::Colon
        );
        match t {
            Tok::Repeat if prev != Tok::End && next != Some(Tok::LParen) => depth += 1,
            Tok::Begin | Tok::Loop | Tok::While | Tok::Case if prev != Tok::End => depth += 1,
            Tok::If if statement_place && prev != Tok::Other => depth += 1,
            Tok::End => {
                if depth == 0 {
                    return true;
                }
                depth -= 1;
            }
            Tok::Semi if depth == 0 => return true,
            _ => {}
        }
        prev = t;
    }
    depth != 0
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
    /// The previous byte in a block comment (for `*/`).
    prev: u8,
    /// Bytes held back: `-`, `--`, `/`, `/*`, `/*M`, or `*` in a versioned comment.
    pend: Vec<u8>,
    depth: u32,
    word: [u8; 16],
    word_len: usize,
    after_values: bool,
    tuples: u64,
    calls: u64,
    danger: u32,
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
            prev: b'\n',
            pend: Vec::new(),
            depth: 0,
            word: [0; 16],
            word_len: 0,
            after_values: false,
            tuples: 0,
            calls: 0,
            danger: 0,
            head_full: false,
            last: b' ',
            tokens: Vec::new(),
            line: Vec::new(),
            first_line: true,
            bytes: 0,
        }
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
                State::Quote(q) => {
                    // Strings are most of a dump: jump to the next quote or backslash.
                    let rest = &chunk[i..];
                    let n = memchr2(q, b'\\', rest).unwrap_or(rest.len());
                    self.keep(&rest[..n]);
                    self.head_bytes(&rest[..n]);
                    i += n;
                    if i < chunk.len() {
                        let c = chunk[i];
                        self.keep(&[c]);
                        self.head_bytes(&[c]);
                        self.state = if c == b'\\' {
                            State::QuoteEscape(q)
                        } else {
                            State::Normal
                        };
                        i += 1;
                    }
                    continue;
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
                    if self.prev == b'*' && b == b'/' {
                        self.state = State::Normal;
                        self.prev = b' ';
                        self.head_space();
                    } else {
                        self.prev = b;
                    }
                }
                State::Normal
                    if self.pend.is_empty() && self.matched == 0 && !self.version_digits =>
                {
                    // Digits and commas between values are most of a dump's bytes outside
                    // strings: taken in a run, as `code` would take them one by one.
                    let start = i;
                    while i < chunk.len() {
                        let c = chunk[i];
                        if c.is_ascii_digit() {
                            if self.word_len < self.word.len() {
                                self.word[self.word_len] = c;
                            }
                            self.word_len += 1;
                        } else if c == b',' {
                            self.word_done();
                            self.mark(Tok::Other);
                            self.last = b',';
                        } else {
                            break;
                        }
                        i += 1;
                    }
                    if i > start {
                        self.open = true;
                        self.keep(&chunk[start..i]);
                        self.head_bytes(&chunk[start..i]);
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
        if word.starts_with(b"DELIMITER") && trimmed.get(9).is_some_and(u8::is_ascii_whitespace) {
            // What mysqldump and mariadb-dump write, and nothing else: the client reads the
            // argument by its own rules (a first word, a quoted string).
            let new = trimmed[9..].trim_ascii();
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

    fn normal(
        &mut self,
        b: u8,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        // The delimiter ends the statement (it is never part of its text).
        if b == self.delimiter[self.matched] {
            self.matched += 1;
            if self.matched == self.delimiter.len() {
                self.matched = 0;
                self.end_statement(on)?;
            }
            return Ok(());
        }
        if self.matched > 0 {
            let partial = self.delimiter[..self.matched].to_vec();
            self.matched = 0;
            for c in partial {
                self.normal_byte(c)?;
            }
            // `b` may start the delimiter again.
            return self.normal(b, on);
        }
        self.normal_byte(b)
    }

    fn normal_byte(&mut self, b: u8) -> Result<(), String> {
        self.keep(&[b]);
        if self.version_digits {
            if b.is_ascii_digit() && self.version_len < 6 {
                self.version = self.version * 10 + u32::from(b - b'0');
                self.version_len += 1;
                return Ok(());
            }
            self.version_digits = false;
            self.check_version()?;
        }
        // Bytes held back until the next one says whether they open a comment.
        match (self.pend.as_slice(), b) {
            (b"-", b'-') | (b"/", b'*') | (b"/*", b'M') => {
                self.pend.push(b);
                return Ok(());
            }
            // `-- ` and whitespace: a comment to the client and the server alike. `--` and
            // another control character is a comment to the server only: refused.
            (b"--", c) if c.is_ascii_whitespace() => {
                self.pend.clear();
                self.state = State::LineComment;
                if c == b'\n' {
                    self.state = State::Normal;
                    self.at_newline();
                }
                return Ok(());
            }
            (b"--", c) if c.is_ascii_control() => {
                return Err(format!(
                    "the dump has '--' and a control character in {}: the client and the server read it differently",
                    shown(&self.head)
                ));
            }
            (b"/*" | b"/*M", _) if self.in_versioned => {
                return Err(format!(
                    "the dump has a comment inside a versioned comment in {}: the client and the server read it differently",
                    shown(&self.head)
                ));
            }
            (b"/*", b'+') => {
                return Err(format!(
                    "the dump has an optimizer hint (/*+ … */) in {}: mysqldump writes none, and MySQL's client runs commands inside them",
                    shown(&self.head)
                ));
            }
            (b"/*" | b"/*M", b'!') => {
                self.versioned_m = self.pend.len() == 3;
                self.pend.clear();
                self.in_versioned = true;
                self.version_digits = true;
                self.version = 0;
                self.version_len = 0;
                // Code, even if nothing else follows: the client's buffer is not empty.
                self.open = true;
                self.head_space();
                return Ok(());
            }
            (b"/*" | b"/*M", c) => {
                self.pend.clear();
                self.state = State::BlockComment;
                self.prev = c;
                return Ok(());
            }
            (b"*", b'/') if self.in_versioned => {
                self.pend.clear();
                self.in_versioned = false;
                self.head_space();
                return Ok(());
            }
            ([], _) => {}
            _ => {
                let held = std::mem::take(&mut self.pend);
                for c in held {
                    self.code(c)?;
                }
            }
        }
        if b == b'-' || b == b'/' || (b == b'*' && self.in_versioned) {
            self.pend.push(b);
            return Ok(());
        }
        self.code(b)
    }

    /// A versioned comment is code only where every server runs it: `/*!NNNNN` below 50700
    /// (MariaDB skips MySQL's 50700–99999), `/*M!NNNNNN` up to 100500 (MariaDB 10.5, the oldest
    /// it supports), `/*!` without digits. Anything else some server skips while the client
    /// splits inside it: refused.
    fn check_version(&mut self) -> Result<(), String> {
        let ok = match (self.versioned_m, self.version_len) {
            (false, 0) => true,
            (false, 5) => self.version < 50700,
            (true, 6) => self.version <= 100500,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the dump has a versioned comment {}{} that not every server runs: the client and the server would read it differently",
                if self.versioned_m { "/*M!" } else { "/*!" },
                self.version
            ))
        }
    }

    /// A byte of code (not a comment, not inside quotes).
    fn code(&mut self, b: u8) -> Result<(), String> {
        match b {
            b'\n' => {
                self.word_done();
                self.at_newline();
                return Ok(());
            }
            b' ' | b'\t' | b'\r' => {
                self.word_done();
                self.head_space();
                return Ok(());
            }
            b'\'' | b'"' => {
                self.word_done();
                self.mark(Tok::Other);
                self.state = State::Quote(b);
            }
            b'`' => {
                self.word_done();
                self.mark(Tok::Other);
                self.state = State::Backtick;
            }
            b'#' => {
                self.word_done();
                self.state = State::LineComment;
                return Ok(());
            }
            b'\\' => {
                return Err(format!(
                    "the dump holds a client command (a backslash outside a string) in {}: dbkeep loads only statements",
                    shown(&self.head)
                ));
            }
            b'(' => {
                self.word_done();
                self.mark(Tok::LParen);
                if self.after_values && self.last == b'w' {
                    self.calls += 1;
                }
                if self.depth == 0 && self.after_values {
                    self.tuples += 1;
                }
                self.depth += 1;
            }
            b')' => {
                self.word_done();
                self.depth = self.depth.saturating_sub(1);
                self.mark(Tok::RParen);
            }
            b';' => {
                self.word_done();
                self.mark(Tok::Semi);
            }
            b':' => {
                self.word_done();
                self.mark(Tok::Colon);
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' => {
                if self.word_len < self.word.len() {
                    self.word[self.word_len] = c.to_ascii_uppercase();
                }
                self.word_len += 1;
            }
            _ => {
                self.word_done();
                self.mark(Tok::Other);
            }
        }
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            self.last = b;
        }
        self.open = true;
        self.head_bytes(&[b]);
        Ok(())
    }

    fn word_done(&mut self) {
        if self.word_len == 0 {
            return;
        }
        let word = &self.word[..self.word_len.min(16)];
        self.last = b'w';
        if word == b"VALUES" || word == b"VALUE" {
            self.after_values = true;
            self.last = b'v';
        }
        if let Some(i) = DANGER.iter().position(|d| *d == word) {
            self.danger |= 1 << i;
        }
        if self.delimiter != b";" {
            let tok = match (self.word_len, word) {
                (5, b"BEGIN") => Tok::Begin,
                (3, b"END") => Tok::End,
                (2, b"IF") => Tok::If,
                (4, b"CASE") => Tok::Case,
                (4, b"LOOP") => Tok::Loop,
                (6, b"REPEAT") => Tok::Repeat,
                (5, b"WHILE") => Tok::While,
                (4, b"THEN") => Tok::Then,
                (4, b"ELSE") => Tok::Else,
                (2, b"DO") => Tok::Do,
                (3, b"ROW") => Tok::Row,
                _ => Tok::Other,
            };
            self.tokens.push(tok);
        }
        self.word_len = 0;
    }

    fn mark(&mut self, tok: Tok) {
        if self.delimiter != b";" {
            self.tokens.push(tok);
        }
    }

    fn end_statement(
        &mut self,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        for c in std::mem::take(&mut self.pend) {
            self.code(c)?;
        }
        self.word_done();
        if self.in_versioned {
            // The client splits here too; what follows is classified on its own.
            self.in_versioned = false;
        }
        if self.open {
            let head = trim_head(&self.head);
            on(Event::Statement(Statement {
                head,
                tuples: self.tuples,
                calls: self.calls,
                danger: self.danger,
                whole: !self.head_full,
                text: &self.text,
                delimiter: &self.delimiter,
                tokens: &self.tokens,
            }))?;
        }
        self.text.clear();
        self.tokens.clear();
        self.head.clear();
        self.open = false;
        self.depth = 0;
        self.after_values = false;
        self.tuples = 0;
        self.calls = 0;
        self.danger = 0;
        self.head_full = false;
        self.last = b' ';
        self.prev = b' ';
        Ok(())
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.keep_text {
            self.text.extend_from_slice(bytes);
        }
    }

    fn head_bytes(&mut self, bytes: &[u8]) {
        let room = HEAD.saturating_sub(self.head.len());
        if bytes.len() > room {
            self.head_full = true;
        }
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn head_space(&mut self) {
        if self.head.last().is_some_and(|c| *c != b' ') && self.head.len() < HEAD {
            self.head.push(b' ');
        }
    }
}

fn trim_head(head: &[u8]) -> &[u8] {
    head.trim_ascii()
}

/// A head for an error message: printable, at most 80 characters.
pub fn shown(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head.trim_ascii());
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(80)
        .collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    format!("\"{out}\"")
}
