//! A real S3-compatible server on loopback, inside the test process: s3s with its file-system
//! backend (s3s-fs), signature checking on, on `127.0.0.1:0`, over a temp directory. It can be
//! stopped in the middle of a test (all connections drop) and started again on the same data.

use super::TestEnv;
pub use super::s3_server::{
    ACCESS_KEY, SECRET_KEY, WRITE_ONCE_ACCESS_KEY, WRITE_ONCE_SECRET_KEY, serve, serve_as,
};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const BUCKET: &str = "backups";

pub struct S3Server {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Starts a server with one bucket, [`BUCKET`].
    pub fn start() -> Self {
        Self::start_as(false)
    }

    /// A server that ignores conditional writes (every write overwrites).
    pub fn start_ignoring_conditions() -> Self {
        Self::start_as(true)
    }

    fn start_as(ignores_conditions: bool) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let (rt, addr) = serve_as(
            root.path(),
            "127.0.0.1:0".parse().unwrap(),
            ignores_conditions,
        );
        Self {
            root,
            addr,
            rt: Some(rt),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server: every connection drops at once.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Starts it again on the same address and data.
    pub fn restart(&mut self) {
        self.stop();
        let (rt, _) = serve(self.root.path(), self.addr);
        self.rt = Some(rt);
    }

    /// Points `env` at `s3://BUCKET/prefix` with the right credentials.
    pub fn configure(&self, env: &mut TestEnv, prefix: &str) {
        point_at(
            env,
            &format!("s3://{BUCKET}/{prefix}"),
            &self.endpoint(),
            ACCESS_KEY,
            SECRET_KEY,
        );
    }

    /// Where the objects under `prefix` are stored.
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix)
    }

    /// Object names under `prefix`, sorted (s3s-fs keeps its own metadata beside them).
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir(prefix))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".s3s") && !n.ends_with(".s3s"))
                    // The repository lock and the probe of conditional writes.
                    .filter(|n| n != ".dbkeep.lock" && n != ".dbkeep-probe")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.starts_with(".upload-") && n.ends_with(".json")
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Points `env` at the S3 repository `url` on `endpoint` with these credentials; scratch files
/// go to the test's own directory.
pub fn point_at(env: &mut TestEnv, url: &str, endpoint: &str, key_id: &str, secret: &str) {
    env.set("BACKUP_DIR", url);
    env.set("AWS_ENDPOINT_URL", endpoint);
    env.set("AWS_ACCESS_KEY_ID", key_id);
    env.set("AWS_SECRET_ACCESS_KEY", secret);
    env.set("AWS_REGION", "us-east-1");
    env.set(
        "BACKUP_SCRATCH_DIR",
        env.path().join("scratch").display().to_string(),
    );
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
