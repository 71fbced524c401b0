//! Downlink delivery on a shard: the routed messages it reads from its
//! slot ([`super::slot`]) and queues to its cars, the receipts it answers,
//! the session-registry records it writes, and the gone reports for
//! sessions it does not hold. The poller serves it
//! ([`Downlink::serve`]); a connection's task writes what was queued.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::packet::encode_publish;
use codec::{ByteString, QoS};
use contract::{End, Outcome, SessionClock, SessionRecord};

use super::slot::{Polled, Routed, SlotConsumer};
use super::{Shard, log_due};
use crate::config::Config;
use crate::kafka::SendError;
use crate::kick::Kick;
use crate::metrics::{Dropped, bump};
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
    /// written, by the connection's id. Only connections with such
    /// messages have an entry: no cost for the others.
    asks: RefCell<HashMap<u64, Vec<OwedReceipt>>>,
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
    ) -> Result<Self, super::slot::SlotError> {
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

impl Downlink {
    /// Writes the receipt of a routed message this shard decided.
    fn answer(
        &self,
        shard: &Shard,
        client: &[u8],
        id: &[u8],
        request: contract::RequestRef,
        outcome: Outcome,
    ) {
        let value = contract::Receipt::new(
            outcome,
            contract::DecidedBy::Gateway,
            Some(self.slot()),
            request,
        )
        .encode();
        shard.metrics.count_receipt(outcome);
        let mut pending = self.pending_receipts.borrow_mut();
        if pending.is_empty() {
            match shard
                .producer
                .send_receipt(&self.receipts_topic, client, id, &value)
            {
                Ok(()) | Err(SendError::Failed) => return,
                Err(SendError::QueueFull) => {}
            }
        }
        pending.push_back((client.to_vec(), id.to_vec(), value));
    }

    /// The receipts owed for the messages queued to connection `id` so
    /// far (take them together with its output).
    pub(super) fn take_owed(&self, id: u64) -> Vec<OwedReceipt> {
        self.asks.borrow_mut().remove(&id).unwrap_or_default()
    }

    /// Answers receipts taken with [`Downlink::take_owed`].
    pub(super) fn settle(&self, shard: &Shard, owed: Vec<OwedReceipt>, outcome: Outcome) {
        for receipt in owed {
            self.answer(
                shard,
                &receipt.client,
                &receipt.id,
                receipt.request,
                outcome,
            );
        }
    }

    /// Writes a session-registry record, keeping this shard's records for
    /// one client in order.
    pub(super) fn write_session_record(
        &self,
        shard: &Shard,
        client_id: &ByteString,
        record: &SessionRecord,
    ) {
        shard.handed_over();
        let value = record.encode();
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            match shard
                .producer
                .send_registry(&self.sessions_topic, client_id.as_bytes(), &value)
            {
                Ok(()) | Err(SendError::Failed) => return,
                Err(SendError::QueueFull) => {}
            }
        }
        pending.push_back((client_id.clone(), value));
    }

    /// Offers the registry records and receipts that found the queue full
    /// again.
    pub(super) fn retry_pending(&self, shard: &Shard) {
        let mut receipts = self.pending_receipts.borrow_mut();
        while let Some((key, id, value)) = receipts.front() {
            match shard
                .producer
                .send_receipt(&self.receipts_topic, key, id, value)
            {
                Ok(()) | Err(SendError::Failed) => {
                    receipts.pop_front();
                }
                Err(SendError::QueueFull) => break,
            }
        }
        drop(receipts);
        let mut pending = self.pending.borrow_mut();
        while let Some((client_id, value)) = pending.front() {
            match shard
                .producer
                .send_registry(&self.sessions_topic, client_id.as_bytes(), value)
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
    pub(super) fn serve(&self, shard: &Shard) -> bool {
        self.retry_pending(shard);
        if self.gone_cleared.get().elapsed() >= GONE_MEMORY {
            self.gone.borrow_mut().clear();
            self.gone_cleared.set(Instant::now());
        }
        let mut busy = !self.pending.borrow().is_empty();
        for _ in 0..DOWNLINK_BATCH {
            match self
                .consumer
                .poll_with(&self.topic_header, |routed, missed| {
                    self.route(shard, routed, missed)
                }) {
                Polled::Empty => return busy,
                Polled::Read => busy = true,
                Polled::Failed(error) => {
                    if log_due(&self.error_logged_at, Instant::now()) {
                        tracing::warn!(shard = shard.id, slot = self.slot(), %error,
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
    fn route(&self, shard: &Shard, routed: Option<Routed<'_>>, missed: bool) {
        match routed {
            None => {
                bump(&shard.metrics.downlink_received);
                shard.metrics.downlink_dropped.bump(Dropped::Invalid);
            }
            Some(Routed::Takeover { client, session }) => {
                if let Some(control) = shard.table.holder(client).filter(|_| !missed)
                    && control.session() == Some(session)
                {
                    bump(&shard.metrics.takeover_notices);
                    shard.table.fire_at(&control, CloseReason::TakenOver);
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
                bump(&shard.metrics.downlink_received);
                if let Some(ms) = created_ms {
                    shard
                        .metrics
                        .downlink_age_at_read
                        .record_since_kafka_timestamp(ms);
                }
                let answer = |outcome: Outcome| {
                    if let Some(ask) = ask {
                        self.answer(shard, client.as_bytes(), ask.id, ask.request, outcome);
                    }
                };
                if expires_ms.is_some_and(|at| contract::now_ms() > at) {
                    shard.metrics.downlink_dropped.bump(Dropped::Expired);
                    answer(Outcome::Expired);
                    return;
                }
                let Some(control) = shard.table.holder(client).filter(|_| !missed) else {
                    shard.metrics.downlink_dropped.bump(Dropped::NotHeld);
                    answer(Outcome::Offline);
                    if let Some(session) = session {
                        self.report_gone(shard, client, session);
                    }
                    return;
                };
                // The router matched the filters it knew; the car may have
                // unsubscribed since.
                if !control
                    .filters
                    .borrow()
                    .iter()
                    .flat_map(|filters| filters.iter())
                    .any(|filter| codec::topic::matches(filter, topic))
                {
                    shard.metrics.downlink_dropped.bump(Dropped::NoFilter);
                    answer(Outcome::NoFilter);
                    return;
                }
                let mut outbox = control.outbox.borrow_mut();
                if outbox.len() + topic.len() + payload.len() > self.max_queued {
                    shard.metrics.downlink_dropped.bump(Dropped::SlowCar);
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
                        if control.queued.get() == 0 {
                            control.queued_since.set(super::control::micros());
                        }
                        control.queued.set(control.queued.get().saturating_add(1));
                        drop(outbox);
                        if let Some(ask) = ask {
                            self.asks.borrow_mut().entry(control.id).or_default().push(
                                OwedReceipt {
                                    client: client.as_bytes().to_vec(),
                                    id: ask.id.to_vec(),
                                    request: ask.request,
                                },
                            );
                        }
                        shard.table.notify(&control);
                    }
                    Err(_) => {
                        shard.metrics.downlink_dropped.bump(Dropped::Invalid);
                        answer(Outcome::Invalid);
                    }
                }
            }
        }
    }

    /// Tells the router this shard does not hold `session` of `client`
    /// (for example after a crash): its registration is stale.
    fn report_gone(&self, shard: &Shard, client: &str, session: u64) {
        if !self.gone.borrow_mut().insert((client.to_owned(), session)) {
            return;
        }
        bump(&shard.metrics.gone_reports);
        tracing::debug!(
            shard = shard.id,
            client,
            session,
            "reporting a stale session as gone"
        );
        let record = SessionRecord::ended(session, self.slot(), End::Gone);
        self.write_session_record(shard, &ByteString::from(client), &record);
    }
}
