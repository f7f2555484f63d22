//! Retarget's unit tests, at every buffer size from one byte.

use super::*;

fn run(input: &str, buf: usize) -> String {
    let mut r = Retarget::new(io::BufReader::with_capacity(buf, input.as_bytes()));
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    out
}

/// The stream fails at every buffer size with an error naming `why`, and stays failed; the
/// outputs up to the failure.
fn refused(dump: &str, why: &str) -> Vec<String> {
    [1, 7, 8192]
        .into_iter()
        .map(|buf| {
            let mut r = Retarget::new(io::BufReader::with_capacity(buf, dump.as_bytes()));
            let mut out = String::new();
            let err = r.read_to_string(&mut out).expect_err(dump);
            assert!(err.to_string().contains(why), "{dump:?}: {err}");
            assert!(r.read(&mut [0u8; 16]).is_err());
            out
        })
        .collect()
}

/// Every buffer size gives the same output.
fn same(input: &str) -> String {
    let want = run(input, 8192);
    for buf in [1, 2, 3, 7, 31, 64] {
        assert_eq!(run(input, buf), want, "buffer {buf}");
    }
    want
}

const DUMP: &str = "\\restrict abc\n--\n-- PostgreSQL database dump\n--\nSET statement_timeout = 0;\nDROP DATABASE IF EXISTS appdb;\nCREATE DATABASE appdb WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';\nALTER DATABASE appdb OWNER TO app;\n\\unrestrict abc\n\\connect appdb\n\\restrict abc\nSET statement_timeout = 0;\nCREATE TABLE public.t (x text);\nALTER DATABASE appdb SET search_path TO public;\nGRANT CONNECT,TEMPORARY ON DATABASE appdb TO bob;\nALTER ROLE bob IN DATABASE appdb SET work_mem TO '1MB';\nCREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p WITH (connect = false);\nCOPY public.t (x) FROM stdin;\nDROP DATABASE appdb;\n\\connect postgres\n\\.\nCOMMENT ON DATABASE appdb IS 'x';\nSELECT 1;\n-- PostgreSQL database dump complete\n\\unrestrict abc\n";

#[test]
fn the_preamble_and_database_statements_go_and_copy_data_stays() {
    let out = same(DUMP);
    assert_eq!(
        out,
        "\\restrict abc\n\\unrestrict abc\n\\restrict abc\nSET statement_timeout = 0;\nCREATE TABLE public.t (x text);\n\n\n\n\nCOPY public.t (x) FROM stdin;\nDROP DATABASE appdb;\n\\connect postgres\n\\.\n\nSELECT 1;\n-- PostgreSQL database dump complete\n\\unrestrict abc\n"
    );
}

#[test]
fn a_newline_in_a_string_never_makes_sql_of_it() {
    // A comment on the database whose text holds a newline and SQL: the whole statement
    // goes, never its second line.
    let out = same(
        "\\connect db\nCOMMENT ON DATABASE db IS 'x\nALTER ROLE bob SUPERUSER; --';\nSELECT 1;\n",
    );
    assert_eq!(out, "\nSELECT 1;\n");
    // A comment on a table whose line starts like a skipped statement stays whole.
    let text = "\\connect db\nCOMMENT ON TABLE t IS 'a\nDROP DATABASE x;\n\\connect postgres\nb';\nSELECT 2;\n";
    assert_eq!(same(text), text.strip_prefix("\\connect db\n").unwrap());
    // Dollar quotes, E-strings, quoted names, comments.
    let text = "\\connect db\nCREATE FUNCTION f() RETURNS int AS $body$\nDROP DATABASE x;\n$not$ ; $body$ LANGUAGE sql;\nCOMMENT ON TABLE t IS E'it\\'s\nDROP DATABASE y;';\nCREATE TABLE \"DROP DATABASE\n\"\"z\" (a int);\n/* DROP DATABASE\n*/ SELECT 3;\nSELECT $1 + a$b;\n";
    assert_eq!(same(text), text.strip_prefix("\\connect db\n").unwrap());
}

#[test]
fn long_lines_stream_through() {
    let long = "x".repeat(200_000);
    let dump = format!(
        "\\connect db\nCOPY public.t (x, {}) FROM stdin;\n{long}\n\\.\nDROP DATABASE db;\nSELECT '{long}';\n",
        "y".repeat(300)
    );
    let out = run(&dump, 4096);
    let want = format!(
        "COPY public.t (x, {}) FROM stdin;\n{long}\n\\.\n\nSELECT '{long}';\n",
        "y".repeat(300)
    );
    assert_eq!(out, want);
}

#[test]
fn without_a_connect_nothing_passes() {
    assert_eq!(run("DROP DATABASE x;\nCREATE TABLE t ();\n", 8192), "");
    // A last statement without a newline is decided too.
    assert_eq!(run("\\connect x\nSELECT 1;", 8192), "SELECT 1;");
    assert_eq!(run("\\connect x\nDROP DATABASE y;", 8192), "");
}

#[test]
fn drills_leave_out_owners_and_privileges_and_keep_the_create_database() {
    let long_args = "x integer, ".repeat(40);
    let dump = format!(
        "CREATE DATABASE appdb WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE = 'C';\n\\connect appdb\nCREATE TABLE public.t (x text);\nALTER TABLE public.t OWNER TO bob;\nALTER FUNCTION public.f({long_args}y integer) OWNER TO \"Bob Two\";\nALTER TABLE public.t ADD CONSTRAINT c CHECK (x <> ' OWNER TO bob;');\nGRANT SELECT ON TABLE public.t TO carol;\nREVOKE ALL ON SCHEMA public FROM PUBLIC;\nALTER DEFAULT PRIVILEGES FOR ROLE bob GRANT SELECT ON TABLES TO carol;\nALTER TABLE public.t ALTER COLUMN x SET DEFAULT 'OWNER TO x';\nSELECT 1;\n"
    );
    let out = same(&dump);
    assert_eq!(
        out,
        "CREATE TABLE public.t (x text);\n\n\nALTER TABLE public.t ADD CONSTRAINT c CHECK (x <> ' OWNER TO bob;');\n\n\n\nALTER TABLE public.t ALTER COLUMN x SET DEFAULT 'OWNER TO x';\nSELECT 1;\n"
    );
    let mut r = Retarget::new(io::BufReader::with_capacity(7, dump.as_bytes()));
    io::copy(&mut r, &mut io::sink()).unwrap();
    let captured = r.captured().unwrap();
    assert_eq!(captured.len(), 1, "{captured:?}");
    assert!(
        captured[0].sql.contains("ENCODING = 'LATIN1'"),
        "{captured:?}"
    );
    assert!(!captured[0].after_connect);
}

/// REVIEW B1: every psql meta-command but `\restrict`, `\unrestrict` and `\connect` fails the
/// stream, at the start of a line, after a statement on the same line, or inside one; in
/// quotes, comments and COPY data a backslash is data.
#[test]
fn meta_commands_outside_the_allowlist_fail_the_stream() {
    let head = "\\connect appdb\nCREATE TABLE t (x text);\n";
    for hostile in [
        "\\! touch /tmp/pwned\n",
        "\\o |touch /tmp/pwned\n",
        "\\c\tshop\n",
        "\\connect postgres\n",
        "SELECT 1; \\! id\n",
        "SELECT 1 \\gexec\n",
        "\\copy t to program 'id'\n",
        "\\set ON_ERROR_STOP 0\n",
        "\\connectx shop\n",
    ] {
        let dump = format!("{head}{hostile}SELECT 2;\n");
        for out in refused(&dump, "meta-command") {
            assert!(
                !out.contains("pwned") && !out.contains("\\!"),
                "{hostile:?}: {out:?}"
            );
        }
    }
    // pg_dump connects again after the database's settings: to the same database, left out.
    let again = format!("{head}ALTER DATABASE appdb SET x TO 'y';\n\\connect appdb\nSELECT 2;\n");
    assert!(same(&again).contains("SELECT 2;"));
    // Backslashes that are data.
    let fine = "\\connect appdb\nSELECT E'a\\\\b', 'c\\d', $$\\! x$$; -- \\! comment\n/* \\o |x */\nCOPY t (x) FROM stdin;\n\\! not a command here\n\\.\n";
    let out = same(fine);
    assert!(
        out.contains("COPY t (x) FROM stdin;\n\\! not a command here\n\\."),
        "{out}"
    );
}

/// With dbkeep's own key, the stream starts restricted and the dump's own pair is left out.
#[test]
fn a_restricted_stream_carries_only_dbkeeps_key() {
    let dump = "\\restrict theirs\nCREATE DATABASE appdb;\n\\unrestrict theirs\n\\connect appdb\n\\restrict theirs\nSELECT 1;\n\\unrestrict theirs\n";
    let mut r = Retarget::new(io::BufReader::new(dump.as_bytes())).restricted("ours".into());
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    assert_eq!(out, "\\restrict ours\nSELECT 1;\n");
}

/// Whole-database statements are found whatever their case, spacing and comments, and a
/// quoted name right after the keyword.
#[test]
fn database_statements_are_found_in_any_case_and_spacing() {
    for hidden in [
        "drop database shop;\n",
        "Drop\tDatabase\nshop;\n",
        "DROP/* a comment */DATABASE shop;\n",
        "DROP -- a comment\n DATABASE shop;\n",
        "alter  database shop owner to mallory;\n",
        "grant all on database\"shop\" to mallory;\n",
        "GRANT ALL ON\nDATABASE shop TO mallory;\n",
        "alter role mallory in   database shop set search_path = x;\n",
        "create Subscription s connection 'host=x' publication p;\n",
    ] {
        let dump = format!("\\connect appdb\nSELECT 1;\n{hidden}SELECT 2;\n");
        let out = same(&dump);
        assert_eq!(out, "SELECT 1;\n\nSELECT 2;\n", "{hidden:?}");
    }
    // Drills leave out owners and grants in any case too.
    let out = same(
        "\\connect appdb\nalter table t owner to \"Bob\" ;\ngrant select on t to bob;\nSELECT 3;\n",
    );
    assert_eq!(out, "\n\nSELECT 3;\n");
    // A quoted name that holds the words is no such statement.
    let fine =
        "\\connect appdb\nCREATE TABLE \"drop database x\" (a int);\nSELECT 'on database ';\n";
    assert_eq!(same(fine), fine.strip_prefix("\\connect appdb\n").unwrap());
}

/// With standard_conforming_strings off, psql would read `'a\' ; '` as one string and run
/// what follows: only pg_dump's `SET … = on` passes, anything else naming it fails the stream
/// before its end reaches psql.
#[test]
fn standard_conforming_strings_cannot_be_turned_off() {
    let head = "\\connect appdb\nSET standard_conforming_strings = on;\nSELECT 1;\n";
    for hostile in [
        "SET standard_conforming_strings = off;\n",
        "set Standard_Conforming_Strings to 'off';\n",
        "SET SESSION standard_conforming_strings = false;\n",
        "RESET standard_conforming_strings;\n",
        "SELECT set_config('standard_conforming_strings', 'off', false);\n",
        "DO $$BEGIN EXECUTE 'SET standard_conforming_strings = off'; END$$;\n",
    ] {
        let dump = format!("{head}{hostile}SELECT 'a\\' ; ' ; DROP TABLE t; --';\n");
        for out in refused(&dump, "standard_conforming_strings") {
            assert!(!out.contains("DROP"), "{hostile:?}: {out:?}");
            // The refused statement's end never passed.
            assert!(!out.contains("off"), "{hostile:?}: {out:?}");
        }
    }
    // pg_dump's own line passes, in any spelling; a skipped statement that names it is just
    // skipped (it does not run).
    let fine = format!(
        "{head}set standard_conforming_strings TO 'on';\nALTER DATABASE appdb SET standard_conforming_strings = off;\nSELECT 2;\n"
    );
    let out = same(&fine);
    assert!(out.contains("SELECT 2;"), "{out}");
}

#[test]
fn normalize_reads_keywords() {
    assert_eq!(
        normalize(b"drop/**/Database\t\"My Db\";"),
        b"DROP DATABASE \"My Db\" ;".to_vec()
    );
    assert_eq!(
        normalize(b"select e'it\\'s' -- x\n, 'a''b'"),
        b"SELECT E'it\\'s' , 'a''b'".to_vec()
    );
    assert_eq!(normalize(b"/* /* nested */ */ grant"), b"GRANT".to_vec());
}

#[test]
fn drills_call_the_extension_helper_and_leave_out_event_triggers() {
    let dump = "\\connect appdb\nCREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public;\nCOMMENT ON EXTENSION postgis IS 'x';\nCREATE EXTENSION IF NOT EXISTS \"we'ird\"\"x\" WITH SCHEMA \"S\";\nCREATE EXTENSION hstore;\nCREATE EVENT TRIGGER t ON ddl_command_end EXECUTE FUNCTION f();\nalter  event trigger t disable;\nCREATE TABLE t (x int);\n";
    for buf in [1, 7, 8192] {
        let mut r = Retarget::new(io::BufReader::with_capacity(buf, dump.as_bytes()))
            .with_extension_helper("\"h\"".into());
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert!(
            out.contains("SELECT \"h\".create_extension('postgis', 'public');"),
            "{out}"
        );
        assert!(
            out.contains("SELECT \"h\".create_extension('we''ird\"x', 'S');"),
            "{out}"
        );
        // Not pg_dump's shape: passes as it is, to fail or not as the load role may.
        assert!(out.contains("CREATE EXTENSION hstore;"), "{out}");
        assert!(
            !out.contains("EVENT TRIGGER") && !out.contains("event trigger"),
            "{out}"
        );
        assert!(!out.contains("COMMENT ON EXTENSION"), "{out}");
        assert!(out.contains("CREATE TABLE t (x int);"), "{out}");
        assert_eq!(r.left_out(), 3);
    }
}

#[test]
fn pg_dump_extensions_are_read_exactly() {
    let ok = |s: &str| pg_dump_extension(s.as_bytes());
    assert_eq!(
        ok("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;"),
        Some(("pg_trgm".into(), "public".into()))
    );
    assert_eq!(
        ok("CREATE EXTENSION IF NOT EXISTS \"a\"\"b\" WITH SCHEMA \"Weird ✓\";"),
        Some(("a\"b".into(), "Weird ✓".into()))
    );
    for bad in [
        "CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA s VERSION '1';",
        "CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA s CASCADE;",
        "CREATE EXTENSION IF NOT EXISTS X WITH SCHEMA s;",
        "CREATE EXTENSION x WITH SCHEMA s;",
        "CREATE EXTENSION IF NOT EXISTS \"x WITH SCHEMA s;",
        "CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA s",
    ] {
        assert_eq!(ok(bad), None, "{bad}");
    }
}
