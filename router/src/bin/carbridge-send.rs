//! `carbridge-send`: sends one downlink message to a car from the shell,
//! as a backend service would (a record on `cs.downlink`).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
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
/// key = the car's client id and header mqtt.topic = the MQTT topic, and
/// waits for Kafka's acknowledgement. The router delivers it if the car is
/// connected and subscribed to a matching filter.
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
    let record = BaseRecord::to(&cli.downlink_topic)
        .key(&cli.client)
        .payload(&cli.payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: contract::HEADER_TOPIC,
            value: Some(&cli.topic),
        }));
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
            Ok(())
        }
        Some(Err(error)) => bail!("Kafka did not take the message: {error}"),
        None => bail!("no answer from Kafka within 15 s"),
    }
}
