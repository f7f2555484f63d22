//! The Debian package (`packaging/build-deb`, cargo-deb), built from the binary under test:
//! its contents, an install with `apt-get install ./dbkeep_*.deb`, `man dbkeep`, the units
//! through `systemd-analyze verify`, the nightly unit's command run as the `dbkeep` user on a
//! SQLite database (backup, drill, restore equal to the original), and a purge that leaves
//! nothing behind but the backups. Needs root (it installs a package on this machine): run
//! by CI, skipped elsewhere with the reason.

use crate::common::{have, require};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CARGO_DEB: &str = "/opt/dbkeep-cargo-deb/bin/cargo-deb";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path under the roots a package touches, but the package manager's own records.
fn tree() -> BTreeSet<PathBuf> {
    const SKIP: &[&str] = &[
        "/var/lib/dpkg",
        "/var/lib/apt",
        "/var/cache",
        "/var/log/apt",
        "/var/log/dpkg.log",
        "/var/log/alternatives.log",
        "/etc/passwd-",
        "/etc/group-",
        "/etc/shadow-",
        "/etc/gshadow-",
        "/etc/.pwd.lock",
        "/etc/ld.so.cache",
    ];
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if SKIP.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            out.insert(p.clone());
            if is_dir {
                walk(&p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for root in [
        "/etc",
        "/usr",
        "/var/lib",
        "/var/log",
        "/opt/dbkeep-package-test",
    ] {
        walk(Path::new(root), &mut out);
    }
    out
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "dbkeep"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

/// Puts the machine back as the test found it, whatever the test did: the package purged,
/// and the user and the directory the test made (neither existed before: checked at start).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-qq", "dbkeep"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
        let _ = std::fs::remove_dir_all("/var/lib/dbkeep");
        let _ = std::fs::remove_dir_all("/opt/dbkeep-package-test");
        let _ = Command::new("userdel").arg("dbkeep").output();
    }
}

#[test]
fn the_debian_package_installs_runs_the_nightly_backup_as_dbkeep_and_purges_to_the_backups() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the package test installs a package: run CI as root"
        );
        eprintln!("SKIPPED: the package test installs a package and needs root");
        return;
    }
    let cargo_deb = std::env::var("CARGO_DEB").unwrap_or_else(|_| CARGO_DEB.into());
    if !require(
        "cargo-deb",
        Path::new(&cargo_deb).exists(),
        "cargo-deb: cargo install --locked cargo-deb --version 3.8.0 --root /opt/dbkeep-cargo-deb",
    ) {
        return;
    }
    for (program, package) in [
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("man", "man-db"),
        ("systemd-analyze", "systemd"),
        ("runuser", "util-linux"),
    ] {
        if !require(program, have(program), package) {
            return;
        }
    }
    // Never over an operator's dbkeep: this test removes what it installs.
    let user_exists = Command::new("getent")
        .args(["passwd", "dbkeep"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        !installed() && !user_exists && !Path::new("/var/lib/dbkeep").exists(),
        "dbkeep is installed on this machine (the package, the dbkeep user or /var/lib/dbkeep): \
         the package test installs and purges its own; remove them first \
         (apt-get purge dbkeep; userdel dbkeep; rm -r /var/lib/dbkeep)"
    );
    let _cleanup = Cleanup;
    let before = tree();

    // Build it from the binary under test.
    let out_dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = run(Command::new(root.join("packaging/build-deb"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_dbkeep"),
            "--fast",
            "--output",
        ])
        .arg(out_dir.path())
        .env("CARGO_DEB", &cargo_deb));
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}: {}", out_dir.path().display(), text(&built)));
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("dbkeep_0.1.0-1_"), "{name}");

    // What it holds, with the modes the secrets need.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/dbkeep",
        "./usr/lib/systemd/system/dbkeep.service",
        "./usr/lib/systemd/system/dbkeep.timer",
        "./usr/lib/systemd/system/dbkeep-serve.service",
        "./etc/dbkeep/dbkeep.toml",
        "./etc/dbkeep/dbkeep.env",
        "./usr/share/man/man1/dbkeep.1.gz",
        "./usr/share/man/man1/dbkeep-backup.1.gz",
        "./usr/share/man/man1/dbkeep-wal-fetch.1.gz",
        "./usr/share/bash-completion/completions/dbkeep",
        "./usr/share/zsh/vendor-completions/_dbkeep",
        "./usr/share/fish/vendor_completions.d/dbkeep.fish",
        "./usr/share/doc/dbkeep/copyright",
        "./usr/share/doc/dbkeep/README.md",
        "./usr/share/doc/dbkeep/LICENSE-MIT",
        "./usr/share/doc/dbkeep/LICENSE-APACHE",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        if path.ends_with("dbkeep.env") {
            assert!(
                line.starts_with("-rw------- root/root") || line.starts_with("-rw------- 0/0"),
                "{line}"
            );
        }
    }
    assert!(
        !listing.contains("manpages"),
        "the hidden manpages command has a page: {listing}"
    );
    let fields = text(&run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Depends", "Suggests"])));
    for dep in ["libc6", "adduser", "postgresql-client", "age"] {
        assert!(fields.contains(dep), "{dep} missing: {fields}");
    }

    let control = tempfile::tempdir().unwrap();
    let control = control.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    for f in ["/etc/dbkeep/dbkeep.toml", "/etc/dbkeep/dbkeep.env"] {
        assert!(conffiles.lines().any(|l| l == f), "{f}: {conffiles}");
    }

    // Installed the way an operator would.
    let install = run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(installed(), "{}", text(&install));
    let passwd = text(&run(Command::new("getent").args(["passwd", "dbkeep"])));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[5], "/var/lib/dbkeep");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    let mode = |p: &str| {
        let m = std::fs::metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.uid(), m.gid())
    };
    let (env_mode, env_uid, _) = mode("/etc/dbkeep/dbkeep.env");
    assert_eq!((env_mode, env_uid), (0o600, 0));
    let (toml_mode, toml_uid, toml_gid) = mode("/etc/dbkeep/dbkeep.toml");
    assert_eq!((toml_mode, toml_uid), (0o640, 0));
    assert_eq!(
        toml_gid,
        nix::unistd::Gid::from_raw(fields[3].parse().unwrap()).as_raw()
    );
    assert_eq!(mode("/var/lib/dbkeep/backups"), (0o700, uid, toml_gid));
    let version = text(&run(Command::new("/usr/bin/dbkeep").arg("--version")));
    assert!(version.starts_with("dbkeep 0.1.0"), "{version}");

    // man dbkeep renders, and so does a command's page.
    for (page, expect) in [("dbkeep", "completions"), ("dbkeep-backup", "--physical")] {
        let shown = text(&run(Command::new("man")
            .args(["-P", "cat", page])
            .env("MANWIDTH", "100")
            .env_remove("MAN_KEEP_FORMATTING")));
        assert!(shown.contains("SYNOPSIS"), "{page}: {shown}");
        assert!(shown.contains(expect), "{page} lacks {expect}: {shown}");
    }
    // The completions are loadable and are what the binary prints.
    let complete = text(&run(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/dbkeep && complete -p dbkeep",
    ])));
    assert!(complete.contains("dbkeep"), "{complete}");
    let zsh = text(&run(
        Command::new("/usr/bin/dbkeep").args(["completions", "zsh"])
    ));
    assert_eq!(
        std::fs::read_to_string("/usr/share/zsh/vendor-completions/_dbkeep").unwrap(),
        zsh
    );

    // systemd accepts the units as installed.
    let units = [
        "/usr/lib/systemd/system/dbkeep.service",
        "/usr/lib/systemd/system/dbkeep.timer",
        "/usr/lib/systemd/system/dbkeep-serve.service",
    ];
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success(), "{said}");
    assert!(
        !said.lines().any(|l| l.contains("dbkeep")),
        "systemd-analyze warns about a dbkeep unit: {said}"
    );
    let calendar = run(Command::new("systemd-analyze").args(["calendar", "*-*-* 02:00:00"]));
    assert!(text(&calendar).contains("02:00:00"), "{}", text(&calendar));

    // The nightly unit's command, as its user, in its working directory, on a SQLite database
    // the dbkeep user may read; the backup lands where the unit may write.
    let unit = std::fs::read_to_string(units[0]).unwrap();
    let key = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k}= missing from {unit}"))
            .to_owned()
    };
    let (user, workdir, exec) = (key("User"), key("WorkingDirectory"), key("ExecStart"));
    assert_eq!(user, "dbkeep");
    assert!(
        unit.contains("ReadWritePaths=-/var/lib/dbkeep/backups"),
        "{unit}"
    );
    let app = Path::new("/opt/dbkeep-package-test");
    std::fs::create_dir_all(app).unwrap();
    let db = app.join("app.db");
    crate::sqlite::make_db(&db, 500);
    run(Command::new("chown").args(["-R", "dbkeep:dbkeep"]).arg(app));
    let url = format!("sqlite:///{}", db.display());
    let as_dbkeep = |args: &[&str], url: &str| {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &user, "--"])
            .args(args)
            .current_dir(&workdir)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("DATABASE_URL", url);
        cmd.output().unwrap()
    };
    let exec: Vec<&str> = exec.split_whitespace().collect();
    let o = as_dbkeep(&exec, &url);
    assert!(
        o.status.success(),
        "{exec:?}: {}{}",
        text(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let run_cli = |args: &[&str], url: &str| {
        let mut argv = vec!["/usr/bin/dbkeep", "--config", "/etc/dbkeep/dbkeep.toml"];
        argv.extend_from_slice(args);
        let o = as_dbkeep(&argv, url);
        assert!(
            o.status.success(),
            "{argv:?}: {}{}",
            text(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        text(&o)
    };
    let list: serde_json::Value =
        serde_json::from_str(&run_cli(&["list", "--json"], &url)).unwrap();
    let backup = &list["backups"][0];
    assert_eq!(backup["success"], true, "{list}");
    let backup_name = backup["backup_name"].as_str().unwrap().to_owned();
    let files: Vec<PathBuf> = std::fs::read_dir("/var/lib/dbkeep/backups")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains(&backup_name)),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(std::fs::metadata(f).unwrap().uid(), uid, "{}", f.display());
    }
    assert!(
        std::fs::read_to_string("/var/log/dbkeep/backup.log")
            .unwrap()
            .contains(&backup_name)
    );
    let drill = run_cli(&["verify", "--restore", &backup_name], &url);
    assert!(
        drill.contains("row counts of all 2 tables equal the manifest's (500 rows)"),
        "{drill}"
    );
    let copy = app.join("restored.db");
    let copy_url = format!("sqlite:///{}", copy.display());
    run_cli(&["restore", &backup_name, "--yes"], &copy_url);
    let rows = |p: &Path| {
        let c = rusqlite::Connection::open(p).unwrap();
        let mut st = c
            .prepare("SELECT id, name, score, photo FROM people ORDER BY id")
            .unwrap();
        st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>()
    };
    let original = rows(&db);
    assert_eq!(original.len(), 500);
    assert_eq!(rows(&copy), original);
    std::fs::remove_dir_all(app).unwrap();

    // Purged: nothing of the package is left but the backups (and the user who owns them).
    let purge = run(Command::new("apt-get")
        .args(["purge", "-y", "-qq", "dbkeep"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(!installed(), "{}", text(&purge));
    let after = tree();
    let left: Vec<&PathBuf> = after.difference(&before).collect();
    let stray: Vec<&&PathBuf> = left
        .iter()
        .filter(|p| {
            **p != Path::new("/var/lib/dbkeep") && !p.starts_with("/var/lib/dbkeep/backups")
        })
        .collect();
    assert!(stray.is_empty(), "the purge left {stray:?}");
    let kept: Vec<&&PathBuf> = left
        .iter()
        .filter(|p| p.to_string_lossy().contains(&backup_name))
        .collect();
    assert!(!kept.is_empty(), "the purge deleted the backups: {left:?}");
    assert!(!Path::new("/usr/bin/dbkeep").exists());
}
