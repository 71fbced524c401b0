//! Downlink delivery on a shard: the session-registry records it writes,
//! the routed messages it reads from its slot and writes to its cars, and
//! the gone reports for sessions it does not hold.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::packet::encode_publish;
use codec::{ByteString, QoS};
use contract::{End, Outcome, SessionClock, SessionRecord};

use super::Shard;
use super::signal::{Kick, Signal, log_due};
use crate::config::Config;
use crate::downlink::{Polled, Routed, SlotConsumer};
use crate::kafka::SendError;
use crate::metrics::bump;
use crate::session::CloseReason;

/// Routed records read per poller tick at most, so one busy slot cannot
/// keep the shard from its connections.
const DOWNLINK_BATCH: usize = 1024;
/// A (client, session) reported gone is not reported again within this
/// time: one report per stale registration, not one per message.
const GONE_MEMORY: Duration = Duration::from_secs(30);

/// A shard's downlink state (absent when `downlink.enabled` is false).
pub(super) struct Downlink {
    pub(super) consumer: SlotConsumer,
    pub(super) clock: RefCell<SessionClock>,
    sessions_topic: String,
    topic_header: String,
    max_queued: usize,
    /// Registry records librdkafka's queue had no room for, in order.
    pending: RefCell<VecDeque<(ByteString, Vec<u8>)>>,
    receipts_topic: String,
    /// Receipts librdkafka's queue had no room for.
    pending_receipts: RefCell<VecDeque<PendingReceipt>>,
    /// Receipts owed for messages queued to a connection and not yet
    /// written, by the connection's [`Signal`] address. Only connections
    /// with such messages have an entry: no cost for the others.
    asks: RefCell<HashMap<usize, Vec<OwedReceipt>>>,
    /// Recently reported gone, and when the memory was last cleared.
    gone: RefCell<HashSet<(String, u64)>>,
    gone_cleared: Cell<Instant>,
    error_logged_at: Cell<Option<Instant>>,
}

impl Downlink {
    /// Assigns shard `shard` its `slot`; `kick` wakes the shard's poller
    /// when routed messages arrive.
    pub(super) fn new(
        config: &Config,
        shard: usize,
        slot: u32,
        kick: &Arc<Kick>,
    ) -> anyhow::Result<Self> {
        let mut consumer = SlotConsumer::new(config, shard, slot)?;
        let kick = kick.clone();
        consumer.on_arrival(move || kick.kick());
        Ok(Self {
            consumer,
            clock: RefCell::new(SessionClock::new(slot)),
            sessions_topic: config.downlink.sessions_topic.clone(),
            topic_header: config.kafka.topic_header.clone(),
            max_queued: config.downlink.max_queued_bytes,
            pending: RefCell::new(VecDeque::new()),
            receipts_topic: config.downlink.receipts_topic.clone(),
            pending_receipts: RefCell::new(VecDeque::new()),
            asks: RefCell::new(HashMap::new()),
            gone: RefCell::new(HashSet::new()),
            gone_cleared: Cell::new(Instant::now()),
            error_logged_at: Cell::new(None),
        })
    }

    pub(super) fn slot(&self) -> u32 {
        self.consumer.slot
    }
}

/// The key of a connection's owed receipts: its signal's address, stable
/// while the connection lives (its owed receipts are settled before the
/// signal is dropped).
fn signal_key(signal: &Signal) -> usize {
    std::ptr::from_ref(signal) as usize
}

/// A receipt record waiting for room in librdkafka's queue: key (client
/// id), correlation id, value.
type PendingReceipt = (Vec<u8>, Vec<u8>, Vec<u8>);

/// A receipt a queued message will be answered with once written (or its
/// connection closed first).
pub(super) struct OwedReceipt {
    client: Vec<u8>,
    id: Vec<u8>,
    request: contract::RequestRef,
}

impl Shard {
    /// Writes the receipt of a routed message this shard decided.
    fn answer(&self, client: &[u8], id: &[u8], request: contract::RequestRef, outcome: Outcome) {
        let Some(downlink) = &self.downlink else {
            return;
        };
        let value = contract::Receipt::new(
            outcome,
            contract::DecidedBy::Gateway,
            Some(downlink.slot()),
            request,
        )
        .encode();
        self.metrics.count_receipt(outcome);
        let mut pending = downlink.pending_receipts.borrow_mut();
        if pending.is_empty() {
            match self
                .producer
                .send_receipt(&downlink.receipts_topic, client, id, &value)
            {
                Ok(()) | Err(SendError::Failed) => return,
                Err(SendError::QueueFull) => {}
            }
        }
        pending.push_back((client.to_vec(), id.to_vec(), value));
    }

    /// The receipts owed for the messages queued to `signal` so far (take
    /// them together with its output).
    pub(super) fn take_owed(&self, signal: &Signal) -> Vec<OwedReceipt> {
        self.downlink
            .as_ref()
            .and_then(|d| d.asks.borrow_mut().remove(&signal_key(signal)))
            .unwrap_or_default()
    }

    /// Answers receipts taken with [`Shard::take_owed`].
    pub(super) fn settle(&self, owed: Vec<OwedReceipt>, outcome: Outcome) {
        for receipt in owed {
            self.answer(&receipt.client, &receipt.id, receipt.request, outcome);
        }
    }

    /// Writes a session-registry record, keeping this shard's records for
    /// one client in order.
    pub(super) fn register(&self, client_id: &ByteString, record: &SessionRecord) {
        let Some(downlink) = &self.downlink else {
            return;
        };
        self.handed_over();
        let value = record.encode();
        let mut pending = downlink.pending.borrow_mut();
        if pending.is_empty() {
            match self.producer.send_registry(
                &downlink.sessions_topic,
                client_id.as_bytes(),
                &value,
            ) {
                Ok(()) | Err(SendError::Failed) => return,
                Err(SendError::QueueFull) => {}
            }
        }
        pending.push_back((client_id.clone(), value));
    }

    /// Offers the registry records and receipts that found the queue full
    /// again.
    pub(super) fn retry_registry(&self, downlink: &Downlink) {
        let mut receipts = downlink.pending_receipts.borrow_mut();
        while let Some((key, id, value)) = receipts.front() {
            match self
                .producer
                .send_receipt(&downlink.receipts_topic, key, id, value)
            {
                Ok(()) | Err(SendError::Failed) => {
                    receipts.pop_front();
                }
                Err(SendError::QueueFull) => break,
            }
        }
        drop(receipts);
        let mut pending = downlink.pending.borrow_mut();
        while let Some((client_id, value)) = pending.front() {
            match self
                .producer
                .send_registry(&downlink.sessions_topic, client_id.as_bytes(), value)
            {
                Ok(()) | Err(SendError::Failed) => {
                    pending.pop_front();
                }
                Err(SendError::QueueFull) => return,
            }
        }
    }

    /// Reads what arrived on this shard's slot and delivers it; whether
    /// anything was read or waits to be sent (poll again soon).
    pub(super) fn serve_downlink(&self) -> bool {
        let Some(downlink) = &self.downlink else {
            return false;
        };
        self.retry_registry(downlink);
        if downlink.gone_cleared.get().elapsed() >= GONE_MEMORY {
            downlink.gone.borrow_mut().clear();
            downlink.gone_cleared.set(Instant::now());
        }
        let mut busy = !downlink.pending.borrow().is_empty();
        for _ in 0..DOWNLINK_BATCH {
            match downlink
                .consumer
                .poll_with(&downlink.topic_header, |routed, missed| {
                    self.route(downlink, routed, missed)
                }) {
                Polled::Empty => return busy,
                Polled::Read => busy = true,
                Polled::Failed(error) => {
                    if log_due(&downlink.error_logged_at, Instant::now()) {
                        tracing::warn!(shard = self.id, slot = downlink.slot(), %error,
                            "downlink consumer error");
                    }
                    return busy;
                }
            }
        }
        true
    }

    /// Handles one routed record; `missed`: routed before this process
    /// started, for a connection that died with its predecessor.
    fn route(&self, downlink: &Downlink, routed: Option<Routed<'_>>, missed: bool) {
        match routed {
            None => {
                bump(&self.metrics.downlink_received);
                self.metrics.drop_downlink("invalid");
            }
            Some(Routed::Takeover { client, session }) => {
                if let Some(signal) = self.table.holder(client).filter(|_| !missed)
                    && signal.session.get() == Some(session)
                {
                    bump(&self.metrics.takeover_notices);
                    signal.fire(CloseReason::TakenOver);
                }
            }
            Some(Routed::Message {
                client,
                session,
                topic,
                payload,
                created_ms,
                expires_ms,
                ask,
            }) => {
                bump(&self.metrics.downlink_received);
                if let Some(ms) = created_ms {
                    self.metrics
                        .downlink_age_at_read
                        .record_since_kafka_timestamp(ms);
                }
                let answer = |outcome: Outcome| {
                    if let Some(ask) = ask {
                        self.answer(client.as_bytes(), ask.id, ask.request, outcome);
                    }
                };
                if expires_ms.is_some_and(|at| contract::now_ms() > at) {
                    self.metrics.drop_downlink("expired");
                    answer(Outcome::Expired);
                    return;
                }
                let Some(signal) = self.table.holder(client).filter(|_| !missed) else {
                    self.metrics.drop_downlink("not_held");
                    answer(Outcome::Offline);
                    if let Some(session) = session {
                        self.report_gone(downlink, client, session);
                    }
                    return;
                };
                // The router matched the filters it knew; the car may have
                // unsubscribed since.
                if !signal
                    .filters
                    .borrow()
                    .iter()
                    .flat_map(|filters| filters.iter())
                    .any(|filter| codec::topic::matches(filter, topic))
                {
                    self.metrics.drop_downlink("no_filter");
                    answer(Outcome::NoFilter);
                    return;
                }
                let mut outbox = signal.outbox.borrow_mut();
                if outbox.len() + topic.len() + payload.len() > downlink.max_queued {
                    self.metrics.drop_downlink("slow_car");
                    answer(Outcome::SlowCar);
                    return;
                }
                match encode_publish(
                    &mut outbox,
                    topic.as_bytes(),
                    payload,
                    QoS::AtMostOnce,
                    None,
                    false,
                    false,
                ) {
                    Ok(()) => {
                        if signal.queued.get() == 0 {
                            signal.queued_since.set(super::signal::micros());
                        }
                        signal.queued.set(signal.queued.get().saturating_add(1));
                        drop(outbox);
                        if let Some(ask) = ask {
                            downlink
                                .asks
                                .borrow_mut()
                                .entry(signal_key(&signal))
                                .or_default()
                                .push(OwedReceipt {
                                    client: client.as_bytes().to_vec(),
                                    id: ask.id.to_vec(),
                                    request: ask.request,
                                });
                        }
                        signal.wake();
                    }
                    Err(_) => {
                        self.metrics.drop_downlink("invalid");
                        answer(Outcome::Invalid);
                    }
                }
            }
        }
    }

    /// Tells the router this shard does not hold `session` of `client`
    /// (for example after a crash): its registration is stale.
    fn report_gone(&self, downlink: &Downlink, client: &str, session: u64) {
        if !downlink
            .gone
            .borrow_mut()
            .insert((client.to_owned(), session))
        {
            return;
        }
        bump(&self.metrics.gone_reports);
        tracing::debug!(
            shard = self.id,
            client,
            session,
            "reporting a stale session as gone"
        );
        let record = SessionRecord::ended(session, downlink.slot(), End::Gone);
        self.register(&ByteString::from(client), &record);
    }
}
