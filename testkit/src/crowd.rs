//! A crowd of clients that hold connections to a server and never finish a
//! request: the silent ones send nothing, the dribbling ones send a request
//! head that never ends, a byte at a time. What a port scan, a stuck
//! client or an attacker does to an admin endpoint. They connect from a
//! loopback address of their own (127.0.0.2, ...), as an attacker from
//! another pod would, so that a server can tell them from the probes.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// How often each dribbling client sends its next byte, and each client
/// looks whether the server closed it.
const PACE: Duration = Duration::from_millis(100);
/// Bound on one connect on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// What the dribbling clients send, a byte at a time, then the last
/// header's value goes on forever.
const HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: crowd\r\nX-Dribble: ";

/// The crowd, on a thread of its own; stopped (its connections closed)
/// when dropped.
#[derive(Debug)]
pub struct Crowd {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    closed_by_server: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

struct Client {
    stream: Option<TcpStream>,
    dribbling: bool,
    sent: usize,
}

impl Crowd {
    /// Connects `silent` silent and `dribbling` dribbling clients from
    /// address `from` to `addr` and returns once all are connected. A
    /// client the server closes connects again when `reconnect`.
    pub fn start(
        addr: SocketAddr,
        from: IpAddr,
        silent: usize,
        dribbling: usize,
        reconnect: bool,
    ) -> Self {
        let link = Link { addr, from };
        let mut clients: Vec<Client> = (0..silent + dribbling)
            .map(|n| Client {
                stream: None,
                dribbling: n >= silent,
                sent: 0,
            })
            .collect();
        for client in &mut clients {
            client.stream = Some(link.connect());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(clients.len()));
        let closed_by_server = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, open, closed) = (stop.clone(), open.clone(), closed_by_server.clone());
            std::thread::Builder::new()
                .name("crowd".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for client in &mut clients {
                            client.turn(link, reconnect, &closed);
                        }
                        open.store(
                            clients.iter().filter(|c| c.stream.is_some()).count(),
                            Ordering::Relaxed,
                        );
                        // Pacing, not waiting for an event: a dribbler's
                        // next byte is due.
                        std::thread::sleep(PACE);
                    }
                })
                .expect("a thread for the crowd")
        };
        Self {
            stop,
            open,
            closed_by_server,
            thread: Some(thread),
        }
    }

    /// Clients connected now (as of the crowd's last turn).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections the server has closed so far.
    pub fn closed_by_server(&self) -> usize {
        self.closed_by_server.load(Ordering::Relaxed)
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Client {
    /// Sends a dribbler's next byte, notices a close, reconnects.
    fn turn(&mut self, link: Link, reconnect: bool, closed: &AtomicUsize) {
        let Some(stream) = &mut self.stream else {
            if reconnect {
                self.stream = link.try_connect();
            }
            return;
        };
        let mut byte = [0u8; 1];
        let gone = match stream.read(&mut byte) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        let gone = gone
            || (self.dribbling && {
                let next = HEAD.get(self.sent).copied().unwrap_or(b'a');
                self.sent += 1;
                matches!(stream.write(&[next]), Err(e) if e.kind() != ErrorKind::WouldBlock)
            });
        if gone {
            closed.fetch_add(1, Ordering::Relaxed);
            self.sent = 0;
            self.stream = if reconnect { link.try_connect() } else { None };
        }
    }
}

/// Where the clients connect, and from where.
#[derive(Debug, Clone, Copy)]
struct Link {
    addr: SocketAddr,
    from: IpAddr,
}

impl Link {
    fn connect(self) -> TcpStream {
        self.try_connect().unwrap_or_else(|| {
            panic!(
                "a crowd client cannot connect from {} to {}",
                self.from, self.addr
            )
        })
    }

    /// A non-blocking client connected, if it connects.
    fn try_connect(self) -> Option<TcpStream> {
        let socket = Socket::new(Domain::for_address(self.addr), Type::STREAM, None).ok()?;
        socket
            .bind(&SockAddr::from(SocketAddr::new(self.from, 0)))
            .ok()?;
        socket
            .connect_timeout(&SockAddr::from(self.addr), CONNECT_TIMEOUT)
            .ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(socket.into())
    }
}
