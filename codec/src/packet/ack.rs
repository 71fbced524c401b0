//! PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4–3.7) and UNSUBACK (§3.11): a fixed
//! header and a packet identifier. The flags (0b0010 for PUBREL, 0
//! otherwise, MQTT-3.6.1-1) are checked with the fixed header.

use bytes::{BufMut, BytesMut};
use std::num::NonZeroU16;

use super::Packet;
use crate::header::PacketType;

pub(super) fn from_parts(packet: PacketType, id: NonZeroU16) -> Packet {
    match packet {
        PacketType::PubAck => Packet::PubAck(id),
        PacketType::PubRec => Packet::PubRec(id),
        PacketType::PubRel => Packet::PubRel(id),
        PacketType::PubComp => Packet::PubComp(id),
        // The caller passes only the five acknowledgement types.
        _ => Packet::UnsubAck(id),
    }
}

pub(super) fn encode(dst: &mut BytesMut, packet: PacketType, flags: u8, id: NonZeroU16) {
    dst.reserve(4);
    dst.put_u8(((packet as u8) << 4) | flags);
    dst.put_u8(2);
    dst.put_u16(id.get());
}

/// Appends an UNSUBACK for `packet_id`.
pub fn encode_unsuback(dst: &mut BytesMut, packet_id: NonZeroU16) {
    encode(dst, PacketType::UnsubAck, 0, packet_id);
}
