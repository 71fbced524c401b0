//! Property tests: encode→decode round trips for every packet type, framing
//! across arbitrary read boundaries, and arbitrary bytes never panicking.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use bytes::{Buf, BytesMut};
use codec::{DecodeError, Decoder, Packet, Role, SubAckReturnCode};
use proptest::prelude::*;
use std::num::NonZeroU16;
use support::*;

const MAX: usize = 1024 * 1024;

fn encode_all(packets: &[Packet]) -> BytesMut {
    let mut buf = BytesMut::new();
    for packet in packets {
        packet.encode(&mut buf).unwrap();
    }
    buf
}

/// Decodes everything `chunks` delivers, one read at a time, as a connection would.
fn decode_in_reads(role: Role, bytes: &[u8], cuts: &[usize]) -> Result<Vec<Packet>, DecodeError> {
    let decoder = Decoder::new(role, MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let end = end.clamp(start, bytes.len());
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        while let Some(packet) = decoder.decode(&mut buf)? {
            out.push(packet);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(out)
}

/// What `decode_publish_in_place` says of `bytes` is what `decode` says:
/// the same PUBLISH over the same frame, the same error, or "not here"
/// exactly when `decode` needs more bytes or finds another packet type.
fn in_place_agrees(decoder: &Decoder, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let owned = decoder.decode(&mut buf);
    let consumed = bytes.len() - buf.len();
    match (decoder.decode_publish_in_place(bytes), owned) {
        (Ok(Some((view, frame))), Ok(Some(Packet::Publish(publish)))) => {
            prop_assert_eq!(view.to_publish(), publish);
            prop_assert_eq!(frame, consumed);
        }
        (Ok(None), Ok(None)) => {}
        (Ok(None), Ok(Some(packet))) => {
            prop_assert!(!matches!(packet, Packet::Publish(_)), "{:?}", packet);
        }
        // Another type's body is not the in-place decoder's to judge.
        (Ok(None), Err(_)) => prop_assert_ne!(bytes[0] >> 4, 3),
        (Err(in_place), Err(owned)) => prop_assert_eq!(in_place, owned),
        (in_place, owned) => prop_assert!(false, "in place {:?}, owned {:?}", in_place, owned),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn in_place_agrees_on_valid_and_mutated_packets(
        packet in client_packet(false),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        mutate in any::<bool>(),
        small in any::<bool>(),
    ) {
        let mut bytes = encode_all(&[packet]).to_vec();
        if mutate {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let decoder = Decoder::new(Role::Server, if small { 64 } else { MAX });
        // Whole, and cut short at every length.
        for end in (1..=bytes.len()).rev() {
            in_place_agrees(&decoder, &bytes[..end])?;
        }
    }

    #[test]
    fn in_place_agrees_on_arbitrary_bytes(
        first in prop_oneof![0x30u8..=0x3f, any::<u8>()],
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![first];
        bytes.extend_from_slice(&rest);
        for role in [Role::Server, Role::Client] {
            in_place_agrees(&Decoder::new(role, MAX), &bytes)?;
        }
    }

    #[test]
    fn client_packets_round_trip(packet in client_packet(false)) {
        let mut buf = encode_all(std::slice::from_ref(&packet));
        let decoded = Decoder::new(Role::Server, MAX).decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(packet));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn server_packets_round_trip(packet in server_packet()) {
        let mut buf = encode_all(std::slice::from_ref(&packet));
        let decoded = Decoder::new(Role::Client, MAX).decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(packet));
        prop_assert!(buf.is_empty());
    }

    /// Any number of frames per read, and a frame split across reads at any byte.
    #[test]
    fn frames_survive_any_read_boundaries(
        packets in proptest::collection::vec(client_packet(false), 1..20),
        mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let bytes = encode_all(&packets);
        let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(decode_in_reads(Role::Server, &bytes, &cuts).unwrap(), packets);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), small in any::<bool>()) {
        for role in [Role::Server, Role::Client] {
            let decoder = Decoder::new(role, if small { 64 } else { MAX });
            let mut buf = BytesMut::from(&bytes[..]);
            // Each Ok(Some) consumes at least two bytes, so this ends.
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }

    /// Valid packets with one byte changed: the decoder's error paths on
    /// input that is almost right, where random bytes rarely reach.
    #[test]
    fn mutated_packets_never_panic(packet in client_packet(false), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode_all(&[packet]).to_vec();
        let at = at.index(bytes.len());
        bytes[at] = byte;
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(decoded)) = Decoder::new(Role::Server, MAX).decode(&mut buf) {
            // Whatever still decodes must re-encode to a packet that decodes the same.
            let mut again = encode_all(std::slice::from_ref(&decoded));
            prop_assert_eq!(Decoder::new(Role::Server, MAX).decode(&mut again).unwrap(), Some(decoded));
        }
    }

    #[test]
    fn subscribe_filters_iterate_in_order(
        id in packet_id(),
        filters in proptest::collection::vec((topic_filter(), qos()), 1..8),
    ) {
        let subscribe = codec::Subscribe::new(id, filters.iter().map(|(f, q)| (f.as_str(), *q))).unwrap();
        let got: Vec<(String, codec::QoS)> = subscribe.filters().map(|(f, q)| (f.to_string(), q)).collect();
        prop_assert_eq!(got, filters);
    }
}

#[test]
fn every_split_point_of_a_small_stream() {
    let packets = vec![
        Packet::Connect(Box::new(codec::Connect::new("VIN12345", 60))),
        Packet::Publish(codec::Publish::qos0("UL/POS", b"57.7,11.9").unwrap()),
        Packet::PingReq,
        Packet::Disconnect,
    ];
    let bytes = encode_all(&packets);
    for cut in 0..=bytes.len() {
        assert_eq!(
            decode_in_reads(Role::Server, &bytes, &[cut]).unwrap(),
            packets,
            "cut at {cut}"
        );
    }
    // One byte per read.
    let cuts: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(
        decode_in_reads(Role::Server, &bytes, &cuts).unwrap(),
        packets
    );
}

#[test]
fn suback_granting_qos0_matches_the_general_encoder() {
    let id = NonZeroU16::new(7).unwrap();
    let general = encode_all(&[Packet::SubAck(
        codec::SubAck::new(id, [SubAckReturnCode::Success(codec::QoS::AtMostOnce); 3]).unwrap(),
    )]);
    assert_eq!(suback_qos0_bytes(id, 3), general);
    assert_eq!(&general[..], &[0x90, 5, 0, 7, 0, 0, 0]);
}

#[test]
fn in_place_publish_borrows_the_read_buffer() {
    let publish = codec::Publish::qos0("UL/POS", b"payload").unwrap();
    let mut bytes = encode_all(&[Packet::Publish(publish), Packet::PingReq]);
    let decoder = Decoder::new(Role::Server, MAX);
    let (view, frame) = decoder.decode_publish_in_place(&bytes).unwrap().unwrap();
    assert_eq!((view.topic(), view.payload()), ("UL/POS", &b"payload"[..]));
    assert!(bytes.as_ptr_range().contains(&view.payload().as_ptr()));
    bytes.advance(frame);
    // Not a PUBLISH: `decode` takes it.
    assert_eq!(decoder.decode_publish_in_place(&bytes), Ok(None));
    assert_eq!(decoder.decode(&mut bytes), Ok(Some(Packet::PingReq)));
}

#[test]
fn decoded_publish_is_a_view_of_the_read_buffer() {
    let publish = codec::Publish::qos0("UL/POS", b"payload").unwrap();
    let mut buf = encode_all(&[Packet::Publish(publish)]);
    let range = buf.as_ptr_range();
    let Some(Packet::Publish(publish)) = Decoder::new(Role::Server, MAX).decode(&mut buf).unwrap()
    else {
        panic!("not a publish");
    };
    assert!(
        range.contains(&publish.payload().as_ptr()),
        "payload was copied"
    );
    assert!(
        range.contains(&publish.topic_bytes().as_ptr()),
        "topic was copied"
    );
}
