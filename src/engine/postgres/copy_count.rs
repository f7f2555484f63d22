//! Row counts read from a plain dump as it streams: the data lines of each `COPY schema.table
//! (…) FROM stdin;` block up to its `\.` line. pg_dump writes one line per row (a newline in
//! a value is written `\n`, a backslash `\\`, so no row is a `\.` line), so the count is
//! exactly the rows the dump holds — in its own snapshot, with no second scan of the tables.
//!
//! A text the counter cannot read with certainty (a `COPY` line it cannot parse or longer than
//! [`MAX_LINE`], a table twice, a block never ended) makes it give up: the caller then counts
//! in the snapshot session, as for a custom archive.

use crate::engine::RowCounts;

/// The longest SQL line kept whole (a COPY line names every column).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct CopyCounter {
    /// The unfinished line at the end of the last chunk (its first [`MAX_LINE`] bytes).
    partial: Vec<u8>,
    partial_long: bool,
    /// The table whose data lines are being counted, and its rows so far.
    data: Option<(String, u64)>,
    counts: RowCounts,
    gave_up: bool,
}

impl CopyCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the next bytes of the dump.
    pub fn see(&mut self, chunk: &[u8]) {
        if self.gave_up {
            return;
        }
        let mut rest = chunk;
        if !self.partial.is_empty() || self.partial_long {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.keep(rest);
                return;
            };
            self.keep(&rest[..i]);
            let line = std::mem::take(&mut self.partial);
            let long = std::mem::take(&mut self.partial_long);
            self.line(&line, long);
            rest = &rest[i + 1..];
        }
        // Data lines are most of a dump: counted without a call per line.
        while !rest.is_empty() {
            if let Some((_, rows)) = self.data.as_mut() {
                match memchr::memmem::find(rest, b"\\.\n") {
                    // A `\.` at the start of a line ends the block.
                    Some(at) if at == 0 || rest[at - 1] == b'\n' => {
                        *rows += memchr::memchr_iter(b'\n', &rest[..at]).count() as u64;
                        self.line(b"\\.", false);
                        rest = &rest[at + 3..];
                    }
                    // Inside a row (`x\\.`): count up to it and go on after it.
                    Some(at) => {
                        *rows += memchr::memchr_iter(b'\n', &rest[..at + 3]).count() as u64;
                        rest = &rest[at + 3..];
                    }
                    None => {
                        // The last line may be the start of `\.`: kept for the next chunk.
                        match memchr::memrchr(b'\n', rest) {
                            Some(last) => {
                                *rows += memchr::memchr_iter(b'\n', &rest[..=last]).count() as u64;
                                self.keep(&rest[last + 1..]);
                            }
                            None => self.keep(rest),
                        }
                        return;
                    }
                }
            } else {
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.line(&rest[..i], false);
                        rest = &rest[i + 1..];
                    }
                    None => {
                        self.keep(rest);
                        return;
                    }
                }
            }
        }
    }

    /// The counts, once the whole dump was seen; `None` when the counter gave up.
    pub fn finish(mut self) -> Option<RowCounts> {
        if !self.partial.is_empty() || self.partial_long {
            let line = std::mem::take(&mut self.partial);
            let long = self.partial_long;
            self.line(&line, long);
        }
        (!self.gave_up && self.data.is_none()).then_some(self.counts)
    }

    fn keep(&mut self, bytes: &[u8]) {
        // Of a data line only whether it is `\.` matters.
        let cap = if self.data.is_some() { 3 } else { MAX_LINE };
        let room = cap.saturating_sub(self.partial.len());
        if bytes.len() > room {
            self.partial_long = true;
        }
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// One whole line (`long`: cut at [`MAX_LINE`]).
    fn line(&mut self, line: &[u8], long: bool) {
        if let Some((table, rows)) = self.data.as_mut() {
            if line == b"\\." && !long {
                let (table, rows) = (std::mem::take(table), *rows);
                self.data = None;
                if self.counts.insert(table, rows).is_some() {
                    self.gave_up = true; // a table twice
                }
            } else {
                *rows += 1;
            }
            return;
        }
        if !line.starts_with(b"COPY ") {
            return;
        }
        match (long, copy_table(line)) {
            (false, Some(table)) => self.data = Some((table, 0)),
            _ => self.gave_up = true,
        }
    }
}

/// `schema.table` of `COPY schema.table (a, b) FROM stdin;` (identifiers unquoted as pg_dump
/// quotes them), or `None`.
fn copy_table(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("COPY ")?;
    let (schema, rest) = identifier(rest)?;
    let rest = rest.strip_prefix('.')?;
    let (table, rest) = identifier(rest)?;
    let tail = rest.strip_suffix(" FROM stdin;")?;
    if !(tail.is_empty() || (tail.starts_with(" (") && tail.ends_with(')'))) {
        return None;
    }
    Some(format!("{schema}.{table}"))
}

/// A leading identifier: `"quoted ""name"""` or a plain one; the rest after it.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let end = text
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "SET x = 1;\n\
CREATE TABLE public.t (id int);\n\
COPY public.t (id, note) FROM stdin;\n\
1\ta\n\
2\tb\\\\.\n\
3\t\\\\.\n\
\\.\n\
\n\
COPY \"My \"\"Schema\"\"\".\"Odd.Name\" (x) FROM stdin;\n\
\\.\n\
COPY public.empty_cols FROM stdin;\n\
\n\
\n\
\\.\n\
-- PostgreSQL database dump complete\n";

    fn counted(chunks: &[&[u8]]) -> Option<RowCounts> {
        let mut c = CopyCounter::new();
        for ch in chunks {
            c.see(ch);
        }
        c.finish()
    }

    #[test]
    fn counts_each_block_at_any_chunk_boundary() {
        let want: RowCounts = [
            ("public.t".to_owned(), 3),
            ("My \"Schema\".Odd.Name".to_owned(), 0),
            ("public.empty_cols".to_owned(), 2),
        ]
        .into_iter()
        .collect();
        let bytes = DUMP.as_bytes();
        assert_eq!(counted(&[bytes]), Some(want.clone()));
        for size in 1..=9 {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(counted(&chunks), Some(want.clone()), "chunks of {size}");
        }
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(counted(&[a, b]), Some(want.clone()), "cut at {cut}");
        }
    }

    #[test]
    fn gives_up_on_what_it_cannot_read_with_certainty() {
        // A block never ended.
        assert_eq!(counted(&[b"COPY public.t (a) FROM stdin;\n1\n2\n"]), None);
        // A table twice.
        assert_eq!(
            counted(&[b"COPY public.t (a) FROM stdin;\n\\.\nCOPY public.t (a) FROM stdin;\n\\.\n"]),
            None
        );
        // A COPY line it cannot parse.
        assert_eq!(counted(&[b"COPY t (a) FROM stdin;\n\\.\n"]), None);
        assert_eq!(counted(&[b"COPY public.t (a) TO stdout;\n"]), None);
        // No COPY at all: no tables.
        assert_eq!(counted(&[b"SELECT 1;\n"]), Some(RowCounts::new()));
    }
}
