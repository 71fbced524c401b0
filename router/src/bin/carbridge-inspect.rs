//! `carbridge-inspect`: one car across the bridge, for "why does this car
//! get nothing?" at 3 a.m. It reads, with nothing but the car's client id:
//!
//! - the car's newest record in `mqtt.sessions` (the one partition its key
//!   hashes to, read from its start to its end): session, slot, filters,
//!   live or ended;
//! - the gateway holding the slot (`slot = instance × shards + shard`),
//!   asked `GET /cars/<client id>` on its admin port: address, identity,
//!   counters, the previous close;
//! - the car's last receipts in `cs.downlink.receipts` (its partition,
//!   from `--since-secs` ago);
//! - the router's held requests (not available yet).
//!
//! Exit status: 0 the car is known, 1 it never had a session, 2 something
//! could not be read (what could be is printed all the same).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

// The crate root looks beside itself: its modules live in a folder of its name.
#[path = "carbridge-inspect/print.rs"]
mod print;
use print::{print_human, utc};

/// Shows one car as the bridge sees it: its session record, the gateway
/// holding it, its last receipts.
///
/// Finding the gateway needs the slot numbering (--shards-per-bridge, as
/// the gateways were given) and where each instance's admin port is:
/// --gateway-admin 'http://gateway-{instance}.gateway-headless.carbridge.svc:9100'
/// on Kubernetes ({instance} is the bridge id, the StatefulSet's pod
/// ordinal), or --gateway-admin-list 127.0.0.1:9110,127.0.0.1:9111 on hosts
/// (one address per bridge id, in order). The admin token (GET /cars/ needs
/// it like POST /drain) comes from --admin-token-file or CARBRIDGE_ADMIN_TOKEN.
///
/// Exit status: 0 the car is known, 1 it never had a session, 2 an error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The car's MQTT client id.
    client: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kafka: ops::kafka::KafkaArgs,
    /// Session-registry topic.
    #[arg(long, default_value = contract::topics::SESSIONS)]
    sessions_topic: String,
    /// Topic of receipts.
    #[arg(long, default_value = contract::topics::RECEIPTS)]
    receipts_topic: String,
    /// Receipts from this many seconds ago on.
    #[arg(long, default_value_t = 3600)]
    since_secs: u64,
    /// How many of the car's receipts to show (the newest).
    #[arg(long, default_value_t = 10)]
    receipts: usize,
    /// Shards of every gateway instance, as the gateways were given
    /// (downlink.shards_per_bridge): the slot numbering.
    #[arg(long, env = "CARBRIDGE_SHARDS_PER_BRIDGE")]
    shards_per_bridge: Option<u32>,
    /// A gateway instance's admin address, {instance} standing for its
    /// bridge id: http://gateway-{instance}.gateway-headless.carbridge.svc:9100
    #[arg(
        long,
        env = "CARBRIDGE_GATEWAY_ADMIN",
        conflicts_with = "gateway_admin_list"
    )]
    gateway_admin: Option<String>,
    /// The gateway instances' admin addresses (host:port), bridge id 0
    /// first.
    #[arg(long, value_delimiter = ',')]
    gateway_admin_list: Vec<String>,
    /// The routers' admin addresses (host:port or http://host:port), to
    /// ask each for the requests it holds for the car (GET /held/<id>):
    /// every instance, as only the owner of the car's partition holds
    /// them. On Kubernetes, each router pod's address (the router's
    /// Deployment has no stable names), or one `kubectl port-forward` per
    /// pod.
    #[arg(long, env = "CARBRIDGE_ROUTER_ADMIN", value_delimiter = ',')]
    router_admin: Vec<String>,
    /// A file holding the admin token of the gateways and routers.
    #[arg(long, env = "CARBRIDGE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Seconds each Kafka request and the gateway's answer may take.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

/// The partition the Java client's default partitioner (and librdkafka's
/// `murmur2_random`, which the gateways and services use) picks for `key`:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
fn partition_for(key: &[u8], partitions: usize) -> i32 {
    let positive = u64::from(murmur2(key) & 0x7fff_ffff);
    let partitions = u64::try_from(partitions.max(1)).unwrap_or(u64::MAX);
    i32::try_from(positive % partitions).unwrap_or(0)
}

/// Kafka's murmur2 (seed 0x9747b28c), as its Java client computes it.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut hash = 0x9747_b28c ^ u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = word
            .iter()
            .rev()
            .fold(0u32, |k, &byte| (k << 8) | u32::from(byte));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        hash = hash.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .rev()
            .fold(0u32, |k, &byte| (k << 8) | u32::from(byte));
        hash = (hash ^ k).wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^ (hash >> 15)
}

/// Reads `topic`'s `partition` from `from` to its end, handing each record
/// keyed `key` to `keep`; within `deadline`.
///
/// The end is where librdkafka says the partition ends (partition EOF),
/// not only the high watermark asked first: a broker that reports the
/// watermark one past its last batch's *start* (tansu 0.6.0) would cut a
/// batch short. Past the watermark, a partition written to without pause
/// ends the read at the deadline, without an error.
fn read_keyed(
    consumer: &BaseConsumer,
    (topic, partition): (&str, i32),
    from: Offset,
    key: &[u8],
    deadline: Instant,
    mut keep: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let (_, end) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .with_context(|| format!("reading where {topic} partition {partition} ends"))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, from)?;
    consumer.assign(&assignment)?;
    let mut next = match from {
        Offset::Offset(offset) => offset,
        _ => 0,
    };
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            if next >= end {
                return Ok(());
            }
            bail!("{topic} partition {partition}: read to offset {next} of {end} in time");
        };
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => {}
            // At the end, of this partition (not one read before).
            Some(Err(KafkaError::PartitionEOF(at))) if at == partition && next >= end => {
                return Ok(());
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(error)) => {
                return Err(error)
                    .with_context(|| format!("reading {topic} partition {partition}"));
            }
            Some(Ok(message)) => {
                next = message.offset() + 1;
                if message.key() == Some(key) {
                    keep(&message);
                }
            }
        }
    }
}

/// The car's newest session record, as JSON for the report.
fn session(consumer: &BaseConsumer, cli: &Cli, deadline: Instant) -> anyhow::Result<Option<Value>> {
    let topic = cli.sessions_topic.as_str();
    let wait = deadline.saturating_duration_since(Instant::now());
    let partitions = ops::kafka::partition_count(consumer, topic, wait)?;
    if partitions == 0 {
        bail!("topic {topic} does not exist (carbridge-topics check)");
    }
    let partition = partition_for(cli.client.as_bytes(), partitions);
    let mut last = None;
    read_keyed(
        consumer,
        (topic, partition),
        Offset::Beginning,
        cli.client.as_bytes(),
        deadline,
        |message| {
            let at = message.timestamp().to_millis();
            last = Some(match message.payload() {
                None => json!({"deleted": true, "offset": message.offset(), "written_ms": at}),
                Some(value) => match contract::SessionRecord::decode(value) {
                    Ok(record) => json!({
                        "session": record.session,
                        "since_ms": (record.session >> 12) / 1000,
                        "slot": record.slot,
                        "filters": record.filters,
                        "live": record.ended.is_none(),
                        "ended": record.ended,
                        "offset": message.offset(),
                        "written_ms": at,
                    }),
                    Err(error) => json!({
                        "unreadable": error.to_string(),
                        "offset": message.offset(),
                        "written_ms": at,
                    }),
                },
            });
        },
    )?;
    Ok(last.map(|mut record| {
        set(&mut record, "topic", json!(topic));
        set(&mut record, "partition", json!(partition));
        record
    }))
}

/// Where a gateway instance's admin endpoint is, from the flags.
fn admin_address(cli: &Cli, instance: u32) -> anyhow::Result<String> {
    let address = match (&cli.gateway_admin, cli.gateway_admin_list.as_slice()) {
        (Some(template), _) => template.replace("{instance}", &instance.to_string()),
        (None, []) => bail!(
            "no gateway admin address: give --gateway-admin 'http://gateway-{{instance}}.<service>:9100' \
             or --gateway-admin-list host:port,..."
        ),
        (None, list) => usize::try_from(instance)
            .ok()
            .and_then(|index| list.get(index))
            .with_context(|| {
                format!(
                    "--gateway-admin-list has {} addresses, none for bridge id {instance}",
                    list.len()
                )
            })?
            .clone(),
    };
    Ok(address)
}

/// `value` percent-encoded for a URL path: everything but RFC 3986's
/// unreserved characters.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Longest answer read from a gateway: one car's JSON is under 2 KiB.
const MAX_ANSWER: u64 = 1 << 20;

/// `GET path` from the admin endpoint at `address` (`host:port`, or
/// `http://host:port`): the status and the body. HTTP/1.1, one request,
/// `Connection: close`, each step within `timeout`.
fn http_get(
    address: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let authority = match address.split_once("://") {
        None => address,
        Some(("http", rest)) => rest,
        Some((scheme, _)) => bail!(
            "{address}: only http:// is spoken here, not {scheme}:// (use kubectl port-forward)"
        ),
    };
    let authority = authority.trim_end_matches('/');
    let targets: Vec<_> = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .collect();
    let mut stream = None;
    let mut failed = None;
    for target in &targets {
        match TcpStream::connect_timeout(target, timeout) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => failed = Some(error),
        }
    }
    let Some(mut stream) = stream else {
        return Err(match failed {
            Some(error) => anyhow::Error::from(error).context(format!("connecting to {authority}")),
            None => anyhow::anyhow!("{authority} resolves to no address"),
        });
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let bearer = token.map_or(String::new(), |token| {
        format!("Authorization: Bearer {token}\r\n")
    });
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{bearer}\r\n"
    )
    .with_context(|| format!("asking {authority}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading {authority}'s answer"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("{authority} answered no HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("{authority} answered no HTTP status"))?;
    Ok((status, body.to_owned()))
}

/// The gateway holding `slot`, asked about the car.
fn gateway(cli: &Cli, slot: u64, token: Option<&str>) -> Value {
    let Some(shards) = cli.shards_per_bridge.filter(|shards| *shards > 0) else {
        return json!({"slot": slot, "error": "--shards-per-bridge (CARBRIDGE_SHARDS_PER_BRIDGE) \
            is needed to tell which gateway holds the slot"});
    };
    let (instance, shard) = (slot / u64::from(shards), slot % u64::from(shards));
    let mut report = json!({"slot": slot, "instance": instance, "shard": shard});
    let asked = u32::try_from(instance)
        .context("slot beyond any bridge id")
        .and_then(|instance| admin_address(cli, instance))
        .and_then(|address| {
            set(&mut report, "admin", json!(address));
            let path = format!("/cars/{}", percent_encode(&cli.client));
            http_get(
                &address,
                &path,
                token,
                Duration::from_secs(cli.timeout_secs),
            )
        });
    match asked {
        Ok((status, body)) => {
            set(&mut report, "status", json!(status));
            match serde_json::from_str::<Value>(&body) {
                Ok(answer) if status == 200 || status == 404 => set(&mut report, "answer", answer),
                _ => set(
                    &mut report,
                    "error",
                    json!(format!("HTTP {status}: {}", body.trim())),
                ),
            }
        }
        Err(error) => set(&mut report, "error", json!(format!("{error:#}"))),
    }
    report
}

/// The car's receipts in its partition of the receipts topic since
/// `--since-secs` ago, the newest `--receipts` of them, oldest first.
fn receipts(consumer: &BaseConsumer, cli: &Cli, deadline: Instant) -> anyhow::Result<Vec<Value>> {
    let topic = cli.receipts_topic.as_str();
    let wait = deadline.saturating_duration_since(Instant::now());
    let partitions = ops::kafka::partition_count(consumer, topic, wait)?;
    if partitions == 0 {
        bail!("topic {topic} does not exist (carbridge-topics check)");
    }
    let partition = partition_for(cli.client.as_bytes(), partitions);
    let since =
        contract::now_ms() - i64::try_from(cli.since_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut times = TopicPartitionList::new();
    times.add_partition_offset(topic, partition, Offset::Offset(since))?;
    let found = consumer
        .offsets_for_times(times, wait)
        .with_context(|| format!("finding {topic}'s records since {}", utc(since)))?;
    let from = found
        .find_partition(topic, partition)
        .map_or(Offset::End, |at| at.offset());
    let Offset::Offset(from) = from else {
        // Nothing written since then.
        return Ok(Vec::new());
    };
    let mut kept = std::collections::VecDeque::new();
    read_keyed(
        consumer,
        (topic, partition),
        Offset::Offset(from),
        cli.client.as_bytes(),
        deadline,
        |message| {
            let id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|header| header.key == contract::HEADER_RECEIPT)
                    .and_then(|header| header.value)
                    .map(|value| String::from_utf8_lossy(value).into_owned())
            });
            let mut receipt = message
                .payload()
                .and_then(|value| serde_json::from_slice::<Value>(value).ok())
                .unwrap_or_else(|| json!({"unreadable": true}));
            set(&mut receipt, "correlation_id", json!(id));
            set(&mut receipt, "offset", json!(message.offset()));
            kept.push_back(receipt);
            if kept.len() > cli.receipts {
                kept.pop_front();
            }
        },
    )?;
    Ok(kept.into())
}

/// The requests the routers hold for the car, not yet delivered, oldest
/// first; `None` when no router was given. A router that cannot be asked
/// is reported among them as `{"router", "error"}`.
fn held_requests(cli: &Cli, token: Option<&str>) -> Option<Vec<Value>> {
    if cli.router_admin.is_empty() {
        return None;
    }
    let path = format!("/held/{}", percent_encode(&cli.client));
    let timeout = Duration::from_secs(cli.timeout_secs);
    let mut held = Vec::new();
    for router in &cli.router_admin {
        let answer = http_get(router, &path, token, timeout).and_then(|(status, body)| {
            anyhow::ensure!(status == 200, "HTTP {status}: {}", body.trim());
            let answer: Value = serde_json::from_str(&body).context("reading its answer")?;
            Ok(answer
                .get("held")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default())
        });
        match answer {
            Ok(requests) => held.extend(requests.into_iter().map(|mut request| {
                set(&mut request, "router", json!(router));
                request
            })),
            Err(error) => held.push(json!({"router": router, "error": format!("{error:#}")})),
        }
    }
    held.sort_by_key(|request| request.get("offset").and_then(Value::as_i64));
    Some(held)
}

/// The admin token for the gateways, if one is given.
fn admin_token(cli: &Cli) -> anyhow::Result<Option<String>> {
    use ops::secrets::{Source, read_secret};
    let source = match &cli.admin_token_file {
        Some(file) => Source::File(file),
        None if std::env::var_os(ops::admin::TOKEN_ENV).is_some() => {
            Source::Env(ops::admin::TOKEN_ENV)
        }
        None => return Ok(None),
    };
    Ok(Some(read_secret("the admin token", source)?))
}

/// Everything known about the car, as one JSON object, and whether it is
/// known at all (a session record ever).
fn report(cli: &Cli) -> anyhow::Result<(Value, bool)> {
    let token = admin_token(cli)?;
    let consumer: BaseConsumer = cli
        .kafka
        .client_config()?
        .set("group.id", "carbridge-inspect")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating the Kafka reader")?;
    let timeout = Duration::from_secs(cli.timeout_secs.max(1));
    let session = session(&consumer, cli, Instant::now() + timeout)?;
    let known = session.is_some();
    let slot = session
        .as_ref()
        .and_then(|record| record.get("slot"))
        .and_then(Value::as_u64);
    let mut report = json!({
        "client_id": cli.client,
        "known": known,
        "session": session,
        "gateway": slot.map(|slot| gateway(cli, slot, token.as_deref())),
        "held_requests": match held_requests(cli, token.as_deref()) {
            Some(held) => json!({"available": true, "requests": held}),
            None => json!({"available": false, "requests": []}),
        },
    });
    match receipts(&consumer, cli, Instant::now() + timeout) {
        Ok(receipts) => set(&mut report, "receipts", json!(receipts)),
        Err(error) => set(&mut report, "receipts_error", json!(format!("{error:#}"))),
    }
    Ok((report, known))
}

/// Sets `key` of `target` to `value`; a `target` that is no object (a
/// record someone wrote as a bare number) is kept under `value`.
fn set(target: &mut Value, key: &str, value: Value) {
    if !target.is_object() {
        *target = json!({ "value": std::mem::take(target) });
    }
    if let Some(object) = target.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match report(&cli) {
        Ok((report, known)) => {
            if cli.json {
                println!("{report}");
            } else {
                print_human(&report, &cli);
            }
            let failed = report.get("receipts_error").is_some()
                || report
                    .get("gateway")
                    .is_some_and(|gateway| gateway.get("error").is_some());
            std::process::ExitCode::from(match (known, failed) {
                (_, true) => 2,
                (false, false) => 1,
                (true, false) => 0,
            })
        }
        Err(error) => {
            eprintln!("carbridge-inspect: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest#testMurmur2`), and
    /// partitions as librdkafka's murmur2_random picks them.
    #[test]
    fn murmur2_is_kafkas() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(
                i32::from_ne_bytes(murmur2(key).to_ne_bytes()),
                hash,
                "{key:?}"
            );
        }
        for key in ["VIN0001", "fleet/VIN 7", ""] {
            assert_eq!(
                partition_for(key.as_bytes(), 7),
                testkit::java_partition(key.as_bytes(), 7),
                "{key}"
            );
        }
    }

    #[test]
    fn client_ids_are_escaped_and_gateways_found() {
        assert_eq!(percent_encode("fleet/VIN 7~a"), "fleet%2FVIN%207~a");
        let mut cli = Cli::parse_from([
            "carbridge-inspect",
            "VIN1",
            "--gateway-admin-list",
            "a:1,b:2",
        ]);
        assert_eq!(admin_address(&cli, 1).ok().as_deref(), Some("b:2"));
        assert!(admin_address(&cli, 2).is_err());
        cli.gateway_admin_list.clear();
        cli.gateway_admin = Some("http://gateway-{instance}.gateway-headless:9100".to_owned());
        assert_eq!(
            admin_address(&cli, 3).ok().as_deref(),
            Some("http://gateway-3.gateway-headless:9100")
        );
    }
}
