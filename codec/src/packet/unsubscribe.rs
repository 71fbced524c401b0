//! UNSUBSCRIBE (§3.10); kept as a validated view like SUBSCRIBE.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use std::num::NonZeroU16;

use super::subscribe::next_field;
use super::{field_size, put_field, put_fixed_header};
use crate::error::{DecodeError, EncodeError};
use crate::header::PacketType;
use crate::reader::Reader;
use crate::topic::validate_topic_filter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: NonZeroU16,
    payload: Bytes,
}

impl Unsubscribe {
    /// Builds an UNSUBSCRIBE from valid topic filters.
    pub fn new<'a>(
        packet_id: NonZeroU16,
        filters: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, EncodeError> {
        let mut payload = BytesMut::new();
        for filter in filters {
            field_size(filter.as_bytes())?;
            put_field(&mut payload, filter.as_bytes());
        }
        if payload.is_empty() {
            return Err(EncodeError::Empty);
        }
        Ok(Self {
            packet_id,
            payload: payload.freeze(),
        })
    }

    pub(super) fn decode(mut reader: Reader) -> Result<Self, DecodeError> {
        let packet_id = reader.packet_id()?;
        let payload = reader.rest();
        if payload.is_empty() {
            return Err(DecodeError::NoTopicFilters {
                packet: PacketType::Unsubscribe,
            });
        }
        let mut entries = Reader::new(PacketType::Unsubscribe, payload.clone());
        while !entries.is_empty() {
            validate_topic_filter(&entries.string()?)?;
        }
        Ok(Self { packet_id, payload })
    }

    /// The topic filters, in order.
    pub fn filters(&self) -> UnsubscribeFilters {
        UnsubscribeFilters {
            rest: self.payload.clone(),
        }
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_fixed_header(dst, PacketType::Unsubscribe, 0b0010, 2 + self.payload.len())?;
        dst.put_u16(self.packet_id.get());
        dst.put_slice(&self.payload);
        Ok(())
    }
}

/// Iterator over a validated UNSUBSCRIBE payload.
#[derive(Debug, Clone)]
pub struct UnsubscribeFilters {
    rest: Bytes,
}

impl Iterator for UnsubscribeFilters {
    type Item = ByteString;

    fn next(&mut self) -> Option<Self::Item> {
        next_field(&mut self.rest)
    }
}
