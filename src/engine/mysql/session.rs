//! What a dump's `SET` may do: change this session only, with literal values, never to a mode
//! or character set under which the client would split the rest differently from the scanner.

use super::classify::T;

/// sql_mode flags and character sets under which the client splits input differently from
/// [`super::scan`] (a backslash that is no escape; a 0x5C byte inside a multi-byte character):
/// a dump may never turn them on.
pub(super) const UNSAFE_MESSAGE: &str = "it turns on an sql_mode or character set under which the client reads a dump differently (NO_BACKSLASH_ESCAPES, ANSI_QUOTES, GBK, SJIS, …)";

const UNSAFE_WORDS: &[&str] = &[
    "NO_BACKSLASH_ESCAPES",
    "ANSI",
    "ANSI_QUOTES",
    "BIG5",
    "CP932",
    "GBK",
    "GB18030",
    "SJIS",
];

pub(super) fn unsafe_text(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| UNSAFE_WORDS.iter().any(|u| w.eq_ignore_ascii_case(u)))
}

/// A `SET` of the session, as mysqldump writes them: each assignment's value a literal, a
/// `@variable` or a `@@system_variable` (no expression, so no function of the live database is
/// called), never `GLOBAL`, never a mode or character set the scanner cannot follow.
pub(super) fn check_set(toks: &[T]) -> Result<(), &'static str> {
    if matches!(toks.first(), Some(T::Word(w)) if ["PASSWORD", "ROLE", "DEFAULT", "STATEMENT", "TRANSACTION"].iter().any(|k| w.eq_ignore_ascii_case(k)))
    {
        return Err("it changes more than this session");
    }
    for assignment in toks.split(|t| *t == T::Punct(b',')) {
        let eq = assignment.iter().position(|t| *t == T::Punct(b'='));
        let (target, value) = match eq {
            Some(i) => (&assignment[..i], &assignment[i + 1..]),
            // `SET NAMES utf8mb4 [COLLATE x]`, `SET CHARACTER SET x`.
            None => (
                &assignment[..assignment.len().min(1)],
                &assignment[assignment.len().min(1)..],
            ),
        };
        for t in assignment {
            if matches!(t, T::Word(w) if w.eq_ignore_ascii_case("GLOBAL") || w.to_ascii_uppercase().starts_with("PERSIST"))
            {
                return Err("it changes more than this session");
            }
            if let T::Word(w) | T::Ident(w) = t
                && unsafe_text(w)
            {
                return Err(UNSAFE_MESSAGE);
            }
        }
        // A literal (a string, a number, a bare word such as a character set's name), or a
        // variable: no hex or bit literal (`0x…`, `X'…'`), no introducer (`_gbk'…'`), no
        // adjacent strings (`'gb' 'k'` is one), no parenthesis (no call, no subquery).
        let mut simple = true;
        for (i, t) in value.iter().enumerate() {
            let next_is_str = matches!(value.get(i + 1), Some(T::Str(_)));
            simple &= match t {
                T::Str(_) => !next_is_str,
                T::Word(w) => {
                    let lower = w.to_ascii_lowercase();
                    !next_is_str
                        && !lower.starts_with('_')
                        && !((lower.starts_with("0x") || lower.starts_with("0b"))
                            && lower.len() > 2)
                }
                T::Ident(_) => true,
                T::Punct(p) => matches!(p, b'@' | b'.' | b'-' | b'+' | b':'),
            };
        }
        if target.is_empty() || !simple {
            return Err(
                "a SET whose value is an expression (dbkeep loads literals and variables only)",
            );
        }
        check_value(target, value)?;
    }
    Ok(())
}

/// The sql_mode flags mariadb-dump and mysqldump set, and the character sets under which the
/// client and the server split input alike (ASCII-compatible, no 0x5C inside a character).
const SAFE_MODES: &[&str] = &[
    "NO_AUTO_VALUE_ON_ZERO",
    "STRICT_TRANS_TABLES",
    "STRICT_ALL_TABLES",
    "ERROR_FOR_DIVISION_BY_ZERO",
    "NO_AUTO_CREATE_USER",
    "NO_ENGINE_SUBSTITUTION",
    "NO_ZERO_DATE",
    "NO_ZERO_IN_DATE",
    "ONLY_FULL_GROUP_BY",
    "IGNORE_SPACE",
    "NO_DIR_IN_CREATE",
    "NO_UNSIGNED_SUBTRACTION",
    "HIGH_NOT_PRECEDENCE",
    "PAD_CHAR_TO_FULL_LENGTH",
    "REAL_AS_FLOAT",
    "PIPES_AS_CONCAT",
    "SIMULTANEOUS_ASSIGNMENT",
    "TIME_ROUND_FRACTIONAL",
    "NO_KEY_OPTIONS",
    "NO_TABLE_OPTIONS",
    "NO_FIELD_OPTIONS",
    "TRADITIONAL",
];
/// The session variables mysqldump and mariadb-dump set, by the last word of the target
/// (`SET NAMES`, `SET CHARACTER SET`).
const SAFE_VARIABLES: &[&str] = &[
    "sql_mode",
    "names",
    "character",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "time_zone",
    "unique_checks",
    "foreign_key_checks",
    "sql_notes",
    "note_verbosity",
];
const SAFE_CHARSETS: &[&str] = &["utf8mb4", "utf8mb3", "utf8", "latin1", "binary", "ascii"];

/// A value the session may take for this target: sql_mode only a quoted list of
/// [`SAFE_MODES`] (or a variable saved from the session), character sets only
/// [`SAFE_CHARSETS`] (or a saved variable); a user variable only a literal without a backslash
/// (so that what it later gives sql_mode or a character set was checked here).
fn check_value(target: &[T], value: &[T]) -> Result<(), &'static str> {
    let name = target
        .iter()
        .rev()
        .find_map(|t| match t {
            T::Word(w) => Some(w.to_ascii_lowercase()),
            _ => None,
        })
        .unwrap_or_default();
    let user_var = matches!(target, [T::Punct(b'@'), T::Word(_)]);
    let variable = matches!(value, [T::Punct(b'@'), T::Word(_)])
        || matches!(value.first(), Some(T::Punct(b'@')))
            && matches!(value.get(1), Some(T::Punct(b'@')));
    let bad = Err(UNSAFE_MESSAGE);
    if !user_var {
        // `x`, `SESSION x`, `@@x`, `@@SESSION.x` of a variable the dump tools set; nothing
        // else before its name (`PASSWORD FOR u`, `DEFAULT ROLE`, `sql_log_bin`, `server_id` …).
        let (last, rest) = target.split_last().unwrap_or((&T::Punct(b' '), &[]));
        let shape = matches!(last, T::Word(_))
            && rest.iter().all(|t| {
                matches!(t, T::Punct(b'@' | b'.'))
                    || matches!(t, T::Word(w) if w.eq_ignore_ascii_case("SESSION") || w.eq_ignore_ascii_case("LOCAL"))
            });
        if !shape || !SAFE_VARIABLES.contains(&name.as_str()) {
            return Err(
                "it sets what mysqldump and mariadb-dump never set (they set the session's character sets, sql_mode, time_zone, unique_checks, foreign_key_checks, sql_notes, note_verbosity and user variables)",
            );
        }
    }
    if user_var {
        return match value {
            [T::Str(text)] if text.contains('\\') || unsafe_text(text) => bad,
            _ => Ok(()),
        };
    }
    match name.as_str() {
        "sql_mode" => match value {
            _ if variable => Ok(()),
            [T::Str(text)]
                if !text.contains('\\')
                    && text.split(',').all(|m| {
                        m.is_empty() || SAFE_MODES.iter().any(|s| s.eq_ignore_ascii_case(m.trim()))
                    }) =>
            {
                Ok(())
            }
            _ => bad,
        },
        "names"
        | "character"
        | "character_set_client"
        | "character_set_connection"
        | "character_set_results"
        | "collation_connection" => {
            let value = match value.first() {
                Some(T::Word(w)) if w.eq_ignore_ascii_case("SET") => &value[1..],
                _ => value,
            };
            let charset = match value.first() {
                Some(T::Word(w) | T::Ident(w) | T::Str(w)) => w.to_ascii_lowercase(),
                _ => String::new(),
            };
            let safe = SAFE_CHARSETS
                .iter()
                .any(|c| charset == *c || charset.starts_with(&format!("{c}_")));
            if variable || safe && !charset.contains('\\') {
                Ok(())
            } else {
                bad
            }
        }
        _ => Ok(()),
    }
}
