//! MySQL and MariaDB URLs: `mysql://`, `mysql+DRIVER://`, `mariadb://`, with the common parts
//! (user, password, host, port, database) parsed as every server URL is.

use super::*;

/// Connection settings for MySQL or MariaDB, as their clients' option files want them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyConnection {
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A host name or IP address; `None` with a socket, or for the client's default.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A unix socket file.
    pub socket: Option<String>,
    pub database: String,
    /// Further client options as (option-file name, value), e.g. `("ssl-ca", "/etc/ca.pem")`.
    pub options: BTreeMap<&'static str, String>,
}

impl MyConnection {
    /// How long a connection may take (`connect_timeout`, else 30 s, as PGCONNECT_TIMEOUT).
    pub fn connect_timeout(&self) -> std::time::Duration {
        let secs = self
            .options
            .get("connect-timeout")
            .and_then(|t| t.parse().ok())
            .unwrap_or(30);
        std::time::Duration::from_secs(secs)
    }

    /// The host for display and the manifest: never credentials.
    pub fn host_display(&self) -> String {
        match (&self.socket, &self.host, self.port) {
            (Some(s), _, _) => s.clone(),
            (None, h, Some(p)) => format!("{}:{p}", h.as_deref().unwrap_or("localhost")),
            (None, h, None) => h.as_deref().unwrap_or("localhost").to_owned(),
        }
    }
}

/// MySQL query parameters we accept (SQLAlchemy's and PyMySQL's names), and the client option
/// each one becomes; `charset` is accepted and ignored (dumps are always utf8mb4).
pub(super) const MY_PARAMS: &[(&str, &str)] = &[
    ("connect_timeout", "connect-timeout"),
    ("ssl_ca", "ssl-ca"),
    ("ssl_capath", "ssl-capath"),
    ("ssl_cert", "ssl-cert"),
    ("ssl_cipher", "ssl-cipher"),
    ("ssl_key", "ssl-key"),
    ("ssl_verify_cert", "ssl-verify-server-cert"),
];

pub(super) fn parse_mysql(input: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
    let ServerUrl {
        url,
        mut user,
        mut password,
        mut host,
        mut port,
        database,
    } = parse_server(input)?;
    let mut socket = None;
    let mut options = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        let value = value.into_owned();
        match key.as_ref() {
            "unix_socket" => socket = Some(value),
            "host" if value.starts_with('/') => socket = Some(value),
            "host" => host = Some(value),
            "port" => port = Some(parse_port(&value)?),
            "user" => user = Some(value),
            "password" => password = Some(Secret::new(value)),
            "charset" => {}
            other => match MY_PARAMS.iter().find(|(k, _)| *k == other) {
                Some((_, option)) => {
                    options.insert(*option, value);
                }
                None => {
                    return Err(DatabaseUrlError::UnknownParameter {
                        name: other.chars().take(40).collect(),
                        supported: supported_params(MY_PARAMS),
                    });
                }
            },
        }
    }
    if options
        .get("connect-timeout")
        .is_some_and(|t| !t.parse::<u32>().is_ok_and(|n| n > 0))
    {
        return Err(DatabaseUrlError::Malformed {
            problem: "connect_timeout must be a whole number of seconds, at least 1".into(),
        });
    }
    if socket.is_some() {
        host = None;
    }
    if port == Some(0) {
        return Err(DatabaseUrlError::BadPort {
            problem: "0 is not a usable port".into(),
        });
    }
    let database = database.ok_or(DatabaseUrlError::NoDatabase)?;
    if database.starts_with('-') {
        return Err(DatabaseUrlError::Malformed {
            problem: "a database name starting with '-' would read as an option to the MySQL tools"
                .into(),
        });
    }
    if database.contains('/') || database.len() > 64 {
        return Err(DatabaseUrlError::Malformed {
            problem: "a MySQL database name has at most 64 characters and no '/'".into(),
        });
    }
    Ok(DatabaseUrl::Mysql(MyConnection {
        user,
        password,
        host,
        port,
        socket,
        database,
        options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my(url: &str) -> MyConnection {
        match DatabaseUrl::parse(url).unwrap() {
            DatabaseUrl::Mysql(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mysql_variants_sockets_and_params() {
        for scheme in [
            "mysql",
            "mysql+pymysql",
            "mysql+mysqldb",
            "mariadb",
            "mariadb+mariadbconnector",
        ] {
            let m = my(&format!(
                "{scheme}://app:p%40ss%3Aw%27rd@db.example:3307/shop?charset=utf8mb4"
            ));
            assert_eq!(m.user.as_deref(), Some("app"));
            assert_eq!(m.password.as_ref().unwrap().expose(), "p@ss:w'rd");
            assert_eq!(m.host.as_deref(), Some("db.example"));
            assert_eq!(m.port, Some(3307));
            assert_eq!(m.database, "shop");
        }
        let m = my("mysql://app@/shop?unix_socket=/run/mysqld/mysqld.sock&ssl_ca=/ca.pem");
        assert_eq!(m.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
        assert_eq!(m.host, None);
        assert_eq!(m.options.get("ssl-ca").map(String::as_str), Some("/ca.pem"));
        let m = my("mariadb://app@localhost/shop?host=/tmp/m.sock");
        assert_eq!(m.socket.as_deref(), Some("/tmp/m.sock"));
        assert_eq!(m.host_display(), "/tmp/m.sock");
        let u = DatabaseUrl::parse("mysql+pymysql://app:hunter2@db:3306/shop").unwrap();
        assert_eq!(u.to_string(), "mysql://app:***@db:3306/shop");
        assert_eq!(my("mysql://app@db/shop").connect_timeout().as_secs(), 30);
        assert_eq!(
            my("mysql://app@db/shop?connect_timeout=3")
                .connect_timeout()
                .as_secs(),
            3
        );
        for bad in ["abc", "0", "-1", "1.5"] {
            let e = DatabaseUrl::parse(&format!("mysql://app@db/shop?connect_timeout={bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("connect_timeout"), "{bad}: {e}");
        }
    }
}
