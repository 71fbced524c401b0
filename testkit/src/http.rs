//! The admin endpoints of the gateway and the router, as a test reads them:
//! one HTTP/1.1 request per connection, and the Prometheus text parsed into
//! samples.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Bound on connecting to an admin endpoint on loopback: it accepts at
/// once or not at all (not started yet, or gone).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on its answer: every route answers without waiting for anything,
/// so a longer silence is a hang. Short, because readiness loops call
/// [`http_get`] again until their own, longer, bound.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One GET: the status code and the body, `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "GET", path)
}

/// GETs `path` until it answers `status`, at most [`crate::WAIT`]; the
/// body of that answer.
pub fn await_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let mut body = String::new();
    crate::wait_until(
        &format!("{path} to answer {status}"),
        crate::WAIT,
        || match http_get(addr, path) {
            Some((got, text)) if got == status => {
                body = text;
                true
            }
            _ => false,
        },
    );
    body
}

/// [`http_get`] with `Authorization: Bearer <token>` (`GET /cars/<id>`).
pub fn http_get_bearer(addr: SocketAddr, path: &str, token: &str) -> Option<(u16, String)> {
    exchange(
        addr,
        "GET",
        path,
        &format!("Authorization: Bearer {token}\r\n"),
    )
}

/// One POST without a body (`/drain`, `/reload`): the status code and the
/// body, `None` when nothing answers.
pub fn http_post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(addr, "POST", path)
}

/// [`http_post`] with `Authorization: Bearer <token>`.
pub fn http_post_bearer(addr: SocketAddr, path: &str, token: &str) -> Option<(u16, String)> {
    exchange(
        addr,
        "POST",
        path,
        &format!("Authorization: Bearer {token}\r\n"),
    )
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    exchange(addr, method, path, "")
}

/// One request with `headers` (whole lines) added.
fn exchange(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Samples of a Prometheus text page: `name{labels}` -> value; `None` when
/// nothing answers or `/metrics` is not 200.
pub fn scrape(addr: SocketAddr) -> Option<HashMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect(),
    )
}
