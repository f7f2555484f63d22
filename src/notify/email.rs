//! Email channels: one plain-text message per event through an SMTP relay (lettre), with
//! STARTTLS (port 587, the default), TLS (465), or no encryption to a loopback relay only. The
//! password comes from a file (`smtp_password_file`), never the config file itself.

use super::Event;
use super::channel::{ChannelError, ChannelTable, SmtpTls, read_secret};
use crate::database_url::Secret;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};
use std::time::Duration;

/// An email channel's relay and addresses, checked.
#[derive(Debug, Clone)]
pub struct Smtp {
    host: String,
    port: u16,
    tls: SmtpTls,
    user: Option<String>,
    password: Option<Secret>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Smtp {
    pub(super) fn from_table(name: &str, t: &ChannelTable) -> Result<Self, ChannelError> {
        let missing = |key, hint| ChannelError::Missing {
            name: name.to_owned(),
            key,
            hint,
        };
        let host = t
            .smtp_host
            .clone()
            .ok_or_else(|| missing("smtp_host", "the SMTP relay's host name"))?;
        let tls = t.smtp_tls.unwrap_or_default();
        if tls == SmtpTls::None && !is_loopback(&host) {
            return Err(ChannelError::PlainSmtp(name.to_owned()));
        }
        let mailbox = |key: &'static str, v: &str| {
            v.parse::<Mailbox>().map_err(|_| ChannelError::Missing {
                name: name.to_owned(),
                key,
                hint: "an email address such as dbkeep@example.com",
            })
        };
        let from = mailbox(
            "from",
            t.from
                .as_deref()
                .ok_or_else(|| missing("from", "the sender's address"))?,
        )?;
        let to =
            t.to.as_deref()
                .filter(|to| !to.is_empty())
                .ok_or_else(|| missing("to", "a list of recipients, e.g. [\"ops@example.com\"]"))?
                .iter()
                .map(|a| mailbox("to", a))
                .collect::<Result<Vec<_>, _>>()?;
        let password = t
            .smtp_password_file
            .as_deref()
            .map(|p| read_secret(name, "smtp_password_file", p))
            .transpose()?;
        Ok(Smtp {
            port: t.smtp_port.unwrap_or(match tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            }),
            host,
            tls,
            user: t.smtp_user.clone(),
            password,
            from,
            to,
        })
    }

    /// One try: the error, and whether another try may help.
    pub(super) fn send(&self, event: &Event, timeout: Duration) -> Result<(), (String, bool)> {
        let summary = event.summary();
        let subject: String = summary.chars().take(150).collect();
        let mut body = format!("{summary}\n\n");
        if let Ok(fields) = serde_json::to_string_pretty(event) {
            body.push_str(&fields);
            body.push('\n');
        }
        let mut m = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            m = m.to(to.clone());
        }
        let message = m
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| (format!("cannot build the message: {e}"), false))?;
        let builder = match self.tls {
            SmtpTls::Starttls => SmtpTransport::starttls_relay(&self.host),
            SmtpTls::Tls => SmtpTransport::relay(&self.host),
            SmtpTls::None => Ok(SmtpTransport::builder_dangerous(&self.host)),
        }
        .map_err(|e| (format!("cannot set up TLS to {}: {e}", self.host), false))?;
        let mut builder = builder.port(self.port).timeout(Some(timeout));
        if let Some(user) = &self.user {
            let password = self
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        match builder.build().send(&message) {
            Ok(_) => Ok(()),
            Err(e) => Err((
                format!(
                    "the relay {}:{} refused or failed: {e}",
                    self.host, self.port
                ),
                !e.is_permanent(),
            )),
        }
    }
}
