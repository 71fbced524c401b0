//! A blocking MQTT 3.1.1 client on a raw socket, for tests that send
//! exactly the bytes they choose and must see what the gateway answers or
//! that it closes the connection. Real clients (rumqttc, mosquitto, paho)
//! are for everything else.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::{Connect, Decoder, Packet, Publish, QoS, Role, SubAckReturnCode, Subscribe};

use crate::WAIT;

/// The largest packet [`RawClient`] decodes: any downlink message a test
/// sends fits.
const MAX_PACKET: usize = 1 << 20;

/// One car's connection, read with the codec's client-side decoder.
#[derive(Debug)]
pub struct RawClient {
    /// The socket, for tests that write to it directly (and may meet
    /// backpressure or a closed connection there).
    pub stream: TcpStream,
    /// Bytes read but not yet decoded.
    buffer: BytesMut,
}

impl RawClient {
    /// A TCP connection and nothing else: no CONNECT.
    pub fn connect_tcp(addr: SocketAddr) -> Self {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_read_timeout(Some(WAIT)).expect("a read timeout");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self {
            stream,
            buffer: BytesMut::new(),
        }
    }

    /// TCP connect, CONNECT (clean session), and the CONNACK's return code.
    pub fn connect(addr: SocketAddr, client_id: &str, keep_alive: u16) -> (Self, u8) {
        let mut client = Self::connect_tcp(addr);
        client
            .send_connect(client_id, keep_alive)
            .expect("writing CONNECT");
        let code = client.connack();
        (client, code)
    }

    /// Sends CONNECT (clean session) and nothing else; the write's result,
    /// for tests where the gateway may have closed the connection first.
    pub fn send_connect(&mut self, client_id: &str, keep_alive: u16) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        Connect::new(client_id, keep_alive)
            .encode(&mut out)
            .expect("encoding CONNECT");
        self.stream.write_all(&out)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("writing to the gateway");
    }

    /// A QoS 0 PUBLISH.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) {
        let mut out = BytesMut::new();
        Publish::qos0(topic, payload)
            .and_then(|publish| publish.encode(&mut out))
            .expect("encoding PUBLISH");
        self.send(&out);
    }

    /// SUBSCRIBE (packet id 1, QoS 0) and the SUBACK's return codes as on
    /// the wire: the granted QoS, or 0x80 for a refused filter.
    pub fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Subscribe::new(
            NonZeroU16::MIN,
            filters.iter().map(|f| (*f, QoS::AtMostOnce)),
        )
        .and_then(|subscribe| subscribe.encode(&mut out))
        .expect("encoding SUBSCRIBE");
        self.send(&out);
        match self.next_packet() {
            Some(Packet::SubAck(suback)) => suback
                .return_codes()
                .map(|code| match code {
                    SubAckReturnCode::Success(qos) => qos as u8,
                    SubAckReturnCode::Failure => 0x80,
                })
                .collect(),
            other => panic!("no SUBACK for {filters:?}: {other:?}"),
        }
    }

    /// The CONNACK's return code; fails on anything else, a session
    /// present (every CONNECT here asks for a clean session) or a close.
    pub fn connack(&mut self) -> u8 {
        self.connack_or_closed()
            .expect("the gateway closed the connection instead of a CONNACK")
    }

    /// The CONNACK's return code, `None` if the gateway closed the
    /// connection instead.
    pub fn connack_or_closed(&mut self) -> Option<u8> {
        match self.next_packet()? {
            Packet::ConnAck(ack) => {
                assert!(!ack.session_present, "session present on a clean session");
                Some(ack.code as u8)
            }
            other => panic!("not a CONNACK: {other:?}"),
        }
    }

    /// The next packet the gateway sends, `None` once it closed the
    /// connection; fails if nothing comes within [`WAIT`].
    pub fn next_packet(&mut self) -> Option<Packet> {
        let decoder = Decoder::new(Role::Client, MAX_PACKET);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(packet) = decoder
                .decode(&mut self.buffer)
                .expect("a packet the codec decodes")
            {
                return Some(packet);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                // A signal, or the kernel's work for a closed io_uring of
                // this thread: not the end of anything.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no packet within {WAIT:?}: {e}"),
            }
        }
    }

    /// Waits until the gateway closes the connection, returning what it
    /// sent first (and was not read yet); fails if the connection stays
    /// open beyond `within`.
    pub fn expect_closed(&mut self, within: Duration) -> Vec<u8> {
        self.stream
            .set_read_timeout(Some(within))
            .expect("a read timeout");
        let started = Instant::now();
        let mut received = self.buffer.split().to_vec();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
                Err(e) => panic!("connection still open after {:?}: {e}", started.elapsed()),
            }
        }
    }

    /// DISCONNECT, then the socket closes.
    pub fn disconnect(mut self) {
        self.send(&codec::packet::DISCONNECT);
    }
}
