//! The admin HTTP endpoint: `/metrics` (Prometheus text the process
//! renders on each scrape), `/healthz` (the process runs) and `/readyz`
//! (the process says it is ready: the gateway once every shard listens, the
//! router once its tables are rebuilt).
//!
//! `POST /<name>` runs one of the process's actions where it has them (the
//! gateway's `/reload` re-reads its TLS files, `/drain` drains it).
//!
//! A plain blocking thread: it serves scrapes and probes, a few requests a
//! second, and must keep answering while the shards are saturated.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::net::sockopt;

/// How long the admin thread waits for a request before it looks at its
/// stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Renders the metrics page.
pub type Render = Box<dyn Fn() -> String + Send>;

/// Runs an action; `Ok` or `Err` with what to tell the caller.
pub type Action = Box<dyn Fn() -> Result<String, String> + Send>;

/// Binds `addr` and serves on a background thread until `stop`.
pub fn spawn(
    addr: &str,
    render: Render,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    spawn_with_actions(addr, render, ready, stop, Vec::new())
}

/// As [`spawn`], and `POST <path>` runs the action of that path.
pub fn spawn_with_actions(
    addr: &str,
    render: Render,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    actions: Vec<(&'static str, Action)>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    // A blocking accept that gives up after STOP_CHECK (Linux applies
    // SO_RCVTIMEO to accept): a request is answered at once, and the stop
    // flag is looked at a few times a second, not 50 as with a sleep of
    // 20 ms between non-blocking attempts.
    sockopt::set_socket_timeout(&listener, sockopt::Timeout::Recv, Some(STOP_CHECK))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("admin".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &render, &ready, &actions);
                    }
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(local)
}

fn answer(
    stream: TcpStream,
    render: &Render,
    ready: &AtomicBool,
    actions: &[(&'static str, Action)],
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request_line = String::new();
    BufReader::new(&stream).read_line(&mut request_line)?;
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or("GET"), words.next().unwrap_or("/"));
    let action = actions.iter().find(|(name, _)| *name == path);
    let (status, body) = match action {
        Some((_, action)) if method == "POST" => match action() {
            Ok(done) => ("200 OK", done),
            Err(failed) => ("500 Internal Server Error", failed),
        },
        Some((name, _)) => ("405 Method Not Allowed", format!("use POST {name}\n")),
        None => answer_get(path, render, ready),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn answer_get(path: &str, render: &Render, ready: &AtomicBool) -> (&'static str, String) {
    match path {
        "/metrics" => ("200 OK", render()),
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", "ready\n".to_owned()),
        "/readyz" => ("503 Service Unavailable", "not ready\n".to_owned()),
        _ => (
            "404 Not Found",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}
