//! Where the admin endpoint's bytes meet sockets: the accept loop, one
//! task per connection with its deadlines, and the bound on connections.
//!
//! Everything runs on the admin thread (a current-thread runtime and a
//! `LocalSet`), so the state the tasks share is `Rc`/`RefCell`, and a
//! task's cancellation never races another thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::{AbortHandle, LocalSet};

use super::Limits;
use super::lookup::LOOKUP_TIMEOUT;
use super::routes::{Answer, Closed, Reply, Request, Routes};

/// How often the stop flag and the heartbeats are looked at. `/livez`
/// looks at the heartbeats itself too, so this only dates their changes
/// between probes, to the second. (At 100 ms, an idle admin thread woke
/// 20 times a second: 0.15 % of a core on the test machine.) The thread
/// is detached: nothing waits for it to see the flag.
const TICK: Duration = Duration::from_secs(1);
/// After a failed accept (out of file descriptors, most likely), before
/// the next: the error would repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest between two warnings of the same kind (a flood, failed accepts).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// hyper's smallest read buffer, and so the longest request head: probes
/// and scrapes send a few hundred bytes.
const MAX_HEAD: usize = 8192;

/// Serves until `stop` is set; the admin thread's body.
pub(super) fn serve(
    runtime: &tokio::runtime::Runtime,
    listener: TcpListener,
    routes: Routes,
    limits: Limits,
    stop: &AtomicBool,
) {
    let local = LocalSet::new();
    local.block_on(runtime, accept(listener, Rc::new(routes), limits, stop));
    // Dropping `local` drops the connections still open.
}

/// An open connection: how to close it, where from, and whether its
/// request head has arrived (then it is being answered).
#[derive(Debug)]
struct Slot<H> {
    handle: H,
    peer: IpAddr,
    answering: Rc<Cell<bool>>,
}

/// The open connections, oldest first, and how many each address holds.
#[derive(Debug)]
struct Connections<H> {
    next: u64,
    open: BTreeMap<u64, Slot<H>>,
    held: HashMap<IpAddr, usize>,
}

impl<H> Connections<H> {
    fn new() -> Self {
        Self {
            next: 0,
            open: BTreeMap::new(),
            held: HashMap::new(),
        }
    }

    /// Takes out the connection to close so that one more fits under
    /// `max`; none while there is room. It is one of the address that
    /// holds the most connections (a flood from one address closes its
    /// own, not the probes' or the scraper's): the oldest of them still
    /// waiting for its request head, else the oldest of them.
    fn make_room(&mut self, max: usize) -> Option<Slot<H>> {
        if self.open.len() < max {
            return None;
        }
        let greediest = self
            .held
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(peer, _)| *peer)?;
        let mut theirs = self.open.iter().filter(|(_, slot)| slot.peer == greediest);
        let victim = theirs
            .clone()
            .find(|(_, slot)| !slot.answering.get())
            .or_else(|| theirs.next())
            .map(|(id, _)| *id)?;
        self.remove(victim)
    }

    fn insert(&mut self, slot: Slot<H>) -> u64 {
        let id = self.next;
        self.next += 1;
        *self.held.entry(slot.peer).or_default() += 1;
        self.open.insert(id, slot);
        id
    }

    /// Takes connection `id` out, if it is still in.
    fn remove(&mut self, id: u64) -> Option<Slot<H>> {
        let slot = self.open.remove(&id)?;
        if let Some(count) = self.held.get_mut(&slot.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.held.remove(&slot.peer);
            }
        }
        Some(slot)
    }
}

type Open = Rc<RefCell<Connections<AbortHandle>>>;

/// Takes a connection out of the table when its task ends, however it
/// ends (answered, timed out, aborted).
struct Leave {
    open: Open,
    id: Rc<Cell<u64>>,
    routes: Rc<Routes>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.try_borrow_mut() {
            open.remove(self.id.get());
        }
        self.routes.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A warning at most every [`WARN_EVERY`].
#[derive(Debug, Default)]
struct Warned(Cell<Option<Instant>>);

impl Warned {
    fn due(&self, now: Instant) -> bool {
        let due = self
            .0
            .get()
            .is_none_or(|then| now.duration_since(then) >= WARN_EVERY);
        if due {
            self.0.set(Some(now));
        }
        due
    }
}

async fn accept(listener: TcpListener, routes: Rc<Routes>, limits: Limits, stop: &AtomicBool) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "admin endpoint: cannot register its socket");
            return;
        }
    };
    let open: Open = Rc::new(RefCell::new(Connections::new()));
    let (full, failing) = (Warned::default(), Warned::default());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let evicted = open.borrow_mut().make_room(limits.max_connections);
                    if let Some(slot) = evicted {
                        slot.handle.abort();
                        routes.stats.closed.bump(Closed::Evicted);
                        if full.due(Instant::now()) {
                            tracing::warn!(
                                max_connections = limits.max_connections,
                                "admin endpoint full: closing the oldest connections that \
                                 sent no request, of the address holding the most \
                                 (carbridge_admin_connections_closed_total)"
                            );
                        }
                    }
                    let answering = Rc::new(Cell::new(false));
                    let id = Rc::new(Cell::new(u64::MAX));
                    routes.stats.open.fetch_add(1, Ordering::Relaxed);
                    let leave = Leave { open: open.clone(), id: id.clone(), routes: routes.clone() };
                    // The task cannot run before it is in the table: this
                    // thread does not yield in between.
                    let task = tokio::task::spawn_local(connection(
                        stream,
                        routes.clone(),
                        answering.clone(),
                        limits,
                        leave,
                    ));
                    id.set(open.borrow_mut().insert(Slot {
                        handle: task.abort_handle(),
                        peer: peer.ip(),
                        answering,
                    }));
                    // Let the new connection read the head that came with
                    // it before the next accept: a probe's is usually in
                    // already, and once read its connection is not the
                    // one to make room.
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    if failing.due(Instant::now()) {
                        tracing::warn!(%error, "admin endpoint: accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = tick.tick() => routes.look(Instant::now()),
        }
    }
}

/// One connection: one request read within the head timeout, answered,
/// closed; all of it within the exchange deadline.
async fn connection(
    stream: tokio::net::TcpStream,
    routes: Rc<Routes>,
    answering: Rc<Cell<bool>>,
    limits: Limits,
    leave: Leave,
) {
    let service = {
        let routes = routes.clone();
        service_fn(move |request: hyper::Request<Incoming>| {
            answering.set(true);
            let authorization = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            let answer = routes.route(
                &Request {
                    method: request.method().as_str(),
                    path: request.uri().path(),
                    authorization,
                },
                Instant::now(),
            );
            async move {
                let reply = match answer {
                    Answer::Now(reply) => reply,
                    // Awaited here: the thread serves other connections
                    // meanwhile, and the whole exchange stays within its
                    // deadline.
                    Answer::Later(awaited) => {
                        match tokio::time::timeout(LOOKUP_TIMEOUT, awaited).await {
                            Ok(Ok(found)) => Reply::found(found),
                            Ok(Err(_)) => Reply::unanswered(None),
                            Err(_) => Reply::unanswered(Some(LOOKUP_TIMEOUT)),
                        }
                    }
                };
                Ok::<_, Infallible>(response(reply))
            }
        })
    };
    let exchange = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.exchange_timeout, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_timeout() => routes.stats.closed.bump(Closed::HeadTimeout),
        Ok(Err(error)) => tracing::debug!(%error, "admin connection failed"),
        Err(_) => routes.stats.closed.bump(Closed::Deadline),
    }
    drop(leave);
}

fn response(reply: Reply) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    if reply.challenge {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"carbridge admin\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(peer: [u8; 4], answering: bool) -> Slot<()> {
        Slot {
            handle: (),
            peer: IpAddr::from(peer),
            answering: Rc::new(Cell::new(answering)),
        }
    }

    fn ids<H>(open: &Connections<H>) -> Vec<u64> {
        open.open.keys().copied().collect()
    }

    #[test]
    fn room_is_made_by_closing_the_oldest_connection_without_a_request() {
        let mut open = Connections::new();
        let first = open.insert(slot([10, 0, 0, 1], true));
        let _second = open.insert(slot([10, 0, 0, 1], false));
        let third = open.insert(slot([10, 0, 0, 1], false));
        assert!(open.make_room(4).is_none(), "room for a fourth");
        assert!(open.make_room(3).is_some());
        assert_eq!(
            ids(&open),
            [first, third],
            "the oldest waiting for its head goes, not the older one being answered"
        );
        // Every one being answered: the oldest goes.
        let mut busy = Connections::new();
        let oldest = busy.insert(slot([10, 0, 0, 1], true));
        busy.insert(slot([10, 0, 0, 1], true));
        assert!(busy.make_room(2).is_some());
        assert!(!busy.open.contains_key(&oldest));
    }

    #[test]
    fn a_flood_from_one_address_makes_room_from_its_own_connections() {
        let mut open = Connections::new();
        // The probe came first and has not sent its head yet.
        let probe = open.insert(slot([10, 0, 0, 9], false));
        let flood: Vec<u64> = (0..5)
            .map(|_| open.insert(slot([10, 0, 0, 66], false)))
            .collect();
        for (n, victim) in flood.iter().enumerate() {
            let closed = open.make_room(6).map(|slot| slot.peer);
            assert_eq!(closed, Some(IpAddr::from([10, 0, 0, 66])), "eviction {n}");
            assert!(!open.open.contains_key(victim), "the flood's oldest first");
            assert_eq!(open.held.values().sum::<usize>(), open.open.len());
            open.insert(slot([10, 0, 0, 66], false));
        }
        assert!(open.open.contains_key(&probe));
    }
}
