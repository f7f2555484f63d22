//! The scanner's fast paths: what `feed` would do a byte at a time, done over a run of bytes.
//! Rows are most of a dump: quoted strings (taken to their closing quote in one search, the
//! backslashes before a quote counted to see whether it is escaped) and, between them,
//! numbers, commas, parentheses and newlines. Each arm here mirrors the arm of
//! [`Scanner::code`] for the same byte exactly; the unit tests compare both readings of
//! thousands of generated dumps.

use super::super::tokens::Tok;
use super::{Scanner, code};
use memchr::memchr;

/// Where a string quoted with `q` ends in `rest`, when `rest` starts inside it with no
/// backslash pending: `Ok(n)` for the closing quote at `n`, or `Err(escaped)` when it runs past
/// the end (`escaped`: the last byte is a backslash that escapes the next chunk's first byte).
pub(super) fn string_end(q: u8, rest: &[u8]) -> Result<usize, bool> {
    let mut from = 0;
    while let Some(k) = memchr(q, &rest[from..]) {
        let at = from + k;
        if backslashes_before(&rest[..at]).is_multiple_of(2) {
            return Ok(at);
        }
        from = at + 1;
    }
    Err(!backslashes_before(rest).is_multiple_of(2))
}

/// How many backslashes end `bytes`.
fn backslashes_before(bytes: &[u8]) -> usize {
    bytes.iter().rev().take_while(|c| **c == b'\\').count()
}

impl Scanner {
    /// Takes the run of code bytes at the start of `chunk` that need neither the delimiter's
    /// nor a comment's look-ahead, and returns how many it took (0: the caller takes the first
    /// byte the slow way). Only digits and commas while the statement's head is still being
    /// collected (their bytes go into it as they are); once it is full, also the rest of a
    /// row's bytes. Stops after an opening quote, with the state set to read the string.
    pub(super) fn fast_run(&mut self, chunk: &[u8]) -> usize {
        let rows = self.head_full && self.open;
        let mut i = 0;
        while i < chunk.len() {
            let c = chunk[i];
            match c {
                b'0'..=b'9' => {
                    if self.word_len == 0 {
                        self.number = code::NUM_DIGITS;
                    } else if self.number == code::NUM_E {
                        self.number = code::NUM_EXPONENT;
                    }
                    self.push_word(c);
                }
                b',' => {
                    self.word_done();
                    self.mark(Tok::Other);
                    self.after_token(c);
                }
                _ if !rows => break,
                b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' => {
                    self.number_then_word(c);
                    self.push_word(c.to_ascii_uppercase());
                }
                b'(' => {
                    self.open_paren();
                    self.after_token(c);
                }
                b')' => {
                    self.close_paren();
                    self.after_token(c);
                }
                b'.' => {
                    self.dot();
                    self.last = c;
                }
                b'\'' | b'"' => {
                    self.open_quote(c);
                    self.last = c;
                    i += 1;
                    break;
                }
                b'\n' => {
                    self.word_done();
                    self.prev = b'\n';
                }
                b' ' | b'\t' | b'\r' | 0x0B | 0x0C => self.word_done(),
                _ => break,
            }
            i += 1;
        }
        if i > 0 {
            self.keep(&chunk[..i]);
            // Only digits and commas unless the head is full and takes no more.
            self.head_bytes(&chunk[..i]);
        }
        i
    }

    fn push_word(&mut self, c: u8) {
        if self.word_len < self.word.len() {
            self.word[self.word_len] = c;
        }
        self.word_len += 1;
    }

    /// What [`Scanner::code`] leaves after a punctuation byte that keeps nothing for the next
    /// token.
    fn after_token(&mut self, c: u8) {
        self.last = c;
        self.name_last = false;
        self.after_engine = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Versions};
    use super::*;

    /// Everything the scanner reports for `dump` fed in chunks of `size`, or its error.
    fn reading(mut scanner: Scanner, dump: &[u8], size: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut on = |e: Event<'_>| {
            seen.push(match e {
                Event::Statement(st) => format!(
                    "{:?} tuples {} danger {} whole {} calls {} qualified {} high {} engine {:?} text {:?} delimiter {:?} tokens {:?}",
                    String::from_utf8_lossy(st.head),
                    st.tuples,
                    st.danger,
                    st.whole,
                    st.calls,
                    st.qualified,
                    st.high,
                    st.bad_engine,
                    String::from_utf8_lossy(st.text),
                    String::from_utf8_lossy(st.delimiter),
                    st.tokens
                ),
                Event::Delimiter(d) => format!("delimiter {:?}", String::from_utf8_lossy(d)),
            });
            Ok(())
        };
        let mut r = Ok(());
        for c in dump.chunks(size.max(1)) {
            r = scanner.feed(c, &mut on);
            if r.is_err() {
                break;
            }
        }
        if r.is_ok() {
            r = scanner.finish(&mut on);
        }
        seen.push(format!("end {r:?}"));
        seen
    }

    /// The fast reading of `dump` is the byte-at-a-time one, in any chunking, with and
    /// without text kept.
    fn same_reading(dump: &[u8]) {
        for keep in [false, true] {
            let versions = if keep {
                Versions::Mariadb(101119)
            } else {
                Versions::Any
            };
            let slow = reading(
                Scanner::new(keep).for_server(versions).reference(),
                dump,
                dump.len(),
            );
            for size in [1, 2, 3, 5, 64, 1000, dump.len()] {
                let fast = reading(Scanner::new(keep).for_server(versions), dump, size);
                assert_eq!(
                    fast,
                    slow,
                    "chunks of {size}, text {keep}: {}",
                    String::from_utf8_lossy(dump)
                );
            }
        }
    }

    /// A row long enough to fill a statement's head, so that what follows takes the row path.
    fn padded(tail: &[u8]) -> Vec<u8> {
        let mut d = b"INSERT INTO `t` VALUES ('".to_vec();
        d.extend(std::iter::repeat_n(b'p', 600));
        d.extend_from_slice(b"'),");
        d.extend_from_slice(tail);
        d
    }

    #[test]
    fn the_fast_paths_read_rows_as_the_slow_one() {
        for tail in [
            &b"(1,'a\\'),(2,'b\\'c'),(3,'b\'c'),\n(-3,NULL,0x0aF,1.5e-3,\"q\\\"\");\n"[..],
            b"(1, `live`.f()),(2);\n",
            b"(1) /*!50003 , (2) */;\n",
            b"(1.0SELECT 1),(1e0UNION),(12345678901234567890SELECT);\n",
            b"(1) --\x01;DROP DATABASE `live`;\n;\n",
            b"(1) #';\n, (2);\n",
            b"(caf\xc3\xa9),(a.b),(`a`.`b`),(a . b);\n",
            b"('x')ENGINE='y';\n",
            b"(1)\x0C,\x0B(2)\r\n;\nDELIMITER ;;\nINSERT INTO `t` VALUES (1);;\n",
            b"(1,'open",
            b"(1,'ends in a backslash\\",
        ] {
            same_reading(&padded(tail));
            same_reading(tail);
        }
    }

    #[test]
    fn generated_dumps_read_as_the_slow_reading() {
        const PIECES: [&[u8]; 46] = [
            b"(",
            b")",
            b",",
            b"'",
            b"\"",
            b"\\",
            b"\n",
            b"1",
            b"42",
            b"e",
            b"x",
            b"NULL",
            b".",
            b"-",
            b" ",
            b";",
            b"/*",
            b"*/",
            b"/*!50003",
            b"--",
            b"-- ",
            b"#",
            b"`",
            b"\xA0",
            b"VALUES",
            b"SELECT",
            b"ENGINE",
            b"=",
            b"\t",
            b"\x0C",
            b"''",
            b"\\'",
            b"0x1f",
            b"\r",
            b"DELIMITER ;;\n",
            b";;",
            b"/*M!100000",
            b"*",
            b"E5",
            b"$_",
            b":",
            b"ENGINE=InnoDB",
            b"`a`.",
            b"\\\\",
            b"1e5",
            b"BEGIN",
        ];
        // A fixed xorshift: the same dumps every run.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut tail = Vec::new();
            for _ in 0..(next() % 40) {
                tail.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let dump = match next() % 3 {
                0 => padded(&tail),
                // The head fills during a run of code, not inside a string.
                1 => {
                    let mut d = b"INSERT INTO `t` VALUES ".to_vec();
                    d.extend(std::iter::repeat_n(&b"(12,3),"[..], 80).flatten());
                    d.extend_from_slice(&tail);
                    d
                }
                _ => tail,
            };
            same_reading(&dump);
        }
    }

    #[test]
    fn a_string_ends_at_the_first_quote_not_escaped() {
        assert_eq!(string_end(b'\'', b"abc'x"), Ok(3));
        assert_eq!(string_end(b'\'', b"a\\'b'"), Ok(4));
        assert_eq!(string_end(b'\'', b"a\\\\'b'"), Ok(3));
        assert_eq!(string_end(b'\'', b"\\\\\\''"), Ok(4));
        assert_eq!(string_end(b'\'', b"'"), Ok(0));
        assert_eq!(string_end(b'"', b"a'b\"c"), Ok(3));
        assert_eq!(string_end(b'\'', b"abc"), Err(false));
        assert_eq!(string_end(b'\'', b"abc\\"), Err(true));
        assert_eq!(string_end(b'\'', b"abc\\\\"), Err(false));
        assert_eq!(string_end(b'\'', b"a\\'"), Err(false));
        assert_eq!(string_end(b'\'', b""), Err(false));
    }
}
