//! PUBLISH (§3.3): the only packet on the hot path, decoded without copying
//! or allocating.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use std::num::NonZeroU16;

use super::{QoS, field_size, put_field, put_fixed_header};
use crate::error::{DecodeError, EncodeError};
use crate::header::PacketType;
use crate::reader::Reader;
use crate::topic::validate_topic_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// A valid topic name: not empty, no wildcards.
    pub topic: ByteString,
    /// Present exactly when `qos` is above 0.
    pub packet_id: Option<NonZeroU16>,
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 PUBLISH, the only kind this system delivers.
    pub fn qos0(topic: impl Into<ByteString>, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            payload: payload.into(),
        }
    }

    /// `flags` were checked with the fixed header (QoS 3, DUP at QoS 0).
    pub(super) fn decode(flags: u8, mut reader: Reader) -> Result<Self, DecodeError> {
        let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
        let topic = reader.string()?;
        validate_topic_name(&topic)?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => Some(reader.packet_id()?),
        };
        Ok(Self {
            dup: flags & 0b1000 != 0,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            // The payload is whatever the remaining length leaves; it may be empty.
            payload: reader.rest(),
        })
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_publish(
            dst,
            self.topic.as_bytes(),
            &self.payload,
            self.qos,
            self.packet_id,
            self.dup,
            self.retain,
        )
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
    let id_len = match (qos, packet_id) {
        (QoS::AtMostOnce, None) => 0,
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(_)) => 2,
        _ => return Err(EncodeError::PacketIdMismatch),
    };
    let len = field_size(topic)? + id_len + payload.len();
    let flags = (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain);
    put_fixed_header(dst, PacketType::Publish, flags, len)?;
    put_field(dst, topic);
    if let Some(id) = packet_id {
        dst.put_u16(id.get());
    }
    dst.put_slice(payload);
    Ok(())
}
