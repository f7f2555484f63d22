//! A base backup as dbkeep stores it: one tar whose entries are a data directory ready to start
//! on — `base.tar`'s files as pg_basebackup wrote them, then the WAL the backup needs under
//! `pg_wal/`, then pg_basebackup's `backup_manifest` (SHA-256 of every file). Reading one back
//! (verify, restore, drill) hashes every file and checks it against that manifest, the
//! manifest against its own checksum, and that every WAL segment from the backup's start to its
//! end is there: a backup that passes can be started on without any archive.
//!
//! Only directories and regular files are stored (pg_basebackup writes a tablespace as a
//! symbolic link plus a tar of its own, which dbkeep does not take yet), and no entry's path
//! leaves the directory it is unpacked into.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// The entry that holds pg_basebackup's manifest.
pub const MANIFEST_ENTRY: &str = "backup_manifest";

/// A WAL position (`0/2000028`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn(hi << 32 | lo))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The WAL a backup needs: from `start` to `end` on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// pg_basebackup's `backup_manifest`, as far as dbkeep checks it.
#[derive(Debug, Default)]
pub struct BackupManifest {
    /// Each file: its size and SHA-256 (`None` when the manifest has another algorithm).
    pub files: BTreeMap<String, (u64, Option<String>)>,
    pub wal: Vec<WalRange>,
}

/// The name of the WAL segment `segno` of `timeline` for segments of `seg_size` bytes.
pub fn segment_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000 / seg_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The timeline and number of a segment's file name; `None` for anything else.
pub fn parse_segment(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((tli, log * (0x1_0000_0000 / seg_size) + seg))
}

impl BackupManifest {
    /// Parses a manifest and checks its own SHA-256 (of everything before the
    /// `"Manifest-Checksum"` key, as pg_verifybackup does).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        const KEY: &[u8] = b"\"Manifest-Checksum\"";
        let at = bytes
            .windows(KEY.len())
            .rposition(|w| w == KEY)
            .ok_or("the backup manifest has no Manifest-Checksum")?;
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("the backup manifest is not valid JSON: {e}"))?;
        let own = hex::encode(Sha256::digest(&bytes[..at]));
        if v["Manifest-Checksum"].as_str() != Some(own.as_str()) {
            return Err("the backup manifest does not match its own checksum".into());
        }
        let mut m = BackupManifest::default();
        for f in v["Files"]
            .as_array()
            .ok_or("the backup manifest lists no files")?
        {
            let path = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
                (Some(p), _) => p.to_owned(),
                (None, Some(hexed)) => String::from_utf8_lossy(
                    &hex::decode(hexed).map_err(|_| "a file's Encoded-Path is not hex")?,
                )
                .into_owned(),
                (None, None) => return Err("a file in the backup manifest has no path".into()),
            };
            let size = f["Size"]
                .as_u64()
                .ok_or("a file in the backup manifest has no size")?;
            let sha = (f["Checksum-Algorithm"].as_str() == Some("SHA256"))
                .then(|| f["Checksum"].as_str().map(str::to_ascii_lowercase))
                .flatten();
            m.files.insert(path, (size, sha));
        }
        for r in v["WAL-Ranges"]
            .as_array()
            .ok_or("the backup manifest has no WAL range")?
        {
            let lsn = |k: &str| r[k].as_str().and_then(Lsn::parse);
            match (r["Timeline"].as_u64(), lsn("Start-LSN"), lsn("End-LSN")) {
                (Some(t), Some(start), Some(end)) if t <= u32::MAX as u64 && start <= end => {
                    m.wal.push(WalRange {
                        timeline: t as u32,
                        start,
                        end,
                    })
                }
                _ => return Err(format!("the backup manifest's WAL range {r} is not valid")),
            }
        }
        if m.wal.is_empty() {
            return Err("the backup manifest has no WAL range".into());
        }
        Ok(m)
    }
}

/// What a read of a stored base backup found.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
    pub segments: usize,
    pub manifest: BackupManifest,
}

/// A stored entry's path, relative and inside the directory (`./pg_wal/x` → `pg_wal/x`).
fn relative(path: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "the entry {} leaves the data directory",
                    path.display()
                ));
            }
        }
    }
    if parts.is_empty() {
        return Ok(String::new());
    }
    Ok(parts.join("/"))
}

/// Reads a stored base backup to its end, hashing every file, and checks it (see the module's
/// doc). With `into`, each entry is also written there (a new directory's contents: files are
/// created, never opened over).
pub fn read(input: &mut dyn Read, into: Option<&Path>) -> Result<Summary, String> {
    let mut archive = tar::Archive::new(input);
    let mut found: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut segments: Vec<(String, u64)> = Vec::new();
    let mut manifest = None;
    let mut summary = Summary::default();
    let entries = archive
        .entries()
        .map_err(|e| format!("cannot read the archive: {e}"))?;
    for entry in entries {
        if crate::signals::interrupted() {
            return Err("interrupted by a signal".into());
        }
        let mut entry = entry.map_err(|e| format!("cannot read the archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        let raw = std::str::from_utf8(&raw).map_err(|_| {
            format!(
                "the entry {} has a name that is not UTF-8: not supported",
                String::from_utf8_lossy(&raw)
            )
        })?;
        let rel = relative(Path::new(raw))?;
        let kind = entry.header().entry_type();
        let target = into.map(|d| d.join(&rel));
        if kind.is_dir() {
            if let Some(t) = &target {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(t)
                    .map_err(|e| format!("cannot create {}: {e}", t.display()))?;
            }
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "the entry {rel} is not a regular file or directory (a symbolic link: a tablespace, or a linked configuration file): not supported"
            ));
        }
        if rel.is_empty() {
            return Err("a file entry has no name".into());
        }
        if rel == MANIFEST_ENTRY {
            if manifest.is_some() {
                return Err("the archive holds two backup manifests".into());
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read the backup manifest: {e}"))?;
            if let Some(t) = &target {
                write_new(t, &mut bytes.as_slice(), 0o600).map(|_| ())?;
            }
            manifest = Some(BackupManifest::parse(&bytes)?);
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o600) & 0o750;
        let (size, sha) = match &target {
            Some(t) => write_new(t, &mut entry, mode)?,
            None => {
                hash(&mut entry, &mut io::sink()).map_err(|e| format!("cannot read {rel}: {e}"))?
            }
        };
        summary.files += 1;
        summary.bytes += size;
        let duplicate = match rel.strip_prefix("pg_wal/") {
            Some(name) if segments.iter().any(|(n, _)| n == name) => true,
            Some(name) => {
                segments.push((name.to_owned(), size));
                false
            }
            None => found.insert(rel.clone(), (size, sha)).is_some(),
        };
        if duplicate {
            return Err(format!("the archive holds {rel} twice"));
        }
    }
    let manifest = manifest.ok_or("the archive holds no backup_manifest (incomplete backup)")?;
    check_files(&manifest, &found)?;
    summary.segments = check_wal(&manifest, &segments)?;
    summary.manifest = manifest;
    Ok(summary)
}

/// Copies `from` into the new file `to`; its size and SHA-256.
fn write_new(to: &Path, from: &mut dyn Read, mode: u32) -> Result<(u64, String), String> {
    if let Some(parent) = to.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode | 0o600)
        .open(to)
        .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    hash(from, &mut file).map_err(|e| format!("cannot write {}: {e}", to.display()))
}

fn hash(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Every file of the manifest is there with its size and SHA-256, and nothing else is.
fn check_files(
    manifest: &BackupManifest,
    found: &BTreeMap<String, (u64, String)>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (path, (size, sha)) in &manifest.files {
        match found.get(path) {
            None => problems.push(format!("{path} is missing")),
            Some((got, _)) if got != size => {
                problems.push(format!("{path} has {got} bytes, the manifest says {size}"))
            }
            Some((_, got)) if sha.as_ref().is_some_and(|s| s != got) => {
                problems.push(format!("{path}'s SHA-256 differs from the manifest's"))
            }
            Some(_) => {}
        }
    }
    for path in found.keys().filter(|p| !manifest.files.contains_key(*p)) {
        problems.push(format!("{path} is not in the backup manifest"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(5);
    Err(format!(
        "{n} files differ from the backup manifest: {}",
        problems.join("; ")
    ))
}

/// Every segment from each WAL range's start to its end is there, whole; how many there are.
fn check_wal(manifest: &BackupManifest, segments: &[(String, u64)]) -> Result<usize, String> {
    let wal: Vec<&(String, u64)> = segments
        .iter()
        .filter(|(name, _)| name.len() == 24)
        .collect();
    let seg_size = wal.first().map(|(_, s)| *s).unwrap_or(0);
    if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
        return Err(format!(
            "the archive's pg_wal holds no whole WAL segment ({} files): the backup cannot be started on",
            segments.len()
        ));
    }
    for (name, size) in &wal {
        if *size != seg_size {
            return Err(format!(
                "the WAL segment {name} has {size} bytes, the others {seg_size}"
            ));
        }
    }
    let have: std::collections::BTreeSet<(u32, u64)> = wal
        .iter()
        .filter_map(|(name, _)| parse_segment(name, seg_size))
        .collect();
    for r in &manifest.wal {
        let first = r.start.0 / seg_size;
        let last = r.end.0.saturating_sub(1).max(r.start.0) / seg_size;
        for segno in first..=last {
            if !have.contains(&(r.timeline, segno)) {
                return Err(format!(
                    "the WAL segment {} (of the backup's range {} to {} on timeline {}) is missing",
                    segment_name(r.timeline, segno, seg_size),
                    r.start,
                    r.end,
                    r.timeline
                ));
            }
        }
    }
    Ok(wal.len())
}

/// The directory a restore unpacks into: absent (created, mode 0700) or empty.
pub fn prepare_target(dir: &Path) -> Result<PathBuf, String> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: a base backup is restored into an empty or new directory, never over a data directory",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot set {}'s mode to 0700: {e}", dir.display()))?;
    Ok(dir.to_owned())
}

/// Empties `dir` after a failed unpack (the directory itself stays, as it was given).
pub fn empty_target(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_segment_names() {
        let l = Lsn::parse("0/2000028").unwrap();
        assert_eq!(l.0, 0x2000028);
        assert_eq!(l.to_string(), "0/2000028");
        assert_eq!(Lsn::parse("1A/FF").unwrap().0, 0x1A_0000_00FF);
        assert!(Lsn::parse("x/1").is_none());
        assert!(Lsn::parse("100000000/0").is_none());
        let seg = 16 << 20;
        assert_eq!(segment_name(1, 2, seg), "000000010000000000000002");
        assert_eq!(segment_name(3, 256 + 5, seg), "000000030000000100000005");
        assert_eq!(
            parse_segment("000000030000000100000005", seg),
            Some((3, 261))
        );
        assert_eq!(parse_segment("00000002.history", seg), None);
    }

    #[test]
    fn paths_stay_inside() {
        assert_eq!(relative(Path::new("./pg_wal/x")).unwrap(), "pg_wal/x");
        assert!(relative(Path::new("../etc/passwd")).is_err());
        assert!(relative(Path::new("/etc/passwd")).is_err());
        assert!(relative(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn a_manifest_must_match_its_checksum() {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"ab\" }\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n";
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        let good = format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n");
        let m = BackupManifest::parse(good.as_bytes()).unwrap();
        assert_eq!(m.files["PG_VERSION"], (3, Some("ab".into())));
        assert_eq!(m.wal[0].end, Lsn(0x2000100));
        let bad = good.replace("\"Size\": 3", "\"Size\": 4");
        let e = BackupManifest::parse(bad.as_bytes()).unwrap_err();
        assert!(e.contains("own checksum"), "{e}");
    }
}
