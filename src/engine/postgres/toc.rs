//! A custom archive's table of contents (`pg_restore --list --verbose`), and the passes a
//! parallel restore of it runs in.
//!
//! `pg_restore -j N` keeps two workers off one table only through the tables an entry names
//! as its dependencies. An `INDEX ATTACH` of a sub-partition's index names its own two tables,
//! yet a foreign key that references the partitioned table above them locks that index too:
//! run side by side, the two deadlock (`ALTER INDEX … ATTACH PARTITION` waits for the index the
//! foreign key's check holds; seen in the corpus test about once in 150 restores with
//! `-j 8`, and in CI with `-j 2`). The archive is therefore restored in up to three passes:
//!
//! 1. with `-j N`, every entry that neither is an `INDEX ATTACH` nor depends on one (directly
//!    or through others): all data, all index builds, most constraints;
//! 2. with one job, the `INDEX ATTACH` entries, in the archive's order (each a catalog update);
//! 3. with `-j N`, what depends on them (foreign keys to partitioned tables, and what depends on
//!    those).
//!
//! No pass runs anything before what it depends on, and no `INDEX ATTACH` runs beside anything.
//! An archive without `INDEX ATTACH` entries is restored in one pass, as before.

use std::collections::HashSet;

/// One `pg_restore` run: the `--use-list` to give it (`None`: the whole archive) and whether
/// it may run parallel jobs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pass {
    pub list: Option<String>,
    pub parallel: bool,
}

/// An entry line of the listing: `3708; 0 0 INDEX ATTACH shop orders_2024_odd_idx postgres`.
#[derive(Clone)]
struct Entry<'a> {
    id: u32,
    line: &'a str,
    /// `INDEX ATTACH shop orders_2024_odd_idx postgres`.
    desc: &'a str,
    attach: bool,
    deps: Vec<u32>,
}

/// The passes that restore the archive whose `pg_restore --list --verbose` output is `toc`.
pub(super) fn passes(toc: &str) -> Vec<Pass> {
    passes_of(parse(toc), false)
}

/// How a drill loads an archive as a role that is not a superuser: the event triggers and the
/// comments on extensions are left out (`left_out` of them); with `extensions_apart`, the
/// schemas are restored first, on their own, then dbkeep creates the extensions (`extensions`:
/// their entries, for `pg_restore --file=-`), then `passes` restore the rest.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DrillPlan {
    pub schemas: Option<String>,
    pub extensions: Option<String>,
    pub passes: Vec<Pass>,
    pub left_out: usize,
}

pub(super) fn drill_plan(toc: &str, extensions_apart: bool) -> DrillPlan {
    let all = parse(toc);
    let left_out = |e: &Entry| {
        e.desc.starts_with("EVENT TRIGGER ")
            || e.desc.starts_with("COMMENT - EVENT TRIGGER ")
            || e.desc.starts_with("COMMENT - EXTENSION ")
    };
    let schema = |e: &Entry| extensions_apart && e.desc.starts_with("SCHEMA ");
    let extension = |e: &Entry| extensions_apart && e.desc.starts_with("EXTENSION ");
    let lines = |keep: &dyn Fn(&Entry) -> bool| {
        let l: Vec<&str> = all.iter().filter(|e| keep(e)).map(|e| e.line).collect();
        (!l.is_empty()).then(|| l.join("\n") + "\n")
    };
    let rest: Vec<Entry> = all
        .iter()
        .filter(|e| !left_out(e) && !schema(e) && !extension(e))
        .cloned()
        .collect();
    DrillPlan {
        schemas: lines(&schema),
        extensions: lines(&extension),
        left_out: all.iter().filter(|e| left_out(e)).count(),
        passes: passes_of(rest, true),
    }
}

/// The passes over `entries`; `listed`: each pass names its entries even when one pass
/// restores them all (the archive holds others).
fn passes_of(entries: Vec<Entry<'_>>, listed: bool) -> Vec<Pass> {
    let attach: HashSet<u32> = entries.iter().filter(|e| e.attach).map(|e| e.id).collect();
    if attach.is_empty() && !listed {
        return vec![Pass {
            list: None,
            parallel: true,
        }];
    }
    // The listing is in an order that respects dependencies, but a dependency may still come
    // later (pg_dump's sort breaks loops): iterate until nothing changes.
    let mut late: HashSet<u32> = HashSet::new();
    loop {
        let before = late.len();
        for e in &entries {
            if !e.attach
                && !late.contains(&e.id)
                && e.deps
                    .iter()
                    .any(|d| attach.contains(d) || late.contains(d))
            {
                late.insert(e.id);
            }
        }
        if late.len() == before {
            break;
        }
    }
    let list = |keep: &dyn Fn(&Entry) -> bool| {
        let lines: Vec<&str> = entries.iter().filter(|e| keep(e)).map(|e| e.line).collect();
        (!lines.is_empty()).then(|| lines.join("\n") + "\n")
    };
    [
        (list(&|e| !e.attach && !late.contains(&e.id)), true),
        (list(&|e| e.attach), false),
        (list(&|e| late.contains(&e.id)), true),
    ]
    .into_iter()
    .filter_map(|(list, parallel)| list.map(|l| (l, parallel)))
    .map(|(list, parallel)| Pass {
        list: Some(list),
        parallel,
    })
    .collect()
}

/// The entries of a listing, each with the dependencies its `;\tdepends on:` line names.
fn parse(toc: &str) -> Vec<Entry<'_>> {
    let mut entries: Vec<Entry> = Vec::new();
    for line in toc.lines() {
        if let Some(deps) = line.strip_prefix(";\tdepends on:") {
            if let Some(last) = entries.last_mut() {
                last.deps.extend(
                    deps.split_whitespace()
                        .filter_map(|d| d.parse::<u32>().ok()),
                );
            }
            continue;
        }
        let Some((id, rest)) = line.split_once("; ") else {
            continue;
        };
        let Ok(id) = id.parse::<u32>() else {
            continue;
        };
        // `tableoid oid DESC namespace tag owner`: the description follows the two numbers.
        // (An index in a schema named `ATTACH` reads the same: it is then restored alone,
        // which is slower, never wrong.)
        let desc = rest.splitn(3, ' ').nth(2).unwrap_or("");
        entries.push(Entry {
            id,
            line,
            desc,
            attach: desc.starts_with("INDEX ATTACH "),
            deps: Vec::new(),
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOC: &str = ";\n; Archive created at 2026-12-02 02:02:58 UTC\n;     dbname: corpus\n;\n\
; Selected TOC Entries:\n;\n\
225; 1259 16766 TABLE shop orders corpus_owner\n;\tdepends on: 11\n\
227; 1259 16780 TABLE shop orders_2024 corpus_owner\n;\tdepends on: 225\n\
229; 1259 16790 TABLE shop orders_2024_odd corpus_owner\n;\tdepends on: 227\n\
233; 1259 16800 TABLE shop order_lines corpus_owner\n;\tdepends on: 11\n\
4100; 0 16780 TABLE DATA shop orders_2024_odd corpus_owner\n;\tdepends on: 229\n\
3640; 1259 16900 INDEX shop orders_2024_customer_id_idx postgres\n;\tdepends on: 227\n\
3648; 1259 16901 INDEX shop orders_2024_odd_customer_id_idx postgres\n;\tdepends on: 229\n\
3708; 0 0 INDEX ATTACH shop orders_2024_odd_customer_id_idx postgres\n\
;\tdepends on: 3648 3640 229 227\n\
3727; 2606 16861 FK CONSTRAINT shop order_lines order_lines_fkey postgres\n\
;\tdepends on: 3708 233 225\n\
3800; 0 0 COMMENT shop CONSTRAINT order_lines_fkey ON order_lines postgres\n\
;\tdepends on: 3727\n\
3725; 2606 16766 FK CONSTRAINT shop orders orders_customer_id_fkey postgres\n\
;\tdepends on: 222 225\n";

    #[test]
    fn index_attaches_run_alone_and_what_depends_on_them_after() {
        let p = passes(TOC);
        let ids = |p: &Pass| -> Vec<String> {
            let list = p.list.as_deref().unwrap_or("");
            list.lines()
                .map(|l| l.split(';').next().unwrap_or("").to_owned())
                .collect()
        };
        assert_eq!(p.len(), 3);
        assert!(p[0].parallel && !p[1].parallel && p[2].parallel);
        assert_eq!(
            ids(&p[0]),
            ["225", "227", "229", "233", "4100", "3640", "3648", "3725"]
        );
        assert_eq!(ids(&p[1]), ["3708"]);
        // The comment on the foreign key depends on it only: it follows it, transitively.
        assert_eq!(ids(&p[2]), ["3727", "3800"]);
        // The lines are the listing's own, which is what `--use-list` reads.
        assert!(
            p[1].list
                .as_deref()
                .unwrap_or("")
                .starts_with("3708; 0 0 INDEX ATTACH shop ")
        );
    }

    #[test]
    fn an_archive_without_index_attaches_is_one_parallel_pass() {
        let toc = "225; 1259 16766 TABLE shop orders corpus_owner\n;\tdepends on: 11\n\
3725; 2606 16766 FK CONSTRAINT shop orders fk postgres\n;\tdepends on: 225\n";
        assert_eq!(
            passes(toc),
            [Pass {
                list: None,
                parallel: true
            }]
        );
        // A name that merely contains the words is no INDEX ATTACH entry.
        let named = "10; 1259 1 TABLE public INDEX ATTACH postgres\n";
        assert_eq!(passes(named).len(), 1);
    }

    #[test]
    fn a_dependency_listed_later_is_followed_too() {
        let toc = "20; 0 0 COMMENT public CONSTRAINT fk postgres\n;\tdepends on: 10\n\
5; 0 0 INDEX ATTACH public child_idx postgres\n;\tdepends on: 1 2\n\
10; 2606 1 FK CONSTRAINT public t fk postgres\n;\tdepends on: 5\n";
        let p = passes(toc);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].list.as_deref().unwrap_or("").starts_with("5;"));
        assert_eq!(
            p[1].list.as_deref(),
            Some(
                "20; 0 0 COMMENT public CONSTRAINT fk postgres\n10; 2606 1 FK CONSTRAINT public t fk postgres\n"
            )
        );
    }

    #[test]
    fn drills_restore_schemas_then_extensions_apart_and_leave_out_event_triggers() {
        let toc = "5; 2615 1 SCHEMA - shop corpus_owner\n\
6; 3079 2 EXTENSION - hstore \n;\tdepends on: 5\n\
7; 0 0 COMMENT - EXTENSION hstore \n;\tdepends on: 6\n\
8; 1259 3 TABLE shop t postgres\n;\tdepends on: 5 6\n\
9; 3466 4 EVENT TRIGGER - ddl postgres\n\
10; 0 0 COMMENT - EVENT TRIGGER ddl postgres\n;\tdepends on: 9\n";
        let plan = drill_plan(toc, true);
        assert_eq!(
            plan.schemas.as_deref(),
            Some("5; 2615 1 SCHEMA - shop corpus_owner\n")
        );
        assert_eq!(
            plan.extensions.as_deref(),
            Some("6; 3079 2 EXTENSION - hstore \n")
        );
        assert_eq!(plan.left_out, 3);
        assert_eq!(
            plan.passes,
            [Pass {
                list: Some("8; 1259 3 TABLE shop t postgres\n".into()),
                parallel: true
            }]
        );
        // Without the helper, schemas and extensions load in the passes as the role may.
        let plan = drill_plan(toc, false);
        assert_eq!(
            (plan.schemas, plan.extensions, plan.left_out),
            (None, None, 3)
        );
        assert_eq!(
            plan.passes[0].list.as_deref().map(|l| l.lines().count()),
            Some(3)
        );
    }
}
