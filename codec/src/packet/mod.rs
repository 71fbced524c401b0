//! The packets, one module per type, each with its decoder and encoder.

mod ack;
mod connack;
mod connect;
mod publish;
mod suback;
mod subscribe;
mod unsubscribe;

pub use ack::encode_unsuback;
pub use connack::{ConnAck, ConnectReturnCode};
pub use connect::{Connect, PROTOCOL_LEVEL, Will};
pub use publish::{Publish, PublishView, encode_publish};
pub use suback::{SubAck, SubAckReturnCode, encode_suback_qos0};
pub use subscribe::{Subscribe, SubscribeFilters};
pub use unsubscribe::{Unsubscribe, UnsubscribeFilters};

use bytes::{BufMut, Bytes, BytesMut};
use std::num::NonZeroU16;

use crate::error::{DecodeError, EncodeError};
use crate::header::{FixedHeader, MAX_REMAINING_LENGTH, PacketType, put_remaining_length};
use crate::reader::Reader;

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for the two-bit value `bits`; `None` for 3.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// One decoded MQTT 3.1.1 control packet.
///
/// Strings and payloads are views of the buffer the packet was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: CONNECT is the largest packet and arrives once per
    /// connection; unboxed it would make every PUBLISH move 176 bytes.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(NonZeroU16),
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect => PacketType::Disconnect,
        }
    }

    /// Decodes the body of a packet whose fixed header was checked already.
    #[inline]
    pub(crate) fn decode_body(header: FixedHeader, body: Bytes) -> Result<Self, DecodeError> {
        let packet = header.packet_type;
        let mut reader = Reader::new(packet, body);
        let decoded = match packet {
            PacketType::Connect => Self::Connect(Box::new(Connect::decode(reader)?)),
            PacketType::ConnAck => Self::ConnAck(ConnAck::decode(reader)?),
            PacketType::Publish => Self::Publish(Publish::decode(header.flags, reader)?),
            PacketType::Subscribe => Self::Subscribe(Subscribe::decode(reader)?),
            PacketType::SubAck => Self::SubAck(SubAck::decode(reader)?),
            PacketType::Unsubscribe => Self::Unsubscribe(Unsubscribe::decode(reader)?),
            PacketType::PubAck
            | PacketType::PubRec
            | PacketType::PubRel
            | PacketType::PubComp
            | PacketType::UnsubAck => {
                let id = reader.packet_id()?;
                reader.finish()?;
                ack::from_parts(packet, id)
            }
            PacketType::PingReq | PacketType::PingResp | PacketType::Disconnect => {
                reader.finish()?;
                match packet {
                    PacketType::PingReq => Self::PingReq,
                    PacketType::PingResp => Self::PingResp,
                    _ => Self::Disconnect,
                }
            }
        };
        Ok(decoded)
    }

    /// Appends the encoded packet to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Connect(connect) => connect.encode(dst),
            Self::ConnAck(connack) => {
                connack.encode(dst);
                Ok(())
            }
            Self::Publish(publish) => publish.encode(dst),
            Self::Subscribe(subscribe) => subscribe.encode(dst),
            Self::SubAck(suback) => suback.encode(dst),
            Self::Unsubscribe(unsubscribe) => unsubscribe.encode(dst),
            Self::PubAck(id) | Self::PubRec(id) | Self::PubComp(id) | Self::UnsubAck(id) => {
                ack::encode(dst, self.packet_type(), 0, *id);
                Ok(())
            }
            Self::PubRel(id) => {
                ack::encode(dst, PacketType::PubRel, 0b0010, *id);
                Ok(())
            }
            Self::PingReq => {
                dst.put_slice(&PINGREQ);
                Ok(())
            }
            Self::PingResp => {
                dst.put_slice(&PINGRESP);
                Ok(())
            }
            Self::Disconnect => {
                dst.put_slice(&DISCONNECT);
                Ok(())
            }
        }
    }
}

/// A complete PINGREQ packet.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
/// A complete PINGRESP packet.
pub const PINGRESP: [u8; 2] = [0xd0, 0x00];
/// A complete DISCONNECT packet.
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// Writes a fixed header after checking the remaining length fits.
pub(crate) fn put_fixed_header(
    dst: &mut BytesMut,
    packet: PacketType,
    flags: u8,
    remaining_length: usize,
) -> Result<(), EncodeError> {
    if remaining_length > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(remaining_length));
    }
    dst.reserve(1 + crate::header::remaining_length_size(remaining_length) + remaining_length);
    dst.put_u8(((packet as u8) << 4) | flags);
    put_remaining_length(dst, remaining_length);
    Ok(())
}

/// Size on the wire of a string or binary field; fails above 65,535 bytes.
pub(crate) fn field_size(field: &[u8]) -> Result<usize, EncodeError> {
    if field.len() > usize::from(u16::MAX) {
        Err(EncodeError::FieldTooLong(field.len()))
    } else {
        Ok(2 + field.len())
    }
}

/// Writes a field already checked by [`field_size`].
pub(crate) fn put_field(dst: &mut BytesMut, field: &[u8]) {
    // Checked by `field_size` before anything was written.
    #[allow(clippy::cast_possible_truncation)]
    dst.put_u16(field.len() as u16);
    dst.put_slice(field);
}
