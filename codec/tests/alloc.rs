//! Counts heap allocations made by the decoder, with dhat's heap profiler
//! as the global allocator.
//!
//! Built with `harness = false`: the profiler counts every thread, and
//! libtest's own threads allocate while a test runs, so the measurement is
//! only exact in a process that does nothing else.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::BytesMut;
use codec::packet::encode_publish;
use codec::{Decoder, Packet, QoS, Role};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn allocated_during<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let before = dhat::HeapStats::get();
    let out = f();
    let after = dhat::HeapStats::get();
    (
        out,
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
    )
}

/// A tiny deterministic generator, so the measured loop allocates nothing
/// of its own.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    decoding_allocates_nothing_per_packet();
    println!("alloc: 1 passed, 0 failed");
}

fn decoding_allocates_nothing_per_packet() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let decoder = Decoder::new(Role::Server, 64 * 1024);

    // 1,000 back-to-back PUBLISH frames of each size.
    for size in [0, 16, 128, 4096] {
        let payload = vec![0xa5; size];
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            encode_publish(
                &mut buf,
                b"UL/POS/VIN12345",
                &payload,
                QoS::AtMostOnce,
                None,
                false,
                false,
            )
            .unwrap();
        }
        // The first split turns the buffer's storage into shared storage:
        // one allocation per read buffer, not per packet.
        let first = decoder.decode(&mut buf).unwrap();
        assert!(matches!(first, Some(Packet::Publish(_))));
        drop(first);
        let (decoded, blocks, bytes) = allocated_during(|| {
            let mut decoded = 0;
            while let Some(packet) = decoder.decode(&mut buf).unwrap() {
                assert!(matches!(packet, Packet::Publish(ref p) if p.payload().len() == size));
                decoded += 1;
            }
            decoded
        });
        assert_eq!(decoded, 999);
        assert_eq!(
            (blocks, bytes),
            (0, 0),
            "payload {size}: {blocks} allocations, {bytes} bytes"
        );
    }

    // Arbitrary bytes: whatever they are, one decode allocates at most the
    // shared-storage header and, for a valid CONNECT, its box; never in
    // proportion to what the peer declared.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut input = vec![0u8; 4096];
    for round in 0..20_000 {
        let len = usize::try_from(rng.next() % 4096).unwrap();
        for byte in &mut input[..len] {
            *byte = u8::try_from(rng.next() & 0xff).unwrap();
        }
        // Steer some rounds to plausible first bytes so bodies get parsed.
        if len > 0 && round % 2 == 0 {
            input[0] = [0x10, 0x30, 0x32, 0x82, 0xa2, 0xc0, 0xe0][round % 7];
            if len > 1 {
                input[1] = u8::try_from(len.min(127) - 1).unwrap_or(0);
            }
        }
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(&input[..len]);
        let (_, blocks, bytes) = allocated_during(|| {
            let result = decoder.decode(&mut buf);
            drop(result);
        });
        let bound = 64 + std::mem::size_of::<codec::Connect>() as u64;
        assert!(
            blocks <= 2 && bytes <= bound,
            "round {round}: {blocks} allocations, {bytes} bytes"
        );
    }
}
