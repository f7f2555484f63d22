//! A consistent dump: `mariadb-dump`/`mysqldump --single-transaction` streamed to the sink
//! while a reader thread scans it ([`super::scan`]): every statement must be one a restore
//! loads, the rows of each table are counted from the `INSERT`s themselves (MySQL has no
//! snapshot to share with a second session, so the dump is the only place the counts can
//! match), and the tables dumped must be the tables the database had before and after.

use super::allowlist::classify_statement;
use super::classify::{Kind, TableStmt};
use super::scan::{Event, Scanner, Versions};
use super::*;
use crate::codec::Tail;
use crate::engine::{DumpInfo, RowCounts};
use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;

const CHUNK: usize = 256 * 1024;

/// What the reader thread learnt from the stream.
#[derive(Default)]
struct Scanned {
    counts: RowCounts,
    tables: BTreeSet<String>,
    tail: Option<Tail>,
    problem: Option<String>,
}

/// The scanner on the dump's reader thread.
struct Scan {
    scanner: Scanner,
    scanned: Scanned,
}

impl watch::Look for Scan {
    fn see(&mut self, chunk: &[u8]) {
        scan_chunk(&mut self.scanner, &mut self.scanned, Some(chunk));
        if let Some(t) = self.scanned.tail.as_mut() {
            t.push(chunk);
        }
    }
}

/// Scans a whole dump: its row counts and tables, or what is wrong with it.
fn scan_chunk(scanner: &mut Scanner, scanned: &mut Scanned, chunk: Option<&[u8]>) {
    if scanned.problem.is_some() {
        return;
    }
    let (counts, tables) = (&mut scanned.counts, &mut scanned.tables);
    let mut on = |e: Event<'_>| {
        if let Event::Statement(st) = e {
            match classify_statement(&st)? {
                Kind::Table {
                    name,
                    what: TableStmt::Insert,
                } => *counts.entry(name).or_insert(0) += st.tuples,
                Kind::Table {
                    name,
                    what: TableStmt::Create,
                } => {
                    counts.entry(name.clone()).or_insert(0);
                    tables.insert(name);
                }
                _ => {}
            }
        }
        Ok(())
    };
    let r = match chunk {
        Some(c) => scanner.feed(c, &mut on),
        None => scanner.finish(&mut on),
    };
    if let Err(e) = r {
        scanned.problem = Some(e);
    }
}

/// Counts the rows of a complete dump read from `input` (for tests and checks).
pub fn count_rows(input: &mut dyn Read) -> Result<RowCounts, String> {
    let mut scanner = Scanner::new(false).for_server(Versions::Any);
    let mut scanned = Scanned::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => scan_chunk(&mut scanner, &mut scanned, Some(&buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    scan_chunk(&mut scanner, &mut scanned, None);
    match scanned.problem {
        Some(p) => Err(p),
        None => Ok(scanned.counts),
    }
}

/// Whether a dump's last line is the completion trailer.
pub fn has_trailer(tail: &[u8]) -> bool {
    let t = tail.trim_ascii_end();
    let last = t.rsplit(|b| *b == b'\n').next().unwrap_or(t);
    last.starts_with(TRAILER)
}

fn names(set: &BTreeSet<String>) -> String {
    let v: Vec<&str> = set.iter().map(String::as_str).take(10).collect();
    v.join(", ")
}

/// What differs between the tables a database had and the tables a dump holds.
fn compare_tables(
    before: &BTreeSet<String>,
    dumped: &BTreeSet<String>,
    after: &BTreeSet<String>,
) -> Result<(), MysqlError> {
    let mut problems = Vec::new();
    let missing: BTreeSet<String> = before.difference(dumped).cloned().collect();
    let extra: BTreeSet<String> = dumped.difference(before).cloned().collect();
    let created: BTreeSet<String> = after.difference(before).cloned().collect();
    let dropped: BTreeSet<String> = before.difference(after).cloned().collect();
    for (set, what) in [
        (&missing, "not in the dump"),
        (
            &extra,
            "in the dump but not in the database when it started",
        ),
        (&created, "created during the dump"),
        (&dropped, "dropped during the dump"),
    ] {
        if !set.is_empty() {
            problems.push(format!("{what}: {}", names(set)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MysqlError::TablesChanged(problems.join("; ")))
    }
}

impl Mysql {
    /// Dumps the database into `out`; see the module.
    pub fn dump(&self, out: &mut dyn Write) -> Result<DumpInfo, MysqlError> {
        let db = self.conn.database.clone();
        let (server_version, flavor) = self.server_version()?;
        let tool = flavor.dump_tool();
        let tool_version = self.tool_version(tool)?;
        let before: BTreeSet<String> = self.base_tables(flavor, &db)?.into_iter().collect();
        let mut cmd = self.command(tool)?;
        cmd.args([
            "--single-transaction",
            "--quick",
            "--routines",
            "--events",
            "--triggers",
            "--no-tablespaces",
            "--hex-blob",
            "--skip-dump-date",
        ]);
        if flavor == Flavor::Mysql {
            cmd.arg("--set-gtid-purged=OFF");
        }
        cmd.arg("--")
            .arg(&db)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        let look = Scan {
            scanner: Scanner::new(false).for_server(Versions::of(&server_version)),
            scanned: Scanned {
                tail: Some(Tail::new(4096)),
                ..Scanned::default()
            },
        };
        let stall = Stall {
            limit: self.stall_timeout,
            working: Box::new(|| self.server_busy(flavor, &db, true)),
        };
        let (result, looked) = watch::pump(&mut child, look, out, stall);
        let scanned = looked.map_or_else(Scanned::default, |mut l| {
            scan_chunk(&mut l.scanner, &mut l.scanned, None);
            l.scanned
        });
        let waited = child.wait_success();
        result?;
        waited?;
        if !scanned
            .tail
            .as_ref()
            .is_some_and(|t| has_trailer(t.bytes()))
        {
            return Err(MysqlError::Incomplete { tool });
        }
        if let Some(p) = scanned.problem {
            return Err(MysqlError::Unreadable(p));
        }
        let after: BTreeSet<String> = self.base_tables(flavor, &db)?.into_iter().collect();
        compare_tables(&before, &scanned.tables, &after)?;
        Ok(DumpInfo {
            server_version: Some(server_version),
            tool_version: Some(format!("{tool} {tool_version}")),
            row_counts: self.row_counts.then_some(scanned.counts),
            base_backup: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_from_the_stream_in_any_chunking() {
        let dump: &[u8] = b"/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump\n\
/*!40101 SET NAMES utf8mb4 */;\n\
DROP TABLE IF EXISTS `t`;\nCREATE TABLE `t` (\n  `id` int, `s` text\n);\n\
LOCK TABLES `t` WRITE;\nINSERT INTO `t` VALUES\n(1,'a;(b)\\')'),\n(2,'--x'),\n(3,NULL);\n\
INSERT INTO `t` VALUES (4,'x');\nUNLOCK TABLES;\n\
CREATE TABLE `e` (`a` int);\n\
DELIMITER ;;\nCREATE DEFINER=`root`@`localhost` PROCEDURE `p`()\nBEGIN select 1; select 2; END ;;\nDELIMITER ;\n\
/*!50001 CREATE VIEW `v` AS SELECT\n 1 AS `id` */;\n\
-- Dump completed\n";
        for size in [1, 2, 3, 7, 64, dump.len()] {
            let mut scanner = Scanner::new(false);
            let mut scanned = Scanned::default();
            for chunk in dump.chunks(size) {
                scan_chunk(&mut scanner, &mut scanned, Some(chunk));
            }
            scan_chunk(&mut scanner, &mut scanned, None);
            assert_eq!(scanned.problem, None, "chunk size {size}");
            assert_eq!(scanned.counts.get("t"), Some(&4), "chunk size {size}");
            assert_eq!(scanned.counts.get("e"), Some(&0));
            assert_eq!(scanned.counts.len(), 2);
        }
        assert!(has_trailer(&dump[dump.len() - 40..]));
    }

    #[test]
    fn a_hidden_command_or_an_open_end_is_an_error() {
        for bad in [
            &b"INSERT INTO `t` VALUES (1);\n\\! rm -rf /\n"[..],
            b"SELECT 1;\n",
            b"INSERT INTO `t` VALUES (1,'open",
            b"USE `live`;\n",
            b"/*!40101 SET NAMES utf8mb4; DROP DATABASE x */;\n",
        ] {
            let err = count_rows(&mut &bad[..]).expect_err(&String::from_utf8_lossy(bad));
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn table_lists_are_compared() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        compare_tables(&set(&["a", "b"]), &set(&["a", "b"]), &set(&["a", "b"])).unwrap();
        let e = compare_tables(&set(&["a", "b"]), &set(&["a"]), &set(&["a", "c"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the dump: b"), "{e}");
        assert!(e.contains("created during the dump: c"), "{e}");
        assert!(e.contains("dropped during the dump: b"), "{e}");
    }
}
