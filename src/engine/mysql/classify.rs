//! What a statement of a dump is, from its head ([`super::scan`]): the allowlist of what
//! mysqldump and mariadb-dump write for one database. Tables and their rows go to one stream,
//! views, triggers, routines and events to another (loaded after every row, so that no
//! trigger fires during a load); anything else — `USE`, `DROP DATABASE`, `GRANT`, a name
//! qualified with a database, `SET GLOBAL` — is refused with the statement's start.

use super::session::{UNSAFE_MESSAGE, check_set, unsafe_text};
use super::tokens::shown;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A session setting: goes to both streams.
    Set,
    /// A table's (or sequence's) structure or rows.
    Table { name: String, what: TableStmt },
    /// A view, trigger, routine or event (or its `DROP … IF EXISTS`).
    Object { name: String, what: ObjectKind },
    /// Left out of every load: `ALTER DATABASE … CHARACTER SET` around routines names the
    /// dumped database itself.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStmt {
    Create,
    CreateSequence,
    Drop,
    Insert,
    Lock,
    Unlock,
    Keys,
    SetVal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    View,
    Trigger,
    Routine,
    Event,
    Drop,
}

impl ObjectKind {
    /// Whether the statement is compound (its body may hold `;`).
    pub fn compound(self) -> bool {
        matches!(
            self,
            ObjectKind::Trigger | ObjectKind::Routine | ObjectKind::Event
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum T {
    Word(String),
    Ident(String),
    /// A quoted string, its text as written (escapes not undone).
    Str(String),
    Punct(u8),
}

/// How many tokens of a head are classified; a short statement with more is refused.
const TOKENS: usize = 64;

fn tokens(head: &[u8]) -> Vec<T> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < head.len() && out.len() < TOKENS {
        let c = head[i];
        match c {
            b' ' => i += 1,
            b'`' => {
                let mut name = Vec::new();
                i += 1;
                while i < head.len() {
                    if head[i] == b'`' {
                        if head.get(i + 1) == Some(&b'`') {
                            name.push(b'`');
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    name.push(head[i]);
                    i += 1;
                }
                i += 1;
                out.push(T::Ident(String::from_utf8_lossy(&name).into_owned()));
            }
            b'\'' | b'"' => {
                i += 1;
                let start = i;
                while i < head.len() && head[i] != c {
                    i += if head[i] == b'\\' { 2 } else { 1 };
                }
                let raw = String::from_utf8_lossy(&head[start..i.min(head.len())]).into_owned();
                i += 1;
                out.push(T::Str(raw));
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' => {
                let start = i;
                while i < head.len()
                    && (head[i].is_ascii_alphanumeric() || head[i] == b'_' || head[i] == b'$')
                {
                    i += 1;
                }
                out.push(T::Word(
                    String::from_utf8_lossy(&head[start..i]).into_owned(),
                ));
            }
            c => {
                out.push(T::Punct(c));
                i += 1;
            }
        }
    }
    out
}

struct Cursor<'a> {
    t: &'a [T],
    i: usize,
}

impl Cursor<'_> {
    fn word(&mut self, w: &str) -> bool {
        if matches!(self.t.get(self.i), Some(T::Word(x)) if x.eq_ignore_ascii_case(w)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn words(&mut self, ws: &[&str]) -> bool {
        let at = self.i;
        if ws.iter().all(|w| self.word(w)) {
            true
        } else {
            self.i = at;
            false
        }
    }
    fn punct(&mut self, p: u8) -> bool {
        if self.t.get(self.i) == Some(&T::Punct(p)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    /// An unqualified name: a quoted or bare identifier not followed by `.`.
    fn name(&mut self) -> Option<Result<String, ()>> {
        let name = match self.t.get(self.i)? {
            T::Ident(n) | T::Word(n) => n.clone(),
            _ => return None,
        };
        self.i += 1;
        if self.t.get(self.i) == Some(&T::Punct(b'.')) {
            return Some(Err(()));
        }
        Some(Ok(name))
    }
    /// `DEFINER = user@host` or `DEFINER = CURRENT_USER[()]`.
    fn definer(&mut self) {
        if !self.word("DEFINER") {
            return;
        }
        self.punct(b'=');
        if self.word("CURRENT_USER") {
            if self.punct(b'(') {
                self.punct(b')');
            }
            return;
        }
        self.definer_part();
        if self.punct(b'@') {
            self.definer_part();
        }
    }
    fn definer_part(&mut self) {
        if matches!(
            self.t.get(self.i),
            Some(T::Ident(_) | T::Str(_) | T::Word(_))
        ) {
            self.i += 1;
        }
    }
}

/// Classifies a statement by its head.
pub fn classify(head: &[u8]) -> Result<Kind, String> {
    let toks = tokens(head);
    let first = |w: &str| matches!(toks.first(), Some(T::Word(x)) if x.eq_ignore_ascii_case(w));
    if toks.len() >= TOKENS
        && ["SET", "DO", "DROP", "LOCK", "UNLOCK", "ALTER"]
            .iter()
            .any(|w| first(w))
    {
        return Err(format!(
            "the dump holds a statement dbkeep does not load: {} (longer than such a statement is); a dump of one database by mysqldump or mariadb-dump has none",
            shown(head)
        ));
    }
    let refuse = |why: &str| {
        Err(format!(
            "the dump holds a statement dbkeep does not load: {} ({why}); a dump of one database by mysqldump or mariadb-dump has none",
            shown(head)
        ))
    };
    let mut c = Cursor { t: &toks, i: 0 };
    let named = |c: &mut Cursor<'_>, make: &dyn Fn(String) -> Kind| match c.name() {
        Some(Ok(name)) => Ok(make(name)),
        Some(Err(())) => refuse("it names an object in another database"),
        None => refuse("no name where one belongs"),
    };
    let table = |what: TableStmt| move |name| Kind::Table { name, what };
    let object = |what: ObjectKind| move |name| Kind::Object { name, what };
    if c.word("SET") {
        if unsafe_text(&String::from_utf8_lossy(head)) {
            return refuse(UNSAFE_MESSAGE);
        }
        return match check_set(&toks[1..]) {
            Ok(()) => Ok(Kind::Set),
            Err(why) => refuse(why),
        };
    }
    if c.words(&["DROP", "TABLE", "IF", "EXISTS"]) || c.words(&["DROP", "SEQUENCE", "IF", "EXISTS"])
    {
        let r = named(&mut c, &table(TableStmt::Drop));
        return if c.i == toks.len() || r.is_err() {
            r
        } else {
            refuse("a DROP of more than one table")
        };
    }
    if c.words(&["CREATE", "TABLE"]) {
        let r = named(&mut c, &table(TableStmt::Create));
        return if c.punct(b'(') || r.is_err() {
            r
        } else {
            refuse("a CREATE TABLE without its columns")
        };
    }
    if c.words(&["CREATE", "SEQUENCE"]) {
        return named(&mut c, &table(TableStmt::CreateSequence));
    }
    if c.word("INSERT") || c.word("REPLACE") {
        c.word("IGNORE");
        if c.word("INTO") {
            let r = named(&mut c, &table(TableStmt::Insert));
            return if c.word("VALUES") || c.word("VALUE") || c.punct(b'(') || r.is_err() {
                r
            } else {
                refuse("an INSERT of other than VALUES")
            };
        }
        return refuse("an INSERT without INTO");
    }
    if c.words(&["LOCK", "TABLES"]) {
        let r = named(&mut c, &table(TableStmt::Lock));
        return if c.i == toks.len() - 1 && c.word("WRITE") || r.is_err() {
            r
        } else {
            refuse("LOCK TABLES of more than one table")
        };
    }
    if c.words(&["UNLOCK", "TABLES"]) && c.i == toks.len() {
        return Ok(Kind::Table {
            name: String::new(),
            what: TableStmt::Unlock,
        });
    }
    if c.words(&["ALTER", "TABLE"]) {
        let r = named(&mut c, &table(TableStmt::Keys));
        let keys = (c.word("DISABLE") || c.word("ENABLE")) && c.word("KEYS");
        return if keys && c.i == toks.len() {
            r
        } else {
            refuse("ALTER TABLE other than DISABLE/ENABLE KEYS")
        };
    }
    if c.words(&["DO", "SETVAL"]) && c.punct(b'(') {
        let r = named(&mut c, &table(TableStmt::SetVal));
        let rest = &toks[c.i..];
        let literals = rest.last() == Some(&T::Punct(b')'))
            && rest.iter().filter(|t| **t == T::Punct(b')')).count() == 1
            && rest.iter().all(|t| {
                matches!(t, T::Punct(b',' | b')' | b'-'))
                    || matches!(t, T::Word(w) if w.bytes().all(|b| b.is_ascii_digit()))
            });
        return if literals {
            r
        } else {
            refuse("SETVAL with other than numbers")
        };
    }
    if c.words(&["ALTER", "DATABASE"]) {
        c.name();
        c.word("DEFAULT");
        return if c.words(&["CHARACTER", "SET"]) || c.word("COLLATE") {
            Ok(Kind::Skip)
        } else {
            refuse("ALTER DATABASE other than its character set")
        };
    }
    if c.word("DROP") {
        // An unqualified DROP FUNCTION drops a server-wide UDF of that name first: left out
        // (a load's target never holds the function yet: a staging or scratch database, or
        // the live one after its objects were dropped).
        if c.word("FUNCTION") {
            return if c.words(&["IF", "EXISTS"])
                && named(&mut c, &object(ObjectKind::Drop)).is_ok()
                && c.i == toks.len()
            {
                Ok(Kind::Skip)
            } else {
                refuse("a DROP FUNCTION other than one IF EXISTS")
            };
        }
        let kind = ["VIEW", "TRIGGER", "PROCEDURE", "EVENT"]
            .iter()
            .any(|w| c.word(w));
        if kind && c.words(&["IF", "EXISTS"]) {
            let r = named(&mut c, &object(ObjectKind::Drop));
            return if c.i == toks.len() || r.is_err() {
                r
            } else {
                refuse("a DROP of more than one object")
            };
        }
        return refuse(
            "a DROP of something other than a table, view, routine or event, or without IF EXISTS",
        );
    }
    if c.word("CREATE") {
        c.words(&["OR", "REPLACE"]);
        if c.word("ALGORITHM") {
            c.punct(b'=');
            c.i += 1;
        }
        c.definer();
        if c.words(&["SQL", "SECURITY"]) {
            c.i += 1;
        }
        if c.word("VIEW") {
            let r = named(&mut c, &object(ObjectKind::View));
            return if c.word("AS") || c.punct(b'(') || r.is_err() {
                r
            } else {
                refuse("a view dbkeep cannot read")
            };
        }
        if c.word("TRIGGER") {
            let r = named(&mut c, &object(ObjectKind::Trigger));
            let timing = c.word("BEFORE") || c.word("AFTER");
            let event = c.word("INSERT") || c.word("UPDATE") || c.word("DELETE");
            if !(timing && event && c.word("ON")) {
                return refuse("a trigger dbkeep cannot read");
            }
            return match (r, c.name()) {
                (Ok(kind), Some(Ok(_))) => Ok(kind),
                (Err(e), _) => Err(e),
                _ => refuse("a trigger on a table in another database"),
            };
        }
        c.word("AGGREGATE");
        if c.word("PROCEDURE") || c.word("FUNCTION") {
            let r = named(&mut c, &object(ObjectKind::Routine));
            // A stored routine's name is followed by its parameters; `CREATE FUNCTION f
            // RETURNS … SONAME` is a UDF, a library loaded into the server.
            return if r.is_err() || matches!(toks.get(c.i), Some(T::Punct(b'('))) {
                r
            } else {
                refuse("a function loaded from a library (a UDF), not a stored routine")
            };
        }
        if c.word("EVENT") {
            return named(&mut c, &object(ObjectKind::Event));
        }
        return refuse("a CREATE of something other than a table, view, trigger, routine or event");
    }
    refuse("not a statement of a one-database dump")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(head: &str) -> Kind {
        classify(head.as_bytes()).unwrap_or_else(|e| panic!("{head}: {e}"))
    }

    fn refused(head: &str) -> String {
        classify(head.as_bytes()).expect_err(head)
    }

    #[test]
    fn what_mariadb_dump_writes_is_allowed() {
        assert_eq!(ok("SET NAMES utf8mb4"), Kind::Set);
        assert_eq!(ok("SET character_set_client = @saved_cs_client"), Kind::Set);
        assert_eq!(ok("SET @saved_time_zone = @@time_zone"), Kind::Set);
        assert_eq!(ok("SET TIME_ZONE='+00:00'"), Kind::Set);
        assert_eq!(
            ok(
                "SET sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION'"
            ),
            Kind::Set
        );
        assert_eq!(
            ok("SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0"),
            Kind::Set
        );
        let t = |name: &str, what| Kind::Table {
            name: name.into(),
            what,
        };
        assert_eq!(ok("DROP TABLE IF EXISTS `c`"), t("c", TableStmt::Drop));
        assert_eq!(
            ok("CREATE TABLE `we``ird` ( `id` int"),
            t("we`ird", TableStmt::Create)
        );
        assert_eq!(
            ok("INSERT INTO `t` VALUES (1,'a')"),
            t("t", TableStmt::Insert)
        );
        assert_eq!(ok("LOCK TABLES `t` WRITE"), t("t", TableStmt::Lock));
        assert_eq!(ok("ALTER TABLE `t` DISABLE KEYS"), t("t", TableStmt::Keys));
        assert_eq!(ok("DO SETVAL(`sq`, 1, 0)"), t("sq", TableStmt::SetVal));
        let o = |name: &str, what| Kind::Object {
            name: name.into(),
            what,
        };
        assert_eq!(
            ok(
                "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER VIEW `v` AS select 1"
            ),
            o("v", ObjectKind::View)
        );
        assert_eq!(
            ok(
                "CREATE DEFINER=`root`@`localhost` trigger trg before insert on c for each row set new.id = 1"
            ),
            o("trg", ObjectKind::Trigger)
        );
        assert_eq!(
            ok("CREATE DEFINER=`root`@`localhost` PROCEDURE `p`() select 1"),
            o("p", ObjectKind::Routine)
        );
        assert_eq!(
            ok("CREATE DEFINER=`root`@`localhost` EVENT `e` ON SCHEDULE EVERY 1 DAY"),
            o("e", ObjectKind::Event)
        );
        assert_eq!(ok("DROP VIEW IF EXISTS `v`"), o("v", ObjectKind::Drop));
        assert_eq!(ok("DROP FUNCTION IF EXISTS `f`"), Kind::Skip);
        assert_eq!(ok("ALTER DATABASE `shop` CHARACTER SET latin1"), Kind::Skip);
    }

    #[test]
    fn anything_else_is_refused_naming_it() {
        for head in [
            "USE `live`",
            "DROP DATABASE `live`",
            "DROP TABLE `t`",
            "INSERT INTO `live`.`t` VALUES (1)",
            "CREATE TABLE live.t (a int)",
            "CREATE VIEW `live`.`v` AS select 1",
            "CREATE TRIGGER x AFTER INSERT ON `live`.`t` FOR EACH ROW SET @a=1",
            "SET GLOBAL event_scheduler=ON",
            "SET @@global.read_only=1",
            "SET PASSWORD FOR root = 'x'",
            "SET sql_mode = 'NO_BACKSLASH_ESCAPES'",
            "SET @x = 'ansi_quotes', sql_mode = @x",
            "SET NAMES gbk",
            "SET character_set_client = sjis",
            "SET @a = live.f()",
            "SET @a = (SELECT 1)",
            "DO SETVAL(`s`, live.f())",
            "DO SETVAL(`s`, 1, 0), SETVAL(`live`.`s`, 9)",
            "DROP TABLE IF EXISTS `x`, `live`.`t`",
            "DROP VIEW IF EXISTS `v`, `live`.`v`",
            "SET @m = 0x4E4F5F4241434B534C4153485F45534341504553, sql_mode = @m",
            "SET @cs = X'67626B'",
            "SET @cs = _latin1'gbk'",
            "SET @cs = 'gb' 'k'",
            "SET sql_mode = 'NO_BACKSLASH_ESCAPE\\S'",
            "SET sql_mode = 4",
            "SET sql_mode = 'POSTGRESQL'",
            "SET sql_mode = DEFAULT",
            "SET NAMES DEFAULT",
            "SET NAMES 'gb\\k'",
            "SET character_set_client = 28",
            "SET @a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@b=SETVAL(`live`.`s`,1)",
            "INSERT INTO `t` SELECT * FROM `live`.`t`",
            "INSERT INTO `t` SET a = 1",
            "GRANT ALL ON *.* TO x",
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "ALTER TABLE `t` DROP COLUMN a",
            "LOCK TABLES `t` WRITE, `live`.`u` WRITE",
            "CREATE USER x",
            "system ls",
            "source /etc/passwd",
        ] {
            let e = refused(head);
            assert!(e.contains(&head[..8]), "{head}: {e}");
        }
    }
}
