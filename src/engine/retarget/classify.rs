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
