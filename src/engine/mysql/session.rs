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
            None => (assignment, &assignment[assignment.len().min(1)..]),
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
            let next_is_str = matches!(value.get(i + 1), Some(T::Str));
            simple &= match t {
                T::Str => !next_is_str,
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
    }
    Ok(())
}
