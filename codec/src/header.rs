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
#[inline]
pub fn parse_fixed_header(src: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first, rest)) = src.split_first() else {
        return Ok(None);
    };
    let packet_type = match FIRST_BYTES.get(usize::from(first)).copied().flatten() {
        Some(packet_type) => packet_type,
        // Not acceptable: the rules again, for the error to report.
        None => check_first_byte(first)?,
    };
    // Most packets' remaining length takes one byte or two.
    let (remaining_length, length_bytes) = match *rest {
        [byte, ..] if byte & 0x80 == 0 => (usize::from(byte), 1),
        [low, high, ..] if high & 0x80 == 0 => {
            (usize::from(low & 0x7f) | (usize::from(high) << 7), 2)
        }
        _ => match long_remaining_length(rest)? {
            Some(length) => length,
            None => return Ok(None),
        },
    };
    Ok(Some(FixedHeader {
        packet_type,
        flags: first & 0x0f,
        remaining_length,
        header_length: 1 + length_bytes,
    }))
}

/// The remaining length at the start of `src` and the bytes it takes, in
/// the general form: up to four bytes of seven bits each (§2.2.3).
fn long_remaining_length(src: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining_length = 0usize;
    for (i, &byte) in src.iter().take(4).enumerate() {
        remaining_length |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((remaining_length, i + 1)));
        }
    }
    if src.len() >= 4 {
        Err(DecodeError::RemainingLengthTooLong)
    } else {
        Ok(None)
    }
}

/// Each first byte's packet type when the byte is acceptable, `None` when
/// it is not: [`check_first_byte`] for all 256 bytes, run by the compiler,
/// so that the decoder checks a first byte with one load.
static FIRST_BYTES: [Option<PacketType>; 256] = {
    let mut table = [None; 256];
    let mut byte = 0;
    while byte < table.len() {
        // `byte` < 256; evaluated by the compiler, where an index out of
        // bounds fails the build (and `get_mut` is not `const`).
        #[allow(clippy::cast_possible_truncation, clippy::indexing_slicing)]
        if let Ok(packet_type) = check_first_byte(byte as u8) {
            table[byte] = Some(packet_type);
        }
        byte += 1;
    }
    table
};

/// The packet type in a fixed header's first byte and its flags checked
/// against the type (§2.2.1, §2.2.2).
const fn check_first_byte(first: u8) -> Result<PacketType, DecodeError> {
    let packet_type = match PacketType::from_first_byte(first) {
        Ok(packet_type) => packet_type,
        Err(error) => return Err(error),
    };
    let flags = first & 0x0f;
    match packet_type.required_flags() {
        Some(required) if flags != required => Err(DecodeError::InvalidHeaderFlags {
            packet: packet_type,
            flags,
        }),
        Some(_) => Ok(packet_type),
        None => match check_publish_flags(flags) {
            Ok(()) => Ok(packet_type),
            Err(error) => Err(error),
        },
    }
}

/// PUBLISH flags: DUP (bit 3), QoS (bits 2-1), RETAIN (bit 0).
const fn check_publish_flags(flags: u8) -> Result<(), DecodeError> {
    match QoS::from_bits((flags >> 1) & 0b11) {
        None => Err(DecodeError::InvalidQos),
        Some(QoS::AtMostOnce) if flags & 0b1000 != 0 => Err(DecodeError::DupOnQos0),
        Some(_) => Ok(()),
    }
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
    fn every_first_byte_is_judged_as_the_rules_say() {
        for byte in 0..=255u8 {
            let parsed = parse_fixed_header(&[byte, 0]).map(|h| h.map(|h| h.packet_type));
            assert_eq!(parsed, check_first_byte(byte).map(Some), "{byte:#04x}");
        }
        // Types 1 to 14, each with the flags it requires; PUBLISH with the
        // 10 of its 16 that have neither QoS 3 (4) nor DUP at QoS 0 (2).
        let valid = (0..=255u8).filter(|&b| check_first_byte(b).is_ok()).count();
        assert_eq!(valid, 13 + 10);
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
