//! Held delivery: a request that asked to be held, for a car that cannot
//! take it now, waits in [`crate::held`] (and in `mqtt.held`, for a
//! successor) until the car's registry record makes it routable, or until
//! it expires. Routing a request, held or not, ends in
//! [`Router::produce_routed`].
//!
//! Order: a car's held requests are released in Kafka order by the
//! registry record that makes them routable, before the loop reads the
//! next record; a newer request routable at that moment therefore comes
//! after them (the producer keeps order per partition).

use std::sync::atomic::Ordering;

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::commit::Kind;
use super::{Partition, Router};
use crate::held::{Full, Held, Request};
use crate::metrics::{Dropped, HoldRefused, bump};
use crate::table::{Miss, Route};

/// A request to route: read from `cs.downlink`, or held before.
pub(super) struct Routed<'a> {
    pub client: &'a str,
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Its effective expiry.
    pub expires: Option<i64>,
    pub receipt: Option<&'a [u8]>,
    pub request: contract::RequestRef,
    /// Its Kafka timestamp.
    pub timestamp: Option<i64>,
}

/// What the loop does with one held request when its car's state changes.
enum Step {
    Route(Route),
    /// Answered now (and deleted): expired, or a slot that does not exist.
    Answer(contract::Outcome),
    /// The car cannot take this one yet; later ones may match.
    Keep,
    /// The car is offline: nothing of its queue can go.
    Stop,
}

impl Router {
    /// Produces `routed` to its car's slot (or answers `no_slot`).
    pub(super) fn produce_routed(&self, routed: &Routed<'_>, route: &Route) {
        if route.slot >= self.slots {
            self.metrics.dropped.bump(Dropped::NoSlot);
            if let Some(id) = routed.receipt {
                self.send_receipt(
                    routed.client.as_bytes(),
                    id,
                    contract::Outcome::NoSlot,
                    routed.request,
                );
            }
            tracing::warn!(
                client = routed.client,
                slot = route.slot,
                slots = self.slots,
                "session names a slot mqtt.downlink does not have: add partitions"
            );
            return;
        }
        let session = route.session.to_string();
        let expiry = routed.expires.map(|at| at.to_string());
        let request_header = routed.request.header();
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: &self.config.topic_header,
                value: Some(routed.topic.as_bytes()),
            })
            .insert(Header {
                key: contract::HEADER_SESSION,
                value: Some(session.as_bytes()),
            });
        if let Some(expiry) = &expiry {
            headers = headers.insert(Header {
                key: contract::HEADER_EXPIRES,
                value: Some(expiry.as_bytes()),
            });
        }
        if let Some(id) = routed.receipt {
            headers = headers
                .insert(Header {
                    key: contract::HEADER_RECEIPT,
                    value: Some(id),
                })
                .insert(Header {
                    key: contract::HEADER_REQUEST,
                    value: Some(request_header.as_bytes()),
                });
        }
        let record = BaseRecord::with_opaque_to(&self.config.routed_topic, 0)
            .partition(i32::try_from(route.slot).unwrap_or(i32::MAX))
            .key(routed.client.as_bytes())
            .payload(routed.payload)
            .headers(headers);
        if self.send(record, Kind::Routed) {
            bump(&self.metrics.sent);
            if let Some(ms) = routed.timestamp {
                self.metrics.age_at_routing.record_since_kafka_timestamp(ms);
            }
        } else {
            bump(&self.metrics.failed);
        }
    }

    /// Holds a request its car cannot take (`miss`), if it has an expiry
    /// and fits the bounds; otherwise decides it now.
    pub(super) fn hold(&mut self, miss: Miss, routed: &Routed<'_>) {
        let answer = |router: &Self, outcome| {
            if let Some(id) = routed.receipt {
                router.send_receipt(routed.client.as_bytes(), id, outcome, routed.request);
            }
        };
        let Some(expires) = routed.expires else {
            bump(&self.metrics.hold_without_expiry);
            self.metrics.dropped.bump(miss.dropped());
            answer(self, miss.outcome());
            return;
        };
        let longest = routed
            .timestamp
            .unwrap_or_else(contract::now_ms)
            .saturating_add(i64::try_from(self.config.hold_max.as_millis()).unwrap_or(i64::MAX));
        let request = Request {
            offset: routed.request.offset,
            topic: routed.topic.to_owned(),
            payload: routed.payload.to_vec(),
            receipt: routed.receipt.map(<[u8]>::to_vec),
            expires_ms: expires.min(longest),
            timestamp_ms: routed.timestamp,
        };
        let partition = routed.request.partition;
        let router_bytes =
            usize::try_from(self.metrics.held_bytes.load(Ordering::Relaxed)).unwrap_or(0);
        let nothing = Held::default();
        let admitted = self.held.get(&partition).unwrap_or(&nothing).admits(
            routed.client,
            &request,
            &self.config.hold_bounds,
            router_bytes,
        );
        if let Err(full) = admitted {
            self.metrics.hold_refused.bump(match full {
                Full::CarCount => HoldRefused::CarCount,
                Full::CarBytes => HoldRefused::CarBytes,
                Full::RouterBytes => HoldRefused::RouterBytes,
            });
            self.metrics.dropped.bump(Dropped::HoldFull);
            answer(self, contract::Outcome::HoldFull);
            tracing::debug!(
                client = routed.client,
                bound = full.label(),
                "not held: bound reached"
            );
            return;
        }
        let until = request.expires_ms;
        self.write_held(partition, routed.client, &request);
        let size = self
            .held
            .entry(partition)
            .or_default()
            .insert(routed.client, request);
        self.account(1, size, true);
        bump(&self.metrics.held_total);
        if let Some(id) = routed.receipt {
            let value = contract::Receipt::held(until, routed.request).encode();
            self.produce_receipt(
                routed.client.as_bytes(),
                id,
                &value,
                contract::Outcome::Held,
            );
        }
    }

    /// Routes, in order, what is held for `client` that it can take now;
    /// answers what expired.
    pub(super) fn release(&mut self, partition: i32, client: &str) {
        let Some(offsets) = self
            .held
            .get(&partition)
            .filter(|held| held.holds_for(client))
            .map(|held| held.offsets_for(client))
        else {
            return;
        };
        let now = contract::now_ms();
        for offset in offsets {
            let step = match (self.partitions.get(&partition), self.held.get(&partition)) {
                (Some(Partition::Ready(table)), Some(held)) => match held.get(offset) {
                    Some(request) if request.expires_ms < now => {
                        Step::Answer(contract::Outcome::Expired)
                    }
                    Some(request) => match table.route(client, &request.topic) {
                        Ok(route) if route.slot >= self.slots => {
                            Step::Answer(contract::Outcome::NoSlot)
                        }
                        Ok(route) => Step::Route(route),
                        Err(Miss::NoFilter) => Step::Keep,
                        Err(Miss::Offline) => Step::Stop,
                    },
                    None => Step::Keep,
                },
                _ => Step::Stop,
            };
            match step {
                Step::Keep => {}
                Step::Stop => return,
                Step::Route(route) => {
                    if let Some((client, request)) = self.unhold(partition, offset) {
                        self.produce_routed(&routed(&client, partition, &request), &route);
                        bump(&self.metrics.held_released);
                        // The routed record before the deletion: a crash
                        // between them delivers twice, never loses.
                        self.delete_held(partition, &client, offset);
                    }
                }
                Step::Answer(outcome) => self.drop_held(partition, offset, outcome),
            }
        }
    }

    /// Answers and deletes every held request of `partition` whose expiry
    /// passed.
    pub(super) fn expire_held(&mut self) {
        let now = contract::now_ms();
        let expired: Vec<(i32, i64)> = self
            .held
            .iter()
            .flat_map(|(partition, held)| held.expired(now).into_iter().map(|o| (*partition, o)))
            .collect();
        for (partition, offset) in expired {
            self.drop_held(partition, offset, contract::Outcome::Expired);
        }
    }

    /// Deletes a held request and answers it `outcome` (final).
    fn drop_held(&mut self, partition: i32, offset: i64, outcome: contract::Outcome) {
        let Some((client, request)) = self.unhold(partition, offset) else {
            return;
        };
        self.metrics.dropped.bump(match outcome {
            contract::Outcome::NoSlot => Dropped::NoSlot,
            _ => Dropped::Expired,
        });
        if let Some(id) = &request.receipt {
            self.send_receipt(
                client.as_bytes(),
                id,
                outcome,
                contract::RequestRef { partition, offset },
            );
        }
        self.delete_held(partition, &client, offset);
    }

    /// Takes a request out of memory, keeping the gauges.
    fn unhold(&mut self, partition: i32, offset: i64) -> Option<(String, Request)> {
        let (client, request, size) = self.held.get_mut(&partition)?.remove(offset)?;
        self.account(-1, size, false);
        Some((client, request))
    }

    /// Adds `count` requests and `bytes` (or takes the bytes away) to the
    /// gauges.
    fn account(&self, count: i64, bytes: usize, add: bool) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.metrics.held.fetch_add(count, Ordering::Relaxed);
        self.metrics
            .held_bytes
            .fetch_add(if add { bytes } else { -bytes }, Ordering::Relaxed);
    }

    /// Writes a held request to `mqtt.held` (same partition number as its
    /// request), key `{client}/{offset}`, marked by header
    /// `carbridge.hold`.
    fn write_held(&self, partition: i32, client: &str, request: &Request) {
        let key = held_key(client, request.offset);
        let expires = request.expires_ms.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: contract::HEADER_HOLD,
                value: Some("1"),
            })
            .insert(Header {
                key: contract::HEADER_TOPIC,
                value: Some(request.topic.as_bytes()),
            })
            .insert(Header {
                key: contract::HEADER_EXPIRES,
                value: Some(expires.as_bytes()),
            });
        if let Some(id) = &request.receipt {
            headers = headers.insert(Header {
                key: contract::HEADER_RECEIPT,
                value: Some(id),
            });
        }
        let mut record = BaseRecord::with_opaque_to(&self.config.held_topic, 0)
            .partition(partition)
            .key(key.as_bytes())
            .payload(&request.payload[..])
            .headers(headers);
        if let Some(ms) = request.timestamp_ms {
            record = record.timestamp(ms);
        }
        self.send(record, Kind::Held);
    }

    /// Writes the deletion (a tombstone: no value, no headers) of a held
    /// request, and remembers it until it is read back.
    fn delete_held(&mut self, partition: i32, client: &str, offset: i64) {
        if let Some(held) = self.held.get_mut(&partition) {
            held.finish(offset);
        }
        let key = held_key(client, offset);
        let record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.config.held_topic, 0)
            .partition(partition)
            .key(key.as_bytes());
        self.send(record, Kind::Held);
    }

    /// Applies a record of `mqtt.held`: a held request is adopted, a
    /// deletion removes it. During a rebuild these are a predecessor's;
    /// after it, mostly this router's own, read back (adopting them
    /// changes nothing), and any a predecessor wrote past the end the
    /// broker reported, which are released at once if their car can take
    /// them.
    pub(super) fn apply_held<M: Message>(&mut self, partition: i32, message: &M) {
        if !self.partitions.contains_key(&partition) {
            return;
        }
        let Some((client, offset)) = message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .and_then(parse_held_key)
        else {
            tracing::debug!(
                partition,
                offset = message.offset(),
                "unreadable held record skipped"
            );
            return;
        };
        let (mut topic, mut expires, mut receipt, mut marked) = (None, None, None, false);
        for header in message.headers().into_iter().flat_map(|h| h.iter()) {
            match header.key {
                contract::HEADER_HOLD => marked = true,
                contract::HEADER_TOPIC => {
                    topic = header.value.and_then(|v| std::str::from_utf8(v).ok());
                }
                contract::HEADER_EXPIRES => expires = header.value.and_then(contract::parse_expiry),
                contract::HEADER_RECEIPT => receipt = header.value,
                _ => {}
            }
        }
        if !marked {
            self.unhold(partition, offset);
            if let Some(held) = self.held.get_mut(&partition) {
                held.deleted(offset);
            }
            return;
        }
        let (Some(topic), Some(expires_ms)) = (topic, expires) else {
            tracing::debug!(
                partition,
                offset,
                "held record without topic or expiry skipped"
            );
            return;
        };
        let request = Request {
            offset,
            topic: topic.to_owned(),
            payload: message.payload().unwrap_or_default().to_vec(),
            receipt: receipt.map(<[u8]>::to_vec),
            expires_ms,
            timestamp_ms: message.timestamp().to_millis(),
        };
        let size = self
            .held
            .entry(partition)
            .or_default()
            .adopt(client, request);
        if size > 0 {
            self.account(1, size, true);
            if matches!(self.partitions.get(&partition), Some(Partition::Ready(_))) {
                bump(&self.metrics.held_adopted);
                self.release(partition, client);
            }
        }
    }

    /// After a rebuild: routes what every car of `partition` can take now.
    pub(super) fn release_all(&mut self, partition: i32) {
        let clients = self
            .held
            .get(&partition)
            .map(Held::clients)
            .unwrap_or_default();
        for client in clients {
            self.release(partition, &client);
        }
    }

    /// Answers the admin endpoint's `GET /held/<client>`: the requests
    /// this instance holds for `client`, oldest first, and the partitions
    /// it owns (the car's requests are held by the owner of its
    /// partition).
    pub(super) fn answer_held(&self, client: &str, respond: ops::admin::Respond) {
        let mut owned: Vec<i32> = self.partitions.keys().copied().collect();
        owned.sort_unstable();
        let held: Vec<serde_json::Value> = self
            .held
            .iter()
            .flat_map(|(partition, held)| {
                held.for_client(client).map(move |request| {
                    serde_json::json!({
                        "partition": partition,
                        "offset": request.offset,
                        "topic": request.topic,
                        "payload_bytes": request.payload.len(),
                        "expires_ms": request.expires_ms,
                        "timestamp_ms": request.timestamp_ms,
                        "correlation_id": request
                            .receipt
                            .as_deref()
                            .map(String::from_utf8_lossy),
                    })
                })
            })
            .collect();
        respond.found(
            serde_json::json!({
                "client_id": client,
                "partitions_owned": owned,
                "held": held,
            })
            .to_string(),
        );
    }

    /// Forgets every held request (the partitions were revoked: the next
    /// owner reads them from `mqtt.held`).
    pub(super) fn forget_held(&mut self) {
        self.held.clear();
        self.metrics.held.store(0, Ordering::Relaxed);
        self.metrics.held_bytes.store(0, Ordering::Relaxed);
    }
}

/// A held request as a request to route.
fn routed<'a>(client: &'a str, partition: i32, request: &'a Request) -> Routed<'a> {
    Routed {
        client,
        topic: &request.topic,
        payload: &request.payload,
        expires: Some(request.expires_ms),
        receipt: request.receipt.as_deref(),
        request: contract::RequestRef {
            partition,
            offset: request.offset,
        },
        timestamp: request.timestamp_ms,
    }
}

/// The `mqtt.held` key of a request: `{client id}/{offset}` (compaction
/// keeps the last record per key: the request, or its deletion).
pub(super) fn held_key(client: &str, offset: i64) -> String {
    format!("{client}/{offset}")
}

/// The client id and offset of an `mqtt.held` key (the id may hold `/`).
pub(super) fn parse_held_key(key: &str) -> Option<(&str, i64)> {
    let (client, offset) = key.rsplit_once('/')?;
    Some((client, offset.parse().ok()?)).filter(|(client, _)| !client.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_keys_name_the_client_and_the_offset() {
        assert_eq!(held_key("VIN-1", 42), "VIN-1/42");
        assert_eq!(parse_held_key("VIN-1/42"), Some(("VIN-1", 42)));
        assert_eq!(parse_held_key("fleet/a/VIN/7"), Some(("fleet/a/VIN", 7)));
        assert_eq!(parse_held_key("VIN-1"), None);
        assert_eq!(parse_held_key("/3"), None);
        assert_eq!(parse_held_key("VIN/x"), None);
    }
}
