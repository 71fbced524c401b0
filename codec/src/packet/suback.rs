//! SUBACK (§3.9).

use bytes::{BufMut, Bytes, BytesMut};
use std::num::NonZeroU16;

use super::{QoS, put_fixed_header};
use crate::error::{DecodeError, EncodeError};
use crate::header::PacketType;
use crate::reader::Reader;

/// One SUBACK return code (§3.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubAckReturnCode {
    /// Granted at this maximum QoS.
    Success(QoS),
    /// 0x80.
    Failure,
}

impl SubAckReturnCode {
    const fn from_u8(code: u8) -> Option<Self> {
        match code {
            0x80 => Some(Self::Failure),
            _ => match QoS::from_bits(code) {
                Some(qos) => Some(Self::Success(qos)),
                None => None,
            },
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            Self::Success(qos) => qos as u8,
            Self::Failure => 0x80,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: NonZeroU16,
    /// Validated return codes, one byte each.
    codes: Bytes,
}

impl SubAck {
    pub fn new(
        packet_id: NonZeroU16,
        codes: impl IntoIterator<Item = SubAckReturnCode>,
    ) -> Result<Self, EncodeError> {
        let codes: Bytes = codes.into_iter().map(SubAckReturnCode::to_u8).collect();
        if codes.is_empty() {
            return Err(EncodeError::Empty);
        }
        Ok(Self { packet_id, codes })
    }

    pub(super) fn decode(mut reader: Reader) -> Result<Self, DecodeError> {
        let packet_id = reader.packet_id()?;
        let codes = reader.rest();
        if codes.is_empty() {
            return Err(DecodeError::NoSubAckReturnCodes);
        }
        if let Some(&bad) = codes
            .iter()
            .find(|&&c| SubAckReturnCode::from_u8(c).is_none())
        {
            return Err(DecodeError::InvalidSubAckReturnCode(bad));
        }
        Ok(Self { packet_id, codes })
    }

    pub fn return_codes(&self) -> impl Iterator<Item = SubAckReturnCode> + '_ {
        self.codes
            .iter()
            .filter_map(|&c| SubAckReturnCode::from_u8(c))
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_suback_raw(dst, self.packet_id, &self.codes)
    }
}

/// Appends a SUBACK that grants QoS 0 to each of `count` filters: what this
/// system answers to every valid SUBSCRIBE (QoS 1 and 2 are downgraded).
pub fn encode_suback_qos0(
    dst: &mut BytesMut,
    packet_id: NonZeroU16,
    count: usize,
) -> Result<(), EncodeError> {
    if count == 0 {
        return Err(EncodeError::Empty);
    }
    put_fixed_header(dst, PacketType::SubAck, 0, 2 + count)?;
    dst.put_u16(packet_id.get());
    dst.put_bytes(0, count);
    Ok(())
}

fn encode_suback_raw(
    dst: &mut BytesMut,
    packet_id: NonZeroU16,
    codes: &[u8],
) -> Result<(), EncodeError> {
    put_fixed_header(dst, PacketType::SubAck, 0, 2 + codes.len())?;
    dst.put_u16(packet_id.get());
    dst.put_slice(codes);
    Ok(())
}
