//! The incremental decoder: bytes in, whole packets out.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::header::{PacketType, parse_fixed_header};
use crate::packet::{Packet, PublishView};

/// Which side of the connection decodes: it decides which packet types are
/// acceptable (a server refuses CONNACK, SUBACK, UNSUBACK and PINGRESP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes what clients send.
    Server,
    /// Decodes what servers send.
    Client,
}

/// A stateless, incremental MQTT 3.1.1 decoder.
///
/// Feed it the connection's read buffer after every read; it takes whole
/// packets off the front and leaves partial ones in place.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    role: Role,
    max_packet_size: usize,
}

impl Decoder {
    /// `max_packet_size` bounds a whole packet, fixed header included.
    pub const fn new(role: Role, max_packet_size: usize) -> Self {
        Self {
            role,
            max_packet_size,
        }
    }

    pub const fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Takes one packet off the front of `buf`.
    ///
    /// `Ok(None)` means the packet at the front is not complete yet; `buf`
    /// is then left untouched. The type, flags, direction and declared size
    /// are checked from the fixed header alone, so an oversized or
    /// misdirected packet is refused before its body is buffered.
    ///
    /// A decoded packet's strings and payload are views of `buf`'s storage;
    /// no bytes are copied.
    #[inline]
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = parse_fixed_header(buf)? else {
            return Ok(None);
        };
        let packet = header.packet_type;
        let allowed = match self.role {
            Role::Server => packet.client_may_send(),
            Role::Client => packet.server_may_send(),
        };
        if !allowed {
            return Err(DecodeError::UnexpectedPacket { packet });
        }
        let size = header.frame_length();
        if size > self.max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            return Ok(None);
        }
        let mut frame = buf.split_to(size).freeze();
        frame.advance(header.header_length);
        Packet::decode_body(header, frame).map(Some)
    }

    /// Decodes the PUBLISH at the start of `buf` where it lies, for a
    /// caller that is done with it before it reads again (the gateway hands
    /// topic and payload to librdkafka, which copies them).
    ///
    /// `Ok(Some((publish, frame_length)))` when `buf` starts with a whole
    /// PUBLISH; the caller takes the frame off when done with it
    /// (`buf.advance(frame_length)`). `Ok(None)` when `buf` starts with
    /// another packet type or with an incomplete packet: [`Decoder::decode`]
    /// then takes it. Errors are the ones [`Decoder::decode`] reports for
    /// the same bytes, and equally final.
    #[inline]
    pub fn decode_publish_in_place<'a>(
        &self,
        buf: &'a [u8],
    ) -> Result<Option<(PublishView<'a>, usize)>, DecodeError> {
        let Some(header) = parse_fixed_header(buf)? else {
            return Ok(None);
        };
        if header.packet_type != PacketType::Publish {
            return Ok(None);
        }
        // PUBLISH goes both ways: no direction to check.
        let size = header.frame_length();
        if size > self.max_packet_size {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        let Some(body) = buf.get(header.header_length..size) else {
            return Ok(None);
        };
        PublishView::decode(header.flags, body).map(|publish| Some((publish, size)))
    }

    /// How many bytes `buf` must hold before [`Decoder::decode`] can make
    /// progress: lets a reader size its next read. `None` while even the
    /// fixed header is incomplete (at most five bytes).
    pub fn frame_length(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        Ok(parse_fixed_header(buf)?.map(|header| header.frame_length()))
    }
}
