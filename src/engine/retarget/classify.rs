//! What a statement of a dump is, as [`Retarget`](super::Retarget) decides on it: the
//! `\\connect` argument, owner and privilege statements, the one setting that changes how
//! statements split, and the messages of a refused stream.

/// The one setting that changes how psql splits statements: only pg_dump's `SET … = on` of it
/// passes (dbkeep's sessions start with it on), so the lexer here and psql's always agree.
pub(super) const SCS: &[u8] = b"standard_conforming_strings";

/// The argument of a `\\connect` / `\\c` line, whitespace trimmed.
pub(super) fn connect_argument(line: &[u8]) -> Vec<u8> {
    let rest = line
        .iter()
        .skip(1)
        .skip_while(|b| !b.is_ascii_whitespace())
        .copied()
        .collect::<Vec<u8>>();
    rest.trim_ascii().to_vec()
}

/// Whether a (whole, or its first 64 KiB of) statement sets an owner or privileges: `GRANT`,
/// `REVOKE`, `ALTER DEFAULT PRIVILEGES`, or an `ALTER` that ends `OWNER TO role;`.
pub(super) fn sets_owner_or_privileges(stmt: &[u8]) -> bool {
    if stmt.starts_with(b"GRANT ")
        || stmt.starts_with(b"REVOKE ")
        || stmt.starts_with(b"ALTER DEFAULT PRIVILEGES ")
    {
        return true;
    }
    if !stmt.starts_with(b"ALTER ") {
        return false;
    }
    const OWNER: &[u8] = b" OWNER TO ";
    let Some(at) = stmt.windows(OWNER.len()).rposition(|w| w == OWNER) else {
        return false;
    };
    // What follows is one role name (bare or quoted) and the end of the statement.
    let role = stmt[at + OWNER.len()..].trim_ascii_end();
    let Some(role) = role.strip_suffix(b";").map(<[u8]>::trim_ascii_end) else {
        return false;
    };
    let quoted = role.len() >= 2 && role.starts_with(b"\"") && role.ends_with(b"\"");
    let bare = !role.is_empty()
        && role
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$' || *b >= 0x80);
    quoted || bare
}

pub(super) fn meta_refusal(what: &str) -> String {
    format!(
        "the dump holds {what} outside quotes and COPY data; pg_dump writes none but \\restrict, \\unrestrict and \\connect, so the backup was altered: nothing of it was run from there on"
    )
}

pub(super) fn scs_refusal() -> String {
    "the dump changes standard_conforming_strings other than pg_dump's SET standard_conforming_strings = on, which would make psql split its statements differently from the check that keeps whole-database statements out: the backup was altered or not made by pg_dump; nothing of it was run from there on".into()
}

/// Whether a normalized statement is `SET standard_conforming_strings = on;` (or `TO`, quoted).
pub(super) fn is_scs_on(norm: &[u8]) -> bool {
    let compact: Vec<u8> = norm.iter().copied().filter(|b| *b != b' ').collect();
    [
        &b"SETSTANDARD_CONFORMING_STRINGS=ON;"[..],
        b"SETSTANDARD_CONFORMING_STRINGSTOON;",
        b"SETSTANDARD_CONFORMING_STRINGS='on';",
        b"SETSTANDARD_CONFORMING_STRINGSTO'on';",
    ]
    .contains(&compact.as_slice())
}

pub(super) fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Statements a drill leaves out because only a superuser may run them and the drill's load
/// role is none: event triggers (which would also fire on dbkeep's own later statements), and
/// comments on extensions (owned by whoever created them).
pub(super) const DRILL_LEFT_OUT: &[&[u8]] = &[
    b"CREATE EVENT TRIGGER ",
    b"ALTER EVENT TRIGGER ",
    b"COMMENT ON EVENT TRIGGER ",
    b"SECURITY LABEL ON EVENT TRIGGER ",
    b"COMMENT ON EXTENSION ",
];

/// The extension and schema of a statement exactly as pg_dump writes one,
/// `CREATE EXTENSION IF NOT EXISTS name WITH SCHEMA schema;` (names bare in lower case, or
/// double-quoted with doubled quotes inside), unquoted; `None` for any other statement.
pub fn pg_dump_extension(stmt: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(stmt).ok()?.trim();
    let rest = text.strip_suffix(';')?;
    let rest = strip_words(rest, &["CREATE", "EXTENSION", "IF", "NOT", "EXISTS"])?;
    let (name, rest) = identifier(rest)?;
    let rest = strip_words(rest, &["WITH", "SCHEMA"])?;
    let (schema, rest) = identifier(rest)?;
    rest.trim().is_empty().then_some((name, schema))
}

fn strip_words<'a>(mut s: &'a str, words: &[&str]) -> Option<&'a str> {
    for w in words {
        s = s.trim_start().strip_prefix(w)?;
        if !s.starts_with(char::is_whitespace) {
            return None;
        }
    }
    Some(s)
}

/// A bare (lower-case) or quoted identifier at the start of `s`, and what follows it.
fn identifier(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if matches!(chars.peek(), Some((_, '"'))) {
                    chars.next();
                } else {
                    return (!name.is_empty()).then(|| (name, &quoted[i + 1..]));
                }
            }
            name.push(c);
        }
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    let name = &s[..end];
    (name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
        .then(|| (name.to_owned(), &s[end..]))
}
