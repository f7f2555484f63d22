//! [`S3Storage`]: a repository under a prefix of an S3-compatible bucket, through Apache OpenDAL
//! (the `s3` service; other OpenDAL services are a feature and a builder away).
//!
//! - Uploads stream as multipart uploads whose part size grows with the bytes written
//!   ([`part_size`]), so that any backup up to 5 TB fits in `max_parts` parts; an upload that is
//!   not committed is aborted, so a failed backup leaves no open upload behind.
//! - New objects are created with `If-None-Match: *`: two instances that pick the same name never
//!   overwrite each other's data or manifest. The repository lock is a fenced lease object
//!   (`storage/lease.rs`).
//! - OpenDAL is asynchronous; [`Storage`] is not. A small runtime of our own drives OpenDAL, and
//!   each call blocks on it (from a plain thread or the API's blocking threads).

mod stream;

use super::{LOCK_FILE, ObjectInfo, ObjectWriter, RepoLock, Storage, StorageError};
use crate::database_url::Secret;
use bytes::Bytes;
use opendal::{ErrorKind as DalErrorKind, Operator};
use std::future::Future;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};
use stream::{S3Reader, S3Writer};

/// The largest part S3 accepts.
const MAX_PART: u64 = 5 << 30;

/// Settings of S3-compatible object storage.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `BACKUP_S3_ENDPOINT` / `AWS_ENDPOINT_URL`: a custom endpoint (MinIO, Ceph, R2, …).
    pub endpoint: Option<String>,
    /// `BACKUP_S3_REGION` / `AWS_REGION`; default `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default: on with a custom endpoint.
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// The most parts the service accepts in one upload (10,000 on AWS).
    pub max_parts: u32,
    /// The first part's size; later parts grow from it.
    pub part_size: u64,
    /// Parts up to this size are sent from memory; larger ones are uploaded as temporary
    /// objects and assembled on the server (UploadPartCopy), so memory stays flat.
    pub memory_part: u64,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            max_parts: 10_000,
            part_size: 8 << 20,
            memory_part: 16 << 20,
        }
    }
}

/// The largest upload the part schedule must reach.
const REACH: u64 = 5_000_000_000_000;

/// The part schedule: parts start at `first` and double every `step` parts, up to 5 GiB; `step`
/// is the largest that still lets `max_parts` parts reach 5 TB (10,000 parts of 8 MiB first:
/// doubling every 1,000; 1,000 parts: every 10).
#[derive(Debug, Clone, Copy)]
pub struct PartSchedule {
    first: u64,
    max_parts: u32,
    step: u32,
}

impl PartSchedule {
    pub fn new(first: u64, max_parts: u32) -> Self {
        let first = first.clamp(5 << 20, MAX_PART);
        let mut step = (max_parts / 10).max(1);
        while step > 1 && Self::reach(first, max_parts, step) < REACH {
            step -= 1;
        }
        Self {
            first,
            max_parts,
            step,
        }
    }

    fn reach(first: u64, max_parts: u32, step: u32) -> u64 {
        (0..max_parts)
            .step_by(step as usize)
            .map(|i| {
                let n = u64::from(step.min(max_parts - i));
                Self::size_at(first, step, i).saturating_mul(n)
            })
            .fold(0u64, u64::saturating_add)
    }

    fn size_at(first: u64, step: u32, index: u32) -> u64 {
        let doublings = (index / step).min(30);
        first.saturating_mul(1u64 << doublings).min(MAX_PART)
    }

    /// The size of part `index` (0-based).
    pub fn size(&self, index: u32) -> u64 {
        Self::size_at(self.first, self.step, index)
    }

    /// How many bytes `max_parts` parts hold.
    pub fn capacity(&self) -> u64 {
        Self::reach(self.first, self.max_parts, self.step)
    }
}

/// The runtime that drives OpenDAL: two worker threads, for the life of the process.
static RUNTIME: LazyLock<io::Result<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dbkeep-s3")
        .enable_all()
        .build()
});

/// Runs `fut` to completion on the OpenDAL runtime, blocking this thread.
pub(super) fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    match &*RUNTIME {
        Ok(rt) => Ok(rt.handle().block_on(fut)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot start the object-storage runtime: {e}"),
        )),
    }
}

pub struct S3Storage {
    op: Operator,
    uploads: super::uploads::Uploads,
    location: String,
    settings: S3Settings,
    scratch: PathBuf,
    /// Whether the service was found to honour conditional writes (once per repository).
    probed: std::sync::OnceLock<()>,
}

impl S3Storage {
    /// A repository at `url` (`s3://bucket/prefix`). Nothing is contacted yet.
    pub fn new(url: &str, settings: &S3Settings, scratch: PathBuf) -> Result<Self, StorageError> {
        let setup = |problem: String| StorageError::Setup {
            location: url.to_owned(),
            problem,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| setup("expected s3://bucket/prefix".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(setup(format!(
                "{bucket:?} is not a bucket name: expected s3://bucket/prefix"
            )));
        }
        let location = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let mut b = opendal::services::S3::default()
            .bucket(bucket)
            .root(&format!("/{prefix}"))
            .region(settings.region.as_deref().unwrap_or("us-east-1"));
        if let Some(endpoint) = &settings.endpoint {
            b = b.endpoint(endpoint);
        }
        // Path style by default with a custom endpoint (MinIO and most others want it); AWS's
        // own endpoint takes virtual-host style.
        if !settings.path_style.unwrap_or(settings.endpoint.is_some()) {
            b = b.enable_virtual_host_style();
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                // The given keys and nothing else: no ~/.aws files, no instance metadata.
                b = b
                    .access_key_id(id)
                    .secret_access_key(secret.expose())
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(token) = &settings.session_token {
                    b = b.session_token(token.expose());
                }
            }
            (None, None) => {} // the AWS default chain: profile files, instance metadata
            _ => {
                return Err(setup(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or backup_s3_access_key_id and backup_s3_secret_access_key in the config file)".into(),
                ));
            }
        }
        let uploads = super::uploads::Uploads::new(settings, bucket, prefix).map_err(setup)?;
        opendal::install_default();
        let op = Operator::new(b)
            .map_err(|e| setup(e.to_string()))?
            .layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(60)),
            )
            // Transient faults are retried briefly; a service that is down fails the command
            // within seconds.
            .layer(
                opendal::layers::RetryLayer::new()
                    .with_max_times(4)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter(),
            );
        Ok(Self {
            op,
            uploads,
            location,
            settings: settings.clone(),
            scratch,
            probed: std::sync::OnceLock::new(),
        })
    }

    /// A storage error for `op` on `key`, without any secret.
    fn err(&self, op: &'static str, key: &str, e: &opendal::Error) -> StorageError {
        if e.kind() == DalErrorKind::ConditionNotMatch {
            return StorageError::AlreadyExists {
                key: key.to_owned(),
                location: self.location.clone(),
            };
        }
        remote(op, key, &self.location, e, &self.secrets())
    }

    fn secrets(&self) -> Vec<String> {
        [
            &self.settings.secret_access_key,
            &self.settings.session_token,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.expose().to_owned())
        .collect()
    }

    fn runtime_err(&self, op: &'static str, key: &str, e: io::Error) -> StorageError {
        StorageError::Remote {
            op,
            key: key.to_owned(),
            location: self.location.clone(),
            message: e.to_string(),
            hint: "",
            denied: false,
        }
    }

    fn writer(&self, key: &str, new: bool) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let writer = block_on(async {
            self.op
                .writer_with(key)
                .if_not_exists(new)
                .concurrent(2)
                .await
        })
        .map_err(|e| self.runtime_err("start writing", key, e))?
        .map_err(|e| self.err("start writing", key, &e))?;
        Ok(Box::new(S3Writer {
            op: self.op.clone(),
            writer: Some(writer),
            buf: Vec::new(),
            spill: None,
            copied: Vec::new(),
            parts: 0,
            schedule: PartSchedule::new(self.settings.part_size, self.settings.max_parts),
            memory_part: self.settings.memory_part,
            key: key.to_owned(),
            location: self.location.clone(),
            secrets: self.secrets(),
        }))
    }
}

/// A storage error from an OpenDAL error, with a hint for what to do; secrets are scrubbed.
pub(super) fn remote(
    op: &'static str,
    key: &str,
    location: &str,
    e: &opendal::Error,
    secrets: &[String],
) -> StorageError {
    let hint = match e.kind() {
        DalErrorKind::PermissionDenied => {
            " (check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and the bucket's policy)"
        }
        DalErrorKind::NotFound => " (does the bucket exist? dbkeep does not create buckets)",
        DalErrorKind::ConfigInvalid => " (check BACKUP_DIR and the BACKUP_S3_* settings)",
        _ => "",
    };
    StorageError::Remote {
        op,
        key: key.to_owned(),
        location: location.to_owned(),
        message: crate::engine::process::scrub(&e.to_string(), secrets),
        hint,
        denied: e.kind() == DalErrorKind::PermissionDenied,
    }
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn display_path(&self, key: &str) -> String {
        format!("{}/{key}", self.location)
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        let entries = block_on(self.op.list("/"))
            .map_err(|e| self.runtime_err("list", "", e))?
            .map_err(|e| self.err("list", "", &e))?;
        let mut out: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|e| {
                let p = e.path();
                !p.is_empty()
                    && p != "/"
                    && !p.ends_with('/')
                    && p != LOCK_FILE
                    && p != super::lease::PROBE_KEY
            })
            .map(|e| ObjectInfo {
                key: e.path().to_owned(),
                size: e.metadata().content_length(),
                modified: e
                    .metadata()
                    .last_modified()
                    .map_or(SystemTime::UNIX_EPOCH, SystemTime::from),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match block_on(self.op.stat(key)).map_err(|e| self.runtime_err("stat", key, e))? {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: m.content_length(),
                modified: m
                    .last_modified()
                    .map_or(SystemTime::UNIX_EPOCH, SystemTime::from),
            })),
            Err(e) if e.kind() == DalErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("stat", key, &e)),
        }
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        let op = self.op.clone();
        let path = key.to_owned();
        let stream = block_on(async move {
            let reader = op.reader_with(&path).chunk(8 << 20).concurrent(2).await?;
            reader.into_bytes_stream(..).await
        })
        .map_err(|e| self.runtime_err("open", key, e))?;
        let stream = match stream {
            Ok(s) => s,
            Err(e) if e.kind() == DalErrorKind::NotFound => {
                return Err(StorageError::NotFound {
                    key: key.to_owned(),
                    location: self.location.clone(),
                });
            }
            Err(e) => return Err(self.err("open", key, &e)),
        };
        Ok(Box::new(S3Reader {
            stream: Box::pin(stream),
            current: Bytes::new(),
        }))
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, false)
    }

    fn create_new(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, true)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        block_on(self.op.delete(key))
            .map_err(|e| self.runtime_err("delete", key, e))?
            .map_err(|e| self.err("delete", key, &e))
    }

    fn free_space(&self) -> Option<u64> {
        None
    }

    fn sweep_uploads(&self, grace: Duration, dry_run: bool) -> Result<Vec<String>, StorageError> {
        use super::uploads::UploadError;
        let fail = |e: UploadError| match e {
            UploadError::Unsupported(call) => StorageError::Unsupported {
                location: self.location.clone(),
                what: format!(
                    "listing incomplete multipart uploads ({call}): set an AbortIncompleteMultipartUpload lifecycle rule on the bucket instead"
                ),
            },
            e => StorageError::Remote {
                op: "sweep incomplete uploads of",
                key: String::new(),
                location: self.location.clone(),
                message: crate::engine::process::scrub(&e.to_string(), &self.secrets()),
                hint: match &e {
                    UploadError::Refused { status: 403, .. } => {
                        " (check the credentials, and that they may list and abort multipart uploads)"
                    }
                    _ => "",
                },
                denied: matches!(&e, UploadError::Refused { status: 403, .. }),
            },
        };
        let now = SystemTime::now();
        let open = block_on(self.uploads.list())
            .map_err(|e| self.runtime_err("list uploads of", "", e))?
            .map_err(fail)?;
        let mut swept = Vec::new();
        for upload in open.into_iter().filter(|u| u.is_stale(grace, now)) {
            if !dry_run {
                block_on(self.uploads.abort(&upload))
                    .map_err(|e| self.runtime_err("abort the upload of", &upload.key, e))?
                    .map_err(fail)?;
            }
            swept.push(upload.key);
        }
        Ok(swept)
    }

    fn owns_every_object(&self) -> bool {
        true
    }

    fn lock(&self, purpose: &str, timeout: Duration) -> Result<RepoLock, StorageError> {
        // Every command that changes the repository starts here: a missing bucket or wrong
        // credentials are reported before anything is written.
        block_on(async { self.op.list_with("/").limit(1).await })
            .map_err(|e| self.runtime_err("list", "", e))?
            .map_err(|e| self.err("list", "", &e))?;
        let ctx = super::lease::Ctx {
            op: self.op.clone(),
            location: self.location.clone(),
            endpoint: self
                .settings
                .endpoint
                .clone()
                .unwrap_or_else(|| "AWS S3".into()),
            secrets: self.secrets(),
        };
        if self.probed.get().is_none() {
            super::lease::probe(&ctx)?;
            let _ = self.probed.set(());
        }
        super::lease::acquire(&ctx, purpose, timeout)
    }

    fn scratch_dir(&self) -> Result<PathBuf, StorageError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.scratch.join("dbkeep-scratch");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StorageError::Io {
                op: "create the scratch directory",
                path: dir.clone(),
                source,
            })?;
        Ok(dir)
    }

    fn sweep_scratch(&self) -> Result<usize, StorageError> {
        crate::storage::scratch::sweep(&self.scratch.join("dbkeep-scratch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_5_tb_fits() {
        let s = PartSchedule::new(8 << 20, 10_000);
        assert_eq!(s.size(0), 8 << 20);
        assert_eq!(s.size(999), 8 << 20);
        assert_eq!(s.size(1000), 16 << 20);
        assert!(s.capacity() >= REACH, "{}", s.capacity());
        // 1,000 parts (some services): still 5 TB, parts growing faster.
        let s = PartSchedule::new(8 << 20, 1_000);
        assert!(s.capacity() >= REACH, "{}", s.capacity());
        assert_eq!(s.size(0), 8 << 20);
        // The smallest first part, and never above S3's largest part.
        assert!(PartSchedule::new(1, 10_000).capacity() >= REACH);
        assert!((0..10_000).all(|i| PartSchedule::new(5 << 30, 10_000).size(i) <= MAX_PART));
    }

    #[test]
    fn urls_are_checked() {
        let s = S3Settings::default();
        let scratch = std::env::temp_dir();
        assert!(S3Storage::new("s3://", &s, scratch.clone()).is_err());
        assert!(S3Storage::new("s3://bad bucket/x", &s, scratch.clone()).is_err());
        let mut keys = S3Settings {
            access_key_id: Some("id".into()),
            ..S3Settings::default()
        };
        let err = S3Storage::new("s3://b/p", &keys, scratch.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        keys.secret_access_key = Some(Secret::new("s3cr3t"));
        let st = S3Storage::new("s3://b/some/prefix/", &keys, scratch).unwrap();
        assert_eq!(st.location(), "s3://b/some/prefix");
        assert_eq!(st.display_path("x.sql.gz"), "s3://b/some/prefix/x.sql.gz");
    }
}
