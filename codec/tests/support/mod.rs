//! proptest strategies for valid MQTT 3.1.1 packets, shared by the
//! property and differential tests.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use codec::packet::encode_suback_qos0;
use codec::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckReturnCode, Subscribe,
    Unsubscribe, Will,
};
use proptest::prelude::*;
use std::num::NonZeroU16;

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn packet_id() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|id| NonZeroU16::new(id).unwrap())
}

/// Any string without U+0000 (surrogates cannot appear in a Rust `String`).
pub fn mqtt_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..=max)
        .prop_map(|chars| chars.into_iter().collect())
}

/// A topic level from a small alphabet, so that generated filters and topics
/// often match, with an occasional arbitrary one.
pub fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![Just(""), Just("a"), Just("b"), Just("UL"), Just("DL"), Just("$SYS"), Just("WARN")]
            .prop_map(str::to_owned),
        1 => mqtt_string(6).prop_map(|s| s.replace(['/', '+', '#'], "_")),
    ]
}

pub fn topic_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..6)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

pub fn topic_filter() -> impl Strategy<Value = String> {
    let level_or_plus = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (
        proptest::collection::vec(level_or_plus, 1..6),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("non-empty", |f| !f.is_empty())
}

pub fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

/// `utf8_password`: mqttbytes models passwords as `String`, needs a user
/// name whenever there is a password and drops empty credentials when it
/// encodes, so the differential test asks for both, non-empty.
pub fn connect(utf8_password: bool) -> impl Strategy<Value = Connect> {
    let will = proptest::option::of((topic_name(), payload(), qos(), any::<bool>()).prop_map(
        |(topic, message, qos, retain)| Will {
            topic: topic.into(),
            message,
            qos,
            retain,
        },
    ));
    let password = if utf8_password {
        mqtt_string(10).prop_map(Bytes::from).boxed()
    } else {
        payload().boxed()
    };
    let credentials = proptest::option::of((mqtt_string(10), proptest::option::of(password)))
        .prop_filter("mqttbytes needs both, non-empty", move |c| {
            !utf8_password
                || c.as_ref().is_none_or(|(user, p)| {
                    !user.is_empty() && p.as_ref().is_some_and(|p| !p.is_empty())
                })
        });
    (
        mqtt_string(23).prop_filter("non-empty", |s| !s.is_empty()),
        any::<u16>(),
        any::<bool>(),
        will,
        credentials,
    )
        .prop_map(
            |(client_id, keep_alive, clean_session, will, credentials)| {
                let (username, password) = match credentials {
                    Some((user, password)) => (Some(user.into()), password),
                    None => (None, None),
                };
                Connect {
                    clean_session,
                    keep_alive,
                    client_id: client_id.into(),
                    will,
                    username,
                    password,
                }
            },
        )
}

pub fn connack() -> impl Strategy<Value = ConnAck> {
    let code = prop_oneof![
        Just(ConnectReturnCode::Accepted),
        Just(ConnectReturnCode::UnacceptableProtocolVersion),
        Just(ConnectReturnCode::IdentifierRejected),
        Just(ConnectReturnCode::ServerUnavailable),
        Just(ConnectReturnCode::BadUserNameOrPassword),
        Just(ConnectReturnCode::NotAuthorized),
    ];
    (code, any::<bool>()).prop_map(|(code, present)| ConnAck {
        session_present: present && code == ConnectReturnCode::Accepted,
        code,
    })
}

pub fn publish() -> impl Strategy<Value = Publish> {
    (
        topic_name(),
        payload(),
        qos(),
        packet_id(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(topic, payload, qos, id, dup, retain)| {
            let id = (qos != QoS::AtMostOnce).then_some(id);
            Publish::new(
                &topic,
                &payload,
                qos,
                id,
                dup && qos != QoS::AtMostOnce,
                retain,
            )
            .unwrap()
        })
}

pub fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        packet_id(),
        proptest::collection::vec((topic_filter(), qos()), 1..5),
    )
        .prop_map(|(id, filters)| {
            Subscribe::new(id, filters.iter().map(|(f, q)| (f.as_str(), *q))).unwrap()
        })
}

pub fn unsubscribe() -> impl Strategy<Value = Unsubscribe> {
    (packet_id(), proptest::collection::vec(topic_filter(), 1..5))
        .prop_map(|(id, filters)| Unsubscribe::new(id, filters.iter().map(String::as_str)).unwrap())
}

pub fn suback() -> impl Strategy<Value = SubAck> {
    let code = prop_oneof![
        qos().prop_map(SubAckReturnCode::Success),
        Just(SubAckReturnCode::Failure)
    ];
    (packet_id(), proptest::collection::vec(code, 1..5))
        .prop_map(|(id, codes)| SubAck::new(id, codes).unwrap())
}

/// Packets a client sends (decoded with `Role::Server`).
pub fn client_packet(utf8_password: bool) -> impl Strategy<Value = Packet> {
    prop_oneof![
        1 => connect(utf8_password).prop_map(|c| Packet::Connect(Box::new(c))),
        4 => publish().prop_map(Packet::Publish),
        1 => packet_id().prop_map(Packet::PubAck),
        1 => packet_id().prop_map(Packet::PubRec),
        1 => packet_id().prop_map(Packet::PubRel),
        1 => packet_id().prop_map(Packet::PubComp),
        1 => subscribe().prop_map(Packet::Subscribe),
        1 => unsubscribe().prop_map(Packet::Unsubscribe),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::Disconnect),
    ]
}

/// Packets a server sends (decoded with `Role::Client`).
pub fn server_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        1 => connack().prop_map(Packet::ConnAck),
        4 => publish().prop_map(Packet::Publish),
        1 => packet_id().prop_map(Packet::PubAck),
        1 => packet_id().prop_map(Packet::PubRec),
        1 => packet_id().prop_map(Packet::PubRel),
        1 => packet_id().prop_map(Packet::PubComp),
        1 => suback().prop_map(Packet::SubAck),
        1 => packet_id().prop_map(Packet::UnsubAck),
        1 => Just(Packet::PingResp),
    ]
}

/// Keeps `encode_suback_qos0` in the shared surface the tests exercise.
pub fn suback_qos0_bytes(id: NonZeroU16, count: usize) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    encode_suback_qos0(&mut out, id, count).unwrap();
    out
}
