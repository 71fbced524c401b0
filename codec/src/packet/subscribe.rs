//! SUBSCRIBE (§3.8).
//!
//! The payload is validated once when decoded and kept as one view of the
//! read buffer; [`Subscribe::filters`] walks it. Decoding therefore never
//! allocates in proportion to what a peer sends.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use std::num::NonZeroU16;

use super::{QoS, field_size, put_field, put_fixed_header};
use crate::error::{DecodeError, EncodeError};
use crate::header::PacketType;
use crate::reader::{Reader, utf8};
use crate::topic::validate_topic_filter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: NonZeroU16,
    /// Validated (topic filter, requested QoS) pairs as on the wire.
    payload: Bytes,
}

impl Subscribe {
    /// Builds a SUBSCRIBE from valid topic filters.
    pub fn new<'a>(
        packet_id: NonZeroU16,
        filters: impl IntoIterator<Item = (&'a str, QoS)>,
    ) -> Result<Self, EncodeError> {
        let mut payload = BytesMut::new();
        for (filter, qos) in filters {
            field_size(filter.as_bytes())?;
            put_field(&mut payload, filter.as_bytes());
            payload.put_u8(qos as u8);
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
                packet: PacketType::Subscribe,
            });
        }
        let mut entries = Reader::new(PacketType::Subscribe, payload.clone());
        while !entries.is_empty() {
            let filter = entries.string()?;
            validate_topic_filter(&filter)?;
            let requested = entries.u8()?;
            if requested > QoS::ExactlyOnce as u8 {
                return Err(DecodeError::InvalidRequestedQos(requested));
            }
        }
        Ok(Self { packet_id, payload })
    }

    /// The (topic filter, requested QoS) pairs, in order.
    pub fn filters(&self) -> SubscribeFilters {
        SubscribeFilters {
            rest: self.payload.clone(),
        }
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_fixed_header(dst, PacketType::Subscribe, 0b0010, 2 + self.payload.len())?;
        dst.put_u16(self.packet_id.get());
        dst.put_slice(&self.payload);
        Ok(())
    }
}

/// Iterator over a validated SUBSCRIBE payload.
#[derive(Debug, Clone)]
pub struct SubscribeFilters {
    rest: Bytes,
}

impl Iterator for SubscribeFilters {
    type Item = (ByteString, QoS);

    fn next(&mut self) -> Option<Self::Item> {
        let filter = next_field(&mut self.rest)?;
        let qos = QoS::from_bits(self.rest.try_get_u8().ok()?)?;
        Some((filter, qos))
    }
}

/// The next length-prefixed string of a payload validated at decode time;
/// `None` at the end (and, defensively, on anything malformed).
pub(super) fn next_field(rest: &mut Bytes) -> Option<ByteString> {
    let len = usize::from(rest.try_get_u16().ok()?);
    if rest.len() < len {
        return None;
    }
    utf8(rest.split_to(len)).ok()
}
