//! One request to its answer: the routes, the token guard on actions, and
//! the endpoint's own counters. No socket here, and the time is given, so
//! the tests below call it directly.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use hyper::StatusCode;

use super::liveness::{Heartbeats, Watch};
use super::lookup::{Found, Lookup, Respond, decode_key};
use super::token::Token;
use super::{Action, Render};
use crate::exposition::{Counters, Exposition};

crate::label_set! {
    /// Why the endpoint closed a connection before it answered.
    pub(crate) enum Closed: "reason" {
        /// No complete request head within the head timeout.
        HeadTimeout = "head_timeout",
        /// The whole exchange outlived its deadline.
        Deadline = "deadline",
        /// Closed to make room at the connection bound.
        Evicted = "evicted",
    }
}

crate::label_set! {
    /// Why an action was refused.
    pub(crate) enum Refused: "reason" {
        /// No token, or the wrong one (401).
        Unauthorized = "unauthorized",
        /// No token configured and the endpoint is beyond loopback (403).
        Forbidden = "forbidden",
    }
}

/// The endpoint's own counters, on `/metrics` beside the process's.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) open: AtomicU64,
    pub(crate) closed: Counters<Closed>,
    pub(crate) refused: Counters<Refused>,
}

impl Stats {
    fn render(&self, page: &mut Exposition) {
        page.gauge(
            "carbridge_admin_connections_open",
            "Connections open to the admin endpoint.",
            self.open.load(Ordering::Relaxed),
        );
        page.counters(
            "carbridge_admin_connections_closed_total",
            "Admin connections closed before their answer: no request head within the head \
             timeout, the exchange past its deadline, or closed to make room at the bound.",
            |reason| self.closed.get(reason),
        );
        page.counters(
            "carbridge_admin_requests_refused_total",
            "Actions and lookups (POST /drain, GET /cars/...) refused: without the admin token \
             or with a wrong one (401), or with no token configured beyond loopback (403).",
            |reason| self.refused.get(reason),
        );
    }
}

/// Who may run the actions and the lookups.
#[derive(Debug)]
pub(crate) enum Guard {
    /// Whoever sends the token.
    Token(Token),
    /// No token configured, listening on loopback: the host's own
    /// processes, as before tokens.
    Loopback,
    /// No token configured, listening beyond loopback (this address):
    /// nobody.
    Refuse(SocketAddr),
}

impl Guard {
    pub(crate) fn new(token: Option<Token>, listening: SocketAddr) -> Self {
        match token {
            Some(token) => Self::Token(token),
            None if listening.ip().is_loopback() => Self::Loopback,
            None => Self::Refuse(listening),
        }
    }
}

/// A request as the routes read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    /// The `Authorization` header's value.
    pub(crate) authorization: Option<&'a [u8]>,
}

/// Prometheus' text format, and every other answer but a lookup's.
pub(crate) const TEXT: &str = "text/plain; version=0.0.4";
/// A lookup's answer.
pub(crate) const JSON: &str = "application/json";

/// An answer: its status, body and content type; `challenge` asks for the
/// bearer token (`WWW-Authenticate`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    pub(crate) content_type: &'static str,
    pub(crate) challenge: bool,
}

impl Reply {
    fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            content_type: TEXT,
            challenge: false,
        }
    }

    /// A JSON answer.
    pub(crate) fn json(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            content_type: JSON,
            ..Self::new(status, body)
        }
    }

    /// A lookup's answer, as sent.
    pub(crate) fn found(found: Found) -> Self {
        Self::json(found.status, found.json)
    }

    /// A lookup that did not answer within `timeout` (`None`: it dropped
    /// the question).
    pub(crate) fn unanswered(timeout: Option<std::time::Duration>) -> Self {
        match timeout {
            Some(timeout) => Self::json(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{{\"error\":\"no answer within {} s (a stuck or very busy shard: see /livez)\"}}\n",
                    timeout.as_secs()
                ),
            ),
            None => Self::json(
                StatusCode::SERVICE_UNAVAILABLE,
                "{\"error\":\"the question was dropped unanswered (stopping?)\"}\n",
            ),
        }
    }
}

/// An answer now, or one to await (a lookup's).
#[derive(Debug)]
pub(crate) enum Answer {
    Now(Reply),
    Later(futures_channel::oneshot::Receiver<Found>),
}

/// What the endpoint serves.
pub(crate) struct Routes {
    render: Render,
    ready: Arc<AtomicBool>,
    actions: Vec<(&'static str, Action)>,
    lookups: Vec<(&'static str, Lookup)>,
    liveness: Option<RefCell<Watch>>,
    guard: Guard,
    pub(crate) stats: Stats,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Routes {
    pub(crate) fn new(
        render: Render,
        ready: Arc<AtomicBool>,
        actions: Vec<(&'static str, Action)>,
        lookups: Vec<(&'static str, Lookup)>,
        heartbeats: Option<Heartbeats>,
        guard: Guard,
    ) -> Self {
        Self {
            render,
            ready,
            actions,
            lookups,
            liveness: heartbeats
                .map(|heartbeats| RefCell::new(Watch::new(heartbeats, Instant::now()))),
            guard,
            stats: Stats::default(),
        }
    }

    /// Reads the heartbeats (the server calls it once a second).
    pub(crate) fn look(&self, now: Instant) {
        if let Some(watch) = &self.liveness {
            watch.borrow_mut().look(now);
        }
    }

    /// The answer to `request` at `now`: a lookup's is awaited.
    pub(crate) fn route(&self, request: &Request<'_>, now: Instant) -> Answer {
        let Some((prefix, lookup, raw)) = self.lookups.iter().find_map(|(prefix, lookup)| {
            Some((*prefix, lookup, request.path.strip_prefix(prefix)?))
        }) else {
            return Answer::Now(self.answer(request, now));
        };
        if request.method != "GET" {
            return Answer::Now(Reply::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("use GET {prefix}<key>\n"),
            ));
        }
        // Refused before the key is even read: a lookup reveals a car's
        // address and identity, as much as an action changes things.
        if let Err(refused) = self.admit(request.method, request.path, request.authorization) {
            return Answer::Now(refused);
        }
        match decode_key(raw) {
            Ok(key) => {
                let (respond, awaited) = Respond::pair();
                lookup(&key, respond);
                Answer::Later(awaited)
            }
            Err(bad) => Answer::Now(Reply::json(
                StatusCode::BAD_REQUEST,
                format!("{{\"error\":\"{prefix}<key>: {bad}\"}}\n"),
            )),
        }
    }

    /// The answer to `request` at `now`, but a lookup's.
    pub(crate) fn answer(&self, request: &Request<'_>, now: Instant) -> Reply {
        match self.actions.iter().find(|(path, _)| *path == request.path) {
            Some((path, action)) if request.method == "POST" => {
                if let Err(refused) = self.admit("POST", path, request.authorization) {
                    return refused;
                }
                match action() {
                    Ok(done) => Reply::new(StatusCode::OK, done),
                    Err(failed) => Reply::new(StatusCode::INTERNAL_SERVER_ERROR, failed),
                }
            }
            Some((path, _)) => {
                Reply::new(StatusCode::METHOD_NOT_ALLOWED, format!("use POST {path}\n"))
            }
            None => self.get(request.path, now),
        }
    }

    /// Whether `method path` (an action, a lookup) may run for a request
    /// that carries `authorization`; the refusal otherwise.
    fn admit(&self, method: &str, path: &str, authorization: Option<&[u8]>) -> Result<(), Reply> {
        match &self.guard {
            Guard::Loopback => Ok(()),
            Guard::Token(token) if token.admits(authorization) => Ok(()),
            Guard::Token(_) => {
                self.stats.refused.bump(Refused::Unauthorized);
                let why = if authorization.is_some() {
                    "the Authorization header does not carry the admin token"
                } else {
                    "no Authorization header"
                };
                Err(Reply {
                    challenge: true,
                    ..Reply::new(
                        StatusCode::UNAUTHORIZED,
                        format!(
                            "{method} {path} needs `Authorization: Bearer <admin token>`: {why}\n"
                        ),
                    )
                })
            }
            Guard::Refuse(listening) => {
                self.stats.refused.bump(Refused::Forbidden);
                Err(Reply::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{method} {path} is refused: no admin token is configured and the admin \
                         endpoint listens on {listening}, beyond loopback. Configure an admin \
                         token (a file or CARBRIDGE_ADMIN_TOKEN) and send it as \
                         `Authorization: Bearer <token>`, or listen on 127.0.0.1 only\n"
                    ),
                ))
            }
        }
    }

    fn get(&self, path: &str, now: Instant) -> Reply {
        match path {
            "/metrics" => {
                let mut page = (self.render)();
                let mut own = Exposition::new();
                self.stats.render(&mut own);
                page.push_str(&own.finish());
                Reply::new(StatusCode::OK, page)
            }
            "/healthz" => Reply::new(StatusCode::OK, "ok\n"),
            "/livez" => {
                let stalled = self.liveness.as_ref().and_then(|watch| {
                    let mut watch = watch.borrow_mut();
                    watch.look(now);
                    watch.stalled(now)
                });
                match stalled {
                    None => Reply::new(StatusCode::OK, "live\n"),
                    Some(said) => Reply::new(StatusCode::SERVICE_UNAVAILABLE, said),
                }
            }
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                Reply::new(StatusCode::OK, "ready\n")
            }
            "/readyz" => Reply::new(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => Reply::new(
                StatusCode::NOT_FOUND,
                "try /metrics, /healthz, /livez or /readyz\n",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;

    fn routes(guard: Guard, beats: Arc<AtomicU64>) -> Routes {
        Routes::new(
            Box::new(|| "# page\n".to_owned()),
            Arc::new(AtomicBool::new(true)),
            vec![(
                "/drain",
                Box::new(|| Ok("draining 0 connections\n".to_owned())),
            )],
            vec![(
                "/cars/",
                Box::new(|key: &str, respond: Respond| {
                    if key == "VIN/0001" {
                        respond.found(format!("{{\"client_id\":\"{key}\"}}"));
                    } else {
                        respond.not_found("{\"connected\":false}".to_owned());
                    }
                }),
            )],
            Some(Heartbeats::new(
                vec!["shard 0".to_owned()],
                Duration::from_secs(5),
                move || vec![beats.load(Ordering::Relaxed)],
            )),
            guard,
        )
    }

    fn post(authorization: Option<&'static [u8]>) -> Request<'static> {
        Request {
            method: "POST",
            path: "/drain",
            authorization,
        }
    }

    fn get(path: &str) -> Request<'_> {
        Request {
            method: "GET",
            path,
            authorization: None,
        }
    }

    #[test]
    fn actions_need_the_token_when_there_is_one() {
        let routes = routes(
            Guard::Token(Token::new("right-token-0123456")),
            Arc::default(),
        );
        let now = Instant::now();
        let none = routes.answer(&post(None), now);
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        assert!(none.challenge);
        assert!(
            none.body.contains("no Authorization header"),
            "{}",
            none.body
        );
        let wrong = routes.answer(&post(Some(b"Bearer wrong-token-0123456")), now);
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.body.contains("right-token"), "{}", wrong.body);
        let right = routes.answer(&post(Some(b"Bearer right-token-0123456")), now);
        assert_eq!(
            right,
            Reply::new(StatusCode::OK, "draining 0 connections\n")
        );
        assert_eq!(routes.stats.refused.get(Refused::Unauthorized), 2);
        // GETs stay open; a GET of an action is still 405.
        assert_eq!(routes.answer(&get("/metrics"), now).status, StatusCode::OK);
        assert_eq!(
            routes.answer(&get("/drain"), now),
            Reply::new(StatusCode::METHOD_NOT_ALLOWED, "use POST /drain\n")
        );
    }

    #[test]
    fn without_a_token_actions_run_on_loopback_only() {
        let loopback = Guard::new(None, SocketAddr::from(([127, 0, 0, 1], 9100)));
        assert!(matches!(loopback, Guard::Loopback));
        let routes_here = routes(loopback, Arc::default());
        assert_eq!(
            routes_here.answer(&post(None), Instant::now()).status,
            StatusCode::OK
        );

        let open = Guard::new(None, SocketAddr::from(([0, 0, 0, 0], 9100)));
        let routes_open = routes(open, Arc::default());
        let refused = routes_open.answer(&post(Some(b"Bearer anything")), Instant::now());
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(
            refused.body.contains("no admin token is configured"),
            "{}",
            refused.body
        );
        assert!(refused.body.contains("0.0.0.0:9100"), "{}", refused.body);
        assert_eq!(routes_open.stats.refused.get(Refused::Forbidden), 1);

        let ipv6 = Guard::new(
            None,
            "[::1]:9100"
                .parse()
                .unwrap_or(SocketAddr::from(([0; 4], 0))),
        );
        assert!(matches!(ipv6, Guard::Loopback));
    }

    fn get_bearer<'a>(path: &'a str, authorization: Option<&'static [u8]>) -> Request<'a> {
        Request {
            method: "GET",
            path,
            authorization,
        }
    }

    /// The lookup's answer, sent at once by the test's lookup.
    fn looked_up(answer: Answer) -> Result<Found, Reply> {
        match answer {
            Answer::Now(reply) => Err(reply),
            Answer::Later(mut awaited) => Ok(awaited
                .try_recv()
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("no answer sent"))),
        }
    }

    #[test]
    fn a_lookup_needs_the_token_like_an_action_and_gets_its_key_decoded() {
        let routes = routes(
            Guard::Token(Token::new("right-token-0123456")),
            Arc::default(),
        );
        let now = Instant::now();
        let refused = looked_up(routes.route(&get("/cars/VIN%2F0001"), now));
        let Err(refused) = refused else {
            panic!("answered without the token");
        };
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(refused.challenge);
        assert!(
            refused.body.starts_with("GET /cars/VIN%2F0001 needs"),
            "{}",
            refused.body
        );
        let wrong = routes.route(&get_bearer("/cars/VIN", Some(b"Bearer nope")), now);
        assert!(matches!(
            wrong,
            Answer::Now(Reply {
                status: StatusCode::UNAUTHORIZED,
                ..
            })
        ));
        assert_eq!(routes.stats.refused.get(Refused::Unauthorized), 2);

        let bearer = Some(&b"Bearer right-token-0123456"[..]);
        let found = looked_up(routes.route(&get_bearer("/cars/VIN%2F0001", bearer), now));
        assert_eq!(
            found,
            Ok(Found {
                status: StatusCode::OK,
                json: "{\"client_id\":\"VIN/0001\"}".to_owned()
            })
        );
        let absent = looked_up(routes.route(&get_bearer("/cars/VIN0002", bearer), now));
        assert_eq!(absent.map(|found| found.status), Ok(StatusCode::NOT_FOUND));
        let bad = looked_up(routes.route(&get_bearer("/cars/VIN%zz", bearer), now));
        let Err(bad) = bad else {
            panic!("a bad escape was looked up");
        };
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.content_type, JSON);
        let empty = looked_up(routes.route(&get_bearer("/cars/", bearer), now));
        assert!(matches!(
            empty,
            Err(Reply {
                status: StatusCode::BAD_REQUEST,
                ..
            })
        ));
        let posted = routes.route(
            &Request {
                method: "POST",
                path: "/cars/VIN0001",
                authorization: bearer,
            },
            now,
        );
        assert!(matches!(
            posted,
            Answer::Now(Reply {
                status: StatusCode::METHOD_NOT_ALLOWED,
                ..
            })
        ));
        // The other GETs stay open, and keep their text type.
        let metrics = looked_up(routes.route(&get("/metrics"), now));
        assert!(matches!(
            metrics,
            Err(Reply {
                status: StatusCode::OK,
                content_type: TEXT,
                ..
            })
        ));
    }

    #[test]
    fn without_a_token_lookups_answer_on_loopback_only() {
        let here = routes(
            Guard::new(None, SocketAddr::from(([127, 0, 0, 1], 9100))),
            Arc::default(),
        );
        let now = Instant::now();
        let found = looked_up(here.route(&get("/cars/VIN%2F0001"), now));
        assert_eq!(found.map(|found| found.status), Ok(StatusCode::OK));
        let open = routes(
            Guard::new(None, SocketAddr::from(([0, 0, 0, 0], 9100))),
            Arc::default(),
        );
        let Err(refused) = looked_up(open.route(&get("/cars/VIN%2F0001"), now)) else {
            panic!("a lookup beyond loopback without a token answered");
        };
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.body.starts_with("GET /cars/"), "{}", refused.body);
        assert_eq!(open.stats.refused.get(Refused::Forbidden), 1);
    }

    #[test]
    fn livez_names_the_stalled_loop_and_metrics_carry_the_endpoints_counters() {
        let beats = Arc::new(AtomicU64::new(1));
        let routes = routes(Guard::Loopback, beats.clone());
        let start = Instant::now();
        routes.look(start);
        assert_eq!(
            routes.answer(&get("/livez"), start + Duration::from_secs(4)),
            Reply::new(StatusCode::OK, "live\n")
        );
        let stalled = routes.answer(&get("/livez"), start + Duration::from_secs(6));
        assert_eq!(stalled.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            stalled.body,
            "shard 0: not turned for 6.0 s (liveness timeout 5 s)\n"
        );
        beats.store(2, Ordering::Relaxed);
        assert_eq!(
            routes
                .answer(&get("/livez"), start + Duration::from_secs(7))
                .status,
            StatusCode::OK
        );
        // The process's page, then the endpoint's own counters.
        let page = routes.answer(&get("/metrics"), start).body;
        assert!(page.starts_with("# page\n"), "{page}");
        assert!(
            page.contains("carbridge_admin_connections_closed_total{reason=\"evicted\"} 0\n"),
            "{page}"
        );
        assert_eq!(
            routes.answer(&get("/nowhere"), start).status,
            StatusCode::NOT_FOUND
        );
    }
}
