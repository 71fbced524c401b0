//! Peer mode's uplink: MQTT subscribers on the server under test, one per
//! shard of the uplink topic, in place of the Kafka consumer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use codec::{Connect, Decoder, Packet, QoS, Role, Subscribe};

use super::Options;
use super::uplink::Uplink;

/// One subscriber per shard on the first target, each on a thread of its
/// own until `stop`; returns once every one has its SUBACK.
pub(super) fn subscribe(
    options: &Options,
    uplink: &Arc<Mutex<Uplink>>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let target = *options.targets.first().context("no target")?;
    let shards = options.shards();
    let mut threads = Vec::new();
    for shard in 0..shards {
        let filter = options.topic.replace("{shard}", &shard.to_string());
        let (uplink, stop, tx) = (uplink.clone(), stop.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            receive_from_mqtt(
                target,
                format!("loadgen-sub-{shard}"),
                filter,
                uplink,
                stop,
                tx,
            );
        }));
    }
    for _ in 0..shards {
        rx.recv_timeout(Duration::from_secs(10))
            .context("a peer subscriber got no SUBACK within 10 s")??;
    }
    Ok(threads)
}

/// One MQTT subscriber on `filter` feeding the uplink side.
fn receive_from_mqtt(
    target: SocketAddr,
    id: String,
    filter: String,
    uplink: Arc<Mutex<Uplink>>,
    stop: Arc<AtomicBool>,
    subscribed: crossbeam_channel::Sender<anyhow::Result<()>>,
) {
    let setup = || -> anyhow::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut out = BytesMut::new();
        Connect::new(id.as_str(), 600).encode(&mut out)?;
        Subscribe::new(
            std::num::NonZeroU16::MIN,
            [(filter.as_str(), QoS::AtMostOnce)],
        )?
        .encode(&mut out)?;
        stream.write_all(&out)?;
        Ok(stream)
    };
    let mut stream = match setup() {
        Ok(stream) => stream,
        Err(error) => {
            let _ = subscribed.send(Err(error));
            return;
        }
    };
    let decoder = Decoder::new(Role::Client, 1 << 20);
    let mut input = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut acked = false;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(Packet::SubAck(_))) if !acked => {
                    acked = true;
                    let _ = subscribed.send(Ok(()));
                }
                Ok(Some(Packet::Publish(publish))) => {
                    if let Ok(mut uplink) = uplink.lock() {
                        uplink.arrive(publish.payload(), None);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => {
                    eprintln!("peer subscriber {id}: {error}");
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => input.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
