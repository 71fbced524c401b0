//! Decode and encode errors.
//!
//! Every way a peer can violate MQTT 3.1.1 maps to one variant, named after
//! the rule and carrying its normative statement id where the specification
//! has one. Errors are `Copy` and never allocate, so a flood of bad input
//! costs no memory, and [`DecodeError::kind`] is a bounded metric label.

use crate::header::PacketType;
use crate::packet::ConnectReturnCode;

/// Why a byte stream is not acceptable MQTT 3.1.1.
///
/// After any of these the receiver must close the network connection
/// (MQTT-4.8.0-1). For a few CONNECT errors the server first answers with a
/// CONNACK: see [`DecodeError::connack_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Packet type 0 or 15.
    #[error("reserved packet type {0} [MQTT-2.2.1]")]
    ReservedPacketType(u8),
    /// The fixed header's flag bits differ from the ones the packet type requires.
    #[error("invalid fixed header flags {flags:#06b} for {packet} [MQTT-2.2.2-2]")]
    InvalidHeaderFlags { packet: PacketType, flags: u8 },
    /// A packet that only the other side may send.
    #[error("{packet} may not be sent in this direction [MQTT-2.2.1]")]
    UnexpectedPacket { packet: PacketType },
    /// The remaining length does not end within four bytes.
    #[error("remaining length encoded in more than 4 bytes [MQTT-2.2.3]")]
    RemainingLengthTooLong,
    /// The packet declares more bytes than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// The remaining length ends inside a field.
    #[error("remaining length ends inside a field of {packet} [MQTT-2.2.3]")]
    Truncated { packet: PacketType },
    /// Bytes left over after the last field the packet can have.
    #[error("{packet} is longer than its fields [MQTT-2.2.3]")]
    TrailingBytes { packet: PacketType },
    /// A string is not well-formed UTF-8 (this includes encoded surrogates).
    #[error("string is not well-formed UTF-8 [MQTT-1.5.3-1]")]
    InvalidUtf8,
    /// A string contains U+0000.
    #[error("string contains U+0000 [MQTT-1.5.3-2]")]
    NullCharacter,
    /// CONNECT's protocol name is neither "MQTT" nor the MQTT 3.1 "MQIsdp".
    #[error("protocol name is not \"MQTT\" [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    /// A protocol level other than 4 (MQTT 3.1.1).
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT flags bit 0 is set.
    #[error("CONNECT reserved flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set while the Will Flag is not.
    #[error("will QoS or will retain set without the will flag [MQTT-3.1.2-13] [MQTT-3.1.2-15]")]
    WillFlagsWithoutWill,
    /// Will QoS is 3.
    #[error("will QoS 3 [MQTT-3.1.2-14]")]
    InvalidWillQos,
    /// Password flag set while the user name flag is not.
    #[error("password flag set without the user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// A zero-length client identifier. The spec lets a server assign one
    /// (MQTT-3.1.3-6); this system does not, because a car's id is its Kafka key.
    #[error("zero-length client identifier rejected [MQTT-3.1.3-9]")]
    EmptyClientId,
    /// PUBLISH with both QoS bits set.
    #[error("QoS 3 [MQTT-3.3.1-4]")]
    InvalidQos,
    /// PUBLISH at QoS 0 with DUP set.
    #[error("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQos0,
    /// A zero-length topic name or topic filter.
    #[error("zero-length topic [MQTT-4.7.3-1]")]
    EmptyTopic,
    /// '+' or '#' in a PUBLISH topic name.
    #[error("wildcard in a topic name [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    /// '#' not alone in the last level of a filter.
    #[error("'#' not alone in the last level of a topic filter [MQTT-4.7.1-2]")]
    MisplacedMultiLevelWildcard,
    /// '+' sharing a level with other characters.
    #[error("'+' does not occupy a whole level of a topic filter [MQTT-4.7.1-3]")]
    MisplacedSingleLevelWildcard,
    /// A packet identifier of 0 where one is required.
    #[error("packet identifier 0 [MQTT-2.3.1-1]")]
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("{packet} without topic filters [MQTT-3.8.3-3] [MQTT-3.10.3-2]")]
    NoTopicFilters { packet: PacketType },
    /// Requested QoS byte with reserved bits set, or QoS 3.
    #[error("invalid requested QoS byte {0:#04x} [MQTT-3.8.3-4]")]
    InvalidRequestedQos(u8),
    /// CONNACK acknowledge flags with reserved bits set.
    #[error("CONNACK reserved flags set [MQTT-3.2.2]")]
    ConnAckReservedFlags,
    /// CONNACK with a return code above 5.
    #[error("CONNACK return code {0} is reserved [MQTT-3.2.3]")]
    InvalidConnectReturnCode(u8),
    /// CONNACK refusing the connection but claiming a session.
    #[error("CONNACK with session present and a non-zero return code [MQTT-3.2.2-4]")]
    SessionPresentOnRefusal,
    /// SUBACK return code other than 0x00, 0x01, 0x02, 0x80.
    #[error("SUBACK return code {0:#04x} is reserved [MQTT-3.9.3-2]")]
    InvalidSubAckReturnCode(u8),
    /// SUBACK without return codes.
    #[error("SUBACK without return codes [MQTT-3.9.3]")]
    NoSubAckReturnCodes,
}

impl DecodeError {
    /// A short, stable, bounded name: fit for a metric label or a log field.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::ReservedPacketType(_) => "reserved_packet_type",
            Self::InvalidHeaderFlags { .. } => "invalid_header_flags",
            Self::UnexpectedPacket { .. } => "unexpected_packet",
            Self::RemainingLengthTooLong => "remaining_length_too_long",
            Self::PacketTooLarge { .. } => "packet_too_large",
            Self::Truncated { .. } => "truncated",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NullCharacter => "null_character",
            Self::InvalidProtocolName => "invalid_protocol_name",
            Self::UnsupportedProtocolLevel(_) => "unsupported_protocol_level",
            Self::ConnectReservedFlag => "connect_reserved_flag",
            Self::WillFlagsWithoutWill => "will_flags_without_will",
            Self::InvalidWillQos => "invalid_will_qos",
            Self::PasswordWithoutUsername => "password_without_username",
            Self::EmptyClientId => "empty_client_id",
            Self::InvalidQos => "invalid_qos",
            Self::DupOnQos0 => "dup_on_qos0",
            Self::EmptyTopic => "empty_topic",
            Self::WildcardInTopicName => "wildcard_in_topic_name",
            Self::MisplacedMultiLevelWildcard => "misplaced_multi_level_wildcard",
            Self::MisplacedSingleLevelWildcard => "misplaced_single_level_wildcard",
            Self::ZeroPacketId => "zero_packet_id",
            Self::NoTopicFilters { .. } => "no_topic_filters",
            Self::InvalidRequestedQos(_) => "invalid_requested_qos",
            Self::ConnAckReservedFlags => "connack_reserved_flags",
            Self::InvalidConnectReturnCode(_) => "invalid_connect_return_code",
            Self::SessionPresentOnRefusal => "session_present_on_refusal",
            Self::InvalidSubAckReturnCode(_) => "invalid_suback_return_code",
            Self::NoSubAckReturnCodes => "no_suback_return_codes",
        }
    }

    /// The CONNACK a server sends before closing, for the CONNECT errors
    /// where the specification asks for one; `None` means close at once.
    pub const fn connack_code(&self) -> Option<ConnectReturnCode> {
        match self {
            Self::UnsupportedProtocolLevel(_) => {
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            Self::EmptyClientId => Some(ConnectReturnCode::IdentifierRejected),
            _ => None,
        }
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or binary field longer than 65,535 bytes.
    #[error("field of {0} bytes exceeds 65535 bytes [MQTT-1.5.3]")]
    FieldTooLong(usize),
    /// A packet whose remaining length exceeds 268,435,455 bytes.
    #[error("remaining length {0} exceeds 268435455 bytes [MQTT-2.2.3]")]
    PacketTooLarge(usize),
    /// A packet identifier present at QoS 0 or missing at QoS 1 and 2.
    #[error("packet identifier must be present exactly when QoS > 0 [MQTT-2.3.1-5]")]
    PacketIdMismatch,
    /// SUBSCRIBE, UNSUBSCRIBE or SUBACK with no entries.
    #[error("packet needs at least one topic filter or return code [MQTT-3.8.3-3]")]
    Empty,
}
