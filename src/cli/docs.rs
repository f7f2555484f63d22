//! Documentation generated from the clap definitions: shell completions (`dbkeep completions
//! SHELL`, clap_complete) and man pages (`dbkeep manpages DIR`, clap_mangen: dbkeep(1) and
//! dbkeep-COMMAND(1) for every command and subcommand), which the Debian package installs.

use super::Cli;
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dbkeep", &mut script);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the completion script to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// dbkeep(1)'s own sections after the generated ones (roff: a leading `.` is a request, `\-`
/// a minus sign).
const ROOT_SECTIONS: &str = r#".SH ENVIRONMENT
Settings come from the file of \fB\-\-config\fR (default: \fIdbkeep.toml\fR in the working
directory, if present), then the environment, then flags. The main variables:
.TP
\fBDATABASE_URL\fR
The database, in SQLAlchemy form: postgresql://, mysql:// or sqlite:/// URLs.
.TP
\fBBACKUP_DIR\fR
The repository: a directory or an s3://bucket/prefix URL (default ./backups).
.TP
\fBBACKUP_RETENTION_DAYS\fR, \fBBACKUP_KEEP_MIN\fR
Retention: backups older than this many days go, never the newest good ones.
.TP
\fBBACKUP_COMPRESS\fR, \fBBACKUP_COMPRESSION\fR
Whether and how backups are compressed (gzip, zstd).
.TP
\fBBACKUP_LOG_FILE\fR
The log file (default ./backup.log; off for none).
.TP
\fBBACKUP_ENCRYPT_RECIPIENTS\fR, \fBBACKUP_DECRYPT_IDENTITY_FILE\fR
age encryption of backups, and the identity that opens them.
.TP
\fBDBKEEP_API_TOKEN\fR
The bearer token of \fBdbkeep serve\fR.
.PP
Every setting is listed in /usr/share/doc/dbkeep/README.md.
.SH EXIT STATUS
0 success, 1 the operation failed, 2 bad usage or configuration;
\fBdbkeep wal fetch\fR: 1 when the archive has no such file, 126 for any other failure.
.SH FILES
.TP
/etc/dbkeep/dbkeep.toml, /etc/dbkeep/dbkeep.env
The Debian package's settings and secrets, used by its units dbkeep.service, dbkeep.timer
and dbkeep\-serve.service.
.TP
/var/lib/dbkeep/backups
The package's repository; a purge of the package keeps it.
.TP
/var/log/dbkeep/backup.log
The package's log.
.SH SEE ALSO
\fBpg_dump\fR(1), \fBpg_basebackup\fR(1), \fBsystemd.timer\fR(5), \fBage\fR(1)
"#;

/// Writes every man page into `dir` (made if missing) and names them on stdout.
pub fn manpages(dir: &Path) -> ExitCode {
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        clap_mangen::generate_to(Cli::command(), dir)?;
        // dbkeep(1) again, with its own sections instead of the --help epilogue.
        let root = clap_mangen::Man::new(Cli::command().after_help(None::<&str>));
        let mut page = Vec::new();
        root.render_title(&mut page)?;
        root.render_name_section(&mut page)?;
        root.render_synopsis_section(&mut page)?;
        root.render_description_section(&mut page)?;
        root.render_options_section(&mut page)?;
        root.render_subcommands_section(&mut page)?;
        page.extend_from_slice(ROOT_SECTIONS.as_bytes());
        root.render_version_section(&mut page)?;
        std::fs::write(dir.join(root.get_filename()), page)?;
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".1"))
            .collect();
        names.sort();
        Ok(names)
    });
    match written {
        Ok(names) => {
            println!("{}", names.join("\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the man pages into {}: {e} (give a directory you may write)",
                dir.display()
            );
            ExitCode::from(1)
        }
    }
}
