//! The fixed header: packet type, flags and remaining length (MQTT 3.1.1 §2.2).

use std::fmt;

use crate::error::DecodeError;
use crate::packet::QoS;

/// The 14 MQTT 3.1.1 control packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
}

impl PacketType {
    /// The type in the high nibble of a fixed header's first byte.
    pub const fn from_first_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte >> 4 {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            reserved => return Err(DecodeError::ReservedPacketType(reserved)),
        })
    }

    /// Upper-case name as the specification writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }

    /// Whether a client may send this type (the direction column of §2.2.1).
    pub const fn client_may_send(self) -> bool {
        !matches!(
            self,
            Self::ConnAck | Self::SubAck | Self::UnsubAck | Self::PingResp
        )
    }

    /// Whether a server may send this type.
    pub const fn server_may_send(self) -> bool {
        !matches!(
            self,
            Self::Connect | Self::Subscribe | Self::Unsubscribe | Self::PingReq | Self::Disconnect
        )
    }

    /// The flag nibble every type but PUBLISH must carry (§2.2.2).
    const fn required_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest remaining length four bytes can encode.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low nibble of the first byte, already checked against the type.
    pub flags: u8,
    /// Bytes after the fixed header.
    pub remaining_length: usize,
    /// Bytes of the fixed header itself: 2 to 5.
    pub header_length: usize,
}

impl FixedHeader {
    /// Bytes of the whole packet.
    pub const fn frame_length(&self) -> usize {
        self.header_length + self.remaining_length
    }
}

/// Parses a fixed header from the start of `src`.
///
/// Returns `Ok(None)` while the header is incomplete. The first byte is
/// checked as soon as it is present, so a peer sending garbage is refused
/// before it can make us wait for a body.
pub fn parse_fixed_header(src: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first, rest)) = src.split_first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_first_byte(first)?;
    let flags = first & 0x0f;
    match packet_type.required_flags() {
        Some(required) if flags != required => {
            return Err(DecodeError::InvalidHeaderFlags {
                packet: packet_type,
                flags,
            });
        }
        Some(_) => {}
        None => check_publish_flags(flags)?,
    }

    let mut remaining_length = 0usize;
    for (i, &byte) in rest.iter().take(4).enumerate() {
        remaining_length |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                packet_type,
                flags,
                remaining_length,
                header_length: i + 2,
            }));
        }
    }
    if rest.len() >= 4 {
        Err(DecodeError::RemainingLengthTooLong)
    } else {
        Ok(None)
    }
}

/// PUBLISH flags: DUP (bit 3), QoS (bits 2-1), RETAIN (bit 0).
fn check_publish_flags(flags: u8) -> Result<(), DecodeError> {
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
    if qos == QoS::AtMostOnce && flags & 0b1000 != 0 {
        return Err(DecodeError::DupOnQos0);
    }
    Ok(())
}

/// Bytes the remaining-length field of `len` takes.
pub(crate) const fn remaining_length_size(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes the variable-length remaining length (caller checked the maximum).
pub(crate) fn put_remaining_length(dst: &mut bytes::BytesMut, mut len: usize) {
    use bytes::BufMut;
    loop {
        // Truncation is the point: the low seven bits of what is left.
        #[allow(clippy::cast_possible_truncation)]
        let mut byte = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_headers_need_more() {
        assert_eq!(parse_fixed_header(&[]), Ok(None));
        assert_eq!(parse_fixed_header(&[0x30]), Ok(None));
        assert_eq!(parse_fixed_header(&[0x30, 0x80]), Ok(None));
        assert_eq!(parse_fixed_header(&[0x30, 0x80, 0x80, 0x80]), Ok(None));
    }

    #[test]
    fn remaining_length_boundaries() {
        // The table in §2.2.3.
        let cases: &[(&[u8], usize)] = &[
            (&[0x00], 0),
            (&[0x7f], 127),
            (&[0x80, 0x01], 128),
            (&[0xff, 0x7f], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xff, 0xff, 0x7f], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xff, 0xff, 0xff, 0x7f], MAX_REMAINING_LENGTH),
        ];
        for (encoded, expected) in cases {
            let mut src = vec![0x30];
            src.extend_from_slice(encoded);
            let header = parse_fixed_header(&src).unwrap().unwrap();
            assert_eq!(header.remaining_length, *expected);
            assert_eq!(header.header_length, 1 + encoded.len());
            assert_eq!(remaining_length_size(*expected), encoded.len());
            let mut out = bytes::BytesMut::new();
            put_remaining_length(&mut out, *expected);
            assert_eq!(&out[..], *encoded);
        }
    }

    #[test]
    fn fifth_length_byte_is_refused_without_waiting() {
        assert_eq!(
            parse_fixed_header(&[0x30, 0xff, 0xff, 0xff, 0x80]),
            Err(DecodeError::RemainingLengthTooLong)
        );
    }

    #[test]
    fn first_byte_is_checked_alone() {
        assert_eq!(
            parse_fixed_header(&[0xf0]),
            Err(DecodeError::ReservedPacketType(15))
        );
        assert_eq!(
            parse_fixed_header(&[0x00]),
            Err(DecodeError::ReservedPacketType(0))
        );
        assert_eq!(parse_fixed_header(&[0x36]), Err(DecodeError::InvalidQos));
        assert_eq!(parse_fixed_header(&[0x38]), Err(DecodeError::DupOnQos0));
        assert_eq!(
            parse_fixed_header(&[0x80]),
            Err(DecodeError::InvalidHeaderFlags {
                packet: PacketType::Subscribe,
                flags: 0
            })
        );
    }
}
