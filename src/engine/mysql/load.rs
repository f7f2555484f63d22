//! Loading a dump into a database of dbkeep's choosing, through the allowlist: the stream is
//! scanned statement by statement; tables, rows and session settings go to the client at
//! once, views, triggers, routines and events are held back (an [`Objects`] script, loaded
//! after every row so that no trigger fires during the load, and by a restore into the live
//! database after the swap). The stream must end with the completion trailer, or the client
//! is killed before its input closes.

use super::classify::{Kind, ObjectKind, classify_statement};
use super::scan::{Event, Scanner, Statement, Versions};
use super::*;
use crate::codec::Tail;
use std::io::Read;
use std::process::Stdio;

/// The held-back part of a dump, in its order.
#[derive(Default)]
pub(super) struct Objects {
    pieces: Vec<(Option<ObjectKind>, Vec<u8>)>,
    size: usize,
    /// The distinct objects (a view's placeholder and final statement are one).
    names: std::collections::BTreeSet<(u8, String)>,
    pub events: usize,
    pub count: usize,
}

/// How much of a dump may be views, triggers, routines and events.
const OBJECTS_MAX: usize = 256 * 1024 * 1024;

impl Objects {
    /// The script, with or without the events (a drill's scratch database and a staging
    /// database get none: an event runs by itself).
    pub fn script(&self, events: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size);
        for (kind, bytes) in &self.pieces {
            if events || *kind != Some(ObjectKind::Event) {
                out.extend_from_slice(bytes);
            }
        }
        out
    }
}

/// Reads a dump and yields what the client is fed; keeps the objects and the first problem.
pub(super) struct Filter<R> {
    inner: R,
    scanner: Scanner,
    tail: Tail,
    out: Vec<u8>,
    at: usize,
    done: bool,
    pub objects: Objects,
    pub problem: Option<MysqlError>,
    pub rows: u64,
}

fn render(st: &Statement<'_>) -> Vec<u8> {
    let mut v = Vec::with_capacity(st.text.len() + st.delimiter.len() + 1);
    v.extend_from_slice(st.text);
    v.extend_from_slice(st.delimiter);
    v.push(b'\n');
    v
}

impl<R: Read> Filter<R> {
    /// A filter for a load into the server whose versioned comments are `versions`.
    pub fn for_server(inner: R, versions: Versions) -> Self {
        Self {
            inner,
            scanner: Scanner::new(true).for_server(versions),
            tail: Tail::new(4096),
            out: Vec::new(),
            at: 0,
            done: false,
            objects: Objects::default(),
            problem: None,
            rows: 0,
        }
    }

    fn route(&mut self, chunk: Option<&[u8]>) -> Result<(), String> {
        let (out, objects, rows) = (&mut self.out, &mut self.objects, &mut self.rows);
        let mut on = |e: Event<'_>| -> Result<(), String> {
            let st = match e {
                Event::Delimiter(line) => {
                    out.extend_from_slice(line);
                    objects.pieces.push((None, line.to_vec()));
                    return Ok(());
                }
                Event::Statement(st) => st,
            };
            let kind = classify_statement(&st)?;
            match kind {
                Kind::Set => {
                    let bytes = render(&st);
                    out.extend_from_slice(&bytes);
                    objects.pieces.push((None, bytes));
                }
                Kind::Table { .. } => {
                    *rows += st.tuples;
                    out.extend_from_slice(&render(&st));
                }
                Kind::Object { what, name } => {
                    let bytes = render(&st);
                    objects.size += bytes.len();
                    if objects.size > OBJECTS_MAX {
                        return Err("the dump holds more than 256 MiB of views, triggers, routines and events".into());
                    }
                    if what != ObjectKind::Drop && objects.names.insert((what as u8, name)) {
                        objects.count += 1;
                        if what == ObjectKind::Event {
                            objects.events += 1;
                        }
                    }
                    objects.pieces.push((Some(what), bytes));
                }
                Kind::Skip => {}
            }
            Ok(())
        };
        match chunk {
            Some(c) => self.scanner.feed(c, &mut on),
            None => self.scanner.finish(&mut on),
        }
    }

    fn fail(&mut self, e: MysqlError) -> io::Error {
        let text = e.to_string();
        self.problem.get_or_insert(e);
        io::Error::other(text)
    }
}

impl<R: Read> Read for Filter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.out.len() {
            self.out.clear();
            self.at = 0;
            if self.done {
                return Ok(0);
            }
            let mut chunk = vec![0u8; 256 * 1024];
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(MysqlError::Input(e))),
            };
            let routed = if n == 0 {
                self.done = true;
                self.route(None)
            } else {
                self.tail.push(&chunk[..n]);
                self.route(Some(&chunk[..n]))
            };
            if let Err(problem) = routed {
                return Err(self.fail(MysqlError::Refused(problem)));
            }
            if n == 0 && !dump::has_trailer(self.tail.bytes()) {
                return Err(self.fail(MysqlError::TruncatedInput));
            }
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

const SAFE_MODE: &str = "--init-command=SET SESSION sql_mode = ''";

impl Mysql {
    /// Feeds `input` (already filtered, or a script of dbkeep's) to the client on `database`.
    pub(super) fn feed(
        &self,
        flavor: Flavor,
        database: &str,
        input: &mut dyn Read,
    ) -> Result<(), MysqlError> {
        let mut cmd = self.command(flavor.client())?;
        // The session starts without the modes under which the client would read the input
        // differently from the scanner, whatever the server's global sql_mode.
        cmd.args(["--batch", "--silent"])
            .arg(SAFE_MODE)
            .args(flavor.sandbox())
            .arg(format!("--database={database}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let child = process::spawn(cmd, HINT, self.secrets())?;
        watch::feed_child(child, input, Some(self.stall(flavor, database)))?;
        Ok(())
    }

    /// Loads a dump's tables and rows into `database` (empty, dbkeep's own); returns the held-back
    /// objects and the rows loaded.
    pub(super) fn load_tables(
        &self,
        flavor: Flavor,
        database: &str,
        input: &mut dyn Read,
    ) -> Result<(Objects, u64), MysqlError> {
        let mut filter = Filter::for_server(input, self.versions());
        let fed = self.feed(flavor, database, &mut filter);
        if let Some(problem) = filter.problem.take() {
            return Err(problem);
        }
        fed?;
        Ok((filter.objects, filter.rows))
    }

    /// Creates the held-back objects in `database`.
    pub(super) fn load_objects(
        &self,
        flavor: Flavor,
        database: &str,
        objects: &Objects,
        events: bool,
    ) -> Result<(), MysqlError> {
        let script = objects.script(events);
        self.feed(flavor, database, &mut script.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(dump: &[u8]) -> Result<(Vec<u8>, Objects), MysqlError> {
        let mut f = Filter::for_server(dump, Versions::Mariadb(100500));
        let mut out = Vec::new();
        let r = f.read_to_end(&mut out);
        match f.problem.take() {
            Some(p) => Err(p),
            None => {
                r.map_err(MysqlError::Input)?;
                Ok((out, f.objects))
            }
        }
    }

    #[test]
    fn compound_bodies_that_hold_one_statement_pass() {
        let dump = b"DELIMITER ;;\n\
CREATE DEFINER=`root`@`localhost` PROCEDURE `p`(IN n INT)\n\
lbl: BEGIN\n  DECLARE i INT DEFAULT 0;\n  SELECT REPEAT('a', 2), IF(n > 1, 'x', 'y');\n\
  IF (n > 2) THEN SET i = 1; ELSEIF n > 3 THEN SET i = 2; ELSE SET i = 3; END IF;\n\
  CASE n WHEN 1 THEN SET i = 4; ELSE BEGIN END; END CASE;\n  SET i = CASE WHEN n > 0 THEN 1 ELSE 0 END;\n\
  WHILE i < 10 DO SET i = i + 1; END WHILE;\n  REPEAT SET i = i - 1; UNTIL i < 0 END REPEAT;\n\
  l2: LOOP LEAVE l2; END LOOP l2;\nEND ;;\n\
CREATE DEFINER=`root`@`localhost` trigger t_bi before insert on t for each row IF new.a > 1 THEN set new.a = 1; END IF ;;\n\
DELIMITER ;\n-- Dump completed\n";
        let (_, objects) = filtered(dump).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(objects.count, 2);
    }

    #[test]
    fn tables_go_first_and_objects_are_held_back() {
        let dump = b"/*!40101 SET NAMES utf8mb4 */;\nCREATE TABLE `t` (`a` int);\nINSERT INTO `t` VALUES (1),(2);\n\
DELIMITER ;;\n/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 trigger trg before insert on t for each row BEGIN IF new.a > 1 THEN set new.a = 1; END IF; END */;;\n\
/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `e` ON SCHEDULE EVERY 1 DAY DO delete from t */ ;;\nDELIMITER ;\n-- Dump completed\n";
        let (out, objects) = filtered(dump).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("INSERT INTO `t` VALUES (1),(2);"), "{out}");
        assert!(!out.contains("trigger"), "{out}");
        assert_eq!(objects.count, 2);
        assert_eq!(objects.events, 1);
        let all = String::from_utf8(objects.script(true)).unwrap();
        assert!(
            all.contains("trigger trg") && all.contains("EVENT `e`"),
            "{all}"
        );
        let no_events = String::from_utf8(objects.script(false)).unwrap();
        assert!(no_events.contains("trigger trg") && !no_events.contains("EVENT"));
    }

    #[test]
    fn hostile_dumps_are_refused_before_the_client_sees_them() {
        for (dump, expected) in [
            (&b"USE `live`;\n-- Dump completed\n"[..], "USE"),
            (b"DROP DATABASE `live`;\n-- Dump completed\n", "DROP DATABASE"),
            (b"INSERT INTO `live`.`t` VALUES (1);\n-- Dump completed\n", "another database"),
            (b"CREATE TABLE `t` (`a` int);\n\\! touch /tmp/x\n-- Dump completed\n", "client command"),
            (b"DELIMITER ;;\nINSERT INTO `t` VALUES (1); DROP DATABASE `live`;;\n-- Dump completed\n", "second statement"),
            (b"DELIMITER ;;\nCREATE PROCEDURE `p`() BEGIN select 1; END; DROP DATABASE `live`;;\n-- Dump completed\n", "second statement"),
            (b"CREATE TABLE `t` (`a` int);\n", "Dump completed"),
            (b"INSERT INTO `t` VALUES (1, `live`.f());\n-- Dump completed\n", "function call"),
            (b"INSERT INTO `t` VALUES ((SELECT 1));\n-- Dump completed\n", "SELECT"),
            (b"SET sql_mode = 'NO_BACKSLASH_ESCAPES';\nINSERT INTO `t` VALUES ('x\\');\n-- Dump completed\n", "NO_BACKSLASH_ESCAPES"),
            (b"SET NAMES gbk;\n-- Dump completed\n", "GBK"),
            // Where the client and the server would read a statement differently (REVIEW of
            // issue 15): each refused before the client sees it.
            (b"DELIMITER ;;\nCREATE PROCEDURE `p`() SELECT REPEAT('a',2); DROP DATABASE `live`;;\nDELIMITER ;\n-- Dump completed\n", "second statement"),
            (b"DELIMITER ;;\nCREATE PROCEDURE `p`() BEGIN SELECT begin FROM t; END; DROP DATABASE `live`;;\nDELIMITER ;\n-- Dump completed\n", "second statement"),
            (b"INSERT INTO `x` VALUES (1) --\x01;DROP DATABASE `live`;\n;\n-- Dump completed\n", "control character"),
            (b"DELIMITER 'ab'\nSET @a=1ab DROP DATABASE `live`ab'ab'\n-- Dump completed\n", "delimiter"),
            (b"DELIMITER ab x\n-- Dump completed\n", "delimiter"),
            (b"INSERT INTO `x` VALUES (1) /*!50003 /* */ ' */ */;DROP DATABASE `live`;#' */;\n-- Dump completed\n", "inside a versioned comment"),
            (b"INSERT INTO `x` VALUES (1) /*!99999 '*/;DROP DATABASE `live`;#'*/;\n-- Dump completed\n", "versioned comment"),
            (b"INSERT INTO `x` VALUES (1) /*M!999999 '*/;DROP DATABASE `live`;#'*/;\n-- Dump completed\n", "versioned comment"),
            (b"INSERT /*+ \\! touch /tmp/x */ INTO `x` VALUES (1);\n-- Dump completed\n", "optimizer hint"),
            (b"SET @a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0,@a=0, GLOBAL init_connect='x';\n-- Dump completed\n", "longer than"),
            (b"CREATE TABLE `m` (`a` int) ENGINE=MERGE UNION=(`live`.`t`);\n-- Dump completed\n", "beyond its own database"),
            (b"CREATE TABLE `c` (`a` int) ENGINE=CONNECT;\n-- Dump completed\n", "beyond its own database"),
            (b"INSERT INTO `x` VALUES (LOAD_FILE('/etc/shadow'));\n-- Dump completed\n", "LOAD_FILE"),
            (b"INSERT INTO `x` (`a`) VALUE (`live`.`f`());\n-- Dump completed\n", "function call"),
            (b"CREATE TABLE `t` (`a` int);\n-- Dump completed\nSELECT 1;\n", "not a statement"),
            // From the second review.
            (b"INSERT INTO `x` VALUES (1) /*;\nSET @a = '*/; DROP DATABASE `live`; -- ';\n-- Dump completed\n", "comment opening at the delimiter"),
            (b"INSERT INTO `x` VALUES (1) /* /*! */, ('*/; DROP DATABASE `live`; -- ');\n-- Dump completed\n", "comment inside a comment"),
            (b"INSERT INTO `x` VALUES (1) /*!050700 '*/;DROP DATABASE `live`;#'*/;\n-- Dump completed\n", "versioned comment"),
            (b"SET NAMES latin1;\nINSERT INTO `x` VALUES (1) --\xA0 '\n; DROP DATABASE `live`; #'\n;\n-- Dump completed\n", "control character"),
            (b"SET sql_mode = 4;\n-- Dump completed\n", "sql_mode"),
            (b"SET character_set_client = 28;\n-- Dump completed\n", "sql_mode"),
            (b"DELIMITER ;;\t\nSELECT 1;;\n-- Dump completed\n", "delimiter"),
        ] {
            let e = filtered(dump)
                .err()
                .unwrap_or_else(|| panic!("not refused: {}", String::from_utf8_lossy(dump)))
                .to_string();
            assert!(e.contains(expected), "{}: {e}", String::from_utf8_lossy(dump));
        }
    }
}
