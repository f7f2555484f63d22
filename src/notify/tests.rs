//! The filters, the signature and the payload, without a network (the deliveries are tested
//! against real receivers in `tests/notify.rs`).

use super::channel::*;
use super::*;

fn table(kind: ChannelKind) -> ChannelTable {
    ChannelTable {
        kind: Some(kind),
        url: Some("https://hooks.example.com/T0/B0/xyz".into()),
        ..ChannelTable::default()
    }
}

#[test]
fn filters_take_names_and_groups_and_default_to_failures() {
    let c = Channel::from_table("c", &table(ChannelKind::Slack)).unwrap();
    assert!(c.wants(EventKind::BackupFailed));
    assert!(c.wants(EventKind::ScheduleMissed));
    assert!(c.wants(EventKind::Recovered));
    assert!(!c.wants(EventKind::BackupSucceeded));
    assert!(!c.wants(EventKind::BackupStarted));
    let hc = Channel::from_table("hc", &table(ChannelKind::Healthchecks)).unwrap();
    assert!(hc.wants(EventKind::BackupStarted) && hc.wants(EventKind::BackupSucceeded));
    let mut t = table(ChannelKind::Webhook);
    t.on = Some(vec!["success".into(), "drill_failed".into()]);
    let c = Channel::from_table("w", &t).unwrap();
    assert!(c.wants(EventKind::BackupSucceeded) && c.wants(EventKind::DrillFailed));
    assert!(!c.wants(EventKind::BackupFailed));
    t.on = Some(vec!["backup_exploded".into()]);
    let e = Channel::from_table("w", &t).unwrap_err();
    assert!(e.to_string().contains("backup_exploded"), "{e}");
}

#[test]
fn bad_tables_are_refused_without_showing_the_url() {
    let mut t = table(ChannelKind::Webhook);
    t.url = Some("ftp://user:tok3n@example.com/x".into());
    let e = Channel::from_table("w", &t).unwrap_err().to_string();
    assert!(e.contains("not an http"), "{e}");
    assert!(!e.contains("tok3n"), "{e}");
    let e = Channel::from_table("w", &ChannelTable::default()).unwrap_err();
    assert_eq!(e, ChannelError::NoType("w".into()));
    let mail = ChannelTable {
        kind: Some(ChannelKind::Email),
        smtp_host: Some("smtp.example.com".into()),
        smtp_tls: Some(SmtpTls::None),
        from: Some("dbkeep@example.com".into()),
        to: Some(vec!["ops@example.com".into()]),
        ..ChannelTable::default()
    };
    let e = Channel::from_table("m", &mail).unwrap_err();
    assert_eq!(e, ChannelError::PlainSmtp("m".into()));
    let local = ChannelTable {
        smtp_host: Some("127.0.0.1".into()),
        ..mail.clone()
    };
    Channel::from_table("m", &local).unwrap();
    let no_to = ChannelTable {
        to: Some(vec![]),
        ..local
    };
    assert!(Channel::from_table("m", &no_to).is_err());
}

#[test]
fn the_signature_is_hmac_sha256_of_the_body() {
    // RFC 4231 test case 2.
    assert_eq!(
        signature("Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn a_failed_delivery_is_counted_and_a_later_success_recorded() {
    let mut status = BTreeMap::new();
    let failed = Delivery {
        channel: "c".into(),
        attempts: 4,
        result: Err("the receiver answered 500".into()),
    };
    record(&mut status, &[failed.clone(), failed], "t1");
    let ok = Delivery {
        channel: "c".into(),
        attempts: 1,
        result: Ok(()),
    };
    record(&mut status, &[ok], "t2");
    let c = &status["c"];
    assert_eq!(c.failures, 2);
    assert_eq!(c.last_failure.as_deref(), Some("t1"));
    assert_eq!(c.last_success.as_deref(), Some("t2"));
}

#[test]
fn the_summary_names_what_where_and_why() {
    let mut e = Event::new(EventKind::BackupFailed, "shop");
    e.backup_name = Some("nightly_20261201".into());
    e.schedule = Some("nightly".into());
    e.error = Some("pg_dump failed".into());
    let s = e.summary();
    assert!(
        s.starts_with(
            "dbkeep: backup FAILED: nightly_20261201 of database shop (schedule nightly)"
        ),
        "{s}"
    );
    assert!(s.ends_with(": pg_dump failed"), "{s}");
    assert!(!e.success);
}
