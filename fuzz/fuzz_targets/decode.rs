//! Arbitrary bytes into the decoder, both roles. Invariants checked:
//! - no panic, whatever the input;
//! - every decoded packet re-encodes to bytes that decode to an equal packet;
//! - splitting the input into two reads at any point yields the same
//!   packets, and the same first error, as one read.
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

        for packet in &whole.0 {
            let mut encoded = BytesMut::new();
            packet.encode(&mut encoded).expect("a decoded packet re-encodes");
            let again = decoder.decode(&mut encoded).expect("re-encoded packet decodes");
            assert_eq!(again.as_ref(), Some(packet));
            assert!(encoded.is_empty());
        }
    }
});
