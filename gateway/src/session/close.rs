//! Why a connection closed: [`CloseReason`], with its details, and
//! [`CloseKind`], the bounded label it is counted and logged by; and the
//! MQTT 3.1.1 features this system refuses ([`Unsupported`]).

use codec::{ConnectReturnCode, DecodeError};
use ops::exposition::LabelSet;

ops::label_set! {
    /// A [`CloseReason`] without its details: how closes are counted
    /// (`carbridge_gateway_connections_closed_total{reason}`).
    pub enum CloseKind: "reason" {
        Disconnect = "disconnect",
        PeerClosed = "peer_closed",
        ConnectTimeout = "connect_timeout",
        KeepAliveTimeout = "keep_alive_timeout",
        Malformed = "malformed",
        Unsupported = "unsupported",
        Refused = "refused",
        NotAuthorized = "not_authorized",
        UnmappedTopic = "unmapped_topic",
        ForbiddenTopic = "forbidden_topic",
        TakenOver = "taken_over",
        Shutdown = "shutdown",
        Drained = "drained",
        WriteStall = "write_stall",
        PacketTimeout = "packet_timeout",
        PartialBudget = "partial_budget",
        UplinkLimit = "uplink_limit",
        Io = "io_error",
    }
}

/// Why a connection was closed: a bounded set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The car sent DISCONNECT.
    Disconnect,
    /// The car closed its side of the connection.
    PeerClosed,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Nothing received within 1.5 × keep-alive (MQTT-3.1.2-24).
    KeepAliveTimeout,
    /// A protocol violation the codec found.
    Malformed(DecodeError),
    /// Well-formed MQTT 3.1.1 that this system does not support.
    Unsupported(Unsupported),
    /// CONNECT refused with this CONNACK return code.
    Refused(ConnectReturnCode),
    /// CONNECT refused with 0x05: the client id is not the identity the
    /// connection proved (its certificate's, or a trusted proxy's).
    NotAuthorized,
    /// A PUBLISH to a topic no mapping rule accepts.
    UnmappedTopic,
    /// A PUBLISH to a topic whose rule requires the car's own id in it,
    /// without it.
    ForbiddenTopic,
    /// A newer connection with the same client id took over.
    TakenOver,
    /// The gateway is shutting down.
    Shutdown,
    /// The gateway is draining: its cars reconnect elsewhere.
    Drained,
    /// The car took none of what the gateway wrote for
    /// `mqtt.write_timeout_secs`: it stopped reading, and its socket's
    /// buffers and the kernel's are full.
    WriteStall,
    /// A packet begun and not complete within `mqtt.packet_timeout_secs`.
    PacketTimeout,
    /// The shard held more than `limits.max_partial_bytes_per_shard` in
    /// incomplete packets, and this connection held among the most.
    PartialBudget,
    /// The car published beyond its uplink limit, and
    /// `limits.car_over_limit` is `disconnect`.
    UplinkLimit,
    /// A socket error.
    Io,
}

impl CloseReason {
    /// How the close is counted and logged.
    pub const fn kind(&self) -> CloseKind {
        match self {
            Self::Disconnect => CloseKind::Disconnect,
            Self::PeerClosed => CloseKind::PeerClosed,
            Self::ConnectTimeout => CloseKind::ConnectTimeout,
            Self::KeepAliveTimeout => CloseKind::KeepAliveTimeout,
            Self::Malformed(_) => CloseKind::Malformed,
            Self::Unsupported(_) => CloseKind::Unsupported,
            Self::Refused(_) => CloseKind::Refused,
            Self::NotAuthorized => CloseKind::NotAuthorized,
            Self::UnmappedTopic => CloseKind::UnmappedTopic,
            Self::ForbiddenTopic => CloseKind::ForbiddenTopic,
            Self::TakenOver => CloseKind::TakenOver,
            Self::Shutdown => CloseKind::Shutdown,
            Self::Drained => CloseKind::Drained,
            Self::WriteStall => CloseKind::WriteStall,
            Self::PacketTimeout => CloseKind::PacketTimeout,
            Self::PartialBudget => CloseKind::PartialBudget,
            Self::UplinkLimit => CloseKind::UplinkLimit,
            Self::Io => CloseKind::Io,
        }
    }

    /// The close's label in metrics and logs.
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Whether the car did something wrong (as opposed to a normal end or
    /// our own doing): decides the log level.
    pub const fn is_car_fault(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_)
                | Self::Unsupported(_)
                | Self::UnmappedTopic
                | Self::ForbiddenTopic
                | Self::ConnectTimeout
                | Self::NotAuthorized
                | Self::WriteStall
                | Self::PacketTimeout
                | Self::PartialBudget
                | Self::UplinkLimit
        )
    }
}

/// Features of MQTT 3.1.1 this system refuses (docs/gateway.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unsupported {
    /// A packet before CONNECT (MQTT-3.1.0-1).
    PacketBeforeConnect,
    /// A second CONNECT (MQTT-3.1.0-2).
    SecondConnect,
    /// PUBLISH at QoS 1 or 2.
    QosAboveZero,
    /// PUBLISH with the retain flag.
    Retain,
    /// CONNECT with a will.
    Will,
    /// PUBACK, PUBREC, PUBREL or PUBCOMP: never valid, as nothing is
    /// exchanged at QoS above 0.
    QosAcknowledgement,
}

impl Unsupported {
    /// Bounded metric label.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::PacketBeforeConnect => "packet_before_connect",
            Self::SecondConnect => "second_connect",
            Self::QosAboveZero => "qos_above_zero",
            Self::Retain => "retain",
            Self::Will => "will",
            Self::QosAcknowledgement => "qos_acknowledgement",
        }
    }
}
