//! One connection to the server through the MariaDB client library (`libmariadb.so.3`, Debian's
//! `libmariadb3`, loaded the first time a load needs it), for the statements of a dump.
//!
//! The connection is opened *without* `CLIENT_MULTI_STATEMENTS`, multi-statements are switched
//! off once more with `COM_SET_OPTION`, and every connection proves it before any statement of
//! a dump is sent: `DO 1; DO 1` must be refused. So whatever a statement's text holds, the
//! server parses it as exactly one statement or refuses it — the server runs the statements the
//! allowlist saw, one per request, with no client in between that splits the text again.
//!
//! The password goes to the library in memory only: no option file is read (none is named),
//! nothing through argv or the environment (the library still reads dbkeep's own environment,
//! as every client does: `MYSQL_UNIX_PORT`, `MARIADB_PLUGIN_DIR`, …). `LOAD DATA LOCAL` is off.
//! TLS is used when the URL sets an `ssl_*` option.

use crate::database_url::MyConnection;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_ulong, c_void};
use std::sync::OnceLock;
use std::time::Duration;
use thiserror::Error;

/// The library's file name (the same ABI since Connector/C 3.0).
const LIBRARY: &str = "libmariadb.so.3";

// From Connector/C's mysql.h (`enum mysql_option`, `enum mysql_protocol_type`,
// `enum enum_mysql_set_option`), checked against its 3.3 header.
const OPT_CONNECT_TIMEOUT: c_int = 0;
const SET_CHARSET_NAME: c_int = 7;
const OPT_LOCAL_INFILE: c_int = 8;
const OPT_PROTOCOL: c_int = 9;
const OPT_SSL_VERIFY_SERVER_CERT: c_int = 21;
const OPT_SSL_KEY: c_int = 25;
const OPT_SSL_CERT: c_int = 26;
const OPT_SSL_CA: c_int = 27;
const OPT_SSL_CAPATH: c_int = 28;
const OPT_SSL_CIPHER: c_int = 29;
const OPT_MAX_ALLOWED_PACKET: c_int = 39;
const PROTOCOL_TCP: c_uint = 1;
const PROTOCOL_SOCKET: c_uint = 2;
const MULTI_STATEMENTS_OFF: c_int = 1;
/// ER_PARSE_ERROR: what the server answers to two statements in one request.
const PARSE_ERROR: c_uint = 1064;

#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error(
        "cannot load the MariaDB client library {LIBRARY} ({0}): install it (Debian: apt-get install libmariadb3)"
    )]
    Library(String),
    #[error("cannot connect to the server: {0}")]
    Connect(String),
    #[error(
        "the connection would run several statements in one request ({0}): dbkeep loads nothing over it"
    )]
    MultiStatements(String),
    #[error("the server refused {statement}: ERROR {code}: {message}")]
    Statement {
        statement: String,
        code: u32,
        message: String,
    },
    #[error("a connection setting holds a NUL byte: {0}")]
    Nul(&'static str),
}

type Handle = *mut c_void;

/// The functions of the library dbkeep calls (`extern "C"` on every Linux target).
struct Api {
    _lib: libloading::Library,
    init: unsafe extern "C" fn(Handle) -> Handle,
    options: unsafe extern "C" fn(Handle, c_int, *const c_void) -> c_int,
    #[allow(clippy::type_complexity)]
    real_connect: unsafe extern "C" fn(
        Handle,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        c_uint,
        *const c_char,
        c_ulong,
    ) -> Handle,
    real_query: unsafe extern "C" fn(Handle, *const c_char, c_ulong) -> c_int,
    store_result: unsafe extern "C" fn(Handle) -> *mut c_void,
    free_result: unsafe extern "C" fn(*mut c_void),
    next_result: unsafe extern "C" fn(Handle) -> c_int,
    field_count: unsafe extern "C" fn(Handle) -> c_uint,
    errno: unsafe extern "C" fn(Handle) -> c_uint,
    error: unsafe extern "C" fn(Handle) -> *const c_char,
    close: unsafe extern "C" fn(Handle),
    set_server_option: unsafe extern "C" fn(Handle, c_int) -> c_int,
    get_socket: unsafe extern "C" fn(Handle) -> c_int,
    fetch_row: unsafe extern "C" fn(*mut c_void) -> *mut *mut c_char,
    fetch_lengths: unsafe extern "C" fn(*mut c_void) -> *mut c_ulong,
}

fn api() -> Result<&'static Api, ConnectionError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: loading Connector/C runs no initialiser with preconditions; every symbol is
        // looked up with the signature of its declaration in mysql.h.
        unsafe {
            let lib = libloading::Library::new(LIBRARY).map_err(|e| e.to_string())?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| e.to_string())?
                };
            }
            let server_init: unsafe extern "C" fn(
                c_int,
                *mut *mut c_char,
                *mut *mut c_char,
            ) -> c_int = sym!("mysql_server_init");
            let api = Api {
                init: sym!("mysql_init"),
                options: sym!("mysql_options"),
                real_connect: sym!("mysql_real_connect"),
                real_query: sym!("mysql_real_query"),
                store_result: sym!("mysql_store_result"),
                free_result: sym!("mysql_free_result"),
                next_result: sym!("mysql_next_result"),
                field_count: sym!("mysql_field_count"),
                errno: sym!("mysql_errno"),
                error: sym!("mysql_error"),
                close: sym!("mysql_close"),
                set_server_option: sym!("mysql_set_server_option"),
                get_socket: sym!("mysql_get_socket"),
                fetch_row: sym!("mysql_fetch_row"),
                fetch_lengths: sym!("mysql_fetch_lengths"),
                _lib: lib,
            };
            // Once, before any connection (mysql_library_init), every symbol found first: not
            // thread-safe by itself, so under this OnceLock; the library stays loaded.
            if server_init(0, std::ptr::null_mut(), std::ptr::null_mut()) != 0 {
                std::mem::forget(api);
                return Err("mysql_library_init failed".into());
            }
            Ok(api)
        }
    })
    .as_ref()
    .map_err(|e| ConnectionError::Library(e.clone()))
}

/// An open connection; closed when dropped.
pub struct Connection {
    api: &'static Api,
    handle: Handle,
}

// SAFETY: a Connector/C handle may move between threads as long as one thread at a time uses
// it (the library is initialised once, in `api`); `Connection` is not `Sync`, and every call
// takes `&mut self` or happens in `drop`.
unsafe impl Send for Connection {}

/// Cuts a connection from another thread (a stalled or interrupted load): the statement under
/// way fails at once with a lost connection. It holds a duplicate of the connection's socket,
/// its own, so a cut after the library closed its descriptor (or after the connection went)
/// never reaches another socket that reused the number.
#[derive(Clone)]
pub struct Breaker(Option<std::sync::Arc<std::os::fd::OwnedFd>>);

impl Breaker {
    pub fn cut(&self) {
        use std::os::fd::AsRawFd;
        if let Some(fd) = &self.0 {
            // SAFETY: shutdown on a descriptor this value owns only changes its socket's state.
            unsafe {
                libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }
}

fn cstring(what: &'static str, v: &str) -> Result<CString, ConnectionError> {
    CString::new(v).map_err(|_| ConnectionError::Nul(what))
}

fn truthy(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
}

impl Connection {
    /// Connects to `database` with `conn`'s settings and proves that one request is one
    /// statement.
    pub fn open(
        conn: &MyConnection,
        database: &str,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectionError> {
        let mut c = Self::connect(conn, database, connect_timeout)?;
        c.prove()?;
        Ok(c)
    }

    /// Connects to `database` with `conn`'s settings (the handshake bounded by
    /// `connect_timeout`); [`Connection::prove`] must pass before a dump's statement is sent.
    pub fn connect(
        conn: &MyConnection,
        database: &str,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectionError> {
        let api = api()?;
        // SAFETY: mysql_init(NULL) allocates a handle or returns NULL.
        let handle = unsafe { (api.init)(std::ptr::null_mut()) };
        if handle.is_null() {
            return Err(ConnectionError::Connect("out of memory".into()));
        }
        let mut c = Connection { api, handle };
        let strings = |what, v: &Option<String>| v.as_deref().map(|s| cstring(what, s)).transpose();
        let user = strings("user", &conn.user)?;
        let password = conn
            .password
            .as_ref()
            .map(|p| cstring("password", p.expose()))
            .transpose()?;
        let host = strings("host", &conn.host)?;
        let socket = strings("socket", &conn.socket)?;
        let db = cstring("database", database)?;
        let timeout = connect_timeout.as_secs().clamp(1, u64::from(c_uint::MAX)) as c_uint;
        c.uint_option(OPT_CONNECT_TIMEOUT, timeout);
        c.uint_option(OPT_LOCAL_INFILE, 0);
        // As the dump tools are told: a socket, else TCP to the host; neither is the library's
        // default (the local socket).
        match (&conn.socket, &conn.host) {
            (Some(_), _) => c.uint_option(OPT_PROTOCOL, PROTOCOL_SOCKET),
            (None, Some(_)) => c.uint_option(OPT_PROTOCOL, PROTOCOL_TCP),
            (None, None) => {}
        }
        let packet: c_ulong = 1 << 30;
        c.option(OPT_MAX_ALLOWED_PACKET, (&raw const packet).cast());
        c.str_option(SET_CHARSET_NAME, &cstring("charset", "utf8mb4")?);
        for (key, opt) in [
            ("ssl-key", OPT_SSL_KEY),
            ("ssl-cert", OPT_SSL_CERT),
            ("ssl-ca", OPT_SSL_CA),
            ("ssl-capath", OPT_SSL_CAPATH),
            ("ssl-cipher", OPT_SSL_CIPHER),
        ] {
            if let Some(v) = conn.options.get(key) {
                c.str_option(opt, &cstring(key, v)?);
            }
        }
        if let Some(v) = conn.options.get("ssl-verify-server-cert") {
            let on: u8 = truthy(v).into();
            c.option(OPT_SSL_VERIFY_SERVER_CERT, (&raw const on).cast());
        }
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: every pointer is NULL or a NUL-terminated string alive for the call; client
        // flags 0: no CLIENT_MULTI_STATEMENTS.
        let connected = unsafe {
            (api.real_connect)(
                handle,
                ptr(&host),
                ptr(&user),
                ptr(&password),
                db.as_ptr(),
                c_uint::from(conn.port.unwrap_or(0)),
                ptr(&socket),
                0,
            )
        };
        if connected.is_null() {
            return Err(ConnectionError::Connect(c.last_error().1));
        }
        Ok(c)
    }

    /// Turns multi-statements off on the server's side and proves that one request is one
    /// statement: `DO 1; DO 1` must be a syntax error.
    pub fn prove(&mut self) -> Result<(), ConnectionError> {
        // SAFETY: an open handle.
        if unsafe { (self.api.set_server_option)(self.handle, MULTI_STATEMENTS_OFF) } != 0 {
            return Err(ConnectionError::MultiStatements(self.last_error().1));
        }
        match self.run(b"DO 1; DO 1") {
            Err(ConnectionError::Statement {
                code: PARSE_ERROR, ..
            }) => Ok(()),
            Err(e) => Err(ConnectionError::MultiStatements(e.to_string())),
            Ok(()) => Err(ConnectionError::MultiStatements(
                "the server ran `DO 1; DO 1`".into(),
            )),
        }
    }

    fn option(&mut self, option: c_int, value: *const c_void) {
        // SAFETY: `value` points to what the option takes, alive for the call (the library
        // copies strings and values).
        unsafe {
            (self.api.options)(self.handle, option, value);
        }
    }

    fn uint_option(&mut self, option: c_int, value: c_uint) {
        self.option(option, (&raw const value).cast());
    }

    fn str_option(&mut self, option: c_int, value: &CStr) {
        self.option(option, value.as_ptr().cast());
    }

    fn last_error(&self) -> (u32, String) {
        // SAFETY: an initialised handle; mysql_error returns a NUL-terminated string it owns.
        unsafe {
            let code = (self.api.errno)(self.handle);
            let message = CStr::from_ptr((self.api.error)(self.handle))
                .to_string_lossy()
                .into_owned();
            (code, message)
        }
    }

    fn refused(&self, sql: &[u8]) -> ConnectionError {
        let (code, message) = self.last_error();
        ConnectionError::Statement {
            statement: super::tokens::shown(sql),
            code,
            message,
        }
    }

    /// Runs one statement (its text without a delimiter), discarding any result.
    pub fn run(&mut self, sql: &[u8]) -> Result<(), ConnectionError> {
        if sql.is_empty() {
            return Ok(());
        }
        let len = c_ulong::try_from(sql.len()).unwrap_or(c_ulong::MAX);
        // SAFETY: `sql` is alive for the call and `len` long.
        if unsafe { (self.api.real_query)(self.handle, sql.as_ptr().cast(), len) } != 0 {
            return Err(self.refused(sql));
        }
        loop {
            // SAFETY: an open handle after a query; a stored result is freed at once.
            unsafe {
                if (self.api.field_count)(self.handle) > 0 {
                    let res = (self.api.store_result)(self.handle);
                    if res.is_null() {
                        return Err(self.refused(sql));
                    }
                    (self.api.free_result)(res);
                }
                match (self.api.next_result)(self.handle) {
                    -1 => return Ok(()),
                    0 => {}
                    _ => return Err(self.refused(sql)),
                }
            }
        }
    }

    /// Runs one query of dbkeep's and returns the first column of its rows (NULL as `None`).
    pub fn column(&mut self, sql: &str) -> Result<Vec<Option<String>>, ConnectionError> {
        let q = sql.as_bytes();
        let len = c_ulong::try_from(q.len()).unwrap_or(c_ulong::MAX);
        let mut out = Vec::new();
        // SAFETY: `q` is alive for the call; a result is read row by row while it is alive and
        // freed once; a row's first field is `lengths[0]` bytes long or NULL.
        unsafe {
            if (self.api.real_query)(self.handle, q.as_ptr().cast(), len) != 0 {
                return Err(self.refused(q));
            }
            if (self.api.field_count)(self.handle) == 0 {
                return Ok(out);
            }
            let res = (self.api.store_result)(self.handle);
            if res.is_null() {
                return Err(self.refused(q));
            }
            loop {
                let row = (self.api.fetch_row)(res);
                if row.is_null() {
                    break;
                }
                let lengths = (self.api.fetch_lengths)(res);
                let field = *row;
                out.push((!field.is_null() && !lengths.is_null()).then(|| {
                    let bytes = std::slice::from_raw_parts(field.cast::<u8>(), *lengths as usize);
                    String::from_utf8_lossy(bytes).into_owned()
                }));
            }
            (self.api.free_result)(res);
            while (self.api.next_result)(self.handle) == 0 {}
        }
        Ok(out)
    }

    pub fn breaker(&self) -> Breaker {
        // SAFETY: an open handle; its socket is borrowed only to make the duplicate.
        let fd = unsafe { (self.api.get_socket)(self.handle) };
        let owned = (fd >= 0)
            .then(|| {
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
                    .try_clone_to_owned()
                    .ok()
            })
            .flatten();
        Breaker(owned.map(std::sync::Arc::new))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: the handle came from mysql_init and is closed once.
        unsafe { (self.api.close)(self.handle) }
    }
}
