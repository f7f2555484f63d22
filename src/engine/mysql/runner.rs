//! The thread that runs a load's statements over one [`Connection`], in order, while the
//! calling thread reads and scans the next ones: a queue bounded by bytes between them, and a
//! watchdog that cuts the connection when nothing moved for the stall limit and the server is
//! not working on dbkeep's statement, or on a signal. The first failure stops both sides.

use super::connection::{self, Connection};
use super::tokens::ENGINES;
use super::*;
use crate::signals;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering, fence};
use std::sync::mpsc;
use std::time::Instant;

/// What a load hands the thread that runs its statements.
pub(super) enum Job {
    /// A statement the allowlist passed, without its delimiter.
    Run(Vec<u8>),
    /// After a `CREATE TABLE`: the server must say the table is stored in its own database
    /// (the engine named in the text was checked before; this catches what the session's
    /// defaults chose).
    Engine(String),
}

/// When a load last moved, for its watchdog.
struct Progress {
    start: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn tick(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        let ms = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

const STALLED: u8 = 1;
const INTERRUPTED: u8 = 2;

/// How many bytes of statements may wait for the runner: a few of mariadb-dump's 1 MB
/// `INSERT`s, so that a dump of large rows does not pile up in memory.
const QUEUED_MAX: usize = 8 * 1024 * 1024;

/// The bytes queued for the runner, and whether it stopped.
#[derive(Default)]
struct Budget {
    state: std::sync::Mutex<(usize, bool)>,
    changed: std::sync::Condvar,
}

impl Budget {
    /// Waits for room for `size` bytes (one statement always fits an empty queue); false when
    /// the runner stopped.
    fn take(&self, size: usize) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        while !st.1 && st.0 > 0 && st.0 + size > QUEUED_MAX {
            st = match self.changed.wait(st) {
                Ok(st) => st,
                Err(_) => return false,
            };
        }
        st.0 += size;
        !st.1
    }

    fn release(&self, size: usize) {
        if let Ok(mut st) = self.state.lock() {
            st.0 = st.0.saturating_sub(size);
        }
        self.changed.notify_all();
    }
}

/// Marks the budget closed when the runner stops, however it stops.
struct Closed<'a>(&'a Budget);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.1 = true;
        }
        self.0.changed.notify_all();
    }
}

/// What a load sends its runner, within the budget.
pub(super) struct Queue {
    tx: mpsc::Sender<Job>,
    budget: std::sync::Arc<Budget>,
}

impl Job {
    fn size(&self) -> usize {
        match self {
            Job::Run(sql) => sql.len(),
            Job::Engine(name) => name.len(),
        }
    }
}

impl Queue {
    /// Queues `job`; false when the runner stopped.
    pub(super) fn send(&self, job: Job) -> bool {
        self.budget.take(job.size()) && self.tx.send(job).is_ok()
    }
}

/// Whether `table`, just created in the connection's database, is stored there.
fn check_engine(conn: &mut Connection, table: &str) -> Result<(), MysqlError> {
    let engines = conn.column(&format!(
        "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {}",
        literal(table)
    ))?;
    match engines.as_slice() {
        [Some(e)] if ENGINES.iter().any(|ok| ok.eq_ignore_ascii_case(e)) => Ok(()),
        other => Err(MysqlError::Refused(format!(
            "the dump creates the table {} with the storage engine {}: dbkeep loads only tables that keep their rows in their own database ({})",
            ident(table),
            match other {
                [Some(e)] => e.clone(),
                _ => "the server does not name".into(),
            },
            ENGINES.join(", ")
        ))),
    }
}

/// The error of a load its watchdog stopped (`why`), if it did.
fn stopped_by(why: u8, database: &str, limit: Duration) -> Option<MysqlError> {
    match why {
        INTERRUPTED => Some(MysqlError::Interrupted),
        STALLED => Some(MysqlError::Stalled {
            tool: format!("the load into {database}"),
            secs: limit.as_secs(),
        }),
        _ => None,
    }
}

impl Mysql {
    /// Makes a connected session fit for a dump's statements: one statement per request,
    /// proven, and without the modes under which the server would read the text differently
    /// from the scanner, whatever the server's global sql_mode.
    fn prepare(c: &mut Connection) -> Result<(), MysqlError> {
        c.prove()?;
        c.run(b"SET SESSION sql_mode = ''")?;
        Ok(())
    }

    /// Runs statements on one connection to `database`, under watch: `produce` hands them to
    /// the queue (it runs on this thread; a runner thread executes them in order). The first
    /// failure stops both.
    pub(super) fn run_statements(
        &self,
        flavor: Flavor,
        database: &str,
        produce: &mut dyn FnMut(&Queue) -> Result<bool, MysqlError>,
    ) -> Result<(), MysqlError> {
        // Set by the runner once connected: the watchdog cuts the connection from the start of
        // its first request (the handshake is bounded by connect_timeout).
        let breaker = std::sync::OnceLock::<connection::Breaker>::new();
        let progress = Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        };
        let why = AtomicU8::new(0);
        let limit = self.stall_timeout;
        let (produced, ran) = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<Job>();
            let queue = Queue {
                tx,
                budget: std::sync::Arc::new(Budget::default()),
            };
            let budget = queue.budget.clone();
            // Dropped by the runner when it stops, however: the watchdog ends with it.
            let (stop_tx, stop_rx) = mpsc::channel::<()>();
            let (progress, why, breaker) = (&progress, &why, &breaker);
            // `why` is set before the breaker is looked at, and the runner looks at `why`
            // after publishing the breaker, each with a SeqCst fence between its store and its
            // load: at least one side sees the other's store, so a stop is never missed.
            let stop = move |reason: u8| {
                why.store(reason, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if let Some(b) = breaker.get() {
                    b.cut();
                }
            };
            scope.spawn(move || {
                let mut stall = self.stall(flavor, database);
                let stopped = |rx: &mpsc::Receiver<()>, wait: Duration| {
                    !matches!(rx.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout))
                };
                loop {
                    if stopped(&stop_rx, Duration::from_millis(200)) {
                        return;
                    }
                    if signals::interrupted() {
                        stop(INTERRUPTED);
                        return;
                    }
                    // Connecting is bounded by connect_timeout: the stall limit counts from the
                    // first request.
                    if breaker.get().is_some() && progress.idle() > limit {
                        if (stall.working)() {
                            progress.tick();
                        } else if progress.idle() > limit && !stopped(&stop_rx, Duration::ZERO) {
                            stop(STALLED);
                            return;
                        }
                    }
                }
            });
            let runner = scope.spawn(move || -> Result<(), MysqlError> {
                let _stop = stop_tx;
                let _closed = Closed(&budget);
                let mut conn =
                    Connection::connect(&self.conn, database, self.conn.connect_timeout())?;
                progress.tick();
                let _ = breaker.set(conn.breaker());
                fence(Ordering::SeqCst);
                if let Some(e) = stopped_by(why.load(Ordering::SeqCst), database, limit) {
                    // Stopped while connecting: the watchdog found no breaker to cut.
                    return Err(e);
                }
                Self::prepare(&mut conn)?;
                progress.tick();
                for job in rx {
                    let size = job.size();
                    match job {
                        Job::Run(sql) => conn.run(&sql)?,
                        Job::Engine(table) => check_engine(&mut conn, &table)?,
                    }
                    budget.release(size);
                    progress.tick();
                }
                Ok(())
            });
            let produced = produce(&queue);
            drop(queue);
            let ran = runner.join().unwrap_or_else(|_| {
                Err(connection::ConnectionError::Connect(
                    "the thread running the statements stopped unexpectedly".into(),
                )
                .into())
            });
            (produced, ran)
        });
        // A load that ran to its end stands, whatever the watchdog saw last.
        if let (Ok(true), Ok(())) = (&produced, &ran) {
            return Ok(());
        }
        if let Some(e) = stopped_by(why.load(Ordering::SeqCst), database, limit) {
            return Err(e);
        }
        // The runner's error is the cause when it stopped the producer.
        ran?;
        produced.map(drop)
    }
}
