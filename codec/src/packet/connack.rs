//! CONNACK (§3.2): the server's answer to CONNECT.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::header::PacketType;
use crate::reader::Reader;

/// CONNACK return codes (§3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    const fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Accepted,
            1 => Self::UnacceptableProtocolVersion,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

impl ConnAck {
    pub(super) fn decode(mut reader: Reader) -> Result<Self, DecodeError> {
        let flags = reader.u8()?;
        let code = reader.u8()?;
        reader.finish()?;
        if flags & 0xfe != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let code =
            ConnectReturnCode::from_u8(code).ok_or(DecodeError::InvalidConnectReturnCode(code))?;
        let session_present = flags & 1 == 1;
        if session_present && code != ConnectReturnCode::Accepted {
            return Err(DecodeError::SessionPresentOnRefusal);
        }
        Ok(Self {
            session_present,
            code,
        })
    }

    /// Appends the packet: always four bytes.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(4);
        dst.put_u8((PacketType::ConnAck as u8) << 4);
        dst.put_u8(2);
        dst.put_u8(u8::from(self.session_present));
        dst.put_u8(self.code as u8);
    }
}
