//! `carbridge-send`: sends one downlink message to a car from the shell,
//! as a backend service would (a record on `cs.downlink`).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};

/// Keeps Kafka's answer for the one record.
struct Answer(std::sync::Mutex<Option<Result<(i32, i64), String>>>);

impl ClientContext for Answer {}

impl ProducerContext for Answer {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        let answer = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.to_string()),
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(answer);
        }
    }
}

/// Sends one message to a car: produces a record to cs.downlink with
/// key = the car's client id and header mqtt.topic = the MQTT topic, waits
/// for Kafka's acknowledgement, then for the message's receipt: what the
/// bridge did with it (written to the car's connection, or why not:
/// offline, no_filter, slow_car, closed, invalid, no_slot, expired,
/// hold_full). With --hold, a car that cannot take it now gets it when it
/// can: the router reports `held` and the command waits on for the final
/// receipt (raise --receipt-timeout-secs to match --expires-in-secs).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The car's MQTT client id.
    client: String,
    /// MQTT topic name to publish on, e.g. DL/WARN.
    topic: String,
    /// The payload (UTF-8 text as given).
    payload: String,
    #[command(flatten)]
    kafka: ops::kafka::KafkaArgs,
    /// Topic of downlink requests.
    #[arg(long, default_value = contract::topics::DOWNLINK)]
    downlink_topic: String,
    /// Topic of receipts.
    #[arg(long, default_value = contract::topics::RECEIPTS)]
    receipts_topic: String,
    /// Seconds to wait for the receipt; 0 asks for none and only waits for
    /// Kafka's acknowledgement.
    #[arg(long, default_value_t = 10)]
    receipt_timeout_secs: u64,
    /// Drop the message if the bridge would hand it over later than this
    /// many seconds from now (header carbridge.expires).
    #[arg(long)]
    expires_in_secs: Option<u64>,
    /// Ask the router to hold the message while the car is offline (or not
    /// subscribed), until it connects or the message expires (header
    /// carbridge.hold: 1). Needs an expiry: --expires-in-secs, or a router
    /// --max-age rule for the topic.
    #[arg(long)]
    hold: bool,
}

/// A reader of every partition of the receipts topic from its end, made
/// before the request is sent so its receipt cannot be missed.
fn receipts_reader(config: &rdkafka::ClientConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "carbridge-send")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the receipts reader")?;
    let partitions = ops::kafka::partition_count(&consumer, topic, Duration::from_secs(10))?;
    if partitions == 0 {
        bail!(
            "topic {topic} does not exist: create the topics (`carbridge-topics create`), or pass --receipt-timeout-secs 0"
        );
    }
    let assignment = ops::kafka::at_end(&consumer, topic, partitions, Duration::from_secs(10))?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Waits up to `timeout` for the final receipt carrying `id`, printing a
/// progress record (`held`) when one comes.
fn await_receipt(
    consumer: &BaseConsumer,
    id: &[u8],
    timeout: Duration,
) -> anyhow::Result<Option<contract::Receipt>> {
    use rdkafka::message::Headers;
    let deadline = std::time::Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) else {
            continue;
        };
        let message = message.context("reading receipts")?;
        let ours = message.headers().is_some_and(|headers| {
            headers
                .iter()
                .any(|h| h.key == contract::HEADER_RECEIPT && h.value == Some(id))
        });
        if ours {
            let value = message.payload().unwrap_or_default();
            let receipt = contract::Receipt::decode(value).context("reading the receipt")?;
            if receipt.is_final {
                return Ok(Some(receipt));
            }
            let until = receipt.until_ms.map_or_else(
                || "its expiry".to_owned(),
                |ms| format!("{ms} ms since the epoch"),
            );
            println!(
                "{}: the router holds it until the car can take it, at most until {until}",
                receipt.outcome.label()
            );
        }
    }
    Ok(None)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if codec::topic::validate_topic_name(&cli.topic).is_err() {
        bail!(
            "{:?} is not an MQTT topic name (no wildcards, not empty)",
            cli.topic
        );
    }
    let mut config = cli.kafka.client_config()?;
    config
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "10000");
    let producer: BaseProducer<Answer> = config
        .create_with_context(Answer(std::sync::Mutex::new(None)))
        .context("creating the producer")?;
    let wait = Duration::from_secs(cli.receipt_timeout_secs);
    let reader = if wait.is_zero() {
        None
    } else {
        Some(receipts_reader(&config, &cli.receipts_topic)?)
    };
    // Unique enough for one shell command: this process at this instant.
    let id = format!(
        "carbridge-send-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let expires = cli.expires_in_secs.map(|secs| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        (now + u128::from(secs) * 1000).to_string()
    });
    let mut headers = OwnedHeaders::new().insert(Header {
        key: contract::HEADER_TOPIC,
        value: Some(&cli.topic),
    });
    if reader.is_some() {
        headers = headers.insert(Header {
            key: contract::HEADER_RECEIPT,
            value: Some(&id),
        });
    }
    if let Some(expires) = &expires {
        headers = headers.insert(Header {
            key: contract::HEADER_EXPIRES,
            value: Some(expires),
        });
    }
    if cli.hold {
        headers = headers.insert(Header {
            key: contract::HEADER_HOLD,
            value: Some("1"),
        });
    }
    let record = BaseRecord::to(&cli.downlink_topic)
        .key(&cli.client)
        .payload(&cli.payload)
        .headers(headers);
    producer
        .send(record)
        .map_err(|(error, _)| anyhow::anyhow!("Kafka refused the message: {error}"))?;
    // Bounded by message.timeout.ms: the delivery report comes by then.
    let _ = producer.flush(Duration::from_secs(15));
    let answer = producer.context().0.lock().ok().and_then(|mut a| a.take());
    match answer {
        Some(Ok((partition, offset))) => {
            println!(
                "sent to {} partition {partition} offset {offset}",
                cli.downlink_topic
            );
            let Some(reader) = reader else {
                return Ok(());
            };
            let sent = std::time::Instant::now();
            match await_receipt(&reader, id.as_bytes(), wait)? {
                Some(receipt) => {
                    let by = match (receipt.by, receipt.slot) {
                        (contract::DecidedBy::Gateway, Some(slot)) => {
                            format!("gateway slot {slot}")
                        }
                        (contract::DecidedBy::Gateway, None) => "gateway".to_owned(),
                        (contract::DecidedBy::Router, _) => "router".to_owned(),
                    };
                    println!(
                        "receipt: {} (decided by the {by}, {} ms after Kafka took it)",
                        receipt.outcome.label(),
                        sent.elapsed().as_millis()
                    );
                    if receipt.outcome == contract::Outcome::Written {
                        Ok(())
                    } else {
                        bail!("not delivered: {}", receipt.outcome.label())
                    }
                }
                None => bail!(
                    "no receipt within {} s: is a router running for {}, and are the \
                     gateways of this version? (the router answers what it drops, the \
                     gateway what it writes or cannot)",
                    wait.as_secs(),
                    cli.downlink_topic
                ),
            }
        }
        Some(Err(error)) => bail!("Kafka did not take the message: {error}"),
        None => bail!("no answer from Kafka within 15 s"),
    }
}
