//! A plain dump made with `pg_dump --create`, loaded into another database (a restore drill's
//! scratch database) instead of its own.
//!
//! Such a dump begins with a preamble that drops, creates and connects to the database it was
//! taken from (`DROP DATABASE`, `CREATE DATABASE`, `ALTER DATABASE … OWNER`, `\connect NAME`),
//! and after `\connect` it may still act on the database or the cluster as a whole
//! (`GRANT … ON DATABASE`, `ALTER ROLE … IN DATABASE`, `CREATE SUBSCRIPTION`). [`Retarget`]
//! passes the dump through with every statement before the first `\connect` (and that one), and
//! every such statement after it, left out — whole statements, found the way psql finds them:
//! it lexes quotes (`'…'`, `E'…'`, `"…"`, `$tag$…$tag$`) and comments, so no newline inside a
//! string (a comment on the database, a function body) can make part of a string run as SQL.
//! `COPY … FROM stdin;` data passes untouched up to its `\.` line; `\restrict` / `\unrestrict`
//! (pg_dump 15.14+) are kept.
//!
//! A dump without any `\connect` yields nothing but those: the drill then finds no tables and
//! fails, rather than touching any database but its own. It streams: memory stays at one buffer
//! plus a statement's first bytes.

mod classify;
mod lex;
#[cfg(test)]
mod tests;

pub use classify::pg_dump_extension;
use classify::*;
use lex::{Lex, normalize};
use std::io::{self, BufRead, Read};

/// Statements on a database or the cluster as a whole: never passed.
const SKIPPED: &[&[u8]] = &[
    b"DROP DATABASE",
    b"CREATE DATABASE",
    b"ALTER DATABASE",
    b"COMMENT ON DATABASE",
    b"SECURITY LABEL ON DATABASE",
    b"CREATE SUBSCRIPTION",
    b"ALTER SUBSCRIPTION",
    b"COMMENT ON SUBSCRIPTION",
    b"SECURITY LABEL ON SUBSCRIPTION",
];

/// Bytes of a statement's start that decide what happens to it.
const HEAD: usize = 256;

/// How much of an `ALTER`, `GRANT` or `REVOKE` a drill reads before deciding on it: its end says
/// whether it sets an owner (`… OWNER TO role;`).
const HEAD_PRIVILEGES: usize = 64 << 10;

/// The most bytes of whole-database statements a restore keeps ([`Retarget::for_restore`]).
const CAPTURE_LIMIT: usize = 16 << 20;

/// What the stream is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A drill's scratch database: whole-database statements and subscriptions go, and so do
    /// owners and privileges (as `pg_restore --no-owner --no-privileges` leaves them out), so a
    /// role that is not a superuser drills a dump whose objects belong to other roles. The
    /// `CREATE DATABASE` is kept aside: the scratch database gets its encoding and locale.
    Drill,
    /// A restore's staging database: whole-database statements are kept aside
    /// ([`Retarget::captured`]) to be applied to it by name; subscriptions pass, as a plain
    /// restore would create them.
    Restore,
}

/// A whole-database statement a restore kept aside: `CREATE DATABASE` and the owner before the
/// dump's `\connect`; settings, comment, grants and role settings in the database after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub after_connect: bool,
    pub sql: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Between statements: whitespace and comments.
    Between,
    /// A statement whose first bytes are being gathered (`meta`: a psql backslash command,
    /// which ends at the end of its line).
    Head {
        meta: bool,
    },
    Pass {
        meta: bool,
    },
    Skip {
        meta: bool,
    },
    /// After `COPY … FROM stdin;`: the rest of that line.
    CopyRestOfLine,
    /// COPY data; `at_start`: at the start of a line.
    CopyData {
        at_start: bool,
    },
}

pub struct Retarget<R> {
    inner: R,
    part: Part,
    lex: Lex,
    /// The byte before the current one in the statement (for `E'…'` and `$` after a name).
    prev: u8,
    prev2: u8,
    tag: Vec<u8>,
    head: Vec<u8>,
    /// The last bytes of the current statement (is it `COPY … FROM stdin;`?).
    tail: Vec<u8>,
    /// Bytes at the start of a COPY data line that may be its `\.` end.
    line: Vec<u8>,
    connected: bool,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    mode: Mode,
    /// The whole-database statement being kept aside.
    current: Option<Vec<u8>>,
    captured: Vec<Captured>,
    captured_bytes: usize,
    /// dbkeep's own `\\restrict` key: when set, the stream starts with it (psql then runs no
    /// meta-command at all) and the dump's own `\\restrict`/`\\unrestrict` are left out.
    restrict_key: Option<String>,
    /// The psql meta-command found outside quotes and COPY data that no dump of pg_dump holds:
    /// the stream fails with it.
    refused: Option<String>,
    /// Bytes of [`SCS`] matched at the end of the current statement so far, and whether the
    /// statement is pg_dump's `SET standard_conforming_strings = on;`.
    scs_matched: usize,
    scs_ok: bool,
    /// What the dump's first `\\connect` names.
    connect_target: Option<Vec<u8>>,
    /// The (quoted) schema of the drill's `create_extension` helper: pg_dump's `CREATE
    /// EXTENSION` statements become calls of it ([`Retarget::with_extension_helper`]).
    extension_helper: Option<String>,
    /// How many statements a drill left out as [`DRILL_LEFT_OUT`] lists them.
    left_out: usize,
}

impl<R: BufRead> Read for Retarget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let avail = &self.out[self.out_pos..];
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.out_pos += n;
        Ok(n)
    }
}

impl<R: BufRead> Retarget<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            part: Part::Between,
            lex: Lex::Normal,
            prev: b'\n',
            prev2: b'\n',
            tag: Vec::new(),
            head: Vec::new(),
            tail: Vec::new(),
            line: Vec::new(),
            connected: false,
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            mode: Mode::Drill,
            current: None,
            captured: Vec::new(),
            captured_bytes: 0,
            restrict_key: None,
            refused: None,
            scs_matched: 0,
            scs_ok: false,
            connect_target: None,
            extension_helper: None,
            left_out: 0,
        }
    }

    /// For a drill whose load role is not a superuser: each `CREATE EXTENSION IF NOT EXISTS
    /// name WITH SCHEMA schema;` exactly as pg_dump writes it becomes `SELECT
    /// helper.create_extension('name', 'schema');`, the drill's own function that creates an
    /// extension the live database has (see `engine/postgres/sandbox.rs`).
    pub fn with_extension_helper(mut self, quoted_schema: String) -> Self {
        self.extension_helper = Some(quoted_schema);
        self
    }

    /// How many event-trigger statements and comments on extensions a drill left out.
    pub fn left_out(&self) -> usize {
        self.left_out
    }

    /// Starts the stream with dbkeep's own `\\restrict KEY` (psql 13.22, 14.19, 15.14, 16.10,
    /// 17.6 and later): psql itself then refuses every meta-command but `\\unrestrict KEY`,
    /// whatever its lexer and ours make of the dump. The dump's own pair is left out.
    pub fn restricted(mut self, key: String) -> Self {
        self.out = format!("\\restrict {key}\n").into_bytes();
        self.restrict_key = Some(key);
        self
    }

    /// For a restore into a staging database: the whole-database statements are kept aside
    /// ([`Retarget::captured`]) instead of dropped, and subscriptions pass.
    pub fn for_restore(inner: R) -> Self {
        Self {
            mode: Mode::Restore,
            ..Self::new(inner)
        }
    }

    /// The whole-database statements kept aside so far, in the dump's order; `None` when they
    /// were more than a restore keeps (16 MiB).
    pub fn captured(&self) -> Option<&[Captured]> {
        (self.captured_bytes <= CAPTURE_LIMIT).then_some(&self.captured[..])
    }

    /// How much of the current statement is read before it is decided.
    fn head_limit(&self, meta: bool) -> usize {
        let h = normalize(&self.head[..self.head.len().min(16)]);
        let privileges =
            h.starts_with(b"ALTER ") || h.starts_with(b"GRANT ") || h.starts_with(b"REVOKE ");
        if self.mode == Mode::Drill && !meta && privileges {
            HEAD_PRIVILEGES
        } else {
            HEAD
        }
    }

    fn emit(&mut self, b: u8) {
        self.out.push(b);
    }

    /// Decides the statement gathered in `head`, and emits it if it passes.
    fn decide(&mut self) {
        let Part::Head { meta } = self.part else {
            return;
        };
        let head = std::mem::take(&mut self.head);
        let pass = if meta {
            // Only what pg_dump writes: \restrict, \unrestrict and one \connect (left out: the
            // target is psql's own connection). Anything else, a \connect to another database
            // too, fails the stream.
            let name: Vec<u8> = head[1..]
                .iter()
                .copied()
                .take_while(|b| !b.is_ascii_whitespace())
                .collect();
            match name.as_slice() {
                b"restrict" | b"unrestrict" => self.restrict_key.is_none(),
                // pg_dump's \connect to its database, again after the database's settings:
                // always the same one. A \connect elsewhere is not pg_dump's.
                b"connect" | b"c"
                    if self
                        .connect_target
                        .as_ref()
                        .is_none_or(|t| *t == connect_argument(&head)) =>
                {
                    self.connect_target = Some(connect_argument(&head));
                    self.connected = true;
                    false
                }
                other => {
                    let name = String::from_utf8_lossy(other).into_owned();
                    self.refuse(meta_refusal(&format!("the psql meta-command \\{name}")));
                    false
                }
            }
        } else {
            let norm = normalize(&head);
            let starts = |p: &[u8]| norm.starts_with(p);
            let contains = |p: &[u8]| norm.windows(p.len()).any(|w| w == p);
            let subscription = starts(b"CREATE SUBSCRIPTION")
                || starts(b"ALTER SUBSCRIPTION")
                || starts(b"COMMENT ON SUBSCRIPTION")
                || starts(b"SECURITY LABEL ON SUBSCRIPTION");
            let database = (SKIPPED.iter().any(|p| starts(p)) && !subscription)
                || ((starts(b"GRANT ") || starts(b"REVOKE ")) && contains(b" ON DATABASE "))
                || (starts(b"ALTER ROLE ") && contains(b" IN DATABASE "));
            if self.mode == Mode::Restore
                && database
                && !starts(b"DROP DATABASE")
                && (self.connected || starts(b"CREATE DATABASE") || starts(b"ALTER DATABASE"))
            {
                self.current = Some(head.clone());
            }
            if self.mode == Mode::Drill && !self.connected && starts(b"CREATE DATABASE") {
                self.current = Some(head.clone());
            }
            let privileges = self.mode == Mode::Drill && sets_owner_or_privileges(&norm);
            let left_out = self.mode == Mode::Drill
                && self.connected
                && DRILL_LEFT_OUT.iter().any(|p| starts(p));
            self.left_out += usize::from(left_out);
            let pass = self.connected
                && !database
                && !privileges
                && !left_out
                && (!subscription || self.mode == Mode::Restore);
            // Only a statement read whole (it ended before the head's limit) is rewritten.
            let whole = head.len() < HEAD;
            let call = match &self.extension_helper {
                Some(helper) if pass && whole && self.mode == Mode::Drill => {
                    pg_dump_extension(&head).map(|(name, schema)| {
                        format!(
                            "SELECT {helper}.create_extension('{}', '{}');",
                            name.replace('\'', "''"),
                            schema.replace('\'', "''")
                        )
                    })
                }
                _ => None,
            };
            if let Some(call) = call {
                self.out.extend_from_slice(call.as_bytes());
                self.part = Part::Skip { meta };
                self.head = head;
                self.head.clear();
                return;
            }
            self.scs_ok = is_scs_on(&norm);
            if pass && !self.scs_ok && contains_ignore_case(&head, SCS) {
                self.refuse(scs_refusal());
            }
            pass
        };
        if pass {
            self.out.extend_from_slice(&head);
            self.part = Part::Pass { meta };
        } else {
            self.part = Part::Skip { meta };
        }
        self.head = head;
        self.head.clear();
    }

    /// The current statement ended (after its last byte was handled).
    fn end_statement(&mut self, meta: bool) {
        if let Some(sql) = self.current.take() {
            self.captured_bytes += sql.len();
            if self.captured_bytes <= CAPTURE_LIMIT {
                self.captured.push(Captured {
                    after_connect: self.connected,
                    sql: String::from_utf8_lossy(&sql).into_owned(),
                });
            }
        }
        let copy =
            !meta && matches!(self.part, Part::Pass { .. }) && self.tail.ends_with(b"FROM stdin;");
        self.tail.clear();
        self.scs_matched = 0;
        self.scs_ok = false;
        self.lex = Lex::Normal;
        self.part = if copy {
            Part::CopyRestOfLine
        } else {
            Part::Between
        };
    }

    /// One byte of a statement: lexed, then kept, emitted or dropped by its part. Returns
    /// whether it ended the statement.
    fn statement_byte(&mut self, b: u8, meta: bool) -> bool {
        // A backslash outside quotes and comments in SQL is a psql meta-command (`SELECT 1 \\!
        // id`): no valid statement of pg_dump's holds one.
        if !meta && b == b'\\' && self.lex == Lex::Normal {
            self.refuse(meta_refusal("a psql meta-command (\\) inside a statement"));
        }
        if !meta {
            self.scs_byte(b);
        }
        let ends = if meta { b == b'\n' } else { self.lex_byte(b) };
        match self.part {
            Part::Head { .. } => {
                self.head.push(b);
                if ends || self.head.len() >= self.head_limit(meta) {
                    self.decide();
                }
            }
            Part::Pass { .. } => self.emit(b),
            _ => {
                if let Some(sql) = self.current.as_mut()
                    && sql.len() <= CAPTURE_LIMIT
                {
                    sql.push(b);
                }
            }
        }
        if !meta {
            self.tail.push(b);
            if self.tail.len() > 16 {
                self.tail.remove(0);
            }
        }
        if ends {
            self.end_statement(meta);
        }
        ends
    }

    /// One byte of a line or block comment between statements.
    fn between_byte(&mut self, b: u8) {
        if self.lex == Lex::Normal {
            if b.is_ascii_whitespace() {
                if self.connected {
                    self.emit(b);
                }
                return;
            }
            if b == b'-' || b == b'/' {
                // Maybe a comment: lexed as one; decided on the next byte.
                self.lex_byte(b);
                self.head.push(b);
                return;
            }
            self.part = Part::Head { meta: b == b'\\' };
            let meta = b == b'\\';
            self.prev = b'\n';
            self.prev2 = b'\n';
            self.statement_byte(b, meta);
            return;
        }
        if matches!(self.lex, Lex::Dash | Lex::Slash) {
            self.lex_byte(b);
            if matches!(self.lex, Lex::LineComment | Lex::Block { .. }) {
                if self.connected {
                    let pending = std::mem::take(&mut self.head);
                    self.out.extend_from_slice(&pending);
                    self.emit(b);
                } else {
                    self.head.clear();
                }
                return;
            }
            // Not a comment: a statement that begins with `-` or `/`.
            let pending = std::mem::take(&mut self.head);
            self.lex = Lex::Normal;
            self.part = Part::Head { meta: false };
            self.prev = b'\n';
            self.prev2 = b'\n';
            for p in pending {
                if self.statement_byte(p, false) {
                    break;
                }
            }
            if matches!(
                self.part,
                Part::Head { .. } | Part::Pass { .. } | Part::Skip { .. }
            ) {
                self.statement_byte(b, false);
            } else {
                self.between_byte(b);
            }
            return;
        }
        // Inside a comment between statements.
        self.lex_byte(b);
        if self.connected {
            self.emit(b);
        }
    }

    /// Handles one chunk of input; returns how many bytes it used.
    fn feed(&mut self, buf: &[u8]) -> usize {
        match self.part {
            Part::CopyData { at_start: false } => {
                // Every line up to one that may be the end (`\.`) passes at once: the end can
                // only follow a newline that is followed by a backslash.
                let upto = match memchr::memmem::find(buf, b"\n\\") {
                    Some(i) => Some(i + 1),
                    // None in this buffer: up to its last newline (the next line's first bytes
                    // may be in the next buffer).
                    None => memchr::memrchr(b'\n', buf).map(|i| i + 1),
                };
                match upto {
                    Some(upto) => {
                        self.out.extend_from_slice(&buf[..upto]);
                        self.part = Part::CopyData { at_start: true };
                        upto
                    }
                    None => {
                        self.out.extend_from_slice(buf);
                        buf.len()
                    }
                }
            }
            Part::CopyData { at_start: true } => {
                // Gather the line's first bytes until it is clearly not `\.`, or is.
                let b = buf[0];
                self.line.push(b);
                let l = self.line.as_slice();
                let end = l == b"\\.\n" || l == b"\\.\r\n";
                let maybe = b"\\.\r\n".starts_with(l) || b"\\.\n".starts_with(l);
                if end || !maybe {
                    let line = std::mem::take(&mut self.line);
                    self.out.extend_from_slice(&line);
                    self.part = if end {
                        Part::Between
                    } else if b == b'\n' {
                        Part::CopyData { at_start: true }
                    } else {
                        Part::CopyData { at_start: false }
                    };
                }
                1
            }
            Part::CopyRestOfLine => {
                let b = buf[0];
                self.emit(b);
                if b == b'\n' {
                    self.part = Part::CopyData { at_start: true };
                }
                1
            }
            Part::Between => {
                self.between_byte(buf[0]);
                1
            }
            Part::Head { meta } | Part::Pass { meta } | Part::Skip { meta } => {
                self.statement_byte(buf[0], meta);
                1
            }
        }
    }

    /// Moves at least one decided byte into `out`, or reaches the end.
    fn fill(&mut self) -> io::Result<()> {
        self.refusal()?;
        while self.out_pos >= self.out.len() && !self.eof {
            self.out.clear();
            self.out_pos = 0;
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                self.eof = true;
                // A statement cut off by the end: decided on what there is.
                if matches!(self.part, Part::Head { .. }) {
                    self.decide();
                }
                let line = std::mem::take(&mut self.line);
                self.out.extend_from_slice(&line);
                return Ok(());
            }
            // Work through the whole buffer (byte by byte outside COPY data).
            let mut used = 0;
            let n = buf.len();
            let chunk = buf.to_vec();
            while used < n {
                used += self.feed(&chunk[used..]);
            }
            self.inner.consume(n);
            self.refusal()?;
        }
        Ok(())
    }

    /// The error once something was refused: every later read fails too.
    fn refusal(&self) -> io::Result<()> {
        match &self.refused {
            None => Ok(()),
            Some(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())),
        }
    }

    /// Fails the stream (the first reason is kept).
    fn refuse(&mut self, why: String) {
        self.refused.get_or_insert(why);
    }

    /// Follows [`SCS`] through every byte of a statement, in quotes too (`set_config(…)`, a
    /// `DO` block): a statement that passes and names it, but for pg_dump's `SET … = on`,
    /// fails the stream before its end reaches psql.
    fn scs_byte(&mut self, b: u8) {
        let b = b.to_ascii_lowercase();
        if b == SCS[self.scs_matched] {
            self.scs_matched += 1;
        } else {
            // No proper prefix of the word recurs inside it but `s`.
            self.scs_matched = usize::from(b == SCS[0]);
        }
        if self.scs_matched == SCS.len() {
            self.scs_matched = 0;
            if matches!(self.part, Part::Pass { .. }) && !self.scs_ok {
                self.refuse(scs_refusal());
            }
        }
    }
}
