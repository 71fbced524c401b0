//! A car's uplink limit: PUBLISH messages and bytes per second, each with
//! a burst, as the generic cell rate algorithm (GCRA) keeps them.
//!
//! Each dimension keeps one number per car, the *theoretical arrival
//! time*: when the car's allowance would be whole again had it sent
//! nothing more. A PUBLISH of cost `c` moves it `c × T` later (`T`: the
//! time one unit is worth at the rate), from now if it lay in the past;
//! the car is within its limit while it lies at most `burst × T` ahead of
//! now. So a car that was quiet may send `burst` units at once, and then
//! `rate` a second. Sixteen bytes per car (two such times), and no timer:
//! a car is only looked at when it publishes.
//!
//! What happens beyond the limit is the caller's (`limits.car_over_limit`):
//! the car's reads pause until [`Held::until`] (the PUBLISH stays unread
//! in its buffer, TCP pushes back on that one car), or it is disconnected.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Limit;

/// What the gateway does with a car beyond its uplink limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Read nothing more from the car until its allowance allows its next
    /// PUBLISH: backpressure on that car alone, nothing lost.
    #[default]
    Pause,
    /// Close the connection (`uplink_limit`).
    Disconnect,
}

/// One dimension's rate: what one unit costs, and how far ahead the
/// theoretical arrival time may run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    /// Nanoseconds one unit is worth; 0: no limit.
    per_unit: f64,
    /// `burst × per_unit`, in nanoseconds.
    tolerance: f64,
    /// The most one PUBLISH is charged: the burst, so that a packet larger
    /// than the burst still passes once the allowance is whole.
    burst: f64,
}

impl Rate {
    const NONE: Self = Self {
        per_unit: 0.0,
        tolerance: 0.0,
        burst: 0.0,
    };

    const fn new(per_sec: u32, burst: u32) -> Self {
        if per_sec == 0 {
            return Self::NONE;
        }
        let per_unit = 1e9 / per_sec as f64;
        let burst = if burst == 0 { 1.0 } else { burst as f64 };
        Self {
            per_unit,
            tolerance: burst * per_unit,
            burst,
        }
    }

    /// Where the arrival time `tat` moves for a PUBLISH of `cost` units at
    /// `now`, or, when that is beyond the limit, the earliest time the
    /// PUBLISH would be within it (all in nanoseconds since [`epoch`]).
    fn charge(&self, tat: u64, now: u64, cost: f64) -> Result<u64, u64> {
        if self.per_unit == 0.0 {
            return Ok(tat);
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a cost of at most the burst, in nanoseconds: far below u64::MAX"
        )]
        let next = tat.max(now) + (cost.min(self.burst) * self.per_unit) as u64;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the tolerance is positive and below u64::MAX"
        )]
        let tolerance = self.tolerance as u64;
        match next.checked_sub(tolerance) {
            Some(allowed_from) if allowed_from > now => Err(allowed_from),
            _ => Ok(next),
        }
    }
}

/// The limit every car of a gateway gets (`[limits] car_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UplinkLimit {
    messages: Rate,
    bytes: Rate,
    /// What is done beyond it.
    pub over: OverLimit,
}

impl UplinkLimit {
    /// No limit.
    pub const UNLIMITED: Self = Self::new(0, 0, 0, 0, OverLimit::Pause);

    /// Messages and bytes per second with their bursts; a rate of 0 is no
    /// limit on that dimension.
    pub const fn new(
        messages_per_sec: u32,
        message_burst: u32,
        bytes_per_sec: u32,
        byte_burst: u32,
        over: OverLimit,
    ) -> Self {
        Self {
            messages: Rate::new(messages_per_sec, message_burst),
            bytes: Rate::new(bytes_per_sec, byte_burst),
            over,
        }
    }

    /// Charges a PUBLISH of `bytes` (its whole frame) at `now` to a car's
    /// `allowance`, if both dimensions allow it; otherwise the allowance is
    /// left as it was and [`Held`] says until when and by which limit.
    pub fn admit(&self, allowance: &mut Allowance, now: Instant, bytes: usize) -> Result<(), Held> {
        if self.messages.per_unit == 0.0 && self.bytes.per_unit == 0.0 {
            return Ok(());
        }
        let at = nanos_at(now);
        #[allow(
            clippy::cast_precision_loss,
            reason = "a packet's size, at most 256 MiB: exact in an f64"
        )]
        let cost = bytes as f64;
        let held = |until: u64, by: Limit| Held {
            until: now + Duration::from_nanos(until.saturating_sub(at)),
            by,
        };
        let messages = self
            .messages
            .charge(allowance.messages, at, 1.0)
            .map_err(|until| held(until, Limit::CarMessages))?;
        let bytes = self
            .bytes
            .charge(allowance.bytes, at, cost)
            .map_err(|until| held(until, Limit::CarBytes))?;
        allowance.messages = messages;
        allowance.bytes = bytes;
        Ok(())
    }
}

/// One car's state against its [`UplinkLimit`]: the two theoretical
/// arrival times, in nanoseconds since the process's [`epoch`] (0: the
/// allowance is whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowance {
    messages: u64,
    bytes: u64,
}

/// A PUBLISH beyond the car's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The earliest time it is within the limit.
    pub until: Instant,
    /// Which limit it is beyond (`carbridge_gateway_limited_total{limit}`).
    pub by: Limit,
}

/// The instant the allowances count from: the first call.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `now` in nanoseconds since [`epoch`] (0 for an instant before it):
/// 584 years fit.
fn nanos_at(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_quiet_car_sends_its_burst_at_once_then_its_rate() {
        let limit = UplinkLimit::new(10, 5, 0, 0, OverLimit::Pause);
        let mut allowance = Allowance::default();
        let t0 = Instant::now() + ms(10);
        for n in 0..5 {
            assert!(limit.admit(&mut allowance, t0, 10).is_ok(), "message {n}");
        }
        let held = limit.admit(&mut allowance, t0, 10).unwrap_err();
        assert_eq!(held.by, Limit::CarMessages);
        // One message's worth (100 ms at 10/s) later.
        assert_eq!(held.until, t0 + ms(100));
        // Refused, so nothing was charged: at that time it passes, and the
        // next waits another 100 ms.
        assert!(limit.admit(&mut allowance, held.until, 10).is_ok());
        let next = limit.admit(&mut allowance, held.until, 10).unwrap_err();
        assert_eq!(next.until, t0 + ms(200));
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let limit = UplinkLimit::new(100, 10, 0, 0, OverLimit::Pause);
        let mut allowance = Allowance::default();
        let t0 = Instant::now() + ms(10);
        // A flooder that tries every millisecond for 10 s.
        let admitted = (0..10_000)
            .filter(|n| limit.admit(&mut allowance, t0 + ms(*n), 64).is_ok())
            .count();
        // 10 s at 100/s, plus the burst.
        assert!((1000..=1010).contains(&admitted), "{admitted}");
    }

    #[test]
    fn bytes_are_limited_by_the_frame_size_and_a_packet_beyond_the_burst_still_passes() {
        let limit = UplinkLimit::new(0, 0, 1000, 2000, OverLimit::Pause);
        let mut allowance = Allowance::default();
        let t0 = Instant::now() + ms(10);
        assert!(limit.admit(&mut allowance, t0, 1500).is_ok());
        let held = limit.admit(&mut allowance, t0, 1000).unwrap_err();
        assert_eq!(held.by, Limit::CarBytes);
        // 500 bytes over the burst at 1000 bytes/s.
        assert_eq!(held.until, t0 + ms(500));
        // A 5,000-byte packet costs the whole burst (2 s): it passes once
        // the allowance is whole, and then holds the car 2 s.
        let t1 = t0 + ms(5000);
        assert!(limit.admit(&mut allowance, t1, 5000).is_ok());
        assert_eq!(
            limit.admit(&mut allowance, t1, 1).unwrap_err().until,
            t1 + ms(1)
        );
    }

    #[test]
    fn both_limits_must_allow_and_a_refusal_charges_neither() {
        let limit = UplinkLimit::new(10, 1, 100, 100, OverLimit::Pause);
        let mut allowance = Allowance::default();
        let t0 = Instant::now() + ms(10);
        assert!(limit.admit(&mut allowance, t0, 100).is_ok());
        let before = allowance;
        assert!(limit.admit(&mut allowance, t0, 1).is_err());
        assert_eq!(allowance, before);
    }

    #[test]
    fn no_limit_admits_everything() {
        let limit = UplinkLimit::UNLIMITED;
        let mut allowance = Allowance::default();
        let now = Instant::now();
        for _ in 0..100_000 {
            assert!(limit.admit(&mut allowance, now, 1 << 20).is_ok());
        }
        assert_eq!(allowance, Allowance::default());
    }
}
