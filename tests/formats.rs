//! Every codec × {plain, encrypted} × {sql, custom} on PostgreSQL and every codec × {plain,
//! encrypted} on SQLite: each backup opens with the standard tools and restores to exactly the
//! original. And the custom format's failures: refused before the live database is touched, or
//! rolled back.

use crate::common::{TestEnv, have, require, tool_accepts};
use crate::encryption::keygen;
use crate::postgres::{
    aside_databases, assert_untouched, flipped_byte_is_refused, good_backup_then_a_change,
    incomplete_backup_fails, intact_backup_fails_to_load, plant, setup,
};
use crate::sqlite::{rows, sqlite_env};
use std::path::{Path, PathBuf};
use std::process::Command;

const CODECS: [(&str, &str); 3] = [("gzip", ".gz"), ("zstd", ".zst"), ("none", "")];

fn configure(env: &mut TestEnv, codec: &str, recipient: Option<&str>) {
    env.set("BACKUP_COMPRESSION", codec);
    match recipient {
        Some(r) => env.set("BACKUP_ENCRYPT_RECIPIENTS", r),
        None => env.unset("BACKUP_ENCRYPT_RECIPIENTS"),
    };
}

/// Opens a stored file with the standard tools only (`age -d`, `gzip -t`/`zstd -t`, then
/// `gzip -dc`/`zstd -dc`); returns the plain dump's path.
fn open_with_standard_tools(env: &TestEnv, file: &Path, codec: &str, encrypted: bool) -> PathBuf {
    let mut current = file.to_path_buf();
    if encrypted {
        assert!(require("the age command", have("age"), "age"));
        let out = env.path().join("decrypted");
        let st = Command::new("age")
            .args(["-d", "-i"])
            .arg(env.path().join("key.txt"))
            .arg("-o")
            .arg(&out)
            .arg(&current)
            .status()
            .unwrap();
        assert!(st.success(), "age -d {}", file.display());
        current = out;
    }
    let tool = match codec {
        "none" => return current,
        "gzip" => "gzip",
        _ => {
            assert!(require("the zstd command", have("zstd"), "zstd"));
            "zstd"
        }
    };
    assert!(tool_accepts(tool, &current), "{tool} -t {}", file.display());
    let out = env.path().join("decompressed");
    let st = Command::new(tool)
        .arg("-dc")
        .arg(&current)
        .stdout(std::fs::File::create(&out).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    out
}

fn stored_name(name: &str, ext: &str, suffix: &str, encrypted: bool) -> String {
    format!("{name}{ext}{suffix}{}", if encrypted { ".age" } else { "" })
}

#[test]
fn postgres_round_trips_every_codec_encryption_and_format() {
    let Some((pg, mut env)) = setup() else { return };
    let before = pg.normalized_dump("appdb");
    let public = keygen(&env, "key.txt");
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", "key.txt");
    env.set("BACKUP_RESTORE_JOBS", "2");
    for (format, ext) in [("sql", ".sql"), ("custom", ".dump")] {
        env.set("BACKUP_PG_FORMAT", format);
        for (codec, suffix) in CODECS {
            for encrypted in [false, true] {
                configure(&mut env, codec, encrypted.then_some(public.as_str()));
                let name = format!(
                    "{format}_{codec}_{}",
                    if encrypted { "age" } else { "plain" }
                );
                env.run(&["backup", "--name", &name]).ok();
                let m = env.manifest(&name);
                // A custom archive with gzip is compressed by pg_dump, as pg_dump -Fc does: no
                // .gz around it, and a manifest that a dbkeep reading version 1 refuses rather
                // than decompress twice.
                let by_pg_dump = format == "custom" && codec == "gzip";
                let (suffix, outer) = if by_pg_dump {
                    ("", "none")
                } else {
                    (suffix, codec)
                };
                let file = stored_name(&name, ext, suffix, encrypted);
                assert_eq!(m["data_file"], file.as_str(), "{name}");
                assert_eq!(m["pg_format"], format, "{name}");
                assert_eq!(m["compression"], codec, "{name}");
                assert_eq!(m["encryption"], if encrypted { "age" } else { "none" });
                assert_eq!(
                    m["archive_compressed"].as_bool(),
                    by_pg_dump.then_some(true)
                );
                assert_eq!(m["manifest_version"], if by_pg_dump { 2 } else { 1 });

                let plain =
                    open_with_standard_tools(&env, &env.backup_dir().join(&file), outer, encrypted);
                if format == "custom" {
                    // pg_restore reads what the standard tools give back, without dbkeep.
                    let mut list = pg.client("pg_restore", "postgres", "postgres");
                    let out = list.arg("--list").arg(&plain).output().unwrap();
                    let toc = String::from_utf8_lossy(&out.stdout);
                    assert!(out.status.success() && toc.contains("TABLE DATA sales items"));
                    // pg_dump's own gzip (the header's compression), or none under dbkeep's.
                    let gzip_inside = toc.lines().any(|l| {
                        l.starts_with(";     Compression:")
                            && !l.ends_with(" 0")
                            && !l.ends_with("none")
                    });
                    assert_eq!(gzip_inside, by_pg_dump, "{name}: {toc}");
                } else {
                    let text = std::fs::read_to_string(&plain).unwrap();
                    assert!(text.contains("-- PostgreSQL database dump complete"));
                }

                env.run(&["verify", &name]).ok();
                pg.sql_as(
                    "app",
                    "appdb",
                    "DELETE FROM sales.items WHERE id % 7 = 0; DROP VIEW sales.expensive;
                     CREATE TABLE junk (x int); SELECT nextval('audit.counter');",
                );
                assert_ne!(pg.normalized_dump("appdb"), before);
                env.run(&["restore", &name, "--yes"]).ok();
                assert_eq!(pg.normalized_dump("appdb"), before, "restore of {name}");
            }
        }
    }
    assert_eq!(aside_databases(&pg), "");
    // Restores leave no staged archive behind.
    let left: Vec<String> = env
        .files()
        .into_iter()
        .filter(|f| !f.ends_with(".json") && !f.contains("_plain.") && !f.contains("_age."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn damaged_or_failing_custom_archives_leave_the_live_database_as_it_was() {
    let Some((pg, mut env)) = setup() else { return };
    env.set("BACKUP_PG_FORMAT", "custom");
    env.set("BACKUP_COMPRESSION", "none");
    let live = good_backup_then_a_change(&env, &pg);
    let archive = std::fs::read(env.backup_dir().join("good.dump")).unwrap();

    // 1. Truncated with a matching checksum: pg_restore finds it incomplete; refused before the
    //    database is touched, and the staged copy is gone.
    plant(
        &env,
        "good",
        "cut",
        ".dump",
        &archive[..archive.len() * 2 / 3],
    );
    incomplete_backup_fails(&env, &pg, &live, "cut", "archive", "pg_restore");

    // 2. Not an archive at all (a plain dump under a custom manifest).
    plant(&env, "good", "text", ".dump", b"-- just text\nSELECT 1;\n");
    env.run(&["restore", "text", "--yes"]).code(1);
    assert_untouched(&pg, &live);

    // 3. A flipped byte: the checksum refuses it.
    flipped_byte_is_refused(&env, &pg, &live, "good", "good.dump");

    // 4. An intact archive that fails while pg_restore -j loads it (an owner the restoring
    //    role may not assign): the partial database goes, the original comes back.
    pg.sql(
        "appdb",
        "CREATE ROLE ghost; CREATE TABLE public.haunted (x int); ALTER TABLE public.haunted OWNER TO ghost;
         GRANT SELECT ON public.haunted TO app;",
    );
    env.run(&["backup", "--name", "haunted"]).ok();
    let live = pg.normalized_dump("appdb");
    intact_backup_fails_to_load(&env, &pg, &live, "haunted", "ghost");
    let scratch: Vec<String> = env
        .files()
        .into_iter()
        .filter(|f| f.starts_with(".dbkeep-tmp") || f.contains("restore"))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}

#[test]
fn sqlite_round_trips_every_codec_and_encryption() {
    let mut env = sqlite_env(300);
    let db = env.path().join("app.db");
    let before = rows(&db);
    let public = keygen(&env, "key.txt");
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", "key.txt");
    // Ignored for SQLite.
    env.set("BACKUP_PG_FORMAT", "custom");
    for (codec, suffix) in CODECS {
        for encrypted in [false, true] {
            configure(&mut env, codec, encrypted.then_some(public.as_str()));
            let name = format!("lite_{codec}_{}", if encrypted { "age" } else { "plain" });
            env.run(&["backup", "--name", &name]).ok();
            let m = env.manifest(&name);
            let file = stored_name(&name, ".db", suffix, encrypted);
            assert_eq!(m["data_file"], file.as_str());
            assert!(m.get("pg_format").is_none());
            let plain =
                open_with_standard_tools(&env, &env.backup_dir().join(&file), codec, encrypted);
            assert_eq!(
                rows(&plain),
                before,
                "{name} opened with the standard tools"
            );
            env.run(&["verify", &name]).ok();
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute("DELETE FROM people WHERE id % 3 = 0", [])
                .unwrap();
            env.run(&["restore", &name, "--yes"]).ok();
            assert_eq!(rows(&db), before, "restore of {name}");
        }
    }
}
