//! `water-warning`: the backend service of the talk's demo. It reads car
//! positions from Kafka and warns every car inside a configured area (deep
//! water on the road ahead) with an MQTT message on DL/WARN, sent through
//! cs.downlink like any service would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Warns cars that are inside an area: reads positions ("car seq time lat
/// lon", as loadgen's cars send them) from the uplink topic and sends each
/// car inside the area a DL/WARN message through cs.downlink, at most once
/// per --repeat-secs per car.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    kafka: ops::kafka::KafkaArgs,
    /// Topic with the cars' positions.
    #[arg(long, default_value = contract::topics::UPLINK)]
    uplink_topic: String,
    /// Topic of downlink requests.
    #[arg(long, default_value = contract::topics::DOWNLINK)]
    downlink_topic: String,
    /// The area: south,west,north,east in degrees (default: a stretch of
    /// the Göta älv in Gothenburg).
    #[arg(long, default_value = "57.68,11.87,57.72,11.91")]
    area: String,
    /// Do not warn the same car again within this many seconds.
    #[arg(long, default_value_t = 10)]
    repeat_secs: u64,
    /// Consumer group.
    #[arg(long, default_value = "carbridge-water-warning")]
    group: String,
}

struct Area {
    south: f64,
    west: f64,
    north: f64,
    east: f64,
}

impl Area {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let numbers: Vec<f64> = text
            .split(',')
            .map(|n| n.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--area {text}: expected south,west,north,east"))?;
        let [south, west, north, east] = numbers[..] else {
            bail!("--area {text}: expected four numbers, south,west,north,east");
        };
        if south >= north || west >= east {
            bail!("--area {text}: south must be below north and west below east");
        }
        Ok(Self {
            south,
            west,
            north,
            east,
        })
    }

    fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.south..=self.north).contains(&lat) && (self.west..=self.east).contains(&lon)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let area = Area::parse(&cli.area)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mut config = cli.kafka.client_config()?;
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", &cli.group)
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "20")
        .create()
        .context("creating the consumer")?;
    consumer
        .subscribe(&[&cli.uplink_topic])
        .context("subscribing to the positions")?;
    let producer: BaseProducer = config
        .set("linger.ms", "2")
        .set("partitioner", "murmur2_random")
        .create()
        .context("creating the producer")?;
    eprintln!(
        "water-warning: watching {} for cars in {} (repeat every {} s)",
        cli.uplink_topic, cli.area, cli.repeat_secs
    );
    let repeat = Duration::from_secs(cli.repeat_secs);
    let mut warned: HashMap<u64, Instant> = HashMap::new();
    let (mut positions, mut warnings) = (0u64, 0u64);
    let mut last_log = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        ops::kafka::serve_events(&producer, usize::MAX);
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                eprintln!("water-warning: consumer error: {error}");
                continue;
            }
        };
        let Some((car, lat, lon)) = message.payload().and_then(loadgen::payload::car_position)
        else {
            continue;
        };
        positions += 1;
        if !area.contains(lat, lon) || warned.get(&car).is_some_and(|at| at.elapsed() < repeat) {
            continue;
        }
        let Some(client) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        let text = format!("water on the road ahead at {lat:.4},{lon:.4}: slow down");
        let headers = OwnedHeaders::new().insert(Header {
            key: contract::HEADER_TOPIC,
            value: Some("DL/WARN"),
        });
        let mut record = BaseRecord::to(&cli.downlink_topic)
            .key(client)
            .payload(&text)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => {
                    warnings += 1;
                    warned.insert(car, Instant::now());
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => {
                    eprintln!("water-warning: warning to {client} not sent: {error}");
                    break;
                }
            }
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            eprintln!("water-warning: {positions} positions read, {warnings} warnings sent");
            last_log = Instant::now();
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    eprintln!("water-warning: stopped; {positions} positions read, {warnings} warnings sent");
    Ok(())
}
