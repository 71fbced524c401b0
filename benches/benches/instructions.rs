//! Instruction counts of the hot paths: the gate of `scripts/test.sh`.
//!
//! Each benchmark builds its inputs, runs its work once unmeasured (caches
//! such as the regex engine's lazy DFA fill up, the allocator has its
//! arenas), then once more inside [`gate`]: a fixed amount of work (1,000
//! packets or mappings, 10,000 lookups) on deterministic inputs.
//! `scripts/instructions.sh` runs this binary once per benchmark under
//! callgrind with `--toggle-collect=instructions::gate`, so the count
//! leaves out start-up and setup, and compares it with
//! `benches/instructions.baseline`.
//!
//! One `gate` for all: a function per benchmark would be a thin wrapper
//! that the compiler turns into a tail jump (callgrind then stops counting
//! at the jump) or merges with an identical one (the two mapping
//! benchmarks).
//!
//! `instructions NAME...` runs the named benchmarks, `instructions --list`
//! names them all, `instructions --timed` times the codec against
//! mqttbytes natively (see [`timed_codec_ratio`]); with no name, and under `cargo bench`, it runs them all
//! once natively, a quick check that each still does its work.

// Benchmark code: a failed setup should stop the run loudly.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use codec::packet::encode_publish;
use codec::{Connect, Decoder, Packet, QoS, Role};
use contract::SessionRecord;
use gateway::mapping::{Rule, Strategy, TopicMapper};
use gateway::session::{Session, Step, Timing};
use router::table::Table;

/// Packets, lookups or mappings per measured call.
const N: usize = 1_000;
const TOPIC: &str = "UL/POS/VIN12345678901234";
/// The middle size of the criterion codec benchmarks.
const PAYLOAD: usize = 128;
const MAX_PACKET: usize = 256 * 1024;

/// A benchmark: its name, what runs it and the work it does (packets,
/// mappings, requests), which `run` returns.
struct Bench {
    name: &'static str,
    run: fn() -> usize,
    work: usize,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "decode_publish",
        run: decode_publish,
        work: N,
    },
    Bench {
        name: "decode_publish_in_place",
        run: decode_publish_in_place,
        work: N,
    },
    Bench {
        name: "decode_publish_mqttbytes",
        run: decode_publish_mqttbytes,
        work: N,
    },
    Bench {
        name: "encode_publish",
        run: encode_publish_,
        work: N,
    },
    Bench {
        name: "topic_mapping_10_rules",
        run: topic_mapping_10_rules,
        work: N,
    },
    Bench {
        name: "topic_mapping_100_rules",
        run: topic_mapping_100_rules,
        work: N,
    },
    Bench {
        name: "router_join",
        run: router_join,
        work: JOIN_REQUESTS,
    },
    Bench {
        name: "session_step",
        run: session_step,
        work: N,
    },
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--timed") {
        std::process::exit(i32::from(!timed_codec_ratio()));
    }
    if args.iter().any(|a| a == "--list") {
        for bench in BENCHES {
            println!("{}", bench.name);
        }
        return;
    }
    // Under `cargo bench` (which passes `--bench`), run everything: the
    // other arguments are meant for the criterion benches beside this one
    // (`--save-baseline main`).
    let names: Vec<&str> = if args.iter().any(|a| a == "--bench") {
        Vec::new()
    } else {
        args.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = names
        .iter()
        .find(|name| !BENCHES.iter().any(|b| b.name == **name))
    {
        eprintln!("instructions: no benchmark named {unknown} (see --list)");
        std::process::exit(2);
    }
    for bench in BENCHES {
        if names.is_empty() || names.contains(&bench.name) {
            let done = (bench.run)();
            assert_eq!(done, bench.work, "{}: work done", bench.name);
            if names.is_empty() {
                println!("{}: {done} done", bench.name);
            }
        }
    }
}

/// The one function callgrind counts in: runs `work` once. Never inlined,
/// and the result is used after the call, so the call is not a tail jump.
#[inline(never)]
fn gate(work: &mut dyn FnMut() -> usize) -> usize {
    black_box(work())
}

/// `count` QoS 0 PUBLISH frames to `topic(i)` with `PAYLOAD` bytes each.
fn publish_frames(count: usize, topic: impl Fn(usize) -> String) -> BytesMut {
    let payload = [0xa5; PAYLOAD];
    let mut buf = BytesMut::new();
    for i in 0..count {
        encode_publish(
            &mut buf,
            topic(i).as_bytes(),
            &payload,
            QoS::AtMostOnce,
            None,
            false,
            false,
        )
        .expect("encodable");
    }
    buf
}

// ---- MQTT PUBLISH decode (codec) ----

/// Decodes `N` PUBLISH packets (128-byte payloads) off one buffer, each a
/// zero-copy view dropped before the next.
fn decode_publish() -> usize {
    let decoder = Decoder::new(Role::Server, MAX_PACKET);
    let frames = publish_frames(N, |_| TOPIC.to_owned());
    decode_all(&decoder, &mut frames.clone());
    let mut buf = frames;
    gate(&mut || decode_all(&decoder, black_box(&mut buf)))
}

fn decode_all(decoder: &Decoder, buf: &mut BytesMut) -> usize {
    let mut decoded = 0;
    while let Ok(Some(packet)) = decoder.decode(buf) {
        if matches!(black_box(&packet), Packet::Publish(_)) {
            decoded += 1;
        }
    }
    decoded
}

/// The same `N` packets decoded where they lie, as the gateway decodes a
/// car's PUBLISH: a borrowed view of each.
fn decode_publish_in_place() -> usize {
    let decoder = Decoder::new(Role::Server, MAX_PACKET);
    let frames = publish_frames(N, |_| TOPIC.to_owned());
    decode_all_in_place(&decoder, &mut frames.clone());
    let mut buf = frames;
    gate(&mut || decode_all_in_place(&decoder, black_box(&mut buf)))
}

/// As the gateway does it: every whole frame of what was read, then the
/// frames taken off the buffer at once.
fn decode_all_in_place(decoder: &Decoder, buf: &mut BytesMut) -> usize {
    let (mut decoded, mut taken) = (0, 0);
    while let Ok(Some((publish, frame))) =
        decoder.decode_publish_in_place(buf.get(taken..).unwrap_or_default())
    {
        black_box(&publish);
        decoded += 1;
        taken += frame;
    }
    buf.advance(taken);
    decoded
}

/// The same `N` packets decoded by mqttbytes 0.6 (v4), the independent
/// codec the criterion benchmarks compare with: the codec's ratio in
/// instructions, which does not move with the machine's clock or load
/// (`scripts/instructions.sh` prints it and checks it stays at least 2).
fn decode_publish_mqttbytes() -> usize {
    let frames = publish_frames(N, |_| TOPIC.to_owned());
    decode_all_mqttbytes(&mut frames.clone());
    let mut buf = frames;
    gate(&mut || decode_all_mqttbytes(black_box(&mut buf)))
}

fn decode_all_mqttbytes(buf: &mut BytesMut) -> usize {
    let mut decoded = 0;
    while !buf.is_empty() {
        match mqttbytes::v4::read(buf, MAX_PACKET) {
            Ok(mqttbytes::v4::Packet::Publish(publish)) => {
                black_box(&publish);
                decoded += 1;
            }
            _ => break,
        }
    }
    decoded
}

/// Decodes every frame of a buffer; returns how many.
type DecodeAll<'a> = dyn Fn(&mut BytesMut) -> usize + 'a;

/// The smallest ratio of mqttbytes' time to ours that `--timed` accepts.
const TIMED_RATIO_GOAL: f64 = 2.0;

/// `instructions --timed`: the codec against mqttbytes in time, on the
/// frames of the decode benchmarks, natively (not under valgrind). Rounds
/// go round the three decoders (into owned packets, in place, mqttbytes),
/// each on a fresh copy of the frames (the copy is not timed), and each
/// decoder's figure is its median round: load that comes and goes bends
/// single rounds of all three, not the ratios, as it would when one ran
/// for seconds and then the next. Prints the times and ratios; `false`
/// when the in-place ratio, the gateway's path, is below
/// [`TIMED_RATIO_GOAL`]. The owned ratio is printed, not judged: see
/// BENCHMARKS.md, "The codec against mqttbytes".
fn timed_codec_ratio() -> bool {
    const ROUNDS: usize = 401;
    let decoder = Decoder::new(Role::Server, MAX_PACKET);
    let frames = publish_frames(N, |_| TOPIC.to_owned());
    let decoders: [(&str, &DecodeAll<'_>); 3] = [
        ("owned", &|buf| decode_all(&decoder, buf)),
        ("in place", &|buf| decode_all_in_place(&decoder, buf)),
        ("mqttbytes", &|buf| decode_all_mqttbytes(buf)),
    ];
    let mut times = [(); 3].map(|()| Vec::with_capacity(ROUNDS));
    for round in 0..ROUNDS {
        // Each decoder takes each place in the order in turn: none always
        // runs on the caches another left.
        for turn in 0..decoders.len() {
            let which = (round + turn) % decoders.len();
            let (name, decode) = decoders[which];
            let mut buf = frames.clone();
            let start = Instant::now();
            let decoded = decode(black_box(&mut buf));
            times[which].push(start.elapsed());
            assert_eq!(decoded, N, "{name}: frames decoded");
        }
    }
    let [owned, in_place, theirs] = times.map(|mut times| {
        times.sort_unstable();
        times[times.len() / 2].as_secs_f64()
    });
    println!(
        "codec, timed: {N} PUBLISH frames ({}-byte topic, {PAYLOAD}-byte payload), median of \
         {ROUNDS} rounds: owned {:.1} µs, in place {:.1} µs, mqttbytes {:.1} µs",
        TOPIC.len(),
        owned * 1e6,
        in_place * 1e6,
        theirs * 1e6,
    );
    let ok = theirs / in_place >= TIMED_RATIO_GOAL;
    println!(
        "codec, timed: mqttbytes takes {:.2}x as long as the in-place decode (goal >= \
         {TIMED_RATIO_GOAL}: {}) and {:.2}x as long as the owned one (printed)",
        theirs / in_place,
        if ok { "ok" } else { "BELOW THE GOAL" },
        theirs / owned,
    );
    ok
}

// ---- MQTT PUBLISH encode (codec) ----

/// Appends `N` QoS 0 PUBLISH packets (128-byte payloads) to a buffer, as
/// the gateway writes downlink messages to a car.
fn encode_publish_() -> usize {
    let payload = [0xa5; PAYLOAD];
    let frame = publish_frames(1, |_| TOPIC.to_owned()).len();
    // Room for every frame: the count measures encoding, not reallocation.
    encode_all(&mut BytesMut::with_capacity(N * frame), &payload);
    let mut out = BytesMut::with_capacity(N * frame);
    let encoded = gate(&mut || encode_all(&mut out, black_box(&payload)));
    assert_eq!(out.len(), N * frame);
    encoded
}

fn encode_all(out: &mut BytesMut, payload: &[u8]) -> usize {
    let mut encoded = 0;
    for _ in 0..N {
        let result = encode_publish(
            out,
            black_box(TOPIC.as_bytes()),
            payload,
            QoS::AtMostOnce,
            None,
            false,
            false,
        );
        if result.is_ok() {
            encoded += 1;
        }
    }
    encoded
}

// ---- Topic mapping (gateway::mapping) ----

/// Maps `N` topics over `rules` rules `^UL/kindI/.+` → `cs.kindI`, as in
/// the criterion mapping bench; the topics cycle over all rules.
fn topic_mapping(rules: usize, strategy: Strategy) -> usize {
    let list: Vec<Rule> = (0..rules)
        .map(|i| Rule::new(format!("^UL/kind{i}/.+"), format!("cs.kind{i}")))
        .collect();
    let mut mapper = TopicMapper::with_strategy(&list, strategy).expect("valid rules");
    let topics: Vec<String> = (0..N)
        .map(|i| format!("UL/kind{}/WVW{i:014}", i % rules))
        .collect();
    map_all(&mut mapper, &topics);
    gate(&mut || map_all(&mut mapper, black_box(&topics)))
}

/// Up to 16 rules, `TopicMapper::new` tries them in order: on average
/// 5.5 rules per topic here.
fn topic_mapping_10_rules() -> usize {
    topic_mapping(10, Strategy::Sequential)
}

/// Beyond 16 rules, `TopicMapper::new` builds one automaton of all.
fn topic_mapping_100_rules() -> usize {
    topic_mapping(100, Strategy::Set)
}

fn map_all(mapper: &mut TopicMapper, topics: &[String]) -> usize {
    let mut mapped = 0;
    for topic in topics {
        if black_box(mapper.map(topic)).is_ok() {
            mapped += 1;
        }
    }
    mapped
}

// ---- The router's join (router::table) ----

const CLIENTS: u64 = 10_000;
/// The router keeps one table per registry partition it owns.
const PARTITIONS: u64 = 10;
/// Ten times `N`: each table hashes with std's randomly seeded SipHash, so
/// its layout, and with it the probes and key comparisons of a lookup,
/// differ from run to run. With 1,000 requests to one table, eight runs
/// spread over 0.13 %; with these, two series of 8 and 10 runs spread over
/// 0.10 % and 0.03 %.
const JOIN_REQUESTS: usize = 10 * N;

/// A VIN-like client id: 17 characters.
fn vin(n: u64) -> String {
    format!("WVW{n:014}")
}

/// Routes `JOIN_REQUESTS` downlink requests: the client's lookup in its
/// partition's table (10 tables of 1,000 clients) and the match of the
/// topic against its filters (`Table::route`).
fn router_join() -> usize {
    // Every car subscribes to its warnings and, one in two, to all info
    // (as in the criterion join bench, with 10,000 clients rather than a
    // million: a count does not see the cache misses a larger table adds).
    let mut tables: Vec<Table> = (0..PARTITIONS).map(|_| Table::new()).collect();
    for n in 0..CLIENTS {
        let mut filters = vec!["DL/WARN/#".to_owned()];
        if n % 2 == 0 {
            filters.push("DL/INFO/+".to_owned());
        }
        let record = SessionRecord::live(n << 12, (n % 8) as u32, filters);
        tables[(n % PARTITIONS) as usize].apply(&vin(n), &record);
    }
    // A quarter each: the first filter matches; the second does (or, for
    // odd clients, no filter does); no filter matches; the client is
    // offline. Clients spread over the tables by a multiplicative hash.
    let requests: Vec<Request> = (0..JOIN_REQUESTS as u64)
        .map(|i| {
            let n = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % CLIENTS;
            let (client, topic) = match i % 4 {
                0 => (n, "DL/WARN/water"),
                1 => (n, "DL/INFO/news"),
                2 => (n, "DL/OTA/firmware"),
                _ => (CLIENTS + n, "DL/WARN/water"),
            };
            ((client % PARTITIONS) as usize, vin(client), topic)
        })
        .collect();
    // Every WARN request to a live client is routed, some INFO ones too.
    let routed = route_all(&tables, &requests);
    assert!((JOIN_REQUESTS / 4..JOIN_REQUESTS / 2).contains(&routed));
    assert_eq!(
        gate(&mut || route_all(&tables, black_box(&requests))),
        routed
    );
    requests.len()
}

/// A downlink request: the client's partition, its id, the MQTT topic.
type Request = (usize, String, &'static str);

fn route_all(tables: &[Table], requests: &[Request]) -> usize {
    let mut routed = 0;
    for (partition, client, topic) in requests {
        if black_box(tables[*partition].route(client, topic)).is_ok() {
            routed += 1;
        }
    }
    routed
}

// ---- A session step (gateway::session) ----

/// One car's connection as its shard handles it, without the socket and
/// the Kafka producer (`gateway/src/shard/connection.rs` is private and
/// runs on glommio): decode the CONNECT, the session's step, the CONNECT
/// accepted (CONNACK written); then for each of `N` PUBLISH: decode in
/// place, the session's step, the topic mapped for this client with the
/// shipped rule (`^UL/.+` → `cs.uplink`), the frame taken off. The record's parts (Kafka topic, key, payload,
/// MQTT topic header) are what `producer.send` would get.
fn session_step() -> usize {
    let config = gateway::config::Config::default();
    let decoder = Decoder::new(Role::Server, config.mqtt.max_packet_size);
    let mut mapper = TopicMapper::new(&config.mapping).expect("valid rules");
    let client_id = vin(42);
    let mut input = BytesMut::new();
    Connect::new(client_id.as_str(), 60)
        .encode(&mut input)
        .expect("encodable");
    input.extend_from_slice(&publish_frames(N, |i| {
        format!("UL/{}/{client_id}", ["POS", "SPEED", "FUEL"][i % 3])
    }));
    let now = Instant::now();
    connection(&decoder, &mut mapper, &mut input.clone(), now);
    gate(&mut || connection(&decoder, &mut mapper, black_box(&mut input), now))
}

fn connection(
    decoder: &Decoder,
    mapper: &mut TopicMapper,
    input: &mut BytesMut,
    now: Instant,
) -> usize {
    let timing: &'static Timing = Box::leak(Box::new(Timing::default()));
    let mut session = Session::new(timing, now);
    let mut out = BytesMut::with_capacity(64);
    let mut handed = 0;
    loop {
        // As `handle_input` does: a PUBLISH in place, anything else owned.
        if let Ok(Some((publish, frame))) = decoder.decode_publish_in_place(input) {
            if session.on_publish_in_place(&publish, frame, now).is_none() {
                let client_id = session.client_id().cloned().unwrap_or_default();
                let topic = publish.topic_bytes();
                if let Ok(kafka_topic) = mapper.map_bytes_for(topic, Some(&client_id)) {
                    black_box((kafka_topic, client_id.as_bytes(), publish.payload(), topic));
                    handed += 1;
                }
            }
            input.advance(frame);
            continue;
        }
        let Ok(Some(packet)) = decoder.decode(input) else {
            break;
        };
        match session.on_packet(packet, now, &mut out) {
            Step::Connect(connect) => session.accept(&connect, now, &mut out),
            _ => break,
        }
    }
    black_box(&out);
    handed
}
