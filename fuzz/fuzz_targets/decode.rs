//! Arbitrary bytes into the decoder, both roles. Invariants checked:
//! - no panic, whatever the input;
//! - every decoded packet re-encodes to bytes that decode to an equal packet;
//! - splitting the input into two reads at any point yields the same
//!   packets, and the same first error, as one read;
//! - the in-place PUBLISH decoder agrees with `decode` at every packet
//!   boundary: the same PUBLISH over the same frame, or the same error.
#![no_main]

use bytes::BytesMut;
use codec::{DecodeError, Decoder, Packet, Role};
use libfuzzer_sys::fuzz_target;

fn decode_all(decoder: &Decoder, reads: &[&[u8]]) -> (Vec<Packet>, Option<DecodeError>) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break,
                Err(error) => return (packets, Some(error)),
            }
        }
    }
    (packets, None)
}

fn in_place_agrees(decoder: &Decoder, input: &[u8]) {
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.clone();
        let in_place = decoder.decode_publish_in_place(&before);
        match (in_place, decoder.decode(&mut buf)) {
            (Ok(Some((view, frame))), Ok(Some(Packet::Publish(publish)))) => {
                assert_eq!(view.to_publish(), publish);
                assert_eq!(frame, before.len() - buf.len());
            }
            (Ok(None), Ok(Some(packet))) => assert!(!matches!(packet, Packet::Publish(_))),
            (Ok(None), Ok(None)) => return,
            (Ok(None), Err(_)) => {
                assert_ne!(before.first().map(|b| b >> 4), Some(3));
                return;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b);
                return;
            }
            (in_place, owned) => panic!("in place {in_place:?}, owned {owned:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    for role in [Role::Server, Role::Client] {
        let decoder = Decoder::new(role, 64 * 1024);
        let whole = decode_all(&decoder, &[input]);
        let at = usize::from(split) * input.len() / 255;
        let (first, second) = input.split_at(at.min(input.len()));
        assert_eq!(decode_all(&decoder, &[first, second]), whole, "split at {at}");

        in_place_agrees(&decoder, input);

        for packet in &whole.0 {
            let mut encoded = BytesMut::new();
            packet.encode(&mut encoded).expect("a decoded packet re-encodes");
            let again = decoder.decode(&mut encoded).expect("re-encoded packet decodes");
            assert_eq!(again.as_ref(), Some(packet));
            assert!(encoded.is_empty());
        }
    }
});
