//! MQTT 3.1.1 packet codec for the MQTT ⇄ Kafka bridge.
//!
//! Sans-IO: no sockets, no async runtime, no clock. A connection reads into
//! a [`bytes::BytesMut`], hands it to [`Decoder::decode`] in a loop, and
//! writes what the `encode` functions append to its output buffer.
//!
//! # Layout
//! - [`header`]: the fixed header (type, flags, remaining length), checked
//!   before any body is buffered.
//! - [`packet`]: one module per packet type, each with decoder and encoder.
//! - [`topic`]: topic name and filter rules and the matching function the
//!   gateway and the router share.
//! - [`Decoder`]: the incremental decoder and its size limit.
//! - [`DecodeError`]: every rule a peer can break, named with its
//!   normative statement id; all of them mean "close the connection".
//!
//! # Zero copy
//! A decoded [`Publish`]'s topic and payload are views of the read buffer
//! (`Bytes` reference counting), and decoding a PUBLISH allocates nothing
//! (the `alloc` integration test counts). [`Decoder::decode_publish_in_place`]
//! goes further for the hot path: a [`PublishView`] borrows the buffer, so
//! there is not even a reference count to touch. SUBSCRIBE and UNSUBSCRIBE keep their
//! validated payloads as views too and iterate them on demand.
//!
//! # Strictness
//! The decoder accepts exactly MQTT 3.1.1 as the specification writes it,
//! including features this system does not use (QoS 1 and 2, retain, will):
//! those decode, so the caller can tell "malformed" (a [`DecodeError`]) from
//! "well-formed but not supported here" (its own policy).

pub mod header;
pub mod packet;
pub mod topic;

mod decoder;
mod error;
mod reader;

pub use decoder::{Decoder, Role};
pub use error::{DecodeError, EncodeError};
pub use header::PacketType;
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, PublishView, QoS, SubAck,
    SubAckReturnCode, Subscribe, Unsubscribe, Will,
};

/// Re-exported because decoded packets expose it.
pub use bytestring::ByteString;
