//! Taking a base backup: `pg_basebackup -Ft -X stream` into a private spool directory
//! (it cannot stream WAL into a tar on stdout), `base.tar` read while it grows
//! ([`super::follow`]) and re-written entry by entry into dbkeep's one tar, then the WAL the
//! backup streamed (`pg_wal.tar`, which pg_basebackup finishes by seeking back, so it is read
//! once it is done) under `pg_wal/`, then `backup_manifest` (SHA-256 of every file), whose WAL
//! range and the cluster's system identifier go into dbkeep's manifest.

use super::archive::{BackupManifest, MANIFEST_ENTRY};
use super::follow::{Follow, Stopped};
use super::*;
use crate::engine::{BaseBackup, DumpInfo};
use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

/// How long pg_basebackup may take to create `base.tar` (its checkpoint comes first).
const FIRST_FILE: Duration = Duration::from_secs(3600);

impl Postgres {
    /// Whether the server can give a base backup: what `wal check` finds, less the third
    /// sender and the slot that only the WAL stream needs. The error lists each failure.
    fn base_backup_preflight(&self) -> Result<String, PostgresError> {
        let r = self.pitr_readiness()?;
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|c| !c.ok && c.name != "max_replication_slots")
            .filter(|c| c.name != "max_wal_senders" || r.free_senders.unwrap_or(0) < 2)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        let id = match (failed.is_empty(), r.system_identifier) {
            (true, Some(id)) => id,
            _ => return Err(PostgresError::NotReady(failed.join("; "))),
        };
        let spaces = self.psql(
            &self.conn.database,
            &["SELECT string_agg(spcname, ', ') FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')".into()],
        )?;
        if !spaces.trim().is_empty() {
            return Err(PostgresError::NotReady(format!(
                "the cluster has tablespaces ({}), and base backups with tablespaces are not supported yet: back it up with pg_dump (dbkeep backup without --physical)",
                spaces.trim()
            )));
        }
        Ok(id)
    }

    /// A base backup into `out` (see the module's doc), spooled in `spool` (a private, empty
    /// directory). Fails unless pg_basebackup exits 0 and what it wrote is complete.
    pub fn base_backup(
        &self,
        spool: &Path,
        out: &mut dyn Write,
    ) -> Result<DumpInfo, PostgresError> {
        let system_identifier = self.base_backup_preflight()?;
        let tool_version = self.tool_version("pg_basebackup")?;
        let server_version = self.server_not_newer_than("pg_basebackup", &tool_version)?;
        let mut cmd = self.command("pg_basebackup", &self.conn.database);
        cmd.arg("-d")
            .arg(self.conninfo(&self.conn.database))
            .arg("-D")
            .arg(spool)
            .args([
                "--format=tar",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--manifest-checksums=SHA256",
                "--no-sync",
                "--label=dbkeep",
                "--no-password",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        let streamed = self.stream_base(spool, &mut child, out, &system_identifier);
        if streamed.is_err() {
            child.kill();
        }
        let waited = child.wait_success();
        let manifest = match (streamed, waited) {
            (Err(PostgresError::Stalled { tool, secs }), _) => {
                return Err(PostgresError::Stalled { tool, secs });
            }
            (Err(PostgresError::Interrupted), _) => return Err(PostgresError::Interrupted),
            // Its own error says more than a short archive.
            (_, Err(e)) => return Err(e.into()),
            (Err(e), Ok(_)) => return Err(e),
            (Ok(m), Ok(_)) => m,
        };
        // WAL-Ranges lists the newest timeline first: the backup ends on the first range and
        // starts on the last.
        let Some(range) = manifest.wal.first().copied() else {
            return Err(PostgresError::BaseBackup(
                "the backup manifest has no WAL range".into(),
            ));
        };
        let first = manifest.wal.last().copied().unwrap_or(range);
        Ok(DumpInfo {
            server_version: Some(server_version),
            tool_version: Some(format!("pg_basebackup {tool_version}")),
            row_counts: None,
            base_backup: Some(BaseBackup {
                system_identifier,
                timeline: range.timeline,
                start_lsn: first.start.to_string(),
                stop_lsn: range.end.to_string(),
            }),
        })
    }

    /// Streams what pg_basebackup writes into `out`; the backup's manifest.
    fn stream_base(
        &self,
        spool: &Path,
        child: &mut process::Running,
        out: &mut dyn Write,
        system_identifier: &str,
    ) -> Result<BackupManifest, PostgresError> {
        let problem = |what: String| PostgresError::BaseBackup(what);
        let base = spool.join("base.tar");
        let waited = Instant::now();
        let file = loop {
            match File::open(&base) {
                Ok(f) => break f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(problem(format!("cannot open {}: {e}", base.display()))),
            }
            if child.has_exited() {
                return Err(problem("pg_basebackup wrote no base.tar".into()));
            }
            // A tablespace's tar comes before base.tar: refused before it fills the spool.
            if let Some(other) = std::fs::read_dir(spool)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.ends_with(".tar") && n != "pg_wal.tar")
            {
                return Err(problem(format!(
                    "pg_basebackup wrote {other}: the cluster has a tablespace, and base backups with tablespaces are not supported yet"
                )));
            }
            if crate::signals::interrupted() {
                return Err(PostgresError::Interrupted);
            }
            if waited.elapsed() > FIRST_FILE {
                return Err(PostgresError::Stalled {
                    tool: "pg_basebackup (waiting for its checkpoint and first file)".into(),
                    secs: FIRST_FILE.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut builder = tar::Builder::new(out);
        let mut follow = Follow::new(file, child, self.stall_timeout);
        // The tar reader asks for a block or a header at a time: read the file in large
        // pieces instead (one system call and one signal check per MiB).
        let mut reading = io::BufReader::with_capacity(1 << 20, &mut follow);
        let copied = copy_entries(&mut reading, &mut builder, "", |_| true);
        let control = copied.as_ref().ok().copied().flatten();
        match reading.get_ref().stopped {
            Some(Stopped::Interrupted) => return Err(PostgresError::Interrupted),
            Some(Stopped::Stalled) => {
                return Err(PostgresError::Stalled {
                    tool: "pg_basebackup".into(),
                    secs: self.stall_timeout.as_secs(),
                });
            }
            None => {}
        }
        copied.map_err(problem)?;
        // The backup is of the cluster the preflight identified (pg_control's first field).
        match (control, system_identifier.parse::<u64>()) {
            (Some(id), Ok(want))
                if u64::from_le_bytes(id) == want || u64::from_be_bytes(id) == want => {}
            (Some(id), _) => {
                return Err(problem(format!(
                    "the backup's global/pg_control is of the cluster {}, not {system_identifier}: DATABASE_URL's server changed during the backup",
                    u64::from_le_bytes(id)
                )));
            }
            (None, _) => return Err(problem("the backup holds no global/pg_control".into())),
        }
        // The rest of base.tar (its end-of-archive blocks), until pg_basebackup is done.
        io::copy(&mut reading, &mut io::sink())
            .map_err(|e| problem(format!("reading base.tar: {e}")))?;
        drop(reading);
        drop(follow);
        // Anything but base.tar, pg_wal.tar and the manifest is a tablespace's tar.
        let mut names: Vec<String> = std::fs::read_dir(spool)
            .map_err(|e| problem(format!("cannot list {}: {e}", spool.display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if let Some(other) = names
            .iter()
            .find(|n| !matches!(n.as_str(), "base.tar" | "pg_wal.tar" | MANIFEST_ENTRY))
        {
            return Err(problem(format!(
                "pg_basebackup wrote {other}: the cluster has a tablespace, and base backups with tablespaces are not supported yet"
            )));
        }
        let wal = File::open(spool.join("pg_wal.tar"))
            .map_err(|e| problem(format!("pg_basebackup wrote no pg_wal.tar: {e}")))?;
        copy_entries(&mut io::BufReader::new(wal), &mut builder, "pg_wal/", |h| {
            h.entry_type().is_file()
        })
        .map_err(problem)?;
        let bytes = std::fs::read(spool.join(MANIFEST_ENTRY))
            .map_err(|e| problem(format!("pg_basebackup wrote no backup_manifest: {e}")))?;
        let manifest = BackupManifest::parse(&bytes).map_err(problem)?;
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        builder
            .append_data(&mut header, MANIFEST_ENTRY, bytes.as_slice())
            .map_err(PostgresError::Output)?;
        builder.finish().map_err(PostgresError::Output)?;
        Ok(manifest)
    }
}

/// Copies each entry of the tar `from` that `keep` takes into `to`, its path prefixed with
/// `prefix`; a file must be a regular file or directory (see [`super::archive`]). Returns the
/// first 8 bytes of `global/pg_control` (the system identifier) when it passed.
fn copy_entries<R: Read, W: Write>(
    from: &mut R,
    to: &mut tar::Builder<W>,
    prefix: &str,
    keep: impl Fn(&tar::Header) -> bool,
) -> Result<Option<[u8; 8]>, String> {
    let mut control = None;
    let mut tar = tar::Archive::new(from);
    let entries = tar
        .entries()
        .map_err(|e| format!("cannot read pg_basebackup's tar: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read pg_basebackup's tar: {e}"))?;
        let header = entry.header().clone();
        if !keep(&header) {
            continue;
        }
        let kind = header.entry_type();
        if !kind.is_file() && !kind.is_dir() {
            let path = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(format!(
                "pg_basebackup's tar holds {path}, which is not a file or directory (a tablespace's link): base backups with tablespaces are not supported yet"
            ));
        }
        let path = entry
            .path()
            .map_err(|e| format!("an entry's path cannot be read: {e}"))?
            .into_owned();
        let mut header = header;
        let name = format!("{prefix}{}", path.display());
        if name == "global/pg_control" {
            let mut bytes = Vec::new();
            let mut entry = entry;
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read pg_control: {e}"))?;
            control = bytes.get(..8).and_then(|b| b.try_into().ok());
            to.append_data(&mut header, name, bytes.as_slice())
        } else {
            to.append_data(&mut header, name, entry)
        }
        .map_err(|e| format!("writing the backup: {e}"))?;
    }
    Ok(control)
}
