//! A plain dump made with `pg_dump --create`, loaded into another database (a restore drill's
//! scratch database) instead of its own.
//!
//! Such a dump begins with a preamble that drops, creates and connects to the database it was
//! taken from (`DROP DATABASE`, `CREATE DATABASE`, `ALTER DATABASE … OWNER`, `\connect NAME`).
//! Run as it is, it would drop the live database. [`Retarget`] passes the dump through with:
//! - everything before the first `\connect` line left out (the preamble; pg_dump repeats its
//!   `SET` statements after `\connect`), and that line too;
//! - after it, every line that names a database as a whole (`DROP`/`CREATE`/`ALTER DATABASE`,
//!   `COMMENT ON DATABASE`, `SECURITY LABEL ON DATABASE`, `\connect`) left out, outside the data
//!   of `COPY … FROM stdin;` blocks, whose rows pass untouched;
//! - `\restrict` / `\unrestrict` lines (pg_dump 15.14+) kept wherever they are.
//!
//! A dump without any `\connect` line yields nothing but those: the drill then finds no tables,
//! and fails, rather than touching any database but its own. It streams: memory stays at one
//! 64 KiB buffer plus a line's first bytes, whatever the length of a line.

use std::io::{self, BufRead, Read};

/// Lines that act on a database as a whole; never passed after the preamble.
const DATABASE_STATEMENTS: &[&[u8]] = &[
    b"DROP DATABASE",
    b"CREATE DATABASE",
    b"ALTER DATABASE",
    b"COMMENT ON DATABASE",
    b"SECURITY LABEL ON DATABASE",
    b"\\connect",
    b"\\c ",
];
const KEEP_ALWAYS: &[&[u8]] = &[b"\\restrict", b"\\unrestrict"];
/// Bytes of a line's start that decide what happens to it.
const HEAD: usize = 32;
/// Bytes of a line's end kept to know whether a `COPY` line ends with `FROM stdin;`.
const TAIL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line: its first bytes are being gathered.
    Start,
    Pass,
    Skip,
}

pub struct Retarget<R> {
    inner: R,
    line: Line,
    /// The first bytes of the current line, until it is decided.
    head: Vec<u8>,
    /// Decided bytes waiting to be read.
    out: Vec<u8>,
    out_pos: usize,
    /// The first `\connect` has been seen.
    connected: bool,
    in_copy: bool,
    /// The current line began with `COPY `: its end decides whether data follows.
    copy_line: bool,
    tail: Vec<u8>,
    eof: bool,
}

impl<R: BufRead> Retarget<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            line: Line::Start,
            head: Vec::with_capacity(HEAD),
            out: Vec::new(),
            out_pos: 0,
            connected: false,
            in_copy: false,
            copy_line: false,
            tail: Vec::with_capacity(TAIL),
            eof: false,
        }
    }

    /// Decides the current line from its first bytes (`complete`: the whole line is in `head`).
    fn decide(&mut self, complete: bool) {
        let head = self.head.as_slice();
        let text = trim_newline(head);
        let starts = |p: &[&[u8]]| p.iter().any(|s| head.starts_with(s));
        self.copy_line = false;
        self.line = if self.in_copy {
            if complete && text == b"\\." {
                self.in_copy = false;
            }
            Line::Pass
        } else if starts(KEEP_ALWAYS) {
            Line::Pass
        } else if !self.connected {
            if head.starts_with(b"\\connect") || head.starts_with(b"\\c ") {
                self.connected = true;
            }
            Line::Skip
        } else if starts(DATABASE_STATEMENTS) {
            Line::Skip
        } else {
            self.copy_line = head.starts_with(b"COPY ");
            Line::Pass
        };
        self.tail.clear();
        if self.line == Line::Pass {
            let head = std::mem::take(&mut self.head);
            self.note_tail(&head);
            self.out.extend_from_slice(&head);
            self.head = head;
        }
        self.head.clear();
    }

    fn note_tail(&mut self, bytes: &[u8]) {
        if !self.copy_line {
            return;
        }
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }

    /// At the end of a passed line: a `COPY … FROM stdin;` line starts a data block.
    fn end_line(&mut self) {
        if self.copy_line && trim_newline(&self.tail).ends_with(b"FROM stdin;") {
            self.in_copy = true;
        }
        self.copy_line = false;
        self.line = Line::Start;
    }

    /// Moves at least one decided byte into `out`, or reaches the end.
    fn fill(&mut self) -> io::Result<()> {
        while self.out_pos >= self.out.len() && !self.eof {
            self.out.clear();
            self.out_pos = 0;
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                self.eof = true;
                if self.line == Line::Start && !self.head.is_empty() {
                    self.decide(true);
                }
                return Ok(());
            }
            let n = match self.line {
                Line::Start => {
                    let room = HEAD - self.head.len();
                    let take = buf.len().min(room);
                    let nl = buf[..take].iter().position(|&b| b == b'\n');
                    let upto = nl.map_or(take, |i| i + 1);
                    self.head.extend_from_slice(&buf[..upto]);
                    if nl.is_some() {
                        self.decide(true);
                        if self.line == Line::Pass {
                            self.end_line();
                        } else {
                            self.line = Line::Start;
                        }
                    } else if self.head.len() >= HEAD {
                        self.decide(false);
                    }
                    upto
                }
                Line::Pass | Line::Skip => {
                    let nl = buf.iter().position(|&b| b == b'\n');
                    let upto = nl.map_or(buf.len(), |i| i + 1);
                    if self.line == Line::Pass {
                        self.out.extend_from_slice(&buf[..upto]);
                        if self.copy_line {
                            self.tail.extend_from_slice(&buf[..upto]);
                            if self.tail.len() > TAIL {
                                self.tail.drain(..self.tail.len() - TAIL);
                            }
                        }
                    }
                    if nl.is_some() {
                        if self.line == Line::Pass {
                            self.end_line();
                        } else {
                            self.line = Line::Start;
                        }
                    }
                    upto
                }
            };
            self.inner.consume(n);
        }
        Ok(())
    }
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

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, buf: usize) -> String {
        let mut r = Retarget::new(io::BufReader::with_capacity(buf, input.as_bytes()));
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        out
    }

    const DUMP: &str = "\\restrict abc\n--\n-- PostgreSQL database dump\n--\nSET statement_timeout = 0;\nDROP DATABASE IF EXISTS appdb;\nCREATE DATABASE appdb WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';\nALTER DATABASE appdb OWNER TO app;\n\\unrestrict abc\n\\connect appdb\n\\restrict abc\nSET statement_timeout = 0;\nCREATE TABLE public.t (x text);\nALTER DATABASE appdb SET search_path TO public;\nCOPY public.t (x) FROM stdin;\nDROP DATABASE appdb;\n\\connect postgres\n\\.\nCOMMENT ON DATABASE appdb IS 'x';\nSELECT 1;\n-- PostgreSQL database dump complete\n\\unrestrict abc\n";

    const EXPECTED: &str = "\\restrict abc\n\\unrestrict abc\n\\restrict abc\nSET statement_timeout = 0;\nCREATE TABLE public.t (x text);\nCOPY public.t (x) FROM stdin;\nDROP DATABASE appdb;\n\\connect postgres\n\\.\nSELECT 1;\n-- PostgreSQL database dump complete\n\\unrestrict abc\n";

    #[test]
    fn the_preamble_and_database_statements_go_and_copy_data_stays() {
        // Any buffer size: lines split across reads decide the same way.
        for buf in [1, 2, 3, 7, 31, 32, 33, 64, 8192] {
            assert_eq!(run(DUMP, buf), EXPECTED, "buffer {buf}");
        }
    }

    #[test]
    fn long_lines_stream_through() {
        let long = "x".repeat(200_000);
        let dump = format!(
            "\\connect db\nCOPY public.t (x, {}) FROM stdin;\n{long}\n\\.\nDROP DATABASE db;\nSELECT '{long}';\n",
            "y".repeat(100)
        );
        let out = run(&dump, 4096);
        let want = format!(
            "COPY public.t (x, {}) FROM stdin;\n{long}\n\\.\nSELECT '{long}';\n",
            "y".repeat(100)
        );
        assert_eq!(out, want);
    }

    #[test]
    fn without_a_connect_nothing_passes() {
        assert_eq!(run("DROP DATABASE x;\nCREATE TABLE t ();\n", 8192), "");
        // A last line without a newline is decided too.
        assert_eq!(run("\\connect x\nSELECT 1;", 8192), "SELECT 1;");
        assert_eq!(run("\\connect x\nDROP DATABASE y;", 8192), "");
    }
}
