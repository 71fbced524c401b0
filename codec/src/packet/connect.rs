//! CONNECT (§3.1): the first packet of every connection.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{QoS, field_size, put_field, put_fixed_header};
use crate::error::{DecodeError, EncodeError};
use crate::header::PacketType;
use crate::reader::Reader;

/// The protocol level of MQTT 3.1.1.
pub const PROTOCOL_LEVEL: u8 = 4;

const FLAG_RESERVED: u8 = 0b0000_0001;
const FLAG_CLEAN_SESSION: u8 = 0b0000_0010;
const FLAG_WILL: u8 = 0b0000_0100;
const FLAG_WILL_RETAIN: u8 = 0b0010_0000;
const FLAG_PASSWORD: u8 = 0b0100_0000;
const FLAG_USERNAME: u8 = 0b1000_0000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub clean_session: bool,
    /// Seconds; 0 turns the keep-alive mechanism off (§3.1.2.10).
    pub keep_alive: u16,
    /// Never empty once decoded.
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub message: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl Connect {
    /// A clean-session CONNECT with no will and no credentials.
    pub fn new(client_id: impl Into<ByteString>, keep_alive: u16) -> Self {
        Self {
            clean_session: true,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub(super) fn decode(mut reader: Reader) -> Result<Self, DecodeError> {
        let name = reader.binary()?;
        let level = reader.u8()?;
        match (&name[..], level) {
            (b"MQTT", PROTOCOL_LEVEL) => {}
            // MQTT 3.1 ("MQIsdp", level 3) and 5 ("MQTT", level 5) are
            // protocols we recognise and refuse with CONNACK 0x01.
            (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
            _ => return Err(DecodeError::InvalidProtocolName),
        }

        let flags = reader.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_flag = flags & FLAG_WILL != 0;
        let will_qos_bits = (flags >> 3) & 0b11;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        let will_qos = QoS::from_bits(will_qos_bits).ok_or(DecodeError::InvalidWillQos)?;
        if !will_flag && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = reader.u16()?;

        // The payload fields appear in this order when their flags say so (§3.1.3).
        let client_id = reader.string()?;
        let will = if will_flag {
            Some(Will {
                topic: reader.string()?,
                message: reader.binary()?,
                qos: will_qos,
                retain: will_retain,
            })
        } else {
            None
        };
        let username = has_username.then(|| reader.string()).transpose()?;
        let password = has_password.then(|| reader.binary()).transpose()?;
        reader.finish()?;

        // Checked last, so a malformed packet is reported as malformed and
        // only a well-formed one earns the CONNACK 0x02 this error asks for.
        if client_id.is_empty() {
            return Err(DecodeError::EmptyClientId);
        }
        Ok(Self {
            clean_session: flags & FLAG_CLEAN_SESSION != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Appends the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let mut flags = 0;
        // Protocol name, level, flags, keep alive.
        let mut len = 6 + 1 + 1 + 2 + field_size(self.client_id.as_bytes())?;
        if self.clean_session {
            flags |= FLAG_CLEAN_SESSION;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | ((will.qos as u8) << 3);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
            len += field_size(will.topic.as_bytes())? + field_size(&will.message)?;
        }
        if let Some(username) = &self.username {
            flags |= FLAG_USERNAME;
            len += field_size(username.as_bytes())?;
        }
        if let Some(password) = &self.password {
            flags |= FLAG_PASSWORD;
            len += field_size(password)?;
        }
        put_fixed_header(dst, PacketType::Connect, 0, len)?;
        put_field(dst, b"MQTT");
        dst.put_u8(PROTOCOL_LEVEL);
        dst.put_u8(flags);
        dst.put_u16(self.keep_alive);
        put_field(dst, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            put_field(dst, will.topic.as_bytes());
            put_field(dst, &will.message);
        }
        if let Some(username) = &self.username {
            put_field(dst, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_field(dst, password);
        }
        Ok(())
    }
}
