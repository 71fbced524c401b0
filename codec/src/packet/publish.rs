//! PUBLISH (§3.3): the only packet on the hot path, decoded without copying
//! or allocating.
//!
//! A decoded PUBLISH holds one view of its packet body (topic length,
//! topic, packet identifier, payload, as on the wire) and the offsets of its
//! parts. One view rather than one per part: each `Bytes` view costs an
//! atomic increment when taken and a decrement when dropped, and those
//! atomics were most of the per-packet cost (BENCHMARKS.md).

use bytes::{Buf, Bytes, BytesMut};
use std::num::NonZeroU16;

use super::{QoS, field_size, put_field, put_fixed_header};
use crate::error::{DecodeError, EncodeError};
use crate::header::PacketType;
use crate::reader::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The flags and where the parts of `body` lie.
    layout: Layout,
    /// The body after the fixed header: `[len:2][topic][id:2 if QoS > 0][payload]`.
    body: Bytes,
}

impl Publish {
    /// A QoS 0 PUBLISH, the only kind this system delivers. `topic` must be
    /// a valid topic name (not checked here).
    pub fn qos0(topic: &str, payload: &[u8]) -> Result<Self, EncodeError> {
        Self::new(topic, payload, QoS::AtMostOnce, None, false, false)
    }

    /// A PUBLISH with every field given; fails when `packet_id` is present
    /// at QoS 0 or absent above, or `topic` is longer than 65,535 bytes.
    pub fn new(
        topic: &str,
        payload: &[u8],
        qos: QoS,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        retain: bool,
    ) -> Result<Self, EncodeError> {
        let mut body = BytesMut::new();
        put_body(&mut body, topic.as_bytes(), payload, qos, packet_id)?;
        let topic_end = 2 + topic.len();
        Ok(Self {
            layout: Layout {
                dup,
                qos,
                retain,
                packet_id,
                payload_start: topic_end + if packet_id.is_some() { 2 } else { 0 },
                topic_end,
            },
            body: body.freeze(),
        })
    }

    pub const fn dup(&self) -> bool {
        self.layout.dup
    }

    pub const fn qos(&self) -> QoS {
        self.layout.qos
    }

    pub const fn retain(&self) -> bool {
        self.layout.retain
    }

    /// Present exactly when QoS is above 0.
    pub const fn packet_id(&self) -> Option<NonZeroU16> {
        self.layout.packet_id
    }

    /// The topic name's bytes: valid UTF-8, not empty, without wildcards.
    pub fn topic_bytes(&self) -> &[u8] {
        self.layout.topic(&self.body)
    }

    /// The topic name. Checked when decoded; this converts it again
    /// (`topic_bytes` is free).
    pub fn topic(&self) -> &str {
        std::str::from_utf8(self.topic_bytes()).unwrap_or_default()
    }

    pub fn payload(&self) -> &[u8] {
        self.layout.payload(&self.body)
    }

    /// The payload as a view of the read buffer, kept alive by the caller.
    pub fn payload_bytes(&self) -> Bytes {
        self.body
            .slice(self.layout.payload_start.min(self.body.len())..)
    }

    /// `flags` were checked with the fixed header (QoS 3, DUP at QoS 0).
    #[inline]
    pub(super) fn decode(flags: u8, reader: Reader) -> Result<Self, DecodeError> {
        let body = reader.rest();
        let layout = Layout::check(flags, &body)?;
        Ok(Self { layout, body })
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let Layout {
            dup, qos, retain, ..
        } = self.layout;
        let flags = (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain);
        put_fixed_header(dst, PacketType::Publish, flags, self.body.len())?;
        dst.extend_from_slice(&self.body);
        Ok(())
    }
}

/// The flags of a PUBLISH and where the parts of its body lie, once
/// checked: what both the owned [`Publish`] and the borrowed
/// [`PublishView`] hold beside their body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    dup: bool,
    qos: QoS,
    retain: bool,
    packet_id: Option<NonZeroU16>,
    /// `2 + len`: where the topic ends.
    topic_end: usize,
    payload_start: usize,
}

impl Layout {
    /// Checks `body`, `[len:2][topic][id:2 if QoS > 0][payload]`, for a
    /// PUBLISH whose fixed header carried `flags`.
    #[inline(always)]
    fn check(flags: u8, body: &[u8]) -> Result<Self, DecodeError> {
        let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
        let truncated = DecodeError::Truncated {
            packet: PacketType::Publish,
        };
        let mut cursor = body;
        let topic_len = usize::from(cursor.try_get_u16().map_err(|_| truncated)?);
        let topic = cursor.get(..topic_len).ok_or(truncated)?;
        crate::topic::check_topic_name(topic)?;
        cursor = cursor.get(topic_len..).unwrap_or_default();
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                let id = cursor.try_get_u16().map_err(|_| truncated)?;
                Some(NonZeroU16::new(id).ok_or(DecodeError::ZeroPacketId)?)
            }
        };
        Ok(Self {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 1 != 0,
            packet_id,
            topic_end: 2 + topic_len,
            // The payload is whatever the remaining length leaves; it may be empty.
            payload_start: body.len() - cursor.len(),
        })
    }

    /// The topic name's bytes in `body`.
    fn topic<'b>(&self, body: &'b [u8]) -> &'b [u8] {
        body.get(2..self.topic_end).unwrap_or_default()
    }

    /// The payload in `body`: whatever the remaining length leaves.
    fn payload<'b>(&self, body: &'b [u8]) -> &'b [u8] {
        body.get(self.payload_start..).unwrap_or_default()
    }
}

/// A PUBLISH decoded where it lies in the read buffer
/// ([`Decoder::decode_publish_in_place`](crate::Decoder::decode_publish_in_place)):
/// its topic and payload are borrowed slices, so it costs neither the
/// reference count of a `Bytes` view nor a copy. Checked exactly as a
/// [`Publish`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishView<'a> {
    layout: Layout,
    /// The body after the fixed header, as in [`Publish`].
    body: &'a [u8],
}

impl<'a> PublishView<'a> {
    /// Checks `body`, the bytes after the fixed header.
    #[inline]
    pub(crate) fn decode(flags: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let layout = Layout::check(flags, body)?;
        Ok(Self { layout, body })
    }

    /// The same PUBLISH, owned: its body copied into a buffer of its own,
    /// for a caller that must keep it beyond the next read.
    pub fn to_publish(&self) -> Publish {
        Publish {
            layout: self.layout,
            body: Bytes::copy_from_slice(self.body),
        }
    }

    pub const fn dup(&self) -> bool {
        self.layout.dup
    }

    pub const fn qos(&self) -> QoS {
        self.layout.qos
    }

    pub const fn retain(&self) -> bool {
        self.layout.retain
    }

    /// Present exactly when QoS is above 0.
    pub const fn packet_id(&self) -> Option<NonZeroU16> {
        self.layout.packet_id
    }

    /// The topic name's bytes: valid UTF-8, not empty, without wildcards.
    pub fn topic_bytes(&self) -> &'a [u8] {
        self.layout.topic(self.body)
    }

    /// The topic name. Checked when decoded; this converts it again
    /// (`topic_bytes` is free).
    pub fn topic(&self) -> &'a str {
        std::str::from_utf8(self.topic_bytes()).unwrap_or_default()
    }

    pub fn payload(&self) -> &'a [u8] {
        self.layout.payload(self.body)
    }
}

/// Appends a PUBLISH built from borrowed parts, so a sender needs no
/// [`Publish`] (and no reference-counted buffers) to write one.
///
/// `topic` must be a valid topic name; it is not checked here.
pub fn encode_publish(
    dst: &mut BytesMut,
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    packet_id: Option<NonZeroU16>,
    dup: bool,
    retain: bool,
) -> Result<(), EncodeError> {
    let len = body_len(topic, payload, qos, packet_id)?;
    let flags = (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain);
    put_fixed_header(dst, PacketType::Publish, flags, len)?;
    put_body(dst, topic, payload, qos, packet_id)
}

fn body_len(
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    packet_id: Option<NonZeroU16>,
) -> Result<usize, EncodeError> {
    let id_len = match (qos, packet_id) {
        (QoS::AtMostOnce, None) => 0,
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(_)) => 2,
        _ => return Err(EncodeError::PacketIdMismatch),
    };
    Ok(field_size(topic)? + id_len + payload.len())
}

fn put_body(
    dst: &mut BytesMut,
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    packet_id: Option<NonZeroU16>,
) -> Result<(), EncodeError> {
    dst.reserve(body_len(topic, payload, qos, packet_id)?);
    put_field(dst, topic);
    if let Some(id) = packet_id {
        dst.extend_from_slice(&id.get().to_be_bytes());
    }
    dst.extend_from_slice(payload);
    Ok(())
}
