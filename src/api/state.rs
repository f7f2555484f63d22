//! The server's state: settings, tokens, limits, the audit log, and the catalog cache (keyed by
//! the backup directory's mtime, or a short time to live on object storage).

use super::*;
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::ops::Ops;
use audit::Audit;
use auth::Tokens;
use axum::body::Bytes;
use limits::Limits;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One configured database: its operations and its catalog cache.
pub struct Db {
    pub(super) name: String,
    pub(super) ops: Arc<Ops>,
    pub(super) cache: Mutex<Option<CatalogCache>>,
    /// Held while the catalog is re-read, so concurrent misses wait for one read.
    pub(super) rebuild: Mutex<()>,
}

/// What every handler shares.
pub struct AppState {
    /// Every configured database by name.
    pub(super) dbs: std::collections::BTreeMap<String, Arc<Db>>,
    /// The database of a request without `?database=` (the one `dbkeep serve` was started
    /// for), if it is configured.
    pub(super) default_db: Option<String>,
    pub(super) tokens: Tokens,
    pub(super) no_auth: bool,
    pub(super) limits: Limits,
    pub(super) audit: Audit,
    pub(super) trusted_proxies: Vec<IpAddr>,
    pub(super) health_max_age: Duration,
    pub(super) body_timeout: Duration,
    pub(super) running: Arc<AtomicUsize>,
    pub(super) metrics: metrics::Metrics,
    pub(super) metrics_public: bool,
    /// Set when the server shuts down: event streams end.
    pub(super) stopping: std::sync::atomic::AtomicBool,
}

/// The catalog and the list response made from it, valid while the backup directory's mtime is
/// unchanged (and, for the response, whose free-space figure ages, for [`LIST_TTL`]). A
/// repository without such a stamp (object storage: a LIST per check would cost what the cache
/// saves) is cached for [`CATALOG_TTL`], and every write of this server invalidates it.
pub(super) struct CatalogCache {
    /// The backup directory's mtime when the catalog was read; `None` on object storage.
    pub(super) stamp: Option<SystemTime>,
    pub(super) read: Instant,
    pub(super) catalog: Arc<Catalog>,
    pub(super) list: Option<(Instant, Bytes)>,
}

impl CatalogCache {
    /// Whether this is still the repository as it is (its stamp now is `stamp`).
    pub(super) fn fresh(&self, stamp: Option<SystemTime>) -> bool {
        match stamp {
            Some(_) => self.stamp == stamp,
            None => self.stamp.is_none() && self.read.elapsed() < CATALOG_TTL,
        }
    }
}

/// How long a catalog of object storage is served from the cache.
pub(super) const CATALOG_TTL: Duration = Duration::from_secs(5);

/// A catalog read at least this long after the directory's last change saw that change: a later
/// change gives the directory a later mtime, even with a coarse file-system clock.
pub(super) const MTIME_SLACK: Duration = Duration::from_millis(50);

pub(super) const LIST_TTL: Duration = Duration::from_secs(5);

impl AppState {
    /// Builds the state; the API never waits for the repository lock (409 instead).
    pub fn new(settings: &Settings, no_auth: bool) -> Result<Self, ServeError> {
        let mut dbs = std::collections::BTreeMap::new();
        let names: Vec<String> = settings
            .all_databases()
            .iter()
            .map(|s| s.database.clone())
            .collect();
        // Without `?database=`: the database `serve` was started for (`--database`), unless
        // that is the unnamed one and only named ones are configured.
        let default_db = names
            .contains(&settings.database)
            .then(|| settings.database.clone());
        for name in names {
            let mut s = settings.for_database(&name)?;
            s.lock_timeout = Duration::ZERO;
            let ops = Ops::new(s)?.without_signal_handlers();
            dbs.insert(
                name.clone(),
                Arc::new(Db {
                    name,
                    ops: Arc::new(ops),
                    cache: Mutex::new(None),
                    rebuild: Mutex::new(()),
                }),
            );
        }
        Ok(Self {
            dbs,
            default_db,
            tokens: Tokens::load(&settings.api)?,
            no_auth,
            limits: Limits::new(settings.api.rate_limits.as_deref())?,
            audit: Audit::open(settings.api.audit_log.as_deref()).map_err(ServeError::Audit)?,
            trusted_proxies: settings.api.trusted_proxies.clone(),
            health_max_age: settings.api.health_max_age,
            body_timeout: settings.api.body_timeout,
            running: Arc::new(AtomicUsize::new(0)),
            metrics: metrics::Metrics::default(),
            metrics_public: settings.api.metrics_public,
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Operations still running on blocking threads.
    pub fn running(&self) -> Arc<AtomicUsize> {
        self.running.clone()
    }
}

impl AppState {
    /// The database a request names with `?database=` (else the default one); 404 with the
    /// configured names for another.
    pub(super) fn db(&self, name: Option<&str>) -> Result<Arc<Db>, ApiError> {
        let known = || {
            self.dbs
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(wanted) = name.or(self.default_db.as_deref()) else {
            return Err(ApiError::bad_request(format!(
                "only named databases are configured: choose one with ?database= ({})",
                known()
            )));
        };
        self.dbs.get(wanted).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no database named {wanted:?} is configured: use ?database= with one of {}",
                    known()
                ),
            )
        })
    }

    /// The databases `/healthz`, `/metrics` and `GET /api/databases` cover: every configured
    /// one.
    pub(super) fn all_dbs(&self) -> impl Iterator<Item = &Arc<Db>> {
        self.dbs.values()
    }
}

impl Db {
    /// When the repository last changed (the backup directory's mtime).
    pub(super) fn stamp(&self) -> Option<SystemTime> {
        self.ops.storage().changed_at()
    }

    /// The cached catalog, if the repository has not changed since it was read.
    pub(super) fn cached(&self, stamp: Option<SystemTime>) -> Option<Arc<Catalog>> {
        let cache = self.cache.lock().ok()?;
        let c = cache.as_ref()?;
        c.fresh(stamp).then(|| c.catalog.clone())
    }

    /// The catalog, cached until the backup directory changes. One caller re-reads it; the
    /// others wait for that read.
    pub(super) fn catalog(&self) -> Result<Arc<Catalog>, crate::error::Error> {
        if let Some(cat) = self.cached(self.stamp()) {
            return Ok(cat);
        }
        let _one_reader = self.rebuild.lock();
        let stamp = self.stamp();
        if let Some(cat) = self.cached(stamp) {
            return Ok(cat);
        }
        let read_at = SystemTime::now();
        let read = Instant::now();
        let cat = Arc::new(self.ops.catalog()?);
        // Cache only a read that began well after the change it is keyed on (see MTIME_SLACK).
        let keyed = stamp.is_none_or(|stamp| {
            read_at
                .duration_since(stamp)
                .is_ok_and(|gap| gap >= MTIME_SLACK)
        });
        if keyed && let Ok(mut cache) = self.cache.lock() {
            *cache = Some(CatalogCache {
                stamp,
                read,
                catalog: cat.clone(),
                list: None,
            });
        }
        Ok(cat)
    }

    /// The list response from the cache, without touching the disk beyond one stat.
    pub(super) fn cached_list(&self) -> Option<Bytes> {
        let stamp = self.stamp();
        let cache = self.cache.lock().ok()?;
        let c = cache.as_ref()?;
        let (made, body) = c.list.as_ref()?;
        (c.fresh(stamp) && made.elapsed() < LIST_TTL).then(|| body.clone())
    }

    pub(super) fn store_list(&self, catalog: &Arc<Catalog>, body: &Bytes) {
        if let Ok(mut cache) = self.cache.lock()
            && let Some(c) = cache.as_mut()
            && Arc::ptr_eq(&c.catalog, catalog)
        {
            c.list = Some((Instant::now(), body.clone()));
        }
    }

    pub(super) fn invalidate(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = None;
        }
    }
}
