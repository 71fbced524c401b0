//! The link between cars and the gateway with the faults of a cellular
//! one: a TCP proxy ([`LinkProxy`]) that a test starts in front of a
//! gateway, and that each loadgen worker runs in front of its targets
//! (`loadgen --link`). Toxiproxy's idea; this kernel has no netem.
//!
//! A TCP link delays bytes. It never loses, reorders or invents them: the
//! kernels at both ends retransmit what the radio lost. So every fault
//! here is a delay, per direction of each connection:
//!
//! - **latency** with **jitter**, chunk by chunk, in order: a chunk never
//!   overtakes the one before it (TCP delivers in order);
//! - **bandwidth**: a chunk goes out once the one before it has gone
//!   through at the link's rate;
//! - **loss**: a share of the chunks is held back as TCP holds a lost
//!   segment until its retransmission (one, two or four times the RTO),
//!   and everything behind it waits too (head-of-line blocking);
//! - **outages**: the link goes silent now and then, each connection on
//!   its own schedule, or every connection at once for as long as a test
//!   says ([`LinkProxy::blackout`]). Silent means nothing is forwarded
//!   either way, and neither a FIN nor a RST: what the two ends write waits
//!   in their socket buffers and in the proxy, and goes on, in order, when
//!   the link is back. A connection made while the link is down reaches
//!   the gateway when it is back.
//!
//! What one direction of a connection holds in flight is bounded
//! ([`QUEUE_BYTES`]); beyond it the proxy stops reading, and TCP pushes
//! back on the sender, as a modem's full buffer does.
//!
//! The proxy runs on a thread of its own (a current-thread tokio
//! runtime). [`LinkProxy`] controls it; dropping it stops the proxy and
//! closes its connections. Toward the gateway each connection comes from
//! the car's own address and port where the car allows it (a loopback
//! car that bound its port with SO_REUSEADDR, as loadgen's cars do): the
//! gateway sees each car's address as without the proxy, and the proxy
//! needs no ephemeral port per car, of which 40,000 cars through one
//! address would run out. Otherwise the kernel chooses.
//!
//! Why not the `noxious` crate (a Rust port of Toxiproxy): through its
//! version 1.0.4, a byte stream with a latency toxic lost the bytes in
//! flight whenever a toxic was added or removed (it rebuilds the links
//! and drops their queues) and the tail in flight when the sender closed,
//! and its `timeout` toxic (the blackout) reads and discards. A stream
//! with bytes missing in the middle is not what a car's TCP connection
//! can see; MQTT's framing breaks on it.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until};

/// What one direction of a connection holds in flight before the proxy
/// stops reading from the sender: a modem's buffer. At 64 kB/s it is a
/// second of data.
pub const QUEUE_BYTES: usize = 64 * 1024;
/// The most read at once, with no bandwidth limit.
const CHUNK_BYTES: usize = 16 * 1024;
/// The listening socket's backlog: a reconnect storm of thousands of cars
/// waits there instead of losing SYNs (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A link's faults, the same each way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// Added to every chunk.
    pub latency: Duration,
    /// Each chunk's latency is drawn from latency ± jitter.
    pub jitter: Duration,
    /// Bytes per second each way, per connection; `None`: no limit.
    pub bandwidth: Option<u32>,
    /// Chunks held back as if lost and retransmitted.
    pub loss: Option<Loss>,
    /// Each connection's link goes silent now and then.
    pub outages: Option<Outages>,
}

/// Loss on the radio, as TCP shows it: a delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// Chunks in a thousand that are lost at first.
    pub per_mille: u32,
    /// The retransmission timeout: a lost chunk arrives one, two or four
    /// RTOs late (lost once, twice or three times).
    pub rto: Duration,
}

/// Silences of a connection's link: one starts after a random gap (mean
/// `every`, exponentially distributed) and lasts `length`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outages {
    pub every: Duration,
    pub length: Duration,
}

impl Link {
    /// The profiles by name, for `loadgen --link`.
    pub const PROFILES: [&'static str; 3] = ["none", "cellular", "lossy"];

    /// A car on a cellular network: 150 ms ± 100 ms each way, 64 kB/s
    /// each way, and a 20 s outage (a tunnel, a dead spot) about every
    /// 5 minutes per connection.
    pub fn cellular() -> Self {
        Self {
            latency: Duration::from_millis(150),
            jitter: Duration::from_millis(100),
            bandwidth: Some(64_000),
            loss: None,
            outages: Some(Outages {
                every: Duration::from_secs(300),
                length: Duration::from_secs(20),
            }),
        }
    }

    /// A slow link that loses packets: 100 ms ± 50 ms each way, 32 kB/s,
    /// and 2 % of the chunks lost at first (200, 400 or 800 ms late, with
    /// everything behind them). No outages.
    pub fn lossy() -> Self {
        Self {
            latency: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            bandwidth: Some(32_000),
            loss: Some(Loss {
                per_mille: 20,
                rto: Duration::from_millis(200),
            }),
            outages: None,
        }
    }

    /// The profile called `name`: `Ok(None)` for `none` (no proxy at all).
    pub fn profile(name: &str) -> Result<Option<Self>, String> {
        match name {
            "none" => Ok(None),
            "cellular" => Ok(Some(Self::cellular())),
            "lossy" => Ok(Some(Self::lossy())),
            other => Err(format!(
                "no link profile {other:?}: one of {}",
                Self::PROFILES.join(", ")
            )),
        }
    }

    /// How much one read takes: about 50 ms of the link's rate, so that a
    /// slow link releases data smoothly rather than in large lumps.
    fn chunk_bytes(&self) -> usize {
        self.bandwidth.map_or(CHUNK_BYTES, |rate| {
            (rate as usize / 20).clamp(256, CHUNK_BYTES)
        })
    }
}

/// What the proxy's connections follow; changed through [`LinkProxy`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Control {
    link: Link,
    /// Every connection silent, and new ones held, until it is lifted.
    blackout: bool,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
}

/// A running proxy in front of one upstream address; stopped, its
/// connections closed, when dropped.
#[derive(Debug)]
pub struct LinkProxy {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LinkProxy {
    /// A proxy to `upstream` with `link`'s faults, listening on a free
    /// port of the loopback address of `upstream`'s family.
    pub fn start(upstream: SocketAddr, link: Link) -> io::Result<Self> {
        let ip = if upstream.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        Self::start_on(SocketAddr::new(ip, 0), upstream, link)
    }

    /// [`LinkProxy::start`] listening on `listen`.
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr, link: Link) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&listen.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let (control, watcher) = watch::channel(Control {
            link,
            blackout: false,
        });
        let (stop, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let seed = seed();
        let thread = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("link-proxy".to_owned())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            eprintln!("link proxy: no runtime: {error}");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                serve(listener, upstream, watcher, stopped, counters, seed).await;
                            }
                            Err(error) => eprintln!("link proxy: {error}"),
                        }
                    });
                })?
        };
        Ok(Self {
            addr,
            control,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where cars connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Other faults from now on, for every connection (the chunks already
    /// in flight keep their times).
    pub fn set_link(&self, link: Link) {
        self.control.send_modify(|control| control.link = link);
    }

    /// Every connection's link silent (`true`), or back (`false`).
    pub fn blackout(&self, on: bool) {
        self.control.send_modify(|control| control.blackout = on);
    }

    /// Connections through the proxy now.
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A seed that differs from proxy to proxy and run to run.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Accepts until stopped; each connection a task of its own.
async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    control: watch::Receiver<Control>,
    mut stopped: oneshot::Receiver<()>,
    counters: Arc<Counters>,
    seed: u64,
) {
    let mut rng = Rng(seed);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((car, peer)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    let open = Open::count(&counters);
                    tokio::spawn(connection(car, peer, upstream, control.clone(), rng.fork(), open));
                }
                // Out of files, most likely: the backlog keeps the car
                // waiting meanwhile.
                Err(_) => sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// One connection counted open while it lives (also when the runtime
/// drops its task).
struct Open(Arc<Counters>);

impl Open {
    fn count(counters: &Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    car: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    mut rng: Rng,
    _open: Open,
) {
    // A link that is down carries no SYN: the gateway hears of this car
    // once it is back.
    while control.borrow_and_update().blackout {
        if control.changed().await.is_err() {
            return;
        }
    }
    // Refused upstream: the car's connection closes, as a refused one.
    let Ok(gateway) = connect_from(peer, upstream).await else {
        return;
    };
    let _ = car.set_nodelay(true);
    let _ = gateway.set_nodelay(true);
    let silence = Arc::new(Mutex::new(Silence::new(rng.fork())));
    let (car_read, car_write) = car.into_split();
    let (gateway_read, gateway_write) = gateway.into_split();
    let up = Pump::new(car_read, gateway_write, &control, &silence, rng.fork()).run();
    let down = Pump::new(gateway_read, car_write, &control, &silence, rng.fork()).run();
    tokio::pin!(up, down);
    // Each way until it ends (a FIN passed on); an error on either (a
    // reset, a write to a closed socket) ends both: dropping the other
    // way's sockets closes them.
    tokio::select! {
        ended = &mut up => if ended.is_ok() { let _ = down.await; },
        ended = &mut down => if ended.is_ok() { let _ = up.await; },
    }
}

/// A connection to `upstream` from the car's own address where the car
/// allows it (see the module's documentation), else from the kernel's
/// choice.
async fn connect_from(peer: SocketAddr, upstream: SocketAddr) -> io::Result<TcpStream> {
    let new_socket = || {
        if upstream.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    if peer.ip().is_loopback()
        && upstream.ip().is_loopback()
        && peer.is_ipv4() == upstream.is_ipv4()
    {
        let socket = new_socket()?;
        if socket.set_reuseaddr(true).is_ok()
            && socket.bind(peer).is_ok()
            && let Ok(stream) = socket.connect(upstream).await
        {
            return Ok(stream);
        }
    }
    new_socket()?.connect(upstream).await
}

/// One direction of a connection: reads chunks, gives each the time it
/// is due at the other end, and writes it then.
struct Pump {
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    control: watch::Receiver<Control>,
    silence: Arc<Mutex<Silence>>,
    rng: Rng,
    /// What is in flight: (due, bytes), in order.
    queue: VecDeque<(Instant, Vec<u8>)>,
    queued: usize,
    /// When the link is through with what it was given (bandwidth).
    busy_until: Instant,
    /// The due time of the last chunk: none goes before it.
    last_due: Instant,
}

impl Pump {
    fn new(
        from: OwnedReadHalf,
        to: OwnedWriteHalf,
        control: &watch::Receiver<Control>,
        silence: &Arc<Mutex<Silence>>,
        rng: Rng,
    ) -> Self {
        let now = Instant::now();
        Self {
            from,
            to,
            control: control.clone(),
            silence: silence.clone(),
            rng,
            queue: VecDeque::new(),
            queued: 0,
            busy_until: now,
            last_due: now,
        }
    }

    /// Until the sender's FIN is passed on (`Ok`), or an error.
    async fn run(mut self) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut eof = false;
        loop {
            let control = *self.control.borrow_and_update();
            let now = Instant::now();
            let (outage, change) = self
                .silence
                .lock()
                .map(|mut silence| silence.at(control.link.outages, now))
                .unwrap_or((false, None));
            let silent = control.blackout || outage;
            if !silent && eof && self.queue.is_empty() {
                // Everything before the sender's FIN went through.
                return self.to.shutdown().await;
            }
            let can_read = !silent && !eof && self.queued < QUEUE_BYTES;
            let next = if silent {
                None
            } else {
                self.queue.front().map(|(due, _)| *due)
            };
            let read_bytes = control.link.chunk_bytes();
            tokio::select! {
                changed = self.control.changed() => if changed.is_err() {
                    // The proxy is stopping.
                    return Ok(());
                },
                read = self.from.read(&mut buf[..read_bytes]), if can_read => match read? {
                    0 => eof = true,
                    n => {
                        let due = self.due(&control.link, n, Instant::now());
                        self.queue.push_back((due, buf[..n].to_vec()));
                        self.queued += n;
                    }
                },
                () = sleep_until(next.unwrap_or(now)), if next.is_some() => {
                    if let Some((_, bytes)) = self.queue.pop_front() {
                        self.queued -= bytes.len();
                        self.to.write_all(&bytes).await?;
                    }
                },
                // An outage begins or ends.
                () = sleep_until(change.unwrap_or(now)), if change.is_some() => {},
            }
        }
    }

    /// When a chunk of `n` bytes read at `now` is due at the other end:
    /// sent once the link is through with the chunks before it, then
    /// latency ± jitter (plus retransmissions if lost), and never before
    /// the chunk ahead of it.
    fn due(&mut self, link: &Link, n: usize, now: Instant) -> Instant {
        let sent = match link.bandwidth {
            Some(rate) if rate > 0 => {
                let start = now.max(self.busy_until);
                self.busy_until = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
                self.busy_until
            }
            _ => now,
        };
        let mut delay = link.latency;
        if !link.jitter.is_zero() {
            delay =
                (delay + link.jitter.mul_f64(2.0 * self.rng.unit())).saturating_sub(link.jitter);
        }
        if let Some(loss) = link.loss
            && self.rng.below(1000) < u64::from(loss.per_mille)
        {
            delay += loss.rto * (1 << self.rng.below(3));
        }
        self.last_due = (sent + delay).max(self.last_due);
        self.last_due
    }
}

/// A connection's outages, one schedule for both directions.
#[derive(Debug)]
struct Silence {
    rng: Rng,
    /// The outages the schedule was made for.
    planned: Option<Outages>,
    start: Instant,
    end: Instant,
}

impl Silence {
    fn new(rng: Rng) -> Self {
        let now = Instant::now();
        Self {
            rng,
            planned: None,
            start: now,
            end: now,
        }
    }

    /// Whether the link is silent at `now`, and when that changes next
    /// (`None`: never).
    fn at(&mut self, outages: Option<Outages>, now: Instant) -> (bool, Option<Instant>) {
        let Some(outages) = outages else {
            self.planned = None;
            return (false, None);
        };
        if self.planned != Some(outages) {
            // New outages (or the first): the next one from now.
            self.planned = Some(outages);
            self.end = now;
        }
        while now >= self.end {
            let gap = outages.every.mul_f64(-self.rng.unit().max(1e-9).ln());
            self.start = self.end + gap;
            self.end = self.start + outages.length;
        }
        if now >= self.start {
            (true, Some(self.end))
        } else {
            (false, Some(self.start))
        }
    }
}

/// splitmix64: enough randomness for jitter and schedules, no crate.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A generator of its own for a part (a connection, a direction).
    fn fork(&mut self) -> Self {
        Self(self.next())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};
    use std::time::Instant as StdInstant;

    use super::*;
    use crate::{WAIT, wait_until};

    /// A server that accepts one connection at a time, for the proxy to
    /// connect to.
    fn server() -> (StdListener, SocketAddr) {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Reads until EOF, failing after [`WAIT`].
    fn read_to_end(stream: &mut StdStream) -> Vec<u8> {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        got
    }

    #[test]
    fn a_lossy_link_delays_but_delivers_every_byte_in_order() {
        let (listener, upstream) = server();
        let link = Link {
            latency: Duration::from_millis(30),
            jitter: Duration::from_millis(25),
            bandwidth: None,
            loss: Some(Loss {
                per_mille: 100,
                rto: Duration::from_millis(20),
            }),
            outages: None,
        };
        let proxy = LinkProxy::start(upstream, link).unwrap();
        let sent = pattern(300_000);
        let started = StdInstant::now();
        let mut car = StdStream::connect(proxy.addr()).unwrap();
        let (mut gateway, _) = listener.accept().unwrap();
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                // In many small writes: many chunks, each with its delay.
                for piece in sent.chunks(1000) {
                    car.write_all(piece).unwrap();
                }
            })
        };
        let got = read_to_end(&mut gateway);
        assert!(started.elapsed() >= Duration::from_millis(5), "no delay");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes arrived changed or out of order");
        writer.join().unwrap();
    }

    #[test]
    fn bandwidth_paces_the_bytes() {
        let (listener, upstream) = server();
        let link = Link {
            bandwidth: Some(100_000),
            ..Link::default()
        };
        let proxy = LinkProxy::start(upstream, link).unwrap();
        let mut car = StdStream::connect(proxy.addr()).unwrap();
        let (mut gateway, _) = listener.accept().unwrap();
        let started = StdInstant::now();
        car.write_all(&pattern(50_000)).unwrap();
        drop(car);
        let got = read_to_end(&mut gateway);
        let took = started.elapsed();
        assert_eq!(got, pattern(50_000));
        // 50 kB at 100 kB/s.
        assert!(
            took >= Duration::from_millis(450),
            "50 kB at 100 kB/s in {took:?}"
        );
    }

    /// A blackout holds what either end writes, and a close, without a
    /// FIN or a RST; lifted, everything goes through in order, then the
    /// close.
    #[test]
    fn a_blackout_holds_everything_and_lets_it_go_when_lifted() {
        let (listener, upstream) = server();
        let proxy = LinkProxy::start(upstream, Link::default()).unwrap();
        let mut car = StdStream::connect(proxy.addr()).unwrap();
        let (mut gateway, _) = listener.accept().unwrap();
        car.write_all(b"before ").unwrap();
        let mut before = [0u8; 7];
        gateway.set_read_timeout(Some(WAIT)).unwrap();
        gateway.read_exact(&mut before).unwrap();
        assert_eq!(&before, b"before ");

        // What the ends write from now on is held (the queues are empty).
        proxy.blackout(true);
        car.write_all(b"during").unwrap();
        car.shutdown(std::net::Shutdown::Write).unwrap();
        gateway.write_all(b"reply").unwrap();
        // Nothing arrives, and no close: a read times out.
        gateway
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let quiet = gateway.read(&mut byte);
        assert!(
            quiet
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock),
            "the silent link passed something on: {quiet:?}"
        );
        car.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(car.read(&mut byte).is_err(), "the reply went through");

        proxy.blackout(false);
        assert_eq!(read_to_end(&mut gateway), b"during");
        let mut reply = [0u8; 5];
        car.set_read_timeout(Some(WAIT)).unwrap();
        car.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"reply");
    }

    /// A connection made during a blackout reaches the upstream only when
    /// the link is back.
    #[test]
    fn a_connection_made_during_a_blackout_waits_for_the_link() {
        let (listener, upstream) = server();
        listener.set_nonblocking(true).unwrap();
        let proxy = LinkProxy::start(upstream, Link::default()).unwrap();
        proxy.blackout(true);
        let mut car = StdStream::connect(proxy.addr()).unwrap();
        car.write_all(b"CONNECT").unwrap();
        wait_until("the proxy to accept", WAIT, || proxy.accepted() == 1);
        std::thread::sleep(Duration::from_millis(200));
        assert!(listener.accept().is_err(), "connected upstream while down");
        proxy.blackout(false);
        listener.set_nonblocking(false).unwrap();
        let (mut gateway, _) = listener.accept().unwrap();
        let mut got = [0u8; 7];
        gateway.set_read_timeout(Some(WAIT)).unwrap();
        gateway.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"CONNECT");
    }

    #[test]
    fn the_gateway_sees_the_cars_own_address_where_it_can() {
        let (listener, upstream) = server();
        let proxy = LinkProxy::start(upstream, Link::default()).unwrap();
        // As loadgen's cars do: their own address and port, SO_REUSEADDR.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        let own: SocketAddr = "127.3.2.1:0".parse().unwrap();
        socket.bind(&own.into()).unwrap();
        socket.connect(&proxy.addr().into()).unwrap();
        let car: StdStream = socket.into();
        let (gateway, seen) = listener.accept().unwrap();
        assert_eq!(seen, car.local_addr().unwrap());
        assert_eq!(proxy.open(), 1);
        // Each end closes its way.
        drop(car);
        drop(gateway);
        wait_until("the connection to end", WAIT, || proxy.open() == 0);
    }

    #[test]
    fn outages_come_and_go_on_schedule() {
        let outages = Outages {
            every: Duration::from_secs(10),
            length: Duration::from_secs(2),
        };
        let mut silence = Silence::new(Rng(7));
        let start = Instant::now();
        let mut silent = Duration::ZERO;
        let step = Duration::from_millis(100);
        let mut changes = 0;
        let mut was = false;
        for k in 0..100_000u32 {
            let (now_silent, next) = silence.at(Some(outages), start + step * k);
            assert!(next.is_some_and(|next| next > start + step * k));
            if now_silent {
                silent += step;
            }
            changes += u32::from(now_silent != was);
            was = now_silent;
        }
        // 10,000 s: about 833 outages of 2 s (a gap of 10 s on average
        // between them), so about a sixth of the time silent.
        let share = silent.as_secs_f64() / 10_000.0;
        assert!((0.12..0.21).contains(&share), "silent {share}");
        assert!((1400..1900).contains(&changes), "{changes} changes");
        assert_eq!(silence.at(None, start), (false, None));
    }

    #[test]
    fn profiles_by_name() {
        assert_eq!(Link::profile("none"), Ok(None));
        assert_eq!(Link::profile("cellular"), Ok(Some(Link::cellular())));
        assert_eq!(Link::profile("lossy"), Ok(Some(Link::lossy())));
        let error = Link::profile("5g").unwrap_err();
        assert!(error.contains("none, cellular, lossy"), "{error}");
        for name in Link::PROFILES {
            assert!(Link::profile(name).is_ok());
        }
    }
}
