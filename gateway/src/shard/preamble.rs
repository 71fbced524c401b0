//! What comes before the first MQTT byte: the PROXY header (the car's
//! real address, and the identity a TLS-terminating proxy verified) and
//! the TLS handshake (the identity in the car's certificate). Each ends in
//! a [`Peer`], or in the connection's close; then [`super::task::start`]
//! runs MQTT over what is left of the stream, in a task of its own in the
//! shard's default queue (the preamble's queue is below the connected
//! cars', see `Shard::preambles`).

use std::rc::Rc;

use futures_lite::future;
use glommio::timer::sleep;
use rustls::HandshakeKind;

use super::connection::Peer;
use super::control::Control;
use super::socket::CarSocket;
use super::task;
use super::tls_car::{self, TlsCar};
use super::{Door, Shard};
use ops::exposition::LabelSet;

use crate::proxy::ProxyResult;
use crate::tls::{self, Handshake};

/// A connection on a listener that expects a PROXY header: the source
/// checked against the trusted networks, the header read (bounded by the
/// connect timeout), then TLS or MQTT over what follows it.
pub(super) async fn proxied(
    stream: CarSocket,
    shard: Rc<Shard>,
    door: Rc<Door>,
    peer: Peer,
    control: Rc<Control>,
) {
    let Some((stream, peer)) = proxy_header(stream, &shard, &door, peer).await else {
        shard.table.close(control.id, None);
        return;
    };
    if door.tls.is_some() {
        tls(stream, shard, door, peer, control).await;
    } else {
        glommio::spawn_local(task::start(stream, shard, peer, control)).detach();
    }
}

/// Reads and checks the PROXY header; `None` when the connection closes.
async fn proxy_header(
    mut stream: CarSocket,
    shard: &Shard,
    door: &Door,
    mut peer: Peer,
) -> Option<(crate::proxy::Prefixed<CarSocket>, Peer)> {
    let proxy = door.listener.proxy.as_ref()?;
    if !crate::proxy::trusted(&proxy.trusted_networks, peer.addr.ip()) {
        shard
            .metrics
            .proxy_headers
            .bump(ProxyResult::UntrustedSource);
        tracing::info!(shard = shard.id, peer = %peer.addr,
            "closed: PROXY header from a network not in trusted_networks");
        return None;
    }
    let header = async { Some(crate::proxy::read_header(&mut stream).await) };
    let timeout = async {
        sleep(shard.timing.connect_timeout).await;
        None
    };
    let (proxied, rest) = match future::or(header, timeout).await {
        Some(Ok(read)) => read,
        Some(Err(error)) => {
            shard.metrics.proxy_headers.bump(ProxyResult::Malformed);
            tracing::info!(shard = shard.id, peer = %peer.addr, ?error,
                "closed: no valid PROXY header");
            return None;
        }
        None => {
            shard.metrics.proxy_headers.bump(ProxyResult::Timeout);
            return None;
        }
    };
    match proxied.source {
        Some(source) => {
            shard.metrics.proxy_headers.bump(ProxyResult::Proxied);
            peer.addr = source;
        }
        // The proxy's own connection (a health check): its address stays.
        None => shard.metrics.proxy_headers.bump(ProxyResult::Local),
    }
    if proxy.identity_from_proxy {
        let Some(cn) = proxied.verified_cn else {
            shard.metrics.proxy_headers.bump(ProxyResult::NoIdentity);
            tracing::info!(shard = shard.id, peer = %peer.addr,
                "closed: the PROXY header names no verified client certificate");
            return None;
        };
        peer.identity = Some(door.listener.bound_client_id(&cn).into());
    }
    Some((crate::proxy::Prefixed::new(rest, stream), peer))
}

/// A connection on a TLS listener: the handshake on this shard, bounded by
/// the connect timeout, the car's identity from its verified certificate,
/// then the car's connection over TLS.
pub(super) async fn tls<S: task::CarStream + 'static>(
    stream: S,
    shard: Rc<Shard>,
    door: Rc<Door>,
    peer: Peer,
    control: Rc<Control>,
) {
    match handshake(stream, &shard, &door, peer).await {
        Some((stream, peer)) => {
            glommio::spawn_local(task::start(stream, shard, peer, control)).detach();
        }
        None => shard.table.close(control.id, None),
    }
}

/// The TLS handshake and the identity check; `None` when the connection
/// closes.
async fn handshake<S: task::CarStream>(
    stream: S,
    shard: &Shard,
    door: &Door,
    mut peer: Peer,
) -> Option<(TlsCar<S>, Peer)> {
    let terminator = door.tls.as_ref()?;
    let loaded = terminator.current();
    let handshake = async { Some(tls_car::accept(stream, loaded.config.clone(), peer.addr).await) };
    let timeout = async {
        sleep(shard.timing.connect_timeout).await;
        None
    };
    let stream = match future::or(handshake, timeout).await {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => {
            let label = tls::failure_label(&error);
            shard.metrics.tls_handshakes.bump(label);
            tracing::debug!(shard = shard.id, peer = %peer.addr, %error, reason = label.as_str(),
                "TLS handshake failed");
            return None;
        }
        None => {
            shard.metrics.tls_handshakes.bump(Handshake::Timeout);
            tracing::debug!(shard = shard.id, peer = %peer.addr, "TLS handshake timed out");
            return None;
        }
    };
    let session = stream.session();
    if let Some(leaf) = session.peer_certificates().and_then(|chain| chain.first()) {
        match loaded.admit(leaf, terminator.identity_source()) {
            Ok(identity) => peer.identity = Some(door.listener.bound_client_id(&identity).into()),
            Err(refused) => {
                shard.metrics.tls_handshakes.bump(refused);
                tracing::info!(shard = shard.id, peer = %peer.addr, reason = refused.as_str(),
                    source = ?terminator.identity_source(),
                    "closed: the certificate is revoked or names no identity");
                return None;
            }
        }
    }
    drop(loaded);
    shard
        .metrics
        .tls_handshakes
        .bump(match session.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        });
    Some((stream, peer))
}
