//! Notifications against real receivers on loopback: what arrived (body, signature, format),
//! retries on a 500, a failing channel recorded in the statistics and metrics but never
//! failing the backup, email through an SMTP server, and no secret in anything sent.

use crate::api::{Server, TOKEN};
use crate::common::TestEnv;
use crate::common::receiver::{HttpReceiver, SmtpSink};
use crate::sqlite::sqlite_env;
use reqwest::Method;

const SECRET: &str = "hmac-key-Zq81";
const DB_PASSWORD: &str = "hunter2-pw-77";
const SMTP_PASSWORD: &str = "smtp-pass-Xy5";

fn config(env: &TestEnv, text: &str) {
    std::fs::write(env.path().join("dbkeep.toml"), text).unwrap();
}

/// The secrets that must never reach a receiver.
fn assert_no_secret(what: &str) {
    for s in [SECRET, DB_PASSWORD, SMTP_PASSWORD] {
        assert!(!what.contains(s), "a secret was sent: {what}");
    }
}

fn hmac_hex(secret: &str, body: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body.as_bytes());
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

#[test]
fn events_reach_each_kind_of_channel_signed_and_without_secrets() {
    let rx = HttpReceiver::start();
    let env = sqlite_env(4);
    config(
        &env,
        &format!(
            r#"
[channels.hook]
type = "webhook"
url = "{u}/hook"
secret = "{SECRET}"
on = ["all"]

[channels.slack]
type = "slack"
url = "{u}/slack"

[channels.discord]
type = "discord"
url = "{u}/discord"
on = ["backup_failed"]

[channels.teams]
type = "teams"
url = "{u}/teams"
on = ["recovered"]

[channels.ntfy]
type = "ntfy"
url = "{u}/ntfy"
on = ["failure"]

[channels.hc]
type = "healthchecks"
url = "{u}/hc/"
"#,
            u = rx.url
        ),
    );
    env.run(&["backup", "--name", "nightly_20261201"]).ok();
    let hook = rx.to("/hook");
    let kinds: Vec<String> = hook
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["backup_started", "backup_succeeded"]);
    let ok = &hook[1];
    let body = ok.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["backup_name"], "nightly_20261201");
    assert_eq!(body["series"], "nightly");
    assert_eq!(body["database"], "default");
    assert!(body["file_size"].as_u64().unwrap() > 0);
    assert_eq!(
        ok.header("x-dbkeep-signature"),
        Some(hmac_hex(SECRET, &ok.body).as_str()),
        "HMAC-SHA256 of the body under the secret"
    );
    assert_eq!(ok.header("content-type"), Some("application/json"));
    // healthchecks: /start, then the success ping.
    let hc: Vec<String> = rx
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/hc"))
        .map(|r| r.path)
        .collect();
    assert_eq!(hc, ["/hc/start", "/hc"]);
    assert!(rx.to("/slack").is_empty(), "slack takes failures only");

    // A failure: the database's password is in DATABASE_URL, nowhere in what is sent.
    let url = format!("postgresql://u:{DB_PASSWORD}@127.0.0.1:1/app");
    let o = env.run_with(
        &[("DATABASE_URL", &url)],
        &["backup", "--name", "nightly_20261202"],
    );
    o.code(1);
    let slack = rx.to("/slack");
    assert_eq!(slack.len(), 1);
    let text = slack[0].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with("dbkeep: backup FAILED: nightly_20261202 of database default"),
        "{text}"
    );
    let discord = rx.to("/discord");
    assert!(
        discord[0].json()["content"]
            .as_str()
            .unwrap()
            .contains("FAILED")
    );
    let ntfy = rx.to("/ntfy");
    assert_eq!(ntfy[0].header("title"), Some("dbkeep backup_failed"));
    assert_eq!(ntfy[0].header("priority"), Some("high"));
    assert_eq!(rx.to("/hc/fail").len(), 1);
    let failed = rx.to("/hook").last().unwrap().json();
    assert_eq!(failed["event"], "backup_failed");
    assert_eq!(failed["success"], false);
    assert!(failed["error"].as_str().unwrap().len() > 5, "{failed}");

    // The next success is a recovery: of the same name, as the scheduler retries a slot (its
    // failed record is replaced).
    assert!(rx.to("/teams").is_empty());
    env.run(&["backup", "--name", "nightly_20261202"]).ok();
    assert_eq!(rx.to("/teams").len(), 1, "{:?}", rx.requests());
    env.run(&["backup", "--name", "nightly_20261203"]).ok();
    let teams = rx.to("/teams");
    assert_eq!(teams.len(), 1, "{:?}", rx.requests());
    assert!(
        teams[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("recovered")
    );
    assert_eq!(
        rx.to("/slack").len(),
        2,
        "slack's default filter takes recovered"
    );

    // A drill's outcome.
    env.run(&["verify", "--restore", "nightly_20261203"]).ok();
    let last = rx.to("/hook").last().unwrap().json();
    assert_eq!(last["event"], "drill_passed");

    for r in rx.requests() {
        assert_no_secret(&r.body);
        for (_, v) in &r.headers {
            assert_no_secret(v);
        }
    }
}

#[test]
fn a_500_is_retried_and_a_dead_channel_is_recorded_but_never_fails_the_backup() {
    let rx = HttpReceiver::start();
    let env = sqlite_env(2);
    config(
        &env,
        &format!(
            r#"
[channels.flaky]
type = "webhook"
url = "{u}/flaky"
on = ["success"]
retry_delay_ms = 50

[channels.dead]
type = "webhook"
url = "{u}/dead"
on = ["success"]
retries = 1
retry_delay_ms = 50
"#,
            u = rx.url
        ),
    );
    rx.answer("/flaky", &[500, 503]);
    rx.answer("/dead", &[500, 500, 500, 500]);
    env.run(&["backup", "--name", "nightly_20261201"]).ok();
    assert_eq!(rx.to("/flaky").len(), 3, "two 5xx, then delivered");
    assert_eq!(rx.to("/dead").len(), 2, "the first try and one retry");
    let o = env.run(&["stats", "--json"]);
    o.ok();
    let stats: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let n = &stats["notifications"];
    assert_eq!(n["dead"]["failures"], 1, "{stats}");
    assert!(
        n["dead"]["last_error"].as_str().unwrap().contains("500"),
        "{stats}"
    );
    assert_eq!(n["flaky"]["failures"], 0, "{stats}");
    assert!(n["flaky"]["last_success"].is_string(), "{stats}");
    // /metrics shows it.
    let s = Server::start(&env);
    let text = s
        .raw(Method::GET, "/metrics", Some(TOKEN), None)
        .text()
        .unwrap();
    assert!(
        text.contains(
            "dbkeep_notification_failures_total{database=\"default\",channel=\"dead\"} 1"
        ),
        "{text}"
    );
    assert_eq!(s.stop(), 0);

    // `dbkeep notify test`: sent whatever the filter says; a dead channel exits 1.
    let o = env.run(&["notify", "test", "flaky"]);
    o.ok();
    assert!(
        o.stdout.contains("test notification sent to flaky"),
        "{}",
        o.stdout
    );
    assert_eq!(rx.to("/flaky").last().unwrap().json()["event"], "test");
    rx.answer("/dead", &[500, 500]);
    let o = env.run(&["notify", "test", "dead"]);
    o.code(1);
    assert!(o.stderr.contains("500"), "{}", o.stderr);
    let o = env.run(&["notify", "test", "nope"]);
    o.code(2);
    assert!(o.stderr.contains("flaky"), "{}", o.stderr);
    // A channel named in notify must exist.
    config(&env, "notify = [\"ghost\"]\n");
    let o = env.run(&["list"]);
    o.code(2);
    assert!(o.stderr.contains("\"ghost\""), "{}", o.stderr);
}

#[test]
fn email_goes_through_smtp_with_its_password_from_a_file() {
    let sink = SmtpSink::start();
    let env = sqlite_env(2);
    let pw = env.path().join("smtp.pass");
    std::fs::write(&pw, format!("{SMTP_PASSWORD}\n")).unwrap();
    config(
        &env,
        &format!(
            r#"
[channels.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "none"
smtp_user = "dbkeep"
smtp_password_file = "{pw}"
from = "dbkeep@example.com"
to = ["ops@example.com", "dba@example.com"]
"#,
            port = sink.port,
            pw = pw.display()
        ),
    );
    let url = format!("postgresql://u:{DB_PASSWORD}@127.0.0.1:1/app");
    env.run_with(
        &[("DATABASE_URL", &url)],
        &["backup", "--name", "nightly_20261201"],
    )
    .code(1);
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let m = &mails[0];
    assert_eq!(m.from, "<dbkeep@example.com>");
    assert_eq!(m.to, ["<ops@example.com>", "<dba@example.com>"]);
    assert!(
        m.data
            .contains("Subject: dbkeep: backup FAILED: nightly_20261201"),
        "{}",
        m.data
    );
    assert!(
        m.data.contains("\"event\": \"backup_failed\""),
        "{}",
        m.data
    );
    assert!(m.auth.is_some(), "it authenticated");
    assert_no_secret(&m.data);
    // A plain relay elsewhere than loopback is refused at load.
    config(
        &env,
        "[channels.mail]\ntype = \"email\"\nsmtp_host = \"mail.example.com\"\nsmtp_tls = \"none\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
    );
    let o = env.run(&["list"]);
    o.code(2);
    assert!(o.stderr.contains("loopback"), "{}", o.stderr);
}
