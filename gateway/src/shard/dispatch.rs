//! A connection's packets: decoded from its input and fed to its
//! [`crate::session::Session`], and what the session decides applied on
//! the shard. No I/O and no waiting: the connection's task and the lot
//! (for a parked connection) both run [`Connection::handle`].

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use codec::Publish;
use contract::SessionRecord;

use super::connection::Connection;
use super::uplink::Offered;
use crate::metrics::Limit;
use crate::rate::{Held, OverLimit};
use crate::session::{CloseReason, Refused, Step};

/// What [`Connection::handle`] left to do.
pub(super) enum Handled {
    /// Every whole packet handled (a partial one stays in the input).
    Done,
    Close(CloseReason),
    /// librdkafka's queue is full: this PUBLISH waits for room (the
    /// packets after it stay in the input).
    Full(Publish),
    /// The PUBLISH at the head of the input is beyond the car's uplink
    /// limit (`limits.car_over_limit = "pause"`): it stays in the input,
    /// and nothing more is read from the car until [`Held::until`]. Counted
    /// where the car is held (the task), not here: the lot hands a held
    /// car to a task, which finds it held again.
    Hold(Held),
}

impl Connection {
    /// Decodes and handles every whole packet in `input`; replies go to
    /// `output`.
    ///
    /// A close order (takeover, shutdown, drain) is not looked at here:
    /// the bytes in hand were sent before it was heeded, at most one
    /// read's worth, and are handled (a drain loses nothing the car had
    /// sent). The task looks at its control block before each read, and
    /// the lot reads a closing parked connection once.
    pub(super) fn handle(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
        now: Instant,
    ) -> Handled {
        let shard = self.shard.clone();
        loop {
            // A PUBLISH, nearly every packet a car sends, is decoded where it
            // lies: its topic and payload go to librdkafka (which copies them)
            // before the frame leaves the buffer.
            match shard.decoder.decode_publish_in_place(input) {
                Ok(Some((publish, frame))) => {
                    let handled = match self.session.on_publish_in_place(&publish, frame, now) {
                        None => match self.publish(publish.topic_bytes(), publish.payload()) {
                            // Kept for the retry: the next read may reuse the buffer.
                            Offered::Full => Some(Handled::Full(publish.to_publish())),
                            Offered::Close(reason) => Some(Handled::Close(reason)),
                            Offered::Done => None,
                        },
                        Some(Step::Close(reason)) => Some(Handled::Close(reason)),
                        Some(Step::Hold(held)) => match self.session_timing().uplink.over {
                            // Not taken: offered again at `until`.
                            OverLimit::Pause => return Handled::Hold(held),
                            OverLimit::Disconnect => {
                                shard.metrics.limited.bump(held.by);
                                Some(Handled::Close(self.session.close(CloseReason::UplinkLimit)))
                            }
                        },
                        // A closed session ignores it.
                        Some(_) => None,
                    };
                    input.advance(frame);
                    match handled {
                        Some(handled) => return handled,
                        None => continue,
                    }
                }
                Ok(None) => {}
                Err(error) => return Handled::Close(self.session.on_decode_error(error, output)),
            }
            let packet = match shard.decoder.decode(input) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Handled::Done,
                Err(error) => return Handled::Close(self.session.on_decode_error(error, output)),
            };
            match self
                .session
                .on_packet_with(packet, now, &shard.policy, output)
            {
                Step::Continue => {}
                Step::FiltersChanged(refused) => self.on_filters_changed(refused),
                Step::Close(reason) => return Handled::Close(reason),
                // Only a PUBLISH decoded in place is held (above).
                Step::Hold(_) => {}
                Step::Connect(connect) => {
                    if let Some(reason) = self.on_connect(&connect, now, output) {
                        return Handled::Close(reason);
                    }
                }
                Step::Publish(publish) => {
                    match self.publish(publish.topic_bytes(), publish.payload()) {
                        Offered::Done => {}
                        Offered::Close(reason) => return Handled::Close(reason),
                        Offered::Full => return Handled::Full(publish),
                    }
                }
            }
        }
    }

    /// A SUBSCRIBE or UNSUBSCRIBE changed the session's filters: the
    /// refused ones counted, the new set shared with the downlink's
    /// matching and written to the session registry.
    fn on_filters_changed(&self, refused: Refused) {
        let metrics = &self.shard.metrics;
        metrics
            .limited
            .add(Limit::FilterLength, refused.too_long.into());
        metrics
            .limited
            .add(Limit::FiltersPerSession, refused.too_many.into());
        metrics
            .subscribe_denied
            .fetch_add(refused.not_allowed.into(), Ordering::Relaxed);
        *self.control.filters.borrow_mut() = self.session.shared_filters().cloned();
        if let Some(client_id) = self.session.client_id() {
            let filters = self.session.filters();
            self.write_session_record(client_id, |session_id, slot| {
                SessionRecord::live(session_id, slot, filters.iter().map(ToString::to_string))
            });
        }
    }
}
