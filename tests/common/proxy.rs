//! A TCP proxy on loopback in front of a real server, which a test can cut off: every open
//! connection drops and new ones are closed at once, as when the server goes down, while the
//! server behind it keeps its state (moto keeps its state only in memory, so it cannot be
//! stopped and started again itself). It can also lose or withhold the answer to one request.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// A request to let through whose answer is then lost (see [`Proxy::lose_answer_to`]),
    /// and whether the connection then closes (else it stays open, silent).
    trap: Arc<Mutex<Option<(String, bool)>>>,
    sprung: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let trap = Arc::new(Mutex::new(None::<(String, bool)>));
        let sprung = Arc::new(AtomicBool::new(false));
        {
            let (down, open) = (down.clone(), open.clone());
            let (trap, sprung) = (trap.clone(), sprung.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: the connection closes at once
                    }
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let mut conns = open.lock().unwrap();
                    for s in [&client, &server] {
                        if let Ok(c) = s.try_clone() {
                            conns.push(c);
                        }
                    }
                    // Set once this connection carried the trapped request: what the
                    // server answers from then on never reaches the client (MUTE_CLOSE: the
                    // connection closes; MUTE_SILENT: it stays open and says nothing).
                    let mute = Arc::new(AtomicU8::new(0));
                    let watch = Watch {
                        trap: trap.clone(),
                        sprung: sprung.clone(),
                        mute: mute.clone(),
                    };
                    pipe(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Some(watch),
                        None,
                    );
                    pipe(server, client, None, Some(mute));
                }
            });
        }
        Self {
            addr,
            down,
            open,
            trap,
            sprung,
        }
    }

    /// The next request whose head contains `pattern` reaches the server, but its answer is
    /// lost: the connection closes instead (a response lost on the network).
    pub fn lose_answer_to(&self, pattern: &str) {
        *self.trap.lock().unwrap() = Some((pattern.to_owned(), true));
    }

    /// The next request whose head contains `pattern` reaches the server, and nothing comes
    /// back on that connection any more while it stays open (a server that froze there).
    pub fn withhold_answer_to(&self, pattern: &str) {
        *self.trap.lock().unwrap() = Some((pattern.to_owned(), false));
    }

    /// Whether an answer was lost.
    pub fn lost_an_answer(&self) -> bool {
        self.sprung.load(Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server is gone: open connections drop, new ones are closed.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The server is back.
    pub fn resume(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// What the client-to-server pipe watches for.
struct Watch {
    trap: Arc<Mutex<Option<(String, bool)>>>,
    sprung: Arc<AtomicBool>,
    mute: Arc<AtomicU8>,
}

const MUTE_CLOSE: u8 = 1;
const MUTE_SILENT: u8 = 2;

/// Copies `from` to `to` on a thread until either side closes; `watch` springs the trap on the
/// request it names, and a set `mute` drops the answer and closes both sides.
fn pipe(mut from: TcpStream, mut to: TcpStream, watch: Option<Watch>, mute: Option<Arc<AtomicU8>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    match mute.as_ref().map(|m| m.load(Ordering::SeqCst)) {
                        Some(MUTE_CLOSE) => {
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                        Some(MUTE_SILENT) => continue,
                        _ => {}
                    }
                    if let Some(w) = &watch {
                        let head = String::from_utf8_lossy(&buf[..n.min(2048)]);
                        let mut trap = w.trap.lock().unwrap();
                        if let Some((_, close)) = trap.take_if(|(t, _)| head.contains(t.as_str())) {
                            let how = if close { MUTE_CLOSE } else { MUTE_SILENT };
                            w.mute.store(how, Ordering::SeqCst);
                            w.sprung.store(true, Ordering::SeqCst);
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
