//! Bounds-checked field reads over one packet's body.
//!
//! The body is a `Bytes` view of the read buffer; strings and binary fields
//! are returned as sub-views of it, so decoding copies no payload bytes.

use bytes::{Buf, Bytes};
use bytestring::ByteString;
use std::num::NonZeroU16;

use crate::error::DecodeError;
use crate::header::PacketType;

pub(crate) struct Reader {
    body: Bytes,
    packet: PacketType,
}

impl Reader {
    pub(crate) const fn new(packet: PacketType, body: Bytes) -> Self {
        Self { body, packet }
    }

    const fn truncated(&self) -> DecodeError {
        DecodeError::Truncated {
            packet: self.packet,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.body.try_get_u8().map_err(|_| self.truncated())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.body.try_get_u16().map_err(|_| self.truncated())
    }

    pub(crate) fn packet_id(&mut self) -> Result<NonZeroU16, DecodeError> {
        NonZeroU16::new(self.u16()?).ok_or(DecodeError::ZeroPacketId)
    }

    /// A two-byte length followed by that many bytes (§1.5.3, §3.1.3.4).
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if self.body.len() < len {
            return Err(self.truncated());
        }
        Ok(self.body.split_to(len))
    }

    /// A UTF-8 encoded string (§1.5.3).
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        utf8(self.binary()?)
    }

    /// Everything not read yet.
    pub(crate) fn rest(self) -> Bytes {
        self.body
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
            })
        }
    }
}

/// Checks an MQTT UTF-8 string: well-formed UTF-8 without surrogates
/// (MQTT-1.5.3-1; `from_utf8` rejects encoded surrogates and overlong forms)
/// and without U+0000 (MQTT-1.5.3-2; `from_utf8` accepts it, and since
/// overlong forms are refused, a zero byte is the only way to write it).
pub(crate) fn utf8(bytes: Bytes) -> Result<ByteString, DecodeError> {
    if memchr::memchr(0, &bytes).is_some() {
        return Err(DecodeError::NullCharacter);
    }
    ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

/// The UTF-8 half of [`utf8`], for callers that checked U+0000 themselves.
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<(), DecodeError> {
    std::str::from_utf8(bytes)
        .map(drop)
        .map_err(|_| DecodeError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(bytes: &'static [u8]) -> Result<ByteString, DecodeError> {
        Reader::new(PacketType::Publish, Bytes::from_static(bytes)).string()
    }

    #[test]
    fn strings_follow_section_1_5_3() {
        assert_eq!(string(b"\x00\x02ab").unwrap(), "ab");
        // The example of §1.5.3.1: U+2A6D4 followed by... (here "A" + U+2A6D4).
        assert_eq!(string(b"\x00\x05A\xf0\xaa\x9b\x94").unwrap(), "A\u{2A6D4}");
        // A BOM is kept, not stripped (MQTT-1.5.3-3).
        assert_eq!(string(b"\x00\x03\xef\xbb\xbf").unwrap(), "\u{feff}");
        // Surrogate U+D800 encoded as UTF-8.
        assert_eq!(
            string(b"\x00\x03\xed\xa0\x80"),
            Err(DecodeError::InvalidUtf8)
        );
        // Overlong encoding of U+0000 and of '/'.
        assert_eq!(string(b"\x00\x02\xc0\x80"), Err(DecodeError::InvalidUtf8));
        assert_eq!(string(b"\x00\x02\xc0\xaf"), Err(DecodeError::InvalidUtf8));
        assert_eq!(string(b"\x00\x01\xff"), Err(DecodeError::InvalidUtf8));
        assert_eq!(string(b"\x00\x03a\x00b"), Err(DecodeError::NullCharacter));
        let truncated = Err(DecodeError::Truncated {
            packet: PacketType::Publish,
        });
        assert_eq!(string(b"\x00\x03ab"), truncated);
        assert_eq!(string(b"\x00"), truncated);
    }
}
