//! The admin HTTP endpoint of the gateway and the router.
//!
//! - `GET /metrics`: the Prometheus text the process renders on each
//!   scrape, and the endpoint's own counters (`carbridge_admin_*`).
//! - `GET /healthz`: 200 `ok` while the process runs.
//! - `GET /livez`: 200 `live` while every loop the process names (the
//!   gateway's shard pollers, the router's routing loop) has turned within
//!   its liveness timeout; 503 with a line per stalled loop, saying for how
//!   long, otherwise. A loop that has not turned yet (still starting) is
//!   not judged.
//! - `GET /readyz`: 200 `ready` once the process says so (the gateway once
//!   every shard listens, the router once its tables are rebuilt), 503 `not
//!   ready` before and while draining.
//! - `POST /<name>`: one of the process's actions (the gateway's `/reload`
//!   re-reads its TLS files, `/drain` drains it), behind the admin token
//!   ([`Token`]): with one configured, the request must carry
//!   `Authorization: Bearer <token>` (401 otherwise); without one, actions
//!   run only when the endpoint listens on a loopback address, where only
//!   the host's own processes reach it, and answer 403 elsewhere.
//! - `GET <prefix><key>`: a lookup (the gateway's `/cars/<client id>`),
//!   behind the same token rule as the actions: it reveals what probes and
//!   scrapes never see (a car's address and identity). The key is
//!   percent-decoded and handed to the process, which answers JSON from
//!   another thread; the admin thread awaits it for at most
//!   [`LOOKUP_TIMEOUT`] (then 504), serving its other connections
//!   meanwhile.
//!
//! Layout: `routes.rs` answers one request (no socket; the time is
//! given); `liveness.rs` judges heartbeats against the instants it is
//! handed; `token.rs` holds the token and checks a request's
//! `Authorization`; `lookup.rs` decodes a lookup's key and carries its
//! answer across threads; `server.rs` is where bytes meet sockets: the accept loop, one task per
//! connection with its deadlines, and the bound on connections.
//!
//! It runs on a thread of its own, never on a gateway shard: hyper's HTTP/1
//! server on a current-thread tokio runtime. Every connection is a task,
//! so a client that sends nothing, or one byte a second, holds up no
//! other; hyper bounds the time to the end of the request head and its
//! size, a timer the whole exchange. At [`Limits::max_connections`] a
//! connection of the address that holds the most is closed to make room,
//! the oldest of them that has not sent its request head yet: a flood of
//! silent connections can neither exhaust file descriptors nor lock out
//! the kubelet's probes and Prometheus, which come from addresses of their
//! own and send their request with the connection. One request per
//! connection (`Connection: close`), as probes and scrapes make them.
//!
//! Why hyper rather than the hand-made loop this was: request parsing,
//! the head timeout and the bound on the head's size are hyper's,
//! well-kept and fuzzed by others; tokio gives a task per connection
//! without a thread each. tiny_http, the other candidate, bounds no
//! header-read time by itself.

mod liveness;
mod lookup;
mod routes;
mod server;
mod token;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use liveness::Heartbeats;
pub use lookup::{LOOKUP_TIMEOUT, Lookup, Respond};
pub use token::{Token, TokenError};

/// The environment variable that may hold the admin token.
pub const TOKEN_ENV: &str = "CARBRIDGE_ADMIN_TOKEN";

/// Renders the metrics page.
pub type Render = Box<dyn Fn() -> String + Send>;

/// Runs an action; `Ok` or `Err` with what to tell the caller.
pub type Action = Box<dyn Fn() -> Result<String, String> + Send>;

/// The listen backlog: a burst of connects (a scan, a reconnecting
/// scraper fleet) waits in the kernel rather than being dropped, and the
/// accept loop takes them within microseconds each.
const BACKLOG: i32 = 1024;

/// Bounds on the admin connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; at the bound the oldest one still
    /// waiting for its request head is closed to make room (the oldest
    /// of all if every one is being answered).
    pub max_connections: usize,
    /// From the connection's accept to the end of its request head.
    pub head_timeout: Duration,
    /// From the accept to the last byte of the answer.
    pub exchange_timeout: Duration,
}

impl Limits {
    /// Probes and scrapes open a handful at once; this bounds what a flood
    /// holds (a file descriptor and about 10 KiB each).
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// Probes, Prometheus and curl send their request head with the
    /// connection; a head that takes longer comes from a stranger.
    pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
    /// Prometheus' default scrape timeout: a scraper slower than this
    /// gave up already.
    pub const DEFAULT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            head_timeout: Self::DEFAULT_HEAD_TIMEOUT,
            exchange_timeout: Self::DEFAULT_EXCHANGE_TIMEOUT,
        }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the admin endpoint's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the admin thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What an admin endpoint serves, built up and then [`Endpoint::spawn`]ed.
pub struct Endpoint {
    render: Render,
    ready: Arc<AtomicBool>,
    actions: Vec<(&'static str, Action)>,
    lookups: Vec<(&'static str, Lookup)>,
    heartbeats: Option<Heartbeats>,
    token: Option<Token>,
    limits: Limits,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field(
                "actions",
                &self.actions.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field(
                "lookups",
                &self.lookups.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("heartbeats", &self.heartbeats)
            .field("token", &self.token)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `/metrics` renders with `render`, `/readyz` follows `ready`; no
    /// actions, no heartbeats (`/livez` answers as `/healthz`), no token,
    /// the default limits.
    pub fn new(render: Render, ready: Arc<AtomicBool>) -> Self {
        Self {
            render,
            ready,
            actions: Vec::new(),
            lookups: Vec::new(),
            heartbeats: None,
            token: None,
            limits: Limits::default(),
        }
    }

    /// `POST path` runs `action`.
    #[must_use]
    pub fn action(mut self, path: &'static str, action: Action) -> Self {
        self.actions.push((path, action));
        self
    }

    /// `GET <prefix><key>` asks `lookup` about the key (percent-decoded),
    /// behind the token like an action. `prefix` ends with `/`.
    #[must_use]
    pub fn lookup(mut self, prefix: &'static str, lookup: Lookup) -> Self {
        self.lookups.push((prefix, lookup));
        self
    }

    /// The loops `/livez` watches.
    #[must_use]
    pub fn heartbeats(mut self, heartbeats: Heartbeats) -> Self {
        self.heartbeats = Some(heartbeats);
        self
    }

    /// The token POST requests must carry; `None`: actions only on a
    /// loopback address.
    #[must_use]
    pub fn token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Binds `addr` and serves on a thread of its own until `stop` is set
    /// (looked at once a second); the address it listens on.
    pub fn spawn(self, addr: &str, stop: Arc<AtomicBool>) -> Result<SocketAddr, AdminError> {
        let bind_error = |source| AdminError::Bind {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        // Listening already (std's backlog is 128): listen(2) again only
        // raises the backlog.
        rustix::net::listen(&listener, BACKLOG)
            .map_err(std::io::Error::from)
            .map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let guard = routes::Guard::new(self.token, local);
        if let routes::Guard::Refuse(_) = guard {
            let refused: Vec<String> = self
                .actions
                .iter()
                .map(|(path, _)| format!("POST {path}"))
                .chain(
                    self.lookups
                        .iter()
                        .map(|(prefix, _)| format!("GET {prefix}*")),
                )
                .collect();
            tracing::warn!(
                "no admin token, and the admin endpoint listens on {local}, beyond loopback: \
                 {} answer 403 (give it a token to use them)",
                refused.join(", ")
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(AdminError::Runtime)?;
        let routes = routes::Routes::new(
            self.render,
            self.ready,
            self.actions,
            self.lookups,
            self.heartbeats,
            guard,
        );
        let limits = self.limits;
        std::thread::Builder::new()
            .name("admin".to_owned())
            .spawn(move || server::serve(&runtime, listener, routes, limits, &stop))
            .map_err(AdminError::Thread)?;
        Ok(local)
    }
}
