//! The progress of the command's operation on a terminal (indicatif): a spinner line with the
//! phase, bytes read and written and the rate, drawn from [`crate::progress`] while the
//! command runs. Nothing is drawn under `--quiet` or when stderr is not a terminal (cron, a
//! pipe, a log file).

use super::output::human_bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Draws until dropped.
pub(super) struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A spinner for this command's operations, if stderr is a terminal and `quiet` is off.
pub(super) fn start(quiet: bool) -> Option<Spinner> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("dbkeep-progress".into())
        .spawn(move || draw(&flag))
        .ok()?;
    Some(Spinner {
        stop,
        thread: Some(thread),
    })
}

/// One line for people: `backup nightly_…  dumping  1.2 GiB read  300 MiB stored  45 MiB/s  12 s`.
pub(super) fn line(s: &crate::progress::Snapshot) -> String {
    let written = match s.kind {
        "restore" => "loaded",
        _ => "stored",
    };
    let mut text = format!("{} {}", s.kind, s.backup_name.as_deref().unwrap_or(""));
    text.push_str(&format!("  {}", s.phase));
    if s.bytes_read > 0 {
        text.push_str(&format!("  {} read", human_bytes(s.bytes_read)));
    }
    if s.bytes_written > 0 {
        text.push_str(&format!("  {} {written}", human_bytes(s.bytes_written)));
    }
    if s.rows > 0 {
        text.push_str(&format!("  {} rows", s.rows));
    }
    if s.rate_bytes_per_second > 0.0 {
        text.push_str(&format!(
            "  {}/s",
            human_bytes(s.rate_bytes_per_second as u64)
        ));
    }
    text.push_str(&format!("  {:.0} s", s.elapsed_seconds));
    text
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// A line only while an operation runs (not over a confirmation prompt).
fn draw(stop: &AtomicBool) {
    let mut bar: Option<ProgressBar> = None;
    while !stop.load(Ordering::SeqCst) {
        match crate::progress::running().last() {
            Some(s) => {
                let b = bar.get_or_insert_with(new_bar);
                b.set_message(line(s));
                b.tick();
            }
            None => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(120));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
