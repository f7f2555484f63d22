//! moto's S3 server (PyPI `moto[server]`), a second, independent S3 implementation, started by
//! the test on a free loopback port and killed when dropped. Unlike s3s-fs it implements
//! ListMultipartUploads, so the tests can see uploads left open on the server.

use super::{TestEnv, free_port, require};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "backups";
/// moto accepts any credentials; dbkeep still signs every request.
pub const KEY_ID: &str = "moto-test-key";
pub const SECRET: &str = "moto-test-secret-7f3a";

/// Where `.ci/run` installs moto (a virtual environment), unless `MOTO_SERVER` names the program.
const VENV_PROGRAM: &str = "/opt/dbkeep-moto/bin/moto_server";

pub struct Moto {
    child: Child,
    pub port: u16,
    http: reqwest::blocking::Client,
}

fn program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    if super::have("moto_server") {
        return Some(PathBuf::from("moto_server"));
    }
    let venv = PathBuf::from(VENV_PROGRAM);
    venv.exists().then_some(venv)
}

impl Moto {
    /// Starts moto with one bucket, [`BUCKET`]; `None` (skipped) when moto is not installed and
    /// `CI` is not set.
    pub fn start() -> Option<Self> {
        let program = program();
        if !require(
            "moto's S3 server (moto_server)",
            program.is_some(),
            "python3-venv, then: python3 -m venv /opt/dbkeep-moto && /opt/dbkeep-moto/bin/pip install 'moto[server]==5.2.5' (as .ci/run does)",
        ) {
            return None;
        }
        let port = free_port();
        let child = Command::new(program?)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Self {
            child,
            port,
            http: reqwest::blocking::Client::new(),
        };
        let start = Instant::now();
        loop {
            if moto.http.get(moto.endpoint()).send().is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto_server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let made = moto
            .http
            .put(format!("{}/{BUCKET}", moto.endpoint()))
            .send()
            .expect("create the bucket");
        assert!(made.status().is_success(), "{:?}", made.status());
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Points `env` at `s3://BUCKET/prefix`.
    pub fn configure(&self, env: &mut TestEnv, prefix: &str) {
        super::s3::point_at(
            env,
            &format!("s3://{BUCKET}/{prefix}"),
            &self.endpoint(),
            KEY_ID,
            SECRET,
        );
    }

    /// Keys of the multipart uploads open in the bucket (ListMultipartUploads).
    pub fn open_uploads(&self) -> Vec<String> {
        self.keys(&format!("{BUCKET}?uploads"))
    }

    /// Keys of the objects under `prefix`, sorted.
    /// Object keys under `prefix`, sorted, but for the repository lock and the probe of
    /// conditional writes.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let mut keys = self.keys(&format!("{BUCKET}?prefix={prefix}/"));
        keys.retain(|k| !k.ends_with("/.dbkeep.lock") && !k.ends_with("/.dbkeep-probe"));
        keys.sort();
        keys
    }

    /// The `<Key>`s of a bucket listing.
    fn keys(&self, query: &str) -> Vec<String> {
        let xml = self
            .http
            .get(format!("{}/{query}", self.endpoint()))
            .send()
            .and_then(|r| r.text())
            .expect("list the bucket");
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// Begins a multipart upload of `key` and leaves it open.
    pub fn begin_upload(&self, key: &str) {
        let r = self
            .http
            .post(format!("{}/{BUCKET}/{key}?uploads", self.endpoint()))
            .send()
            .expect("begin an upload");
        assert!(r.status().is_success(), "{:?}", r.status());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
