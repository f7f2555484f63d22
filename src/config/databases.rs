//! Several databases in one configuration: `[databases.NAME]` tables of the config file, each
//! with the keys of the top level (its `database_url`, repository, copies and defaults). The
//! top level and the environment (`DATABASE_URL`, `BACKUP_DIR`, …) are the unnamed database,
//! [`DEFAULT_DATABASE`], so a configuration without tables works as before.
//!
//! A named database starts from the top level and the environment, then its table: what it does
//! not set it inherits, except its repository, which defaults to `<backup_dir>/NAME` (and each
//! inherited copy to `<copy>/NAME`), so two databases never share one by accident. Repositories
//! shared on purpose are refused as well: retention and the lock work per repository, and one
//! database's prune would judge another's backups.

use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The name of the unnamed database (`DATABASE_URL`, `BACKUP_DIR`, the top level of the file).
pub const DEFAULT_DATABASE: &str = "default";

/// The first key of `l` that only the top level may set (it concerns the whole service).
fn global_key(l: &Layer) -> Option<&'static str> {
    let keys: [(&'static str, bool); 13] = [
        ("databases", l.databases.is_some()),
        ("channels", l.channels.is_some()),
        ("schedule", l.schedule.is_some()),
        ("backup_log_file", l.backup_log_file.is_some()),
        ("dbkeep_api_token", l.dbkeep_api_token.is_some()),
        ("dbkeep_api_tokens_file", l.dbkeep_api_tokens_file.is_some()),
        ("dbkeep_audit_log", l.dbkeep_audit_log.is_some()),
        ("dbkeep_trusted_proxies", l.dbkeep_trusted_proxies.is_some()),
        ("dbkeep_rate_limits", l.dbkeep_rate_limits.is_some()),
        ("dbkeep_health_max_age", l.dbkeep_health_max_age.is_some()),
        ("dbkeep_metrics_public", l.dbkeep_metrics_public.is_some()),
        ("dbkeep_shutdown_grace", l.dbkeep_shutdown_grace.is_some()),
        ("dbkeep_body_timeout", l.dbkeep_body_timeout.is_some()),
    ];
    keys.iter().find(|(_, set)| *set).map(|(k, _)| *k)
}

/// A database name: a letter or digit, then letters, digits, `_` and `-` (64 at most); it
/// becomes a directory name, a metric label and a query parameter.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name != DEFAULT_DATABASE;
    if ok {
        Ok(())
    } else {
        Err(ConfigError::DatabaseName(name.to_owned()))
    }
}

/// The settings of the database of table `name`: `base` (the top level and the environment),
/// its own repository below the base one, then its table.
pub(super) fn named(base: &Settings, name: &str, layer: Layer) -> Result<Settings, ConfigError> {
    check_name(name)?;
    if let Some(key) = global_key(&layer) {
        return Err(ConfigError::DatabaseKey {
            database: name.to_owned(),
            key,
        });
    }
    if layer
        .database_url
        .as_deref()
        .is_none_or(|u| u.trim().is_empty())
    {
        return Err(ConfigError::DatabaseNoUrl(name.to_owned()));
    }
    let mut s = base.clone();
    s.database = name.to_owned();
    s.backup_dir = base.backup_dir.join(name);
    s.copy_to = base
        .copy_to
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.location = format!("{}/{name}", t.location);
            t
        })
        .collect();
    s.apply(layer)?;
    Ok(s)
}

/// A repository location as compared: a URL without repeated or trailing `/`; a path made
/// absolute with `.` and `..` resolved lexically (symbolic links are not followed: the
/// directory may not exist yet).
fn normalized(location: &str) -> String {
    let t = location.trim();
    if let Some((scheme, rest)) = t.split_once("://") {
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        return format!("{}://{}", scheme.to_ascii_lowercase(), parts.join("/"));
    }
    let path = std::path::absolute(t).unwrap_or_else(|_| PathBuf::from(t));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out.to_string_lossy().into_owned()
}

/// The databases commands covering all of them work on: the named ones, and the unnamed one
/// when it has a `DATABASE_URL` (or when there is nothing else).
pub(super) fn configured(all: &BTreeMap<String, Settings>) -> Vec<&Settings> {
    let named = all.len() > 1;
    all.values()
        .filter(|s| s.database != DEFAULT_DATABASE || s.database_url.is_some() || !named)
        .collect()
}

/// Refuses two databases sharing a repository (a primary or a copy), channels that are not
/// configured, and schedules of a database that is not.
pub(super) fn check(all: &BTreeMap<String, Settings>) -> Result<(), ConfigError> {
    let dbs = configured(all);
    let mut seen: Vec<(String, String)> = Vec::new();
    for s in &dbs {
        let own = std::iter::once(s.backup_dir.to_string_lossy().into_owned())
            .chain(s.copy_to.iter().map(|c| c.location.clone()));
        for location in own {
            let key = normalized(&location);
            // Within one database a copy may be the primary (BACKUP_DIR pointed at the
            // copy to restore from it); only two databases sharing one is refused.
            if let Some((other, _)) = seen.iter().find(|(db, l)| *l == key && *db != s.database) {
                return Err(ConfigError::SharedRepository {
                    a: other.clone(),
                    b: s.database.clone(),
                    location,
                });
            }
            seen.push((s.database.clone(), key));
        }
    }
    let known = || {
        dbs.iter()
            .map(|s| s.database.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(base) = all.get(DEFAULT_DATABASE) {
        let channel = |place: String, name: &String| {
            if base.channels.contains_key(name) {
                Ok(())
            } else {
                Err(crate::notify::ChannelError::Unknown {
                    place,
                    name: name.clone(),
                    known: base.channels.keys().cloned().collect::<Vec<_>>().join(", "),
                })
            }
        };
        for s in all.values() {
            let place = if s.database == DEFAULT_DATABASE {
                "notify".to_owned()
            } else {
                format!("[databases.{}] notify", s.database)
            };
            for n in s.notify.iter().flatten() {
                channel(place.clone(), n)?;
            }
        }
        // A healthchecks check watches one database: shared, one's success would hide the
        // other's missed run.
        for (name, c) in base.channels.iter() {
            if c.kind != crate::notify::channel::ChannelKind::Healthchecks {
                continue;
            }
            let mut watchers: Vec<&str> = dbs
                .iter()
                .filter(|d| d.notify.as_ref().is_none_or(|n| n.contains(name)))
                .map(|d| d.database.as_str())
                .collect();
            for sch in &base.schedules {
                if sch.notify.as_ref().is_some_and(|n| n.contains(name)) {
                    watchers.push(&sch.database);
                }
            }
            watchers.sort_unstable();
            watchers.dedup();
            if let [a, b, ..] = watchers[..] {
                return Err(crate::notify::ChannelError::SharedCheck {
                    name: name.clone(),
                    a: a.to_owned(),
                    b: b.to_owned(),
                }
                .into());
            }
        }
        for sch in &base.schedules {
            for n in sch.notify.iter().flatten() {
                channel(format!("[[schedule]] {:?} notify", sch.name), n)?;
            }
            if !dbs.iter().any(|s| s.database == sch.database) {
                return Err(ConfigError::ScheduleDatabase {
                    schedule: sch.name.clone(),
                    database: sch.database.clone(),
                    known: known(),
                });
            }
        }
    }
    Ok(())
}

/// The error for a `--database` (or `?database=`) that names no configured database.
pub(super) fn unknown(name: &str, all: &BTreeMap<String, Settings>) -> ConfigError {
    ConfigError::UnknownDatabase {
        name: name.to_owned(),
        known: configured(all)
            .iter()
            .map(|s| s.database.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

impl Settings {
    /// Every configured database's settings (without command-line overrides): the named ones
    /// and the unnamed one when it has a `DATABASE_URL` or nothing else is configured.
    pub fn all_databases(&self) -> Vec<&Settings> {
        let mut out = configured(&self.databases);
        // Settings made without `load` (tests) have no map: they are the one database.
        if out.is_empty() {
            out.push(self);
        }
        out
    }

    /// The settings of database `name`: this one (with its overrides) if it is that database,
    /// else the configured one.
    pub fn for_database(&self, name: &str) -> Result<Settings, ConfigError> {
        if name == self.database {
            return Ok(self.clone());
        }
        let mut s = self
            .databases
            .get(name)
            .filter(|s| {
                configured(&self.databases)
                    .iter()
                    .any(|c| c.database == s.database)
            })
            .cloned()
            .ok_or_else(|| unknown(name, &self.databases))?;
        s.databases = self.databases.clone();
        Ok(s)
    }

    /// Whether more than one database is configured.
    pub fn has_named_databases(&self) -> bool {
        self.databases.len() > 1
    }
}
