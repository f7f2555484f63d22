//! `DATABASE_URL` in SQLAlchemy form.
//!
//! - `postgresql://user:pass@host:5432/db?sslmode=require`, also `postgres://` and
//!   `postgresql+DRIVER://`; the password is percent-decoded; a unix socket directory comes as
//!   `?host=/path`; query parameters map to libpq's environment variables.
//! - `mysql://user:pass@host:3306/db`, also `mysql+DRIVER://` (`mysql+pymysql://`) and
//!   `mariadb://`/`mariadb+DRIVER://`; the password percent-decoded the same way; a unix socket
//!   as `?unix_socket=/path/mysqld.sock` (SQLAlchemy's) or `?host=/path/mysqld.sock`.
//! - `sqlite:///relative/path.db` and `sqlite:////absolute/path.db`.
//!
//! The password is a [`Secret`]: `Debug` and `Display` show `***`, and no error message contains
//! it (errors never echo the URL itself).

mod mysql;

pub use mysql::MyConnection;
use mysql::parse_mysql;
use percent_encoding::percent_decode_str;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DatabaseUrlError {
    #[error("DATABASE_URL is empty")]
    Empty,
    #[error(
        "DATABASE_URL has the scheme {scheme:?}, which dbkeep does not support: use postgresql://, postgres://, postgresql+DRIVER://, mysql://, mysql+DRIVER://, mariadb:// or sqlite:///"
    )]
    UnsupportedScheme { scheme: String },
    #[error(
        "DATABASE_URL is not a valid URL ({problem}); special characters in the password must be percent-encoded, e.g. '@' as %40"
    )]
    Malformed { problem: String },
    #[error("DATABASE_URL names no database: add it as the path, e.g. postgresql://user@host/mydb")]
    NoDatabase,
    #[error("DATABASE_URL has an invalid port: {problem}")]
    BadPort { problem: String },
    #[error(
        "DATABASE_URL has the query parameter {name:?}, which dbkeep does not know; supported: {supported}"
    )]
    UnknownParameter { name: String, supported: String },
    #[error("DATABASE_URL has {what} that is not valid UTF-8 after percent-decoding")]
    NotUtf8 { what: &'static str },
    #[error(
        "DATABASE_URL for SQLite must be sqlite:///relative/path.db or sqlite:////absolute/path.db ({problem})"
    )]
    SqlitePath { problem: String },
}

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself: only for handing it to a child's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Connection settings for PostgreSQL, as libpq wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConnection {
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A host name, an IP address, or a unix socket directory (starts with `/`).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: String,
    /// Further libpq settings as (environment variable, value), e.g. `("PGSSLMODE", "require")`.
    pub env: BTreeMap<&'static str, String>,
}

impl PgConnection {
    /// The host for display and the manifest: never credentials.
    pub fn host_display(&self) -> String {
        let host = self.host.as_deref().unwrap_or("localhost");
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(PgConnection),
    Mysql(MyConnection),
    Sqlite { path: PathBuf },
}

/// Query parameters we accept, and the libpq environment variable each one becomes.
const PG_PARAMS: &[(&str, &str)] = &[
    ("application_name", "PGAPPNAME"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("gssencmode", "PGGSSENCMODE"),
    ("options", "PGOPTIONS"),
    ("passfile", "PGPASSFILE"),
    ("service", "PGSERVICE"),
    ("sslcert", "PGSSLCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslkey", "PGSSLKEY"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

impl DatabaseUrl {
    pub fn parse(input: &str) -> Result<Self, DatabaseUrlError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(DatabaseUrlError::Empty);
        }
        let Some((scheme, _)) = input.split_once("://") else {
            return Err(DatabaseUrlError::Malformed {
                problem: "no scheme:// at the start".into(),
            });
        };
        let base = scheme.split('+').next().unwrap_or(scheme);
        match base.to_ascii_lowercase().as_str() {
            "postgresql" | "postgres" => parse_postgres(input),
            "mysql" | "mariadb" => parse_mysql(input),
            "sqlite" => parse_sqlite(input),
            _ => Err(DatabaseUrlError::UnsupportedScheme {
                scheme: scheme.chars().take(40).collect(),
            }),
        }
    }

    /// The database name recorded in manifests.
    pub fn database_name(&self) -> String {
        match self {
            DatabaseUrl::Postgres(pg) => pg.database.clone(),
            DatabaseUrl::Mysql(my) => my.database.clone(),
            DatabaseUrl::Sqlite { path } => path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The server for display and the manifest (never credentials); `None` for a file.
    pub fn host_display(&self) -> Option<String> {
        match self {
            DatabaseUrl::Postgres(pg) => Some(pg.host_display()),
            DatabaseUrl::Mysql(my) => Some(my.host_display()),
            DatabaseUrl::Sqlite { .. } => None,
        }
    }

    /// The password, if the URL carries one (for redacting child output).
    pub fn password(&self) -> Option<&Secret> {
        match self {
            DatabaseUrl::Postgres(pg) => pg.password.as_ref(),
            DatabaseUrl::Mysql(my) => my.password.as_ref(),
            DatabaseUrl::Sqlite { .. } => None,
        }
    }
}

/// The URL without its password: `postgresql://app:***@db:5432/shop?sslmode=require`.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite { path } => write!(f, "sqlite:///{}", path.display()),
            DatabaseUrl::Mysql(my) => {
                f.write_str("mysql://")?;
                if let Some(u) = &my.user {
                    f.write_str(u)?;
                    if my.password.is_some() {
                        f.write_str(":***")?;
                    }
                    f.write_str("@")?;
                }
                if let Some(h) = &my.host {
                    f.write_str(h)?;
                }
                if let Some(p) = my.port {
                    write!(f, ":{p}")?;
                }
                write!(f, "/{}", my.database)?;
                if let Some(s) = &my.socket {
                    write!(f, "?unix_socket={s}")?;
                }
                Ok(())
            }
            DatabaseUrl::Postgres(pg) => {
                f.write_str("postgresql://")?;
                if let Some(u) = &pg.user {
                    f.write_str(u)?;
                    if pg.password.is_some() {
                        f.write_str(":***")?;
                    }
                    f.write_str("@")?;
                }
                match &pg.host {
                    Some(h) if !h.starts_with('/') => f.write_str(h)?,
                    _ => {}
                }
                if let Some(p) = pg.port {
                    write!(f, ":{p}")?;
                }
                write!(f, "/{}", pg.database)?;
                if let Some(h) = pg.host.as_deref().filter(|h| h.starts_with('/')) {
                    write!(f, "?host={h}")?;
                }
                Ok(())
            }
        }
    }
}

fn decode(s: &str, what: &'static str) -> Result<String, DatabaseUrlError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| DatabaseUrlError::NotUtf8 { what })
}

const NO_HOST: &str = "dbkeep-no-host.invalid";

/// The parts every server URL has, decoded.
struct ServerUrl {
    url: url::Url,
    user: Option<String>,
    password: Option<Secret>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
}

fn parse_server(input: &str) -> Result<ServerUrl, DatabaseUrlError> {
    // Normalise the scheme so the url crate parses every variant the same way.
    let rest = input.split_once("://").map(|(_, r)| r).unwrap_or("");
    // libpq allows an empty host (`postgresql://user@/db?host=/socket`); the url crate does not,
    // so an empty host becomes a placeholder that is mapped back to "no host".
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let (userinfo, hostport) = authority.split_at(host_start);
    let rest = if hostport.is_empty() || hostport.starts_with(':') {
        format!("{userinfo}{NO_HOST}{hostport}{tail}")
    } else {
        rest.to_owned()
    };
    let url = url::Url::parse(&format!("postgresql://{rest}")).map_err(|e| {
        DatabaseUrlError::Malformed {
            problem: e.to_string(),
        }
    })?;
    let user = match url.username() {
        "" => None,
        u => Some(decode(u, "the user name")?),
    };
    let password = url
        .password()
        .map(|p| decode(p, "the password"))
        .transpose()?
        .map(Secret::new);
    let host = match url.host() {
        None => None,
        Some(url::Host::Domain(d)) if d.is_empty() || d == NO_HOST => None,
        Some(url::Host::Domain(d)) => Some(decode(d, "the host")?),
        Some(url::Host::Ipv4(a)) => Some(a.to_string()),
        Some(url::Host::Ipv6(a)) => Some(a.to_string()),
    };
    let port = url.port();
    let path = url.path().trim_start_matches('/');
    let database = if path.is_empty() {
        None
    } else {
        Some(decode(path, "the database name")?)
    };
    Ok(ServerUrl {
        url,
        user,
        password,
        host,
        port,
        database,
    })
}

fn parse_port(value: &str) -> Result<u16, DatabaseUrlError> {
    match value.parse() {
        Ok(0) => Err(DatabaseUrlError::BadPort {
            problem: "0 is not a usable port".into(),
        }),
        Ok(p) => Ok(p),
        Err(_) => Err(DatabaseUrlError::BadPort {
            problem: format!("{value:?} is not a number from 1 to 65535"),
        }),
    }
}

fn parse_postgres(input: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
    let ServerUrl {
        url,
        mut user,
        mut password,
        mut host,
        mut port,
        mut database,
    } = parse_server(input)?;
    let mut env = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        let value = value.into_owned();
        match key.as_ref() {
            "host" => host = Some(value),
            "port" => port = Some(parse_port(&value)?),
            "user" => user = Some(value),
            "password" => password = Some(Secret::new(value)),
            "dbname" => database = Some(value),
            other => match PG_PARAMS.iter().find(|(k, _)| *k == other) {
                Some((_, var)) => {
                    env.insert(*var, value);
                }
                None => {
                    return Err(DatabaseUrlError::UnknownParameter {
                        name: other.chars().take(40).collect(),
                        supported: supported_params(PG_PARAMS),
                    });
                }
            },
        }
    }
    if port == Some(0) {
        return Err(DatabaseUrlError::BadPort {
            problem: "0 is not a usable port".into(),
        });
    }
    let database = database.ok_or(DatabaseUrlError::NoDatabase)?;
    Ok(DatabaseUrl::Postgres(PgConnection {
        user,
        password,
        host,
        port,
        database,
        env,
    }))
}

fn supported_params(params: &[(&str, &str)]) -> String {
    let mut names: Vec<&str> = vec!["host", "port", "user", "password"];
    if std::ptr::eq(params, PG_PARAMS) {
        names.push("dbname");
    } else {
        names.extend(["unix_socket", "charset"]);
    }
    names.extend(params.iter().map(|(k, _)| *k));
    names.join(", ")
}

fn parse_sqlite(input: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
    let rest = input.split_once("://").map(|(_, r)| r).unwrap_or("");
    let Some(path) = rest.strip_prefix('/') else {
        return Err(DatabaseUrlError::SqlitePath {
            problem: "expected three slashes after sqlite:".into(),
        });
    };
    // SQLAlchemy allows query options after the path; a backup tool has no use for them.
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return Err(DatabaseUrlError::SqlitePath {
            problem: "an in-memory database cannot be backed up: name a file".into(),
        });
    }
    let path = decode(path, "the SQLite path")?;
    Ok(DatabaseUrl::Sqlite {
        path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str) -> PgConnection {
        match DatabaseUrl::parse(url).unwrap() {
            DatabaseUrl::Postgres(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn postgres_variants() {
        for scheme in [
            "postgresql",
            "postgres",
            "postgresql+psycopg2",
            "postgresql+asyncpg",
        ] {
            let p = pg(&format!("{scheme}://app:s3cret@db.example:6543/shop"));
            assert_eq!(p.user.as_deref(), Some("app"));
            assert_eq!(p.password.as_ref().unwrap().expose(), "s3cret");
            assert_eq!(p.host.as_deref(), Some("db.example"));
            assert_eq!(p.port, Some(6543));
            assert_eq!(p.database, "shop");
        }
    }

    #[test]
    fn percent_encoded_password_is_decoded() {
        let p = pg("postgresql://app:p%40ss%3A%2F%25%24%27%22word@localhost/db");
        assert_eq!(p.password.unwrap().expose(), "p@ss:/%$'\"word");
    }

    #[test]
    fn socket_directory_and_params() {
        let p = pg(
            "postgresql://app@/shop?host=/var/run/postgresql&sslmode=disable&application_name=x",
        );
        assert_eq!(p.host.as_deref(), Some("/var/run/postgresql"));
        assert_eq!(p.port, None);
        assert_eq!(p.env.get("PGSSLMODE").map(String::as_str), Some("disable"));
        assert_eq!(p.env.get("PGAPPNAME").map(String::as_str), Some("x"));
    }

    #[test]
    fn ipv6_host() {
        let p = pg("postgresql://u@[::1]:5433/d");
        assert_eq!(p.host.as_deref(), Some("::1"));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///data/app.db").unwrap(),
            DatabaseUrl::Sqlite {
                path: "data/app.db".into()
            }
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:////var/lib/app.db").unwrap(),
            DatabaseUrl::Sqlite {
                path: "/var/lib/app.db".into()
            }
        );
    }

    #[test]
    fn errors_name_the_problem_and_never_the_password() {
        let cases = [
            ("", "empty"),
            ("mongodb://u:hunter2@h/d", "\"mongodb\""),
            ("mysql://u:hunter2@h", "names no database"),
            ("mysql://u:hunter2@h/d?sslmode=1", "\"sslmode\""),
            ("mariadb://u:hunter2@h:0/d", "0 is not a usable port"),
            ("postgresql://u:hunter2@h", "names no database"),
            ("postgresql://u:hunter2@h/d?bogus=1", "\"bogus\""),
            ("postgresql://u:hunter2@h:99999/d", "not a valid URL"),
            ("postgresql://u:hunter2@h/d?port=abc", "invalid port"),
            ("sqlite://", "three slashes"),
            ("sqlite:///:memory:", "in-memory"),
            ("no scheme hunter2", "no scheme"),
        ];
        for (input, expected) in cases {
            let err = DatabaseUrl::parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
            assert!(!err.contains("hunter2"), "{input:?} leaked: {err}");
        }
    }

    #[test]
    fn display_and_debug_redact() {
        let u = DatabaseUrl::parse("postgresql://app:hunter2@db:5432/shop").unwrap();
        assert_eq!(u.to_string(), "postgresql://app:***@db:5432/shop");
        assert!(!format!("{u:?}").contains("hunter2"));
    }
}
