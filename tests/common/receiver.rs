//! Real receivers on loopback for the notification tests: an HTTP server that records every
//! request and answers with scripted statuses, and an SMTP server that accepts and records
//! every message. Both run on threads of the test process, on free ports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Scripted statuses by path.
type Script = Arc<Mutex<Vec<(String, VecDeque<u16>)>>>;

/// An HTTP/1.1 server: each request recorded, answered with the next scripted status for its
/// path (200 once the script is used up).
pub struct HttpReceiver {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    script: Script,
}

impl HttpReceiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP receiver");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(Mutex::new(Vec::new()));
        let (r, s) = (requests.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, s) = (r.clone(), s.clone());
                std::thread::spawn(move || serve_http(conn, &r, &s));
            }
        });
        Self {
            url,
            requests,
            script,
        }
    }

    /// The next requests to `path` get these statuses, in order.
    pub fn answer(&self, path: &str, statuses: &[u16]) {
        self.script
            .lock()
            .unwrap()
            .push((path.to_owned(), statuses.iter().copied().collect()));
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

fn serve_http(
    conn: TcpStream,
    requests: &Mutex<Vec<Request>>,
    script: &Mutex<Vec<(String, VecDeque<u16>)>>,
) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut s = script.lock().unwrap();
            s.iter_mut()
                .find(|(p, q)| *p == path && !q.is_empty())
                .and_then(|(_, q)| q.pop_front())
                .unwrap_or(200)
        };
        requests.lock().unwrap().push(Request {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// One message the SMTP sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// What the client sent after AUTH, if it authenticated (base64, as sent).
    pub auth: Option<String>,
    pub data: String,
}

/// An SMTP server (plain, AUTH PLAIN/LOGIN offered) that accepts every message.
pub struct SmtpSink {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP sink");
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m = mails.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let m = m.clone();
                std::thread::spawn(move || serve_smtp(conn, &m));
            }
        });
        Self { port, mails }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

fn serve_smtp(conn: TcpStream, mails: &Mutex<Vec<Mail>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut conn = conn;
    let say = |c: &mut TcpStream, s: &str| c.write_all(format!("{s}\r\n").as_bytes()).is_ok();
    if !say(&mut conn, "220 sink ESMTP") {
        return;
    }
    let mut mail = Mail {
        from: String::new(),
        to: Vec::new(),
        auth: None,
        data: String::new(),
    };
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let ok = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            say(
                &mut conn,
                "250-sink\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME",
            )
        } else if upper.starts_with("AUTH PLAIN") {
            mail.auth = Some(cmd[10..].trim().to_owned());
            say(&mut conn, "235 2.7.0 accepted")
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = cmd[10..].trim().to_owned();
            say(&mut conn, "250 ok")
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(cmd[8..].trim().to_owned());
            say(&mut conn, "250 ok")
        } else if upper == "DATA" {
            if !say(&mut conn, "354 go on") {
                return;
            }
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                data.push_str(&l);
            }
            mail.data = data;
            mails.lock().unwrap().push(mail.clone());
            say(&mut conn, "250 queued")
        } else if upper == "QUIT" {
            let _ = say(&mut conn, "221 bye");
            return;
        } else if upper == "RSET" || upper == "NOOP" {
            say(&mut conn, "250 ok")
        } else {
            say(&mut conn, "502 not implemented")
        };
        if !ok {
            return;
        }
    }
}
