//! The shard's listeners: bound on the configured addresses (one per
//! address and shard, SO_REUSEPORT), accepted from at the shard's accept
//! rate, each
//! accepted socket entered in the shard's table and epoll set and given
//! its task, until the shard stops or drains.

use std::net::TcpListener;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::Task;
use glommio::timer::sleep;

use super::connection::Peer;
use super::socket::{self, CarSocket};
use super::{Door, Shard, preamble, task};
use crate::metrics::Limit;

/// Starts an accept loop for each listener of the shard, on `doors`'
/// addresses (with their settings).
pub(super) fn spawn_acceptors(
    shard: &Rc<Shard>,
    listeners: Vec<TcpListener>,
    doors: Vec<Door>,
) -> Vec<Task<()>> {
    listeners
        .into_iter()
        .zip(doors)
        .map(|(listener, door)| {
            tracing::info!(
                shard = shard.id,
                address = %door.listener.address,
                tls = door.tls.is_some(),
                "listening"
            );
            glommio::spawn_local(accept(listener, shard.clone(), Rc::new(door)))
        })
        .collect()
}

/// Accepts connections on `listener` until the shard stops or drains.
async fn accept(listener: TcpListener, shard: Rc<Shard>, door: Rc<Door>) {
    let index = match shard.readiness.watch_listener(&listener) {
        Ok(index) => index,
        Err(error) => {
            tracing::error!(shard = shard.id, %error, "listener not added to the epoll set");
            return;
        }
    };
    // The poller notices the stop flag (within IDLE_POLL) and begins the
    // stop; this only ends the accept loop.
    let mut stop = pin!(shard.stop_or_drain());
    loop {
        // A reconnect storm waits in the listen backlog rather than take
        // the shard from the cars it holds.
        if let Err(wait) = shard.accept_rate.take(Instant::now()) {
            shard.metrics.limited.bump(Limit::AcceptRate);
            let paused = async {
                sleep(wait).await;
                Some(())
            };
            let stopped = async {
                stop.as_mut().await;
                None
            };
            if future::or(paused, stopped).await.is_none() {
                return;
            }
            continue;
        }
        if shard.stopping.get() || shard.draining.get() {
            return;
        }
        match socket::accept(&listener) {
            Ok(None) => {
                // Edge-triggered: the listener's next event comes with the
                // next connection, and none is waiting now.
                let stopped = async {
                    stop.as_mut().await;
                    None
                };
                let ready = async {
                    shard.readiness.acceptable(index).await;
                    Some(())
                };
                if future::or(ready, stopped).await.is_none() {
                    return;
                }
            }
            Ok(Some(_)) if shard.table.len() >= shard.limits.max_connections_per_shard => {
                // Full: closed before any TLS or MQTT work.
                shard.metrics.limited.bump(Limit::ConnectionsPerShard);
            }
            Ok(Some(socket)) => enter(socket, &shard, &door),
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(shard = shard.id, %error, "accept failed");
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Enters an accepted socket in the shard's table and epoll set, and
/// starts its task.
fn enter(socket: std::net::TcpStream, shard: &Rc<Shard>, door: &Rc<Door>) {
    let _ = socket.set_nodelay(true);
    let Ok(addr) = socket.peer_addr() else {
        // Reset before we looked: nothing to serve.
        return;
    };
    let (id, control) = shard.table.open();
    if let Err(error) = shard.readiness.watch(&socket, id) {
        tracing::warn!(shard = shard.id, %error, "socket not added to the epoll set");
        shard.table.close(id, None);
        return;
    }
    let peer = Peer {
        addr,
        identity: None,
    };
    let socket = CarSocket::new(socket, control.clone());
    let (shard, door) = (shard.clone(), door.clone());
    // A preamble runs in the shard's queue of preambles (below the
    // connected cars); the car's task, once it is done, in the default one.
    let preambles = shard.preambles;
    let task = match (&door.listener.proxy, &door.tls) {
        (None, None) => Ok(glommio::spawn_local(task::start(
            socket, shard, peer, control,
        ))),
        (None, Some(_)) => {
            glommio::spawn_local_into(preamble::tls(socket, shard, door, peer, control), preambles)
        }
        (Some(_), _) => glommio::spawn_local_into(
            preamble::proxied(socket, shard, door, peer, control),
            preambles,
        ),
    };
    match task {
        Ok(task) => {
            task.detach();
        }
        // Only if the queue were removed; the socket closes with the
        // dropped future, and its table entry with the shard.
        Err(error) => tracing::error!(%error, "a new connection's task not started"),
    }
}
