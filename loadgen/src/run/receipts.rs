//! `--receipts`: every downlink request asks for a receipt (header
//! `carbridge.receipt` = `{send time µs}-{sequence}`), and a reader of the
//! receipts topic counts them: per outcome, how long each took from the
//! request's send to its final receipt being read, and whether every
//! request got exactly one final receipt (progress records, `held`, are
//! counted apart).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use rdkafka::Message;
use rdkafka::message::Headers;

use super::kafka;
use crate::payload;
use crate::report::ReceiptStats;
use crate::stats::{histogram, latency};

/// The correlation id of the `seq`-th request, sent at `sent_us`.
pub(super) fn id(sent_us: u64, seq: u64) -> String {
    format!("{sent_us}-{seq}")
}

/// With `--hold`: the id with its class, `-h` (asked to be held) or `-p`.
pub(super) fn with_class(id: String, held: bool) -> String {
    format!("{id}-{}", if held { HELD } else { PLAIN })
}

const HELD: &str = "h";
const PLAIN: &str = "p";

/// The class named by an id's suffix, if any.
fn class(id: &[u8]) -> Option<&'static str> {
    match id.rsplit(|&b| b == b'-').next() {
        Some(b"h") => Some("held"),
        Some(b"p") => Some("plain"),
        _ => None,
    }
}

fn sent_us(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id)
        .ok()?
        .split_once('-')?
        .0
        .parse()
        .ok()
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    progress: BTreeMap<String, u64>,
    by_class: BTreeMap<String, BTreeMap<String, u64>>,
    seen: HashSet<Vec<u8>>,
    duplicates: u64,
    unreadable: u64,
}

/// The reader's thread, reading from the receipts topic's end as it was
/// before the first request.
pub(super) struct Reader {
    thread: JoinHandle<()>,
    result: crossbeam_channel::Receiver<(Tally, Histogram<u64>)>,
    /// Receipts to wait for before stopping (set when the sender is done).
    expect: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Reader {
    pub(super) fn start(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let (consumer, _) = kafka::consumer_from_end(bootstrap, topic)?;
        let expect = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(AtomicBool::new(false));
        let (want, finished) = (expect.clone(), done.clone());
        let (tx, result) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(move || {
            let mut tally = Tally::default();
            let mut took = histogram();
            while !finished.load(Ordering::Relaxed)
                && (tally.seen.len() as u64) < want.load(Ordering::Relaxed)
            {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = payload::now_us();
                let id = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == contract::HEADER_RECEIPT)
                        .and_then(|h| h.value)
                });
                let receipt = message
                    .payload()
                    .and_then(|value| contract::Receipt::decode(value).ok());
                let (Some(id), Some(receipt)) = (id, receipt) else {
                    tally.unreadable += 1;
                    continue;
                };
                let Some(sent) = sent_us(id) else {
                    continue; // another sender's receipt
                };
                if !receipt.is_final {
                    // Progress (`held`): the final record follows.
                    *tally
                        .progress
                        .entry(receipt.outcome.label().to_owned())
                        .or_default() += 1;
                    continue;
                }
                if !tally.seen.insert(id.to_vec()) {
                    tally.duplicates += 1;
                    continue;
                }
                *tally
                    .outcomes
                    .entry(receipt.outcome.label().to_owned())
                    .or_default() += 1;
                if let Some(class) = class(id) {
                    *tally
                        .by_class
                        .entry(class.to_owned())
                        .or_default()
                        .entry(receipt.outcome.label().to_owned())
                        .or_default() += 1;
                }
                took.saturating_record(now.saturating_sub(sent).max(1));
            }
            let _ = tx.send((tally, took));
        });
        Ok(Self {
            thread,
            result,
            expect,
            done,
        })
    }

    /// Waits (at most `bound`) for a receipt for each of the `asked`
    /// requests, then stops reading and sums up.
    pub(super) fn finish(self, asked: u64, bound: Duration) -> ReceiptStats {
        self.expect.store(asked, Ordering::Relaxed);
        let summed = self.result.recv_timeout(bound).or_else(|_| {
            // Not all came in time: stop reading and take what did.
            self.done.store(true, Ordering::Relaxed);
            self.result.recv()
        });
        let _ = self.thread.join();
        let (tally, took) = summed.unwrap_or_else(|_| (Tally::default(), histogram()));
        let answered = tally.seen.len() as u64;
        ReceiptStats {
            asked,
            answered,
            missing: asked.saturating_sub(answered),
            duplicates: tally.duplicates,
            unreadable: tally.unreadable,
            outcomes: tally.outcomes,
            progress: tally.progress,
            by_class: tally.by_class,
            latency: latency(&took),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_carries_its_send_time() {
        assert_eq!(
            sent_us(id(1_796_040_005_123_456, 7).as_bytes()),
            Some(1_796_040_005_123_456)
        );
        assert_eq!(sent_us(b"someone-else"), None);
        assert_eq!(sent_us(b"12"), None);
    }
}
