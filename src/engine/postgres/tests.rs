//! Unit tests of the PostgreSQL engine's pure parts.

use super::dump::parse_row_counts;
use super::restore::aside_name;
use super::*;

#[test]
fn row_counts_parse_and_bad_answers_are_named() {
    let c = parse_row_counts("[[\"public\",\"t\",3],[\"s\",\"x|y\",0]]\n").unwrap();
    assert_eq!(c.get("public.t"), Some(&3));
    assert_eq!(c.get("s.x|y"), Some(&0));
    assert!(parse_row_counts("[]").unwrap().is_empty());
    let err = parse_row_counts("ERROR: permission denied").unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn sqlstates_are_read_in_any_language() {
    assert_eq!(
        sqlstate_of("ERROR:  55006: database \"x\" is being accessed"),
        Some("55006")
    );
    assert_eq!(
        sqlstate_of("FEHLER:  55006: auf Datenbank wird zugegriffen"),
        Some("55006")
    );
    assert_eq!(
        sqlstate_of("psql failed (exit code 1): ERROR:  42P01: relation"),
        Some("42P01")
    );
    assert_eq!(sqlstate_of("LOCATION:  int4div, int.c:869"), None);
    assert_eq!(sqlstate_of("ERROR:  division by zero"), None);
}

#[test]
fn restrict_arrived_with_the_august_2025_minor_releases() {
    for v in [
        "13.22", "14.19", "15.14", "15.18", "16.10", "17.6", "18.0", "19devel",
    ] {
        assert!(has_restrict(v), "{v}");
    }
    for v in ["12.22", "13.21", "14.18", "15.13", "16.9", "17.5", ""] {
        assert!(!has_restrict(v), "{v}");
    }
}

#[test]
fn majors() {
    assert_eq!(major("15.18"), 15);
    assert_eq!(major("9.6.24"), 9);
    assert_eq!(major("17beta1"), 17);
}

#[test]
fn trailer_detection() {
    let dump = b"...\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n";
    assert!(has_trailer(dump));
    assert!(!has_trailer(b"COPY public.t (a) FROM stdin;\n1\n"));
}

#[test]
fn quoting() {
    assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    assert_eq!(literal("o'k"), "'o''k'");
}

#[test]
fn aside_names_fit_63_bytes() {
    let now = chrono::Utc::now();
    let long = "x".repeat(63);
    assert!(aside_name(&long, now).len() <= 63);
    assert!(aside_name("shop", now).starts_with("shop_dbkeep_old_"));
}
