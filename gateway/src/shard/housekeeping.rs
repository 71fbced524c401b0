//! The shard's housekeeping tasks, beside the connections: the poller
//! (the producer's delivery reports, the downlink slot, takeover and
//! inspection orders,
//! the stop and drain flags, reading reopened when Kafka has caught up),
//! the sweeper of deadlines, and the drain.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::timer::sleep;

use super::{POLL_INTERVAL, SWEEP_INTERVAL, Shard};
use crate::metrics::bump;
use crate::registry::Order;
use crate::session::CloseReason;

/// Records in librdkafka's queue beyond which the poller serves
/// acknowledgements every [`POLL_INTERVAL`] instead of on the readiness
/// task's gathering ticks (below): in a burst (a fleet
/// connecting or subscribing at once) an acknowledged record's memory is
/// freed only when its report is served, and those 4 ms per record showed
/// as 100 bytes per car in the `idle_memory` test.
const BURST: i32 = 64;
/// Longest the poller sleeps while nothing is in flight or arriving. It is
/// woken early by what it serves: a record handed to the producer,
/// librdkafka when a routed message arrives, the gateway on a stop or a
/// drain, another shard with a takeover order. So this only bounds how
/// late it logs a Kafka client's error, and how often it beats the heart
/// the systemd watchdog checks (`WatchdogSec` must exceed it). The
/// sweeper's period, on the shard's clock: the sweeper wakes the shard
/// then anyway, so the idle poller costs no wake-up of its own. (A
/// wake-up costs a shard about 40 µs on the test machine: at 25 ms of its
/// own, an idle shard spent 0.35 % of a core on this sleep alone.)
const IDLE_POLL: Duration = SWEEP_INTERVAL;

/// Wakes the connections whose session deadline has passed.
pub(super) async fn sweep_deadlines(shard: Rc<Shard>) {
    loop {
        shard.table.check_deadlines(Instant::now());
        if shard.finished() {
            return;
        }
        shard.tick(SWEEP_INTERVAL).await;
    }
}

/// Serves delivery reports and reopens reading when there is room.
pub(super) async fn poll_producer(shard: Rc<Shard>) {
    loop {
        if shard.shutdown.load(Ordering::Relaxed) {
            shard.begin_stop();
        }
        bump(&shard.metrics.heartbeat);
        if shard.drain.load(Ordering::Relaxed) && !shard.draining.replace(true) {
            shard.wake_stop_waiters();
            glommio::spawn_local(drain(shard.clone())).detach();
        }
        shard.producer.poll();
        let arriving = shard
            .downlink
            .as_ref()
            .is_some_and(|downlink| downlink.serve(&shard));
        for order in shard.orders.try_iter() {
            match order {
                Order::TakeOver(connection) => {
                    shard.table.fire(connection, CloseReason::TakenOver);
                }
                Order::Inspect {
                    connection,
                    client_id,
                    respond,
                } => shard.inspect(connection, client_id, respond),
            }
        }
        if shard.flow.is_paused() && shard.producer.has_room() && shard.flow.resume(&shard.metrics)
        {
            tracing::debug!(shard = shard.id, "Kafka caught up: reads resumed");
        }
        if shard.finished() {
            shard.kick.forget();
            return;
        }
        let busy = arriving
            || shard.producer.queued() > 0
            || shard.flow.is_paused()
            || shard.stopping.get();
        if busy {
            let interval = if shard.producer.queued() > BURST {
                POLL_INTERVAL
            } else {
                // While records are in flight, delivery reports are served
                // on the readiness task's gathering ticks: the same
                // wake-ups. Woken early by librdkafka when routed messages
                // arrive, so this only delays acknowledgements, which
                // nothing waits for (QoS 0; the in-flight bound has room).
                // At 1 ms, a fleet publishing every 10 s woke the shard
                // about 1,000 times a second for its acknowledgements alone.
                shard.gather.window()
            };
            future::or(shard.tick(interval), shard.kick.kicked()).await;
        } else {
            // Nothing ran since `busy` was computed: a record handed over
            // from now on kicks.
            shard.poller_idle.set(true);
            future::or(shard.tick(IDLE_POLL), shard.kick.kicked()).await;
            shard.poller_idle.set(false);
        }
    }
}

/// Closes the shard's connections at its share of the drain rate (faster
/// if that would take longer than the drain's bound), so that cars
/// reconnect to other instances as a trickle, not a storm.
async fn drain(shard: Rc<Shard>) {
    /// Closes happen in batches this often.
    const TICK: Duration = Duration::from_millis(10);
    let ids = shard.table.ids();
    let rate = shard
        .drain_rate
        .max(ids.len() as f64 / shard.drain_max.as_secs_f64());
    tracing::info!(
        shard = shard.id,
        connections = ids.len(),
        per_second = rate,
        "draining: closing connections"
    );
    let started = Instant::now();
    let mut closed = 0usize;
    let mut ids = ids.into_iter();
    while !shard.stopping.get() {
        // Due by now at the drain's rate.
        let due = (started.elapsed().as_secs_f64() * rate).ceil() as usize;
        for id in ids.by_ref().take(due.saturating_sub(closed)) {
            shard.table.fire(id, CloseReason::Drained);
            closed += 1;
        }
        if ids.len() == 0 {
            // Cars accepted in the moment before the listeners closed are
            // drained too; ones already told stay until their task ends
            // (told again, they just close).
            let left = shard.table.ids();
            if left.is_empty() {
                break;
            }
            ids = left.into_iter();
        }
        sleep(TICK).await;
    }
    tracing::info!(
        shard = shard.id,
        closed,
        seconds = started.elapsed().as_secs_f64(),
        "drained"
    );
}
