//! Load and soak: 50 concurrent API clients on list, statistics and healthz while backups and a
//! restore run through the same server, for DBKEEP_SOAK_SECS seconds (90 by default; longer by
//! setting it). Zero 5xx, zero failed connections, RSS that does not keep growing, no
//! file-descriptor growth; prints the figures.

use crate::api::{Server, TOKEN};
use crate::sqlite::{rows, sqlite_env};
use reqwest::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 50;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[test]
fn fifty_clients_read_while_backups_and_a_restore_run() {
    let secs: u64 = std::env::var("DBKEEP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    let env = sqlite_env(60_000);
    let db = env.path().join("app.db");
    let before = rows(&db);
    env.run(&["backup", "--name", "base"]).ok();
    let s = Server::start(&env);
    let pid = s.pid();
    let base = s.base.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));

    // Warm up, then the baseline of descriptors.
    std::thread::sleep(Duration::from_millis(500));
    let fds_start = fds(pid);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (base, stop, total, failures, latencies) = (
                base.clone(),
                stop.clone(),
                total.clone(),
                failures.clone(),
                latencies.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let paths = ["/api/backup/list", "/api/backup/statistics", "/healthz"];
                let mut mine = Vec::new();
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let path = paths[n % paths.len()];
                    n += 1;
                    let t = Instant::now();
                    let r = client
                        .get(format!("{base}{path}"))
                        .bearer_auth(TOKEN)
                        .send();
                    mine.push(t.elapsed().as_micros() as u64);
                    total.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status().is_server_error() && path != "/healthz" => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{path}: {}", r.status()));
                        }
                        // healthz is 503 when the newest attempt failed: not a server error.
                        Ok(r)
                            if r.status().is_server_error()
                                && r.status() != StatusCode::SERVICE_UNAVAILABLE =>
                        {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{path}: {}", r.status()));
                        }
                        Ok(r) => {
                            let _ = r.bytes();
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                    }
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();

    // Meanwhile: a backup every few seconds, and one restore half-way; RSS and descriptors
    // sampled every second.
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut fd_samples = Vec::new();
    let (mut backups, mut conflicts, mut restored) = (0, 0, None);
    let mut next_backup = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_backup {
            let (status, body) = s.call(
                reqwest::Method::POST,
                "/api/backup/create",
                Some(TOKEN),
                None,
            );
            match status {
                StatusCode::OK => backups += 1,
                StatusCode::CONFLICT => conflicts += 1,
                other => failures
                    .lock()
                    .unwrap()
                    .push(format!("create: {other} {body}")),
            }
            next_backup = Instant::now() + Duration::from_secs(3);
        }
        if restored.is_none() && start.elapsed() > Duration::from_secs(secs / 2) {
            let (status, body) = s.call(
                reqwest::Method::POST,
                "/api/backup/restore/base",
                Some(TOKEN),
                None,
            );
            assert_eq!(status, StatusCode::OK, "{body}");
            restored = Some(body["duration"].as_f64().unwrap_or(0.0));
        }
        rss.push(rss_kb(pid));
        fd_samples.push(fds(pid));
        std::thread::sleep(Duration::from_millis(1000));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let fds_end = fds(pid);
    let elapsed = start.elapsed().as_secs_f64();

    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let n = total.load(Ordering::Relaxed);
    // The first half warms up (allocator arenas, caches, the catalog growing with the backups
    // taken); after it, the last quarter against the third.
    let quarter = (rss.len() / 4).max(1);
    let early = median(rss[rss.len() - 2 * quarter..rss.len() - quarter].to_vec());
    let late = median(rss[rss.len() - quarter..].to_vec());
    eprintln!(
        "soak: {secs} s, {CLIENTS} clients, {n} requests ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        n as f64 / elapsed,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    eprintln!(
        "soak: {backups} backups ({conflicts} refused with 409 while another ran), restore {:.1} s; RSS median third quarter {} MB, last quarter {} MB, peak {} MB; descriptors {fds_start} at start, {fds_end} at the end (peak {})",
        restored.unwrap_or(0.0),
        early / 1024,
        late / 1024,
        rss.iter().max().copied().unwrap_or(0) / 1024,
        fd_samples.iter().max().copied().unwrap_or(0)
    );

    let timeline: Vec<String> = rss
        .iter()
        .step_by(10)
        .map(|kb| (kb / 1024).to_string())
        .collect();
    eprintln!("soak: RSS every 10 s (MB): {}", timeline.join(" "));
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(backups >= 3, "backups ran meanwhile: {backups}");
    assert!(restored.is_some());
    assert_eq!(rows(&db), before, "the restore put back the base backup");
    // RSS settles after the warm-up, and stays far below what a leak per request would reach.
    assert!(
        late <= early + early / 4 + 16 * 1024,
        "RSS keeps growing: {early} kB -> {late} kB"
    );
    assert!(
        rss.iter().max().copied().unwrap_or(0) < 256 * 1024,
        "peak RSS {} kB",
        rss.iter().max().copied().unwrap_or(0)
    );
    assert!(
        fds_end <= fds_start + 5,
        "descriptors grew: {fds_start} -> {fds_end}"
    );
    let stderr = s.stop_and_stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}
