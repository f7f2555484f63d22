//! The scanner's code state: a byte at a time outside quotes and comments (the delimiter,
//! comment openers, versioned comments, words, parentheses), as the `mariadb` client reads it.

use super::super::tokens::{DANGER, ENGINES, Tok, shown};
use super::{Event, HEAD, Scanner, State, Statement, trim_head};

/// [`Scanner::number`]: digits; digits and `e`; digits, `e` and digits.
pub(super) const NUM_DIGITS: u8 = 1;
pub(super) const NUM_E: u8 = 2;
pub(super) const NUM_EXPONENT: u8 = 3;

impl Scanner {
    pub(super) fn normal(
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

    pub(super) fn normal_byte(&mut self, b: u8) -> Result<(), String> {
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
            (b"--", b' ' | b'\t' | b'\n' | b'\r') => {
                // A comment is a space to the server: it ends a word (`a/**/SELECT`).
                self.word_done();
                let c = b;
                self.pend.clear();
                self.state = State::LineComment;
                if c == b'\n' {
                    self.state = State::Normal;
                    self.at_newline();
                }
                return Ok(());
            }
            // Another control character, or a byte a single-byte character set may call a
            // space (latin1's 0xA0): the server may read a comment where the client does not.
            (b"--", c) if c.is_ascii_control() || c >= 0x80 => {
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
                self.word_done();
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
                self.word_done();
                self.pend.clear();
                self.state = State::BlockComment;
                self.prev = c;
                return Ok(());
            }
            (b"*", b'/') if self.in_versioned => {
                self.word_done();
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

    /// A versioned comment is code only where the server that loads the dump runs it
    /// ([`Versions::runs`]); one it would skip while the client splits inside it is refused.
    pub(super) fn check_version(&mut self) -> Result<(), String> {
        if self
            .versions
            .runs(self.versioned_m, self.version_len, self.version)
        {
            Ok(())
        } else {
            Err(format!(
                "the dump has a versioned comment {}{} that this server would skip: the client and the server would read it differently",
                if self.versioned_m { "/*M!" } else { "/*!" },
                self.version
            ))
        }
    }

    /// A byte of code (not a comment, not inside quotes).
    pub(super) fn code(&mut self, b: u8) -> Result<(), String> {
        match b {
            b'\n' => {
                self.word_done();
                self.at_newline();
                return Ok(());
            }
            // What the server's lexer skips as space (its ctype: 0x09–0x0D and the space).
            b' ' | b'\t' | b'\r' | 0x0B | 0x0C => {
                self.word_done();
                self.head_space();
                return Ok(());
            }
            b'\'' | b'"' | b'`' => self.open_quote(b),
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
            b'.' => self.dot(),
            b'=' => {
                self.word_done();
                self.after_engine = if self.after_engine == 1 { 2 } else { 0 };
                self.name_last = false;
                self.mark(Tok::Other);
            }
            b'(' => self.open_paren(),
            b')' => self.close_paren(),
            b';' => {
                self.word_done();
                self.mark(Tok::Semi);
            }
            b':' => {
                self.word_done();
                self.mark(Tok::Colon);
            }
            // Above ASCII: a space in a single-byte character set (0xA0 in latin1), part of a
            // name in UTF-8. It ends a word (`SONAME\xA0'x'` is the word SONAME, as latin1
            // reads it) and leaves the token before it as it was (a space's rules), and the
            // statement is marked (a table's statement with one is refused).
            c if c >= 0x80 => {
                self.high = true;
                self.word_done();
                self.open = true;
                self.head_bytes(&[c]);
                return Ok(());
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' => {
                self.number_then_word(c);
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
            // What the arms above left for the next token stays.
            let kept =
                matches!(b, b'.' | b'\'' | b'"' | b'`') || (b == b'=' && self.after_engine == 2);
            if !kept {
                self.name_last = false;
                self.after_engine = 0;
            }
        }
        self.open = true;
        self.head_bytes(&[b]);
        Ok(())
    }

    /// A quote opens (`'`, `"` a string, `` ` `` a name).
    pub(super) fn open_quote(&mut self, b: u8) {
        self.word_done();
        self.mark(Tok::Other);
        if self.after_engine > 0 {
            self.bad_engine = Some("a quoted name".into());
        }
        self.after_engine = 0;
        self.name_last = false;
        self.state = if b == b'`' {
            State::Backtick
        } else {
            State::Quote(b)
        };
    }

    /// A `.`: after a name, the name is qualified with a database.
    pub(super) fn dot(&mut self) {
        self.word_done();
        if self.name_last {
            self.qualified = true;
        }
        self.name_last = false;
        self.after_engine = 0;
        self.mark(Tok::Other);
    }

    /// A `(`: a row after `VALUES` at the top level, a call after a word there.
    pub(super) fn open_paren(&mut self) {
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

    pub(super) fn close_paren(&mut self) {
        self.word_done();
        self.depth = self.depth.saturating_sub(1);
        self.mark(Tok::RParen);
    }

    /// Where a number ends and a word begins as the server's lexer reads them: `1.0SELECT`
    /// and `1e0UNION` are a number and a keyword, so a word after digits (and an exponent)
    /// starts on its own; `1SELECT`, an identifier to the server, is read so too, which only
    /// ever makes the check stricter (mysqldump quotes every name).
    pub(super) fn number_then_word(&mut self, c: u8) {
        if self.word_len == 0 {
            self.number = if c.is_ascii_digit() { NUM_DIGITS } else { 0 };
            return;
        }
        match (self.number, c) {
            (0, _) | (NUM_DIGITS | NUM_EXPONENT, b'0'..=b'9') => {}
            (NUM_DIGITS, b'e' | b'E') => self.number = NUM_E,
            (NUM_E, b'0'..=b'9') => self.number = NUM_EXPONENT,
            _ => {
                self.word_done();
                self.number = 0;
            }
        }
    }

    pub(super) fn word_done(&mut self) {
        // `1e` is a name to the server (no digits after the e): only a whole number is one.
        let numeric = matches!(std::mem::take(&mut self.number), NUM_DIGITS | NUM_EXPONENT);
        if self.word_len == 0 {
            return;
        }
        if numeric && self.after_engine == 0 && self.delimiter == b";" && !self.reference {
            // A number (most words of a dump's rows): no keyword, no engine, no block token.
            self.name_last = false;
            self.last = b'w';
            self.word_len = 0;
            return;
        }
        let word = &self.word[..self.word_len.min(16)];
        self.name_last = !numeric;
        if self.after_engine > 0 {
            self.after_engine = 0;
            let name = String::from_utf8_lossy(word).into_owned();
            if self.word_len > 16 || !ENGINES.iter().any(|e| e.eq_ignore_ascii_case(&name)) {
                self.bad_engine = Some(name);
            }
        } else if word == b"ENGINE" && self.word_len == 6 {
            self.after_engine = 1;
        }
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

    pub(super) fn mark(&mut self, tok: Tok) {
        if self.delimiter != b";" {
            self.tokens.push(tok);
        }
    }

    pub(super) fn end_statement(
        &mut self,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        // `/*` just before the delimiter opens a comment for the client.
        if self.pend == b"/*" || self.pend == b"/*M" {
            return Err(format!(
                "the dump has a comment opening at the delimiter in {}: the client and the server read it differently",
                shown(&self.head)
            ));
        }
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
                qualified: self.qualified,
                high: self.high,
                bad_engine: self.bad_engine.take(),
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
        self.qualified = false;
        self.high = false;
        self.bad_engine = None;
        self.after_engine = 0;
        self.name_last = false;
        self.danger = 0;
        self.head_full = false;
        self.last = b' ';
        self.prev = b' ';
        Ok(())
    }

    pub(super) fn keep(&mut self, bytes: &[u8]) {
        if self.keep_text {
            self.text.extend_from_slice(bytes);
        }
    }

    pub(super) fn head_bytes(&mut self, bytes: &[u8]) {
        let room = HEAD.saturating_sub(self.head.len());
        if bytes.len() > room {
            self.head_full = true;
        }
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub(super) fn head_space(&mut self) {
        if self.head.last().is_some_and(|c| *c != b' ') && self.head.len() < HEAD {
            self.head.push(b' ');
        }
    }
}
