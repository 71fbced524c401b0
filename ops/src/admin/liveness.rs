//! `/livez`: whether the loops a process names have turned lately.
//!
//! Each loop bumps a counter every turn (its heartbeat: the gateway's
//! shard pollers, the router's routing loop; the systemd watchdog reads the
//! same counters). The admin thread reads them once a second (and on each
//! probe) and notes when each last changed; a loop whose counter has not
//! changed for longer than the liveness timeout is stalled. A counter
//! still at 0 is a loop that has not started: that is readiness'
//! business, not judged here. The judging takes the time as an argument, so the tests below
//! run on synthetic instants.

use std::fmt::Write;
use std::time::{Duration, Instant};

/// Reads every heartbeat, in the order of the names.
type Read = Box<dyn Fn() -> Vec<u64> + Send>;

/// The loops `/livez` watches: their names (`shard 0`, `routing loop`),
/// how to read their counters, and how long one may go without a turn.
pub struct Heartbeats {
    names: Vec<String>,
    read: Read,
    timeout: Duration,
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats")
            .field("names", &self.names)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Heartbeats {
    /// `read` returns the counters in the order of `names`.
    pub fn new(
        names: Vec<String>,
        timeout: Duration,
        read: impl Fn() -> Vec<u64> + Send + 'static,
    ) -> Self {
        Self {
            names,
            read: Box::new(read),
            timeout,
        }
    }
}

/// A heartbeat's last value and when it was first seen at that value.
#[derive(Debug, Clone, Copy)]
struct Seen {
    beats: u64,
    since: Instant,
}

/// The heartbeats and what was seen of them.
#[derive(Debug)]
pub(crate) struct Watch {
    heartbeats: Heartbeats,
    seen: Vec<Seen>,
}

impl Watch {
    pub(crate) fn new(heartbeats: Heartbeats, now: Instant) -> Self {
        let seen = (heartbeats.read)()
            .into_iter()
            .map(|beats| Seen { beats, since: now })
            .collect();
        Self { heartbeats, seen }
    }

    /// Reads the counters now.
    pub(crate) fn look(&mut self, now: Instant) {
        let beats = (self.heartbeats.read)();
        self.observe(&beats, now);
    }

    /// Notes the counters `beats` as read at `now`.
    fn observe(&mut self, beats: &[u64], now: Instant) {
        if self.seen.len() < beats.len() {
            self.seen.resize(
                beats.len(),
                Seen {
                    beats: 0,
                    since: now,
                },
            );
        }
        for (seen, &beats) in self.seen.iter_mut().zip(beats) {
            if seen.beats != beats {
                *seen = Seen { beats, since: now };
            }
        }
    }

    /// `None` while every started loop turned within the timeout; else a
    /// line per stalled loop: which, for how long.
    pub(crate) fn stalled(&self, now: Instant) -> Option<String> {
        let timeout = self.heartbeats.timeout;
        let mut said = String::new();
        for (name, seen) in self.heartbeats.names.iter().zip(&self.seen) {
            let still = now.saturating_duration_since(seen.since);
            if seen.beats > 0 && still > timeout {
                let _ = writeln!(
                    said,
                    "{name}: not turned for {:.1} s (liveness timeout {} s)",
                    still.as_secs_f64(),
                    timeout.as_secs_f64()
                );
            }
        }
        (!said.is_empty()).then_some(said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(names: &[&str], timeout_secs: u64, start: Instant) -> Watch {
        let count = names.len();
        Watch::new(
            Heartbeats::new(
                names.iter().map(|n| (*n).to_owned()).collect(),
                Duration::from_secs(timeout_secs),
                move || vec![0; count],
            ),
            start,
        )
    }

    #[test]
    fn loops_that_turn_are_live() {
        let start = Instant::now();
        let mut watch = watch(&["shard 0", "shard 1"], 5, start);
        for second in 1..=20 {
            watch.observe(&[second, second * 7], start + Duration::from_secs(second));
        }
        assert_eq!(watch.stalled(start + Duration::from_secs(24)), None);
    }

    #[test]
    fn a_loop_that_stops_turning_is_named_with_how_long() {
        let start = Instant::now();
        let mut watch = watch(&["shard 0", "shard 1"], 5, start);
        watch.observe(&[1, 1], start + Duration::from_millis(100));
        // Shard 1 stops at 2 s; shard 0 goes on.
        watch.observe(&[2, 9], start + Duration::from_secs(2));
        for second in 3..=8 {
            watch.observe(&[second, 9], start + Duration::from_secs(second));
        }
        let at = |millis| start + Duration::from_millis(millis);
        assert_eq!(
            watch.stalled(at(7_000)),
            None,
            "exactly the timeout is live"
        );
        assert_eq!(
            watch.stalled(at(8_500)).as_deref(),
            Some("shard 1: not turned for 6.5 s (liveness timeout 5 s)\n")
        );
        // It turns again: live.
        watch.observe(&[9, 10], at(9_000));
        assert_eq!(watch.stalled(at(9_100)), None);
    }

    #[test]
    fn a_loop_not_started_yet_is_not_judged() {
        let start = Instant::now();
        let mut watch = watch(&["routing loop"], 5, start);
        watch.observe(&[0], start + Duration::from_secs(60));
        assert_eq!(watch.stalled(start + Duration::from_secs(120)), None);
        watch.observe(&[1], start + Duration::from_secs(121));
        assert!(
            watch
                .stalled(start + Duration::from_secs(127))
                .is_some_and(|said| said.starts_with("routing loop: not turned for 6.0 s"))
        );
    }
}
