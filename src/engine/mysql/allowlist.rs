//! The allowlist over a whole statement: its head's kind ([`super::classify`]) and what the
//! scanner saw anywhere in its code — danger words, a second statement under another
//! delimiter, a short statement longer than its kind, a name qualified with another
//! database, a storage engine that keeps rows elsewhere, a library loaded into the server,
//! bytes above ASCII, function calls among an `INSERT`'s values.

use super::classify::{Kind, TableStmt, classify};
use super::tokens::shown;

/// Classifies a statement: its head, and for an `INSERT` the function calls or subqueries
/// among its values ([`super::scan::Statement::calls`]).
pub fn classify_statement(st: &super::scan::Statement<'_>) -> Result<Kind, String> {
    use super::tokens::{DANGER, Tok, body_ends_inside};
    let kind = classify(st.head)?;
    let has = |words: &[&[u8]]| {
        DANGER
            .iter()
            .enumerate()
            .filter(|(i, _)| st.danger & (1 << i) != 0)
            .map(|(_, w)| String::from_utf8_lossy(w).into_owned())
            .find(|w| words.iter().any(|x| x == &w.as_bytes()))
    };
    let refuse = |why: String| {
        Err(format!(
            "the dump holds a statement dbkeep does not load: {} ({why}); a dump of one database by mysqldump or mariadb-dump has none",
            shown(st.head)
        ))
    };
    // Under another delimiter the client sends the text as one query: it may hold only one
    // statement for the server.
    if st.delimiter != b";" {
        let compound = matches!(kind, Kind::Object { what, .. } if what.compound());
        let smuggled = if compound {
            body_ends_inside(st.tokens)
        } else {
            st.tokens.contains(&Tok::Semi)
        };
        if smuggled {
            return Err(format!(
                "the statement {} holds a second statement after a ';' under the delimiter {:?} (or blocks dbkeep cannot follow)",
                shown(st.head),
                String::from_utf8_lossy(st.delimiter)
            ));
        }
    }
    match &kind {
        Kind::Object { .. } => {}
        // Short statements: all of it must have been classified.
        Kind::Set
        | Kind::Skip
        | Kind::Table {
            what:
                TableStmt::Drop
                | TableStmt::Lock
                | TableStmt::Unlock
                | TableStmt::Keys
                | TableStmt::SetVal,
            ..
        } if !st.whole => {
            return refuse("longer than such a statement is".into());
        }
        Kind::Set => {
            if let Some(w) = has(&[b"GLOBAL", b"PERSIST", b"PERSIST_ONLY"]) {
                return refuse(format!("{w}: it changes more than this session"));
            }
        }
        Kind::Table {
            what: TableStmt::Create | TableStmt::CreateSequence,
            ..
        } => {
            // Every danger word but those of the server's state and of files (refused below
            // for every table statement): each makes a table that reaches elsewhere.
            let state_or_files: &[&[u8]] = &[
                b"GLOBAL",
                b"PERSIST",
                b"PERSIST_ONLY",
                b"OUTFILE",
                b"DUMPFILE",
                b"SONAME",
            ];
            let beyond: Vec<&[u8]> = DANGER
                .iter()
                .copied()
                .filter(|w| !state_or_files.contains(w))
                .collect();
            if let Some(w) = has(&beyond) {
                return refuse(format!(
                    "{w}: a table that reads or writes beyond its own database"
                ));
            }
        }
        _ => {}
    }
    if !matches!(kind, Kind::Object { .. })
        && let Some(w) = has(&[b"LOAD_FILE", b"OUTFILE", b"DUMPFILE", b"SELECT"])
    {
        return refuse(format!("{w} outside a view, trigger or routine"));
    }
    if st.calls > 0
        && matches!(
            kind,
            Kind::Table {
                what: TableStmt::Insert,
                ..
            }
        )
    {
        return Err(format!(
            "the dump holds an INSERT with a function call or subquery among its values: {}; mysqldump and mariadb-dump write literals only",
            shown(st.head)
        ));
    }
    // A server-wide function from a shared library, whatever kind of statement holds it.
    if let Some(w) = has(&[b"SONAME"]) {
        return refuse(format!("{w}: it loads a library into the server"));
    }
    // Outside quotes, mysqldump writes ASCII only; a byte above it may be a space to the
    // server (0xA0 in latin1) where the scanner sees a name.
    if st.high && !matches!(kind, Kind::Object { .. }) {
        return refuse("a byte outside ASCII outside quotes".into());
    }
    if let Kind::Table { what, .. } = &kind {
        // mysqldump writes a table's names unqualified; a qualified one (a foreign key into
        // another database, `LIKE other.t`) reaches beyond the database loaded into.
        if st.qualified {
            return refuse("it names an object in another database".into());
        }
        if let Some(engine) = &st.bad_engine
            && matches!(what, TableStmt::Create | TableStmt::CreateSequence)
        {
            return refuse(format!(
                "the storage engine {engine}: dbkeep loads only tables that keep their rows in their own database ({})",
                super::tokens::ENGINES.join(", ")
            ));
        }
    }
    Ok(kind)
}
