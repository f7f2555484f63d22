//! `[channels.NAME]` tables: where events go and which ones. Every kind but email is one HTTP
//! POST (reqwest, rustls); email is [`super::email`].

use super::{Delivery, Event, EventKind};
use crate::database_url::Secret;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The kinds of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// The event as JSON, signed with HMAC-SHA256 when a secret is set.
    Webhook,
    Slack,
    Discord,
    Teams,
    Ntfy,
    Email,
    /// A healthchecks.io-style ping: `URL/start` when a backup starts, `URL` when it
    /// succeeds, `URL/fail` when it fails; a check that gets no ping raises the alarm itself.
    Healthchecks,
}

/// How an email channel talks to its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain, then STARTTLS (required): port 587.
    #[default]
    Starttls,
    /// TLS from the first byte: port 465.
    Tls,
    /// No encryption: only to a relay on a loopback address.
    None,
}

/// One `[channels.NAME]` table, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTable {
    #[serde(rename = "type")]
    pub kind: Option<ChannelKind>,
    /// The webhook's, ntfy topic's or check's URL (it often holds a token: never logged).
    pub url: Option<String>,
    /// The generic webhook's HMAC key, or a file holding it.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Which events: names (`backup_failed`, …) or groups (`failure`, `success`, `all`).
    pub on: Option<Vec<String>>,
    /// Tries after the first failed one (default 3), the first delay (doubling; default 1 s).
    pub retries: Option<u32>,
    pub retry_delay_ms: Option<u64>,
    /// Seconds one attempt may take (default 10).
    pub timeout_secs: Option<u64>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_tls: Option<SmtpTls>,
    pub smtp_user: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error(
        "[channels.{0}] has no type: set type to webhook, slack, discord, teams, ntfy, email or healthchecks"
    )]
    NoType(String),
    #[error("[channels.{name}] needs {key}: {hint}")]
    Missing {
        name: String,
        key: &'static str,
        hint: &'static str,
    },
    #[error(
        "[channels.{0}]: url is not an http:// or https:// URL (its value is not shown: it may hold a token)"
    )]
    Url(String),
    #[error(
        "[channels.{name}]: on = [..] names {value:?}, which is not an event: use failure, success, recovered, all, or backup_started, backup_succeeded, backup_failed, drill_passed, drill_failed, restore_done, restore_failed, copy_failed, prune_failed, schedule_missed"
    )]
    On { name: String, value: String },
    #[error("[channels.{name}]: cannot read {key} {path}: {problem}")]
    File {
        name: String,
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error(
        "[channels.{0}]: smtp_tls = \"none\" sends mail (and the password) unencrypted: it is allowed only to a relay on a loopback address; use starttls or tls"
    )]
    PlainSmtp(String),
    #[error(
        "[channels.{name}] is a healthchecks check of both databases {a:?} and {b:?}: one's success would hide the other's missed run. Give each database its own check (notify = [...] in its [databases.NAME] table)"
    )]
    SharedCheck { name: String, a: String, b: String },
    #[error("{place} names the channel {name:?}, which is not configured (configured: {known})")]
    Unknown {
        place: String,
        name: String,
        known: String,
    },
}

/// A channel, checked.
#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub(super) url: Option<Secret>,
    pub(super) secret: Option<Secret>,
    pub(super) on: Vec<EventKind>,
    pub(super) retries: u32,
    pub(super) retry_delay: Duration,
    pub(super) timeout: Duration,
    pub(super) smtp: Option<super::email::Smtp>,
}

/// The longest one event's delivery to one channel may take, retries included.
pub const MAX_DELIVERY: Duration = Duration::from_secs(30);

/// The filter a channel has without `on`.
fn default_on(kind: ChannelKind) -> Vec<EventKind> {
    match kind {
        ChannelKind::Healthchecks => vec![
            EventKind::BackupStarted,
            EventKind::BackupSucceeded,
            EventKind::BackupFailed,
            EventKind::ScheduleMissed,
        ],
        _ => EventKind::ALL
            .into_iter()
            .filter(|k| k.is_failure() || *k == EventKind::Recovered)
            .collect(),
    }
}

fn parse_on(name: &str, words: &[String]) -> Result<Vec<EventKind>, ChannelError> {
    let mut out = Vec::new();
    for w in words {
        let w = w.trim();
        let matched: Vec<EventKind> = match w {
            "all" => EventKind::ALL.to_vec(),
            "failure" => EventKind::ALL
                .into_iter()
                .filter(|k| k.is_failure())
                .collect(),
            "success" => EventKind::ALL
                .into_iter()
                .filter(|k| k.is_success())
                .collect(),
            _ => EventKind::ALL
                .into_iter()
                .filter(|k| k.name() == w)
                .collect(),
        };
        if matched.is_empty() {
            return Err(ChannelError::On {
                name: name.to_owned(),
                value: w.to_owned(),
            });
        }
        out.extend(matched);
    }
    Ok(out)
}

/// The first line of a file, for a secret kept out of the config file.
pub(super) fn read_secret(
    name: &str,
    key: &'static str,
    path: &std::path::Path,
) -> Result<Secret, ChannelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ChannelError::File {
        name: name.to_owned(),
        key,
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or("").trim()))
}

impl Channel {
    pub fn from_table(name: &str, t: &ChannelTable) -> Result<Self, ChannelError> {
        let kind = t
            .kind
            .ok_or_else(|| ChannelError::NoType(name.to_owned()))?;
        let missing = |key, hint| ChannelError::Missing {
            name: name.to_owned(),
            key,
            hint,
        };
        let url = match (&t.url, kind) {
            (None, ChannelKind::Email) => None,
            (None, _) => return Err(missing("url", "the URL to POST to")),
            (Some(u), _) => {
                let parsed =
                    url::Url::parse(u.trim()).map_err(|_| ChannelError::Url(name.into()))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(ChannelError::Url(name.into()));
                }
                Some(Secret::new(u.trim().trim_end_matches('/')))
            }
        };
        let secret = match (&t.secret, &t.secret_file) {
            (Some(s), _) => Some(Secret::new(s.clone())),
            (None, Some(p)) => Some(read_secret(name, "secret_file", p)?),
            _ => None,
        };
        let smtp = if kind == ChannelKind::Email {
            Some(super::email::Smtp::from_table(name, t)?)
        } else {
            None
        };
        Ok(Channel {
            name: name.to_owned(),
            kind,
            url,
            secret,
            on: match &t.on {
                Some(words) => parse_on(name, words)?,
                None => default_on(kind),
            },
            retries: t.retries.unwrap_or(3),
            retry_delay: Duration::from_millis(t.retry_delay_ms.unwrap_or(1000)),
            timeout: Duration::from_secs(t.timeout_secs.unwrap_or(10).clamp(1, 30)),
            smtp,
        })
    }

    /// Whether the filter takes `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.on.contains(&kind)
    }

    /// Sends `event`, retrying with a doubling delay; the last error if every try failed.
    pub fn deliver(&self, event: &Event) -> Delivery {
        let mut attempts = 0;
        let mut delay = self.retry_delay;
        // Whatever the retries say, one event never holds its sender past this (a dead
        // receiver must not hold a backup, the API's answer or the scheduler's next slot).
        let deadline = std::time::Instant::now() + MAX_DELIVERY;
        let result = loop {
            attempts += 1;
            match self.send_once(event) {
                Ok(()) => break Ok(()),
                Err((error, retry))
                    if retry
                        && attempts <= self.retries
                        && std::time::Instant::now() + delay + self.timeout < deadline =>
                {
                    tracing::warn!(channel = %self.name, event = event.event.name(), attempt = attempts, %error, "a notification failed; it is tried again");
                    std::thread::sleep(delay);
                    delay = delay.saturating_mul(2);
                }
                Err((error, _)) => break Err(error),
            }
        };
        if let Err(error) = &result {
            tracing::error!(channel = %self.name, event = event.event.name(), attempts, %error, "a notification could not be sent");
        }
        Delivery {
            channel: self.name.clone(),
            attempts,
            result,
        }
    }

    /// One try: the error, and whether another try may help.
    fn send_once(&self, event: &Event) -> Result<(), (String, bool)> {
        if let Some(smtp) = &self.smtp {
            return smtp.send(event, self.timeout);
        }
        let base = self.url.as_ref().map(Secret::expose).unwrap_or_default();
        let summary = event.summary();
        let (url, body, content_type) = match self.kind {
            ChannelKind::Webhook => (
                base.to_owned(),
                serde_json::to_vec(event).unwrap_or_default(),
                "application/json",
            ),
            ChannelKind::Slack | ChannelKind::Teams => (
                base.to_owned(),
                serde_json::to_vec(&serde_json::json!({ "text": summary })).unwrap_or_default(),
                "application/json",
            ),
            ChannelKind::Discord => (
                base.to_owned(),
                serde_json::to_vec(&serde_json::json!({ "content": summary })).unwrap_or_default(),
                "application/json",
            ),
            ChannelKind::Ntfy => (base.to_owned(), summary.into_bytes(), "text/plain"),
            ChannelKind::Healthchecks => {
                let suffix = match event.event {
                    EventKind::BackupStarted => "/start",
                    k if k.is_failure() => "/fail",
                    _ => "",
                };
                (
                    format!("{base}{suffix}"),
                    summary.into_bytes(),
                    "text/plain",
                )
            }
            ChannelKind::Email => return Err(("no SMTP settings".into(), false)),
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| (e.without_url().to_string(), false))?;
        let mut req = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(
                reqwest::header::USER_AGENT,
                concat!("dbkeep/", env!("CARGO_PKG_VERSION")),
            );
        if self.kind == ChannelKind::Ntfy {
            req = req
                .header("Title", format!("dbkeep {}", event.event.name()))
                .header(
                    "Priority",
                    if event.event.is_failure() {
                        "high"
                    } else {
                        "default"
                    },
                )
                .header(
                    "Tags",
                    if event.event.is_failure() {
                        "warning"
                    } else {
                        "white_check_mark"
                    },
                );
        }
        if self.kind == ChannelKind::Webhook
            && let Some(secret) = &self.secret
        {
            req = req.header("X-Dbkeep-Signature", signature(secret.expose(), &body));
        }
        match req.body(body).send() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let retry = status.is_server_error() || status.as_u16() == 429;
                Err((format!("the receiver answered {status}"), retry))
            }
            // Without the URL: it may hold the channel's token.
            Err(e) => Err((e.without_url().to_string(), true)),
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`, as GitHub signs its webhooks.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}
