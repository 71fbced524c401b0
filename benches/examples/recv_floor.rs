//! What it costs one receiving thread, in CPU time per received TCP
//! segment, to receive small messages from many quiet TCP connections:
//! today's gateway path (`epoll`) against io_uring multishot receive with a
//! provided-buffer ring (`multishot`).
//!
//! - `epoll`: one edge-triggered epoll set (EPOLLIN|EPOLLRDHUP|EPOLLET) holds
//!   every connection; the thread waits in `epoll_wait` (256 events at most)
//!   and `recv`s each ready socket into one reused 4 KiB buffer until EAGAIN.
//! - `multishot`: one `RecvMulti` armed per connection (again only when a
//!   completion comes without IORING_CQE_F_MORE), buffers picked by the
//!   kernel from a registered ring (`--buf-size`, `--ring-entries`); the
//!   thread waits for one completion (`submit_with_args(1, timeout)`), reads
//!   every completion and returns its buffer. ENOBUFS (ring empty) re-arms
//!   and is counted. The ring is SINGLE_ISSUER|DEFER_TASKRUN unless
//!   `--plain-ring`.
//! - `--gather-ms W` (both modes): sleep W ms after each wake-up before
//!   waiting again, as the gateway's readiness task does; 0 = wake per event.
//!
//! The sender is this program again, in a child process (`--send`): a
//! process may open at most 20,000 files here. It opens `--conns` loopback
//! connections (TCP_NODELAY) and, on a 1 ms tick, writes `--rate` messages
//! per second of `--size` bytes, each to the next connection in turn. Both
//! touch every byte: the receiver checks the bytes and their sum against
//! the sender's count at the end and exits non-zero if they differ.
//!
//! Measured, after every connection is up and 2 s of warm-up, over
//! `--secs`: the receiving thread's user and system CPU time and voluntary
//! context switches (wake-ups), from getrusage(RUSAGE_THREAD).
//!
//! ```text
//! cargo build --release -p benches --example recv_floor
//! R=target/release/examples/recv_floor
//! # a fleet's rate: 10,000 cars, each every 10 s (1,000/s), 60 bytes
//! $R --mode epoll     --conns 10000 --rate 1000  --size 60 --secs 20 --gather-ms 0
//! $R --mode multishot --conns 10000 --rate 1000  --size 60 --secs 20 --gather-ms 0
//! # 20,000/s: 2,000 cars, each every 100 ms, 60 bytes
//! $R --mode epoll     --conns 2000  --rate 20000 --size 60 --secs 20 --gather-ms 0
//! $R --mode multishot --conns 2000  --rate 20000 --size 60 --secs 20 --gather-ms 0
//! # and each again with --gather-ms 5
//! ```
//!
//! Output, one line per run (wrapped here):
//!
//! ```text
//! mode=multishot conns=10000 rate=1000/s gather=5ms: 20001 msgs (20001 segments) in 20.0 s;
//!   receiver CPU 1.27 % of a core = 12.7 µs/msg (user 3.1, sys 9.6);
//!   194 wake-ups/s = 5.1 msgs/wake-up; re-arms 0, ENOBUFS 0; EOFs 0
//! ```
//!
//! µs/msg is the thread's CPU time over the messages (bytes / size) in the
//! window; a wake-up is a voluntary context switch (a blocking wait or the
//! gather sleep). The total CPU time is exact; its user/sys split is the
//! kernel's tick sample (with tick accounting, 4 ms at HZ=250): rough at
//! 1 % of a core. Epoll's `recv calls` counts the EAGAIN ones; multishot's
//! `re-arms` are completions without IORING_CQE_F_MORE (ENOBUFS among
//! them).
//!
//! Loopback moves TCP's costs between the two threads. The sender's thread
//! runs TCP's receive path (softirq) for the segments it sends. The ACK of
//! a segment goes at once, in that same softirq, after a gap longer than
//! the RTO (quick-ACK: the 10 s cars); at shorter gaps (the 100 ms cars) it
//! goes from the receiver's `recv` (PSH seen, data read), and on loopback
//! the ACK's own receive path then runs in the receiver's thread too. Under
//! perf at 20,000/s, sending the ACK took about three quarters of the
//! receiver's `tcp_recvmsg`, the ACK's loopback receive path nearly half.

// io_uring's submission queue and provided-buffer ring have no safe API;
// each `unsafe` block says why it holds. benches/Cargo.toml sets the lint
// to "deny" (not the workspace's "forbid") for this file alone.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed};
use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{EnterFlags, IoUring, cqueue, opcode};
use nix::sys::resource::{UsageWho, getrusage};
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{RecvFlags, recv};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

type Res<T> = Result<T, Box<dyn Error>>;

const WARM_UP: Duration = Duration::from_secs(2);
const EPOLL_BATCH: usize = 256;
const BUF_GROUP: u16 = 7;

/// Adds what failed to an error.
trait Context<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Res<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.split_first() {
        Some((first, rest)) if first == "--send" => sender(rest),
        _ => Options::parse(&argv).and_then(|o| receiver(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recv_floor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Epoll,
    Multishot,
}

struct Options {
    mode: Mode,
    conns: usize,
    rate: u64,
    size: usize,
    secs: u64,
    gather: Duration,
    buf_size: usize,
    ring_entries: u16,
    plain_ring: bool,
}

impl Options {
    fn parse(argv: &[String]) -> Res<Self> {
        let mut o = Options {
            mode: Mode::Epoll,
            conns: 10_000,
            rate: 1_000,
            size: 60,
            secs: 20,
            gather: Duration::ZERO,
            buf_size: 512,
            ring_entries: 4096,
            plain_ring: false,
        };
        let mut args = argv.iter();
        while let Some(flag) = args.next() {
            if flag == "--plain-ring" {
                o.plain_ring = true;
                continue;
            }
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--mode" if value == "epoll" => o.mode = Mode::Epoll,
                "--mode" if value == "multishot" => o.mode = Mode::Multishot,
                "--conns" => o.conns = value.parse().map_err(bad)?,
                "--rate" => o.rate = value.parse().map_err(bad)?,
                "--size" => o.size = value.parse().map_err(bad)?,
                "--secs" => o.secs = value.parse().map_err(bad)?,
                "--gather-ms" => o.gather = Duration::from_millis(value.parse().map_err(bad)?),
                "--buf-size" => o.buf_size = value.parse().map_err(bad)?,
                "--ring-entries" => o.ring_entries = value.parse().map_err(bad)?,
                _ => {
                    return Err(format!(
                        "unknown flag or value: {flag} {value} (see the doc comment)"
                    )
                    .into());
                }
            }
        }
        if o.conns == 0 || o.rate == 0 || o.size == 0 || o.secs == 0 {
            return Err("--conns, --rate, --size and --secs must be above 0".into());
        }
        if !o.ring_entries.is_power_of_two() || o.buf_size == 0 {
            return Err("--ring-entries must be a power of two, --buf-size above 0".into());
        }
        Ok(o)
    }
}

/// Raises the soft open-files limit to the hard one; fails below `need`.
fn raise_nofile(need: usize) -> Res<()> {
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .ctx("raising RLIMIT_NOFILE to its hard limit")?;
    match limit.maximum {
        Some(max) if max < need as u64 => {
            Err(format!("{need} files needed, the hard open-files limit is {max}").into())
        }
        _ => Ok(()),
    }
}

/// Byte `i` of message `k` is `(k + i) as u8`: message `k` is `pattern[k % 256..][..size]`.
fn pattern(size: usize) -> Vec<u8> {
    (0..size + 256).map(|i| i as u8).collect()
}

fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// The child: `--send ADDR CONNS RATE SIZE`. Prints `connected`, waits for
/// `go` on stdin, sends until `stop`, prints `sent MSGS BYTES SUM`, and keeps
/// its connections open until stdin closes.
fn sender(argv: &[String]) -> Res<()> {
    let [addr, conns, rate, size] = argv else {
        return Err("usage: --send ADDR CONNS RATE SIZE".into());
    };
    let addr: SocketAddr = addr.parse().ctx("sender address")?;
    let conns: usize = conns.parse().ctx("sender CONNS")?;
    let rate: u64 = rate.parse().ctx("sender RATE")?;
    let size: usize = size.parse().ctx("sender SIZE")?;
    raise_nofile(conns + 16)?;
    let mut streams = Vec::with_capacity(conns);
    for i in 0..conns {
        let stream = TcpStream::connect(addr).ctx(format!("sender: connection {i} of {conns}"))?;
        stream.set_nodelay(true).ctx("TCP_NODELAY")?;
        streams.push(stream);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "connected").ctx("sender: stdout")?;
    out.flush().ctx("sender: stdout")?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .ctx("sender: reading go")?;
    if line.trim() != "go" {
        return Err(format!("sender: expected go, read {line:?}").into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut stdin = std::io::stdin().lock();
            let _ = stdin.read_line(&mut line); // "stop" or EOF
            stop.store(true, Ordering::Relaxed);
            while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) {}
        })
    };
    let pattern = pattern(size);
    let (mut sent, mut sum) = (0u64, 0u64);
    let start = Instant::now();
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick += 1;
        let due = start + Duration::from_millis(tick);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        while sent < rate * tick / 1000 {
            let n = streams.len() as u64;
            let (Some(stream), Some(msg)) = (
                streams.get_mut((sent % n) as usize),
                pattern
                    .get((sent % 256) as usize..)
                    .and_then(|p| p.get(..size)),
            ) else {
                return Err("sender: index out of range".into());
            };
            stream
                .write_all(msg)
                .ctx(format!("sender: write to connection {}", sent % n))?;
            sum += byte_sum(msg);
            sent += 1;
        }
    }
    writeln!(out, "sent {sent} {} {sum}", sent * size as u64).ctx("sender: stdout")?;
    out.flush().ctx("sender: stdout")?;
    watcher
        .join()
        .map_err(|_| "sender: stdin watcher panicked")?;
    Ok(())
}

#[derive(Clone, Copy, Default)]
struct Counts {
    bytes: u64,
    sum: u64,
    segments: u64,
    recv_calls: u64,
    rearms: u64,
    enobufs: u64,
    eofs: u64,
}

impl Counts {
    fn take(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.sum += byte_sum(data);
        self.segments += 1;
    }
}

/// One blocking wait (at most `timeout`), then everything that is ready.
trait Receive {
    fn harvest(&mut self, timeout: Duration, counts: &mut Counts) -> Res<()>;
}

struct EpollRx {
    epoll: rustix::fd::OwnedFd,
    socks: Vec<TcpStream>,
    events: Vec<epoll::Event>,
    buf: Vec<u8>,
}

impl EpollRx {
    fn new(socks: Vec<TcpStream>) -> Res<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).ctx("epoll_create")?;
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        for (i, sock) in socks.iter().enumerate() {
            sock.set_nonblocking(true).ctx("O_NONBLOCK")?;
            epoll::add(&epoll, sock, epoll::EventData::new_u64(i as u64), flags)
                .ctx("epoll_ctl ADD")?;
        }
        let events = Vec::with_capacity(EPOLL_BATCH);
        Ok(EpollRx {
            epoll,
            socks,
            events,
            buf: vec![0; 4096],
        })
    }
}

impl Receive for EpollRx {
    fn harvest(&mut self, timeout: Duration, counts: &mut Counts) -> Res<()> {
        let timeout = rustix::event::Timespec::try_from(timeout).ctx("epoll timeout")?;
        self.events.clear();
        match epoll::wait(
            &self.epoll,
            spare_capacity(&mut self.events),
            Some(&timeout),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("epoll_wait: {e}").into()),
        }
        for event in &self.events {
            let i = event.data.u64() as usize;
            let sock = self.socks.get(i).ok_or("epoll: unknown connection")?;
            loop {
                counts.recv_calls += 1;
                match recv(sock, self.buf.as_mut_slice(), RecvFlags::empty()) {
                    Ok((0, _)) => {
                        counts.eofs += 1;
                        break;
                    }
                    Ok((n, _)) => counts.take(self.buf.get(..n).ok_or("recv: length")?),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(format!("recv on connection {i}: {e}").into()),
                }
            }
        }
        Ok(())
    }
}

struct MultishotRx {
    ring: IoUring,
    socks: Vec<TcpStream>,
    /// The registered ring of `BufRingEntry`s, page-aligned; never freed.
    entries: *mut BufRingEntry,
    /// `ring_entries` buffers of `buf_size` bytes, back to back; never freed.
    bufs: *mut u8,
    buf_size: usize,
    mask: u16,
    tail: u16,
    rearm: Vec<u64>,
    freed: Vec<u16>,
    /// With a gathering window: after a wait, enter again until nothing comes.
    drain: bool,
}

impl MultishotRx {
    fn new(socks: Vec<TcpStream>, o: &Options) -> Res<Self> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(32_768);
        if !o.plain_ring {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        let ring = builder.build(4096).ctx("io_uring_setup")?;
        let n = usize::from(o.ring_entries);
        let bytes = (n * size_of::<BufRingEntry>()).next_multiple_of(4096);
        let layout = Layout::from_size_align(bytes, 4096).ctx("buffer ring layout")?;
        // SAFETY: the layout's size is above zero; null is checked below.
        let entries = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err("allocating the buffer ring failed".into());
        }
        let bufs = Box::into_raw(vec![0u8; n * o.buf_size].into_boxed_slice()).cast::<u8>();
        let mut rx = MultishotRx {
            ring,
            socks,
            entries,
            bufs,
            buf_size: o.buf_size,
            mask: o.ring_entries - 1,
            tail: 0,
            rearm: Vec::new(),
            freed: Vec::new(),
            drain: !o.gather.is_zero(),
        };
        for bid in 0..o.ring_entries {
            rx.give_back(bid);
        }
        rx.publish_tail();
        // SAFETY: `entries` holds `ring_entries` entries, page-aligned, and is
        // never freed, so it outlives the registration.
        unsafe {
            rx.ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                o.ring_entries,
                BUF_GROUP,
                0,
            )
        }
        .ctx("IORING_REGISTER_PBUF_RING")?;
        rx.rearm = (0..rx.socks.len() as u64).collect();
        rx.push_rearms()?;
        Ok(rx)
    }

    /// Puts buffer `bid` at the ring's tail (seen by the kernel once published).
    fn give_back(&mut self, bid: u16) {
        // SAFETY: `tail & mask` is below the ring's length; the slot at the tail
        // is one the kernel has consumed (or never had), so nothing reads it.
        let entry = unsafe { &mut *self.entries.add(usize::from(self.tail & self.mask)) };
        // SAFETY: `bid` is below `ring_entries`: the buffer is inside `bufs`.
        let addr = unsafe { self.bufs.add(usize::from(bid) * self.buf_size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        // SAFETY: the tail is the u16 that overlays entry 0's `resv`, inside the
        // ring, aligned for u16 (and so for AtomicU16); the kernel reads it.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Arms a multishot receive for each connection in `rearm`.
    fn push_rearms(&mut self) -> Res<()> {
        let (submitter, mut sq, _) = self.ring.split();
        for &i in &self.rearm {
            let sock = self
                .socks
                .get(i as usize)
                .ok_or("re-arm: unknown connection")?;
            let sqe = opcode::RecvMulti::new(Fd(sock.as_raw_fd()), BUF_GROUP)
                .build()
                .user_data(i);
            // SAFETY: the entry refers to no memory of ours but the buffer ring,
            // which is never freed; the socket stays open as long as the ring.
            while unsafe { sq.push(&sqe) }.is_err() {
                sq.sync();
                submitter.submit().ctx("io_uring_enter (submit)")?;
                sq.sync();
            }
        }
        self.rearm.clear();
        Ok(())
    }
}

impl MultishotRx {
    /// Reads the completions there are, gives their buffers back, re-arms.
    fn reap(&mut self, counts: &mut Counts) -> Res<usize> {
        let mut reaped = 0;
        for cqe in self.ring.completion() {
            reaped += 1;
            let (res, flags, i) = (cqe.result(), cqe.flags(), cqe.user_data());
            if res > 0 {
                let bid = cqueue::buffer_select(flags).ok_or("a completion without a buffer")?;
                // SAFETY: the kernel wrote `res` bytes into buffer `bid` and has
                // handed it over; it is ours until given back below.
                let data = unsafe {
                    let start = self.bufs.add(usize::from(bid) * self.buf_size);
                    std::slice::from_raw_parts(start, res as usize)
                };
                counts.take(data);
                self.freed.push(bid);
            } else if res == 0 {
                counts.eofs += 1;
                continue; // the peer closed: no re-arm
            } else if -res == Errno::NOBUFS.raw_os_error() {
                counts.enobufs += 1;
            } else {
                let e = Errno::from_raw_os_error(-res);
                return Err(format!("multishot recv on connection {i}: {e}").into());
            }
            if !cqueue::more(flags) {
                counts.rearms += 1;
                self.rearm.push(i);
            }
        }
        while let Some(bid) = self.freed.pop() {
            self.give_back(bid);
        }
        self.publish_tail();
        self.push_rearms()?;
        Ok(reaped)
    }
}

impl Receive for MultishotRx {
    fn harvest(&mut self, timeout: Duration, counts: &mut Counts) -> Res<()> {
        let timeout = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&timeout);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::TIME | Errno::INTR)) => {}
            Err(e) => return Err(format!("io_uring_enter (wait): {e}").into()),
        }
        // With DEFER_TASKRUN an enter runs at most about 20 of the receives
        // the kernel has deferred (IO_LOCAL_TW_DEFAULT_MAX) once one
        // completion is there; the rest wait for the next enter. Without a
        // window that is the next wait; with one, enter again (GETEVENTS, no
        // wait) until an enter brings nothing, or segments wait a window each.
        while self.reap(counts)? > 0 && self.drain {
            let getevents = EnterFlags::GETEVENTS.bits();
            // SAFETY: no argument: the enter only runs deferred work.
            unsafe { self.ring.submitter().enter::<()>(0, 0, getevents, None) }
                .ctx("io_uring_enter (getevents)")?;
        }
        Ok(())
    }
}

/// Harvests until `end`, sleeping `gather` after each wake-up.
fn run_until(rx: &mut dyn Receive, end: Instant, gather: Duration, counts: &mut Counts) -> Res<()> {
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        rx.harvest(end - now, counts)?;
        if !gather.is_zero() {
            std::thread::sleep(gather);
        }
    }
}

/// (user, system) CPU seconds and voluntary context switches of this thread.
fn thread_usage() -> Res<(f64, f64, u64)> {
    let u = getrusage(UsageWho::RUSAGE_THREAD).ctx("getrusage(RUSAGE_THREAD)")?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok((
        secs(u.user_time()),
        secs(u.system_time()),
        u.voluntary_context_switches() as u64,
    ))
}

fn receiver(o: &Options) -> Res<()> {
    raise_nofile(o.conns + 64)?;
    let listener = TcpListener::bind("127.0.0.1:0").ctx("binding the listener")?;
    let addr = listener.local_addr().ctx("listener address")?;
    listener.set_nonblocking(true).ctx("listener O_NONBLOCK")?;
    let exe = std::env::current_exe().ctx("current_exe")?;
    let mut child = Command::new(exe)
        .args([
            "--send".to_string(),
            addr.to_string(),
            o.conns.to_string(),
            o.rate.to_string(),
            o.size.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ctx("starting the sender")?;
    let (Some(mut to_child), Some(from_child)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the sender's pipes are missing".into());
    };
    let mut from_child = BufReader::new(from_child);

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut socks = Vec::with_capacity(o.conns);
    while socks.len() < o.conns {
        match listener.accept() {
            Ok((sock, _)) => socks.push(sock),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait().ctx("checking the sender")? {
                    let n = socks.len();
                    return Err(
                        format!("the sender exited ({status}) after {n} connections").into(),
                    );
                }
                if Instant::now() > deadline {
                    return Err(format!("only {} connections in 120 s", socks.len()).into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accept: {e}").into()),
        }
    }
    let mut line = String::new();
    from_child
        .read_line(&mut line)
        .ctx("reading the sender's connected")?;
    if line.trim() != "connected" {
        return Err(format!("the sender said {line:?}, not connected").into());
    }

    let mut rx: Box<dyn Receive> = match o.mode {
        Mode::Epoll => Box::new(EpollRx::new(socks)?),
        Mode::Multishot => Box::new(MultishotRx::new(socks, o)?),
    };
    writeln!(to_child, "go").ctx("telling the sender to go")?;
    let mut counts = Counts::default();
    let start = Instant::now();
    run_until(rx.as_mut(), start + WARM_UP, o.gather, &mut counts)?;
    let (t0, u0, c0) = (Instant::now(), thread_usage()?, counts);
    let end = t0 + Duration::from_secs(o.secs);
    run_until(rx.as_mut(), end, o.gather, &mut counts)?;
    let (t1, u1, c1) = (Instant::now(), thread_usage()?, counts);

    writeln!(to_child, "stop").ctx("telling the sender to stop")?;
    line.clear();
    from_child
        .read_line(&mut line)
        .ctx("reading the sender's count")?;
    let sent: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let &[sent_msgs, sent_bytes, sent_sum] = sent.as_slice() else {
        return Err(format!("the sender's count is unreadable: {line:?}").into());
    };
    let drain_end = Instant::now() + Duration::from_secs(5);
    while counts.bytes < sent_bytes && Instant::now() < drain_end {
        rx.harvest(Duration::from_millis(100), &mut counts)?;
    }
    drop(to_child);
    let status = child.wait().ctx("waiting for the sender")?;

    let wall = (t1 - t0).as_secs_f64();
    let (user, sys) = (u1.0 - u0.0, u1.1 - u0.1);
    let wakes = u1.2 - u0.2;
    let msgs = (c1.bytes - c0.bytes) / o.size as u64;
    let per_msg = |s: f64| s * 1e6 / msgs.max(1) as f64;
    let (mode, extra) = match o.mode {
        Mode::Epoll => {
            let calls = (c1.recv_calls - c0.recv_calls) as f64 / msgs.max(1) as f64;
            ("epoll", format!("recv calls {calls:.2}/msg"))
        }
        Mode::Multishot => {
            let (rearms, enobufs) = (c1.rearms - c0.rearms, c1.enobufs - c0.enobufs);
            ("multishot", format!("re-arms {rearms}, ENOBUFS {enobufs}"))
        }
    };
    println!(
        "mode={mode} conns={} rate={}/s gather={}ms: {msgs} msgs ({} segments) in {wall:.1} s; receiver CPU {:.2} % of a core = {:.1} µs/msg (user {:.1}, sys {:.1}); {:.0} wake-ups/s = {:.1} msgs/wake-up; {extra}; EOFs {}",
        o.conns,
        o.rate,
        o.gather.as_millis(),
        c1.segments - c0.segments,
        (user + sys) * 100.0 / wall,
        per_msg(user + sys),
        per_msg(user),
        per_msg(sys),
        wakes as f64 / wall,
        msgs as f64 / wakes.max(1) as f64,
        counts.eofs,
    );
    if !status.success() {
        return Err(format!("the sender failed: {status}").into());
    }
    if counts.bytes != sent_bytes || counts.sum != sent_sum {
        return Err(format!(
            "received {} bytes (sum {}), the sender sent {sent_msgs} messages, {sent_bytes} bytes (sum {sent_sum})",
            counts.bytes, counts.sum
        )
        .into());
    }
    Ok(())
}
