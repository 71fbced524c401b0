//! One byte-level case per rule of MQTT 3.1.1 whose violation obliges the
//! receiver to close the connection, each naming its normative statement
//! (or section, where the rule has no statement id).

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::BytesMut;
use codec::{ConnectReturnCode, DecodeError, Decoder, PacketType, Role};

const MAX: usize = 64 * 1024;

/// A packet with a correct one-byte remaining length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first, u8::try_from(body.len()).unwrap()];
    out.extend_from_slice(body);
    out
}

fn field(s: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// CONNECT with protocol "MQTT" level 4, the given flags, keep alive 60 and payload.
fn connect_with(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = field(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

fn connect(flags: u8, payload: &[u8]) -> Vec<u8> {
    connect_with(b"MQTT", 4, flags, payload)
}

fn publish(first: u8, topic: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    body.extend_from_slice(rest);
    packet(first, &body)
}

/// SUBSCRIBE with packet id 1 and the given (filter, qos byte) entries.
fn subscribe(entries: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = vec![0, 1];
    for (filter, qos) in entries {
        body.extend_from_slice(&field(filter));
        body.push(*qos);
    }
    packet(0x82, &body)
}

fn unsubscribe(filters: &[&[u8]]) -> Vec<u8> {
    let mut body = vec![0, 1];
    for filter in filters {
        body.extend_from_slice(&field(filter));
    }
    packet(0xa2, &body)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

struct Case {
    rule: &'static str,
    role: Role,
    bytes: Vec<u8>,
    error: DecodeError,
}

fn server(rule: &'static str, bytes: Vec<u8>, error: DecodeError) -> Case {
    Case {
        rule,
        role: Role::Server,
        bytes,
        error,
    }
}

fn client(rule: &'static str, bytes: Vec<u8>, error: DecodeError) -> Case {
    Case {
        rule,
        role: Role::Client,
        bytes,
        error,
    }
}

fn cases() -> Vec<Case> {
    use DecodeError as E;
    use PacketType as T;
    let car = field(b"car");
    vec![
        // §2.2.1 packet types.
        server(
            "2.2.1 reserved type 0",
            vec![0x00, 0x00],
            E::ReservedPacketType(0),
        ),
        server(
            "2.2.1 reserved type 15",
            vec![0xf0, 0x00],
            E::ReservedPacketType(15),
        ),
        server(
            "2.2.1 CONNACK from a client",
            packet(0x20, &[0, 0]),
            E::UnexpectedPacket { packet: T::ConnAck },
        ),
        server(
            "2.2.1 SUBACK from a client",
            packet(0x90, &[0, 1, 0]),
            E::UnexpectedPacket { packet: T::SubAck },
        ),
        server(
            "2.2.1 UNSUBACK from a client",
            packet(0xb0, &[0, 1]),
            E::UnexpectedPacket {
                packet: T::UnsubAck,
            },
        ),
        server(
            "2.2.1 PINGRESP from a client",
            vec![0xd0, 0],
            E::UnexpectedPacket {
                packet: T::PingResp,
            },
        ),
        client(
            "2.2.1 CONNECT from a server",
            connect(0x02, &car),
            E::UnexpectedPacket { packet: T::Connect },
        ),
        client(
            "2.2.1 SUBSCRIBE from a server",
            subscribe(&[(b"a", 0)]),
            E::UnexpectedPacket {
                packet: T::Subscribe,
            },
        ),
        client(
            "2.2.1 UNSUBSCRIBE from a server",
            unsubscribe(&[b"a"]),
            E::UnexpectedPacket {
                packet: T::Unsubscribe,
            },
        ),
        client(
            "2.2.1 PINGREQ from a server",
            vec![0xc0, 0],
            E::UnexpectedPacket { packet: T::PingReq },
        ),
        client(
            "2.2.1 DISCONNECT from a server",
            vec![0xe0, 0],
            E::UnexpectedPacket {
                packet: T::Disconnect,
            },
        ),
        // MQTT-2.2.2-2: invalid flags close the connection.
        server(
            "MQTT-2.2.2-2 CONNECT",
            packet(0x11, &[]),
            E::InvalidHeaderFlags {
                packet: T::Connect,
                flags: 1,
            },
        ),
        server(
            "MQTT-2.2.2-2 PUBACK",
            packet(0x48, &[0, 1]),
            E::InvalidHeaderFlags {
                packet: T::PubAck,
                flags: 8,
            },
        ),
        server(
            "MQTT-3.6.1-1 PUBREL",
            packet(0x60, &[0, 1]),
            E::InvalidHeaderFlags {
                packet: T::PubRel,
                flags: 0,
            },
        ),
        server(
            "MQTT-3.8.1-1 SUBSCRIBE",
            packet(0x80, &[0, 1, 0, 1, b'a', 0]),
            E::InvalidHeaderFlags {
                packet: T::Subscribe,
                flags: 0,
            },
        ),
        server(
            "MQTT-3.10.1-1 UNSUBSCRIBE",
            packet(0xa0, &[0, 1, 0, 1, b'a']),
            E::InvalidHeaderFlags {
                packet: T::Unsubscribe,
                flags: 0,
            },
        ),
        server(
            "MQTT-2.2.2-2 PINGREQ",
            vec![0xc1, 0],
            E::InvalidHeaderFlags {
                packet: T::PingReq,
                flags: 1,
            },
        ),
        server(
            "MQTT-3.14.1-1 DISCONNECT",
            vec![0xe2, 0],
            E::InvalidHeaderFlags {
                packet: T::Disconnect,
                flags: 2,
            },
        ),
        client(
            "MQTT-2.2.2-2 CONNACK",
            packet(0x21, &[0, 0]),
            E::InvalidHeaderFlags {
                packet: T::ConnAck,
                flags: 1,
            },
        ),
        // §2.2.3 remaining length.
        server(
            "2.2.3 five length bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            E::RemainingLengthTooLong,
        ),
        server(
            "2.2.3 length ends inside a field",
            cat(&[&[0x10, 4], &field(b"MQTT")]),
            E::Truncated { packet: T::Connect },
        ),
        server(
            "2.2.3 PINGREQ with a body",
            vec![0xc0, 1, 0],
            E::TrailingBytes { packet: T::PingReq },
        ),
        server(
            "2.2.3 DISCONNECT with a body",
            vec![0xe0, 1, 0],
            E::TrailingBytes {
                packet: T::Disconnect,
            },
        ),
        server(
            "2.2.3 PUBACK of 3 bytes",
            packet(0x40, &[0, 1, 0]),
            E::TrailingBytes { packet: T::PubAck },
        ),
        server(
            "2.2.3 CONNECT with trailing bytes",
            connect(0x02, &cat(&[&car, b"x"])),
            E::TrailingBytes { packet: T::Connect },
        ),
        // MQTT-2.3.1-1: non-zero packet identifiers.
        server(
            "MQTT-2.3.1-1 PUBLISH QoS 1",
            publish(0x32, b"a", &[0, 0]),
            E::ZeroPacketId,
        ),
        server(
            "MQTT-2.3.1-1 SUBSCRIBE",
            packet(0x82, &[0, 0, 0, 1, b'a', 0]),
            E::ZeroPacketId,
        ),
        server(
            "MQTT-2.3.1-1 UNSUBSCRIBE",
            packet(0xa2, &[0, 0, 0, 1, b'a']),
            E::ZeroPacketId,
        ),
        server(
            "MQTT-2.3.1-1 PUBACK",
            packet(0x40, &[0, 0]),
            E::ZeroPacketId,
        ),
        // MQTT-1.5.3-1 and -2 in every kind of string.
        server(
            "MQTT-1.5.3-1 topic not UTF-8",
            publish(0x30, b"UL/\xff", b""),
            E::InvalidUtf8,
        ),
        server(
            "MQTT-1.5.3-1 surrogate in topic",
            publish(0x30, b"UL/\xed\xa0\x80", b""),
            E::InvalidUtf8,
        ),
        server(
            "MQTT-1.5.3-1 overlong NUL in topic",
            publish(0x30, b"UL/\xc0\x80", b""),
            E::InvalidUtf8,
        ),
        server(
            "MQTT-1.5.3-2 U+0000 in topic",
            publish(0x30, b"UL/\x00", b""),
            E::NullCharacter,
        ),
        server(
            "MQTT-1.5.3-2 U+0000 in client id",
            connect(0x02, &field(b"c\x00r")),
            E::NullCharacter,
        ),
        server(
            "MQTT-1.5.3-1 client id not UTF-8",
            connect(0x02, &field(b"\xfe")),
            E::InvalidUtf8,
        ),
        server(
            "MQTT-1.5.3-1 will topic",
            connect(0x06, &cat(&[&car, &field(b"\xed\xbf\xbf"), &field(b"m")])),
            E::InvalidUtf8,
        ),
        server(
            "MQTT-1.5.3-2 user name",
            connect(0x82, &cat(&[&car, &field(b"u\x00")])),
            E::NullCharacter,
        ),
        server(
            "MQTT-1.5.3-1 filter",
            subscribe(&[(b"DL/\xff", 0)]),
            E::InvalidUtf8,
        ),
        server(
            "MQTT-1.5.3-2 unsubscribe filter",
            unsubscribe(&[b"DL/\x00"]),
            E::NullCharacter,
        ),
        // §3.1 CONNECT.
        server(
            "MQTT-3.1.2-1 protocol name",
            connect_with(b"MQTX", 4, 0x02, &car),
            E::InvalidProtocolName,
        ),
        server(
            "MQTT-3.1.2-2 protocol level 3",
            connect_with(b"MQTT", 3, 0x02, &car),
            E::UnsupportedProtocolLevel(3),
        ),
        server(
            "MQTT-3.1.2-2 MQTT 3.1",
            connect_with(b"MQIsdp", 3, 0x02, &car),
            E::UnsupportedProtocolLevel(3),
        ),
        server(
            "MQTT-3.1.2-2 MQTT 5",
            connect_with(b"MQTT", 5, 0x02, &car),
            E::UnsupportedProtocolLevel(5),
        ),
        server(
            "MQTT-3.1.2-3 reserved flag",
            connect(0x03, &car),
            E::ConnectReservedFlag,
        ),
        server(
            "MQTT-3.1.2-13 will QoS without will",
            connect(0x0a, &car),
            E::WillFlagsWithoutWill,
        ),
        server(
            "MQTT-3.1.2-15 will retain without will",
            connect(0x22, &car),
            E::WillFlagsWithoutWill,
        ),
        server(
            "MQTT-3.1.2-14 will QoS 3",
            connect(0x1e, &cat(&[&car, &field(b"w"), &field(b"m")])),
            E::InvalidWillQos,
        ),
        server(
            "MQTT-3.1.2-22 password without user name",
            connect(0x42, &cat(&[&car, &field(b"p")])),
            E::PasswordWithoutUsername,
        ),
        server(
            "3.1.3 will flag without will fields",
            connect(0x06, &car),
            E::Truncated { packet: T::Connect },
        ),
        server(
            "3.1.3 user name flag without user name",
            connect(0x82, &car),
            E::Truncated { packet: T::Connect },
        ),
        server(
            "MQTT-3.1.3-9 empty client id",
            connect(0x02, &field(b"")),
            E::EmptyClientId,
        ),
        // §3.2 CONNACK (decoded by clients).
        client(
            "3.2.2.1 CONNACK reserved flags",
            packet(0x20, &[2, 0]),
            E::ConnAckReservedFlags,
        ),
        client(
            "3.2.2.3 CONNACK return code 6",
            packet(0x20, &[0, 6]),
            E::InvalidConnectReturnCode(6),
        ),
        client(
            "MQTT-3.2.2-4 session present on refusal",
            packet(0x20, &[1, 5]),
            E::SessionPresentOnRefusal,
        ),
        // §3.3 PUBLISH.
        server(
            "MQTT-3.3.1-4 QoS 3",
            publish(0x36, b"a", &[0, 1]),
            E::InvalidQos,
        ),
        server(
            "MQTT-3.3.1-2 DUP on QoS 0",
            publish(0x38, b"a", b""),
            E::DupOnQos0,
        ),
        server(
            "MQTT-4.7.3-1 empty topic",
            publish(0x30, b"", b"x"),
            E::EmptyTopic,
        ),
        server(
            "MQTT-3.3.2-2 '+' in topic",
            publish(0x30, b"UL/+/POS", b""),
            E::WildcardInTopicName,
        ),
        server(
            "MQTT-3.3.2-2 '#' in topic",
            publish(0x30, b"UL/#", b""),
            E::WildcardInTopicName,
        ),
        server(
            "3.3.2 topic longer than the packet",
            packet(0x30, &[0, 9, b'a']),
            E::Truncated { packet: T::Publish },
        ),
        // §3.8 SUBSCRIBE.
        server(
            "MQTT-3.8.3-3 no filters",
            packet(0x82, &[0, 1]),
            E::NoTopicFilters {
                packet: T::Subscribe,
            },
        ),
        server(
            "MQTT-4.7.3-1 empty filter",
            subscribe(&[(b"", 0)]),
            E::EmptyTopic,
        ),
        server(
            "MQTT-4.7.1-2 '#' not last",
            subscribe(&[(b"DL/#/WARN", 0)]),
            E::MisplacedMultiLevelWildcard,
        ),
        server(
            "MQTT-4.7.1-2 '#' inside a level",
            subscribe(&[(b"DL#", 0)]),
            E::MisplacedMultiLevelWildcard,
        ),
        server(
            "MQTT-4.7.1-3 '+' inside a level",
            subscribe(&[(b"DL/W+", 0)]),
            E::MisplacedSingleLevelWildcard,
        ),
        server(
            "MQTT-3.8.3-4 requested QoS 3",
            subscribe(&[(b"DL/#", 3)]),
            E::InvalidRequestedQos(3),
        ),
        server(
            "MQTT-3.8.3-4 reserved bits",
            subscribe(&[(b"DL/#", 0x04)]),
            E::InvalidRequestedQos(4),
        ),
        server(
            "MQTT-3.8.3-4 second entry",
            subscribe(&[(b"a", 0), (b"b", 0x81)]),
            E::InvalidRequestedQos(0x81),
        ),
        server(
            "3.8.3 filter without QoS byte",
            packet(0x82, &[0, 1, 0, 1, b'a']),
            E::Truncated {
                packet: T::Subscribe,
            },
        ),
        // §3.9 SUBACK.
        client(
            "MQTT-3.9.3-2 reserved return code",
            packet(0x90, &[0, 1, 3]),
            E::InvalidSubAckReturnCode(3),
        ),
        client(
            "3.9.3 no return codes",
            packet(0x90, &[0, 1]),
            E::NoSubAckReturnCodes,
        ),
        // §3.10 UNSUBSCRIBE.
        server(
            "MQTT-3.10.3-2 no filters",
            packet(0xa2, &[0, 1]),
            E::NoTopicFilters {
                packet: T::Unsubscribe,
            },
        ),
        server(
            "MQTT-4.7.1-3 unsubscribe '+'",
            unsubscribe(&[b"a/b+"]),
            E::MisplacedSingleLevelWildcard,
        ),
    ]
}

#[test]
fn every_rule_is_enforced() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut buf = BytesMut::from(&case.bytes[..]);
        let got = Decoder::new(case.role, MAX).decode(&mut buf);
        if got != Err(case.error) {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.rule, case.error
            ));
        }
        // Every error names a rule and maps to a bounded label.
        assert!(!case.error.kind().is_empty());
        assert!(case.error.to_string().contains('['), "{}", case.error);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn connect_errors_that_answer_with_a_connack() {
    assert_eq!(
        DecodeError::UnsupportedProtocolLevel(3).connack_code(),
        Some(ConnectReturnCode::UnacceptableProtocolVersion)
    );
    assert_eq!(
        DecodeError::EmptyClientId.connack_code(),
        Some(ConnectReturnCode::IdentifierRejected)
    );
    assert_eq!(DecodeError::InvalidProtocolName.connack_code(), None);
    assert_eq!(DecodeError::ConnectReservedFlag.connack_code(), None);
}

#[test]
fn empty_client_id_with_malformed_rest_is_malformed() {
    // The CONNACK 0x02 answer is for well-formed packets only.
    let bytes = connect(0x02, &cat(&[&field(b""), b"junk"]));
    let got = Decoder::new(Role::Server, MAX).decode(&mut BytesMut::from(&bytes[..]));
    assert_eq!(
        got,
        Err(DecodeError::TrailingBytes {
            packet: PacketType::Connect
        })
    );
}

#[test]
fn declared_size_is_refused_before_the_body_arrives() {
    let decoder = Decoder::new(Role::Server, 1024);
    // A PUBLISH declaring 268 MB: refused from its five header bytes.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    // A non-CONNECT first packet with a huge length is refused the same way.
    let mut buf = BytesMut::from(&[0x82, 0x80, 0x80, 0x80, 0x01][..]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { .. })
    ));
    // The limit counts the whole frame: 1024 bytes pass, 1025 do not.
    // 1024 = 1 type byte + 2 remaining-length bytes + 1021 body bytes.
    let mut body = field(b"t");
    body.resize(1021, b'x');
    let mut frame = vec![0x30, 0x80 | (1021 & 0x7f) as u8, (1021 >> 7) as u8];
    frame.extend_from_slice(&body);
    assert_eq!(frame.len(), 1024);
    assert!(
        decoder
            .decode(&mut BytesMut::from(&frame[..]))
            .unwrap()
            .is_some()
    );
    frame.push(b'x');
    frame[1] += 1;
    assert!(matches!(
        decoder.decode(&mut BytesMut::from(&frame[..])),
        Err(DecodeError::PacketTooLarge {
            size: 1025,
            max: 1024
        })
    ));
}
