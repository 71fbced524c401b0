//! Messages to the fleet at a fixed rate, round robin over the cars: the
//! pacing shared by the downlink senders and the raw producer.

use std::time::{Duration, Instant};

/// Messages to the fleet at a fixed rate, round-robin over the cars, each
/// car's numbered from 1.
#[derive(Debug)]
pub(super) struct RoundRobin {
    started: Instant,
    rate: f64,
    cars: u64,
    /// Messages sent so far: message `n` is due at `started + n / rate`.
    pub(super) count: u64,
    /// The last sequence number sent to each car.
    seqs: Vec<u64>,
}

impl RoundRobin {
    /// Starts pacing now.
    pub(super) fn new(cars: u64, rate: f64) -> Self {
        Self {
            started: Instant::now(),
            rate: rate.max(0.001),
            cars: cars.max(1),
            count: 0,
            seqs: vec![0; usize::try_from(cars.max(1)).unwrap_or(0)],
        }
    }

    /// How long until the next message is due; `None` when it is.
    pub(super) fn wait(&self) -> Option<Duration> {
        (self.started + Duration::from_secs_f64(self.count as f64 / self.rate))
            .checked_duration_since(Instant::now())
    }

    /// (car, seq) of the next message; it counts once [`Self::mark_sent`].
    pub(super) fn next(&self) -> (u64, u64) {
        let car = self.count % self.cars;
        let last = usize::try_from(car)
            .ok()
            .and_then(|i| self.seqs.get(i))
            .copied()
            .unwrap_or(0);
        (car, last + 1)
    }

    /// The message [`Self::next`] named went out.
    pub(super) fn mark_sent(&mut self) {
        let (car, seq) = self.next();
        if let Some(last) = usize::try_from(car).ok().and_then(|i| self.seqs.get_mut(i)) {
            *last = seq;
        }
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_numbers_each_car_from_one_and_counts_only_what_went_out() {
        let mut pace = RoundRobin::new(2, 1e9);
        assert_eq!(pace.next(), (0, 1));
        // Not sent (say the queue was full): the same message again.
        assert_eq!(pace.next(), (0, 1));
        pace.mark_sent();
        assert_eq!(pace.next(), (1, 1));
        pace.mark_sent();
        assert_eq!(pace.next(), (0, 2));
        assert_eq!(pace.count, 2);
        // At a slow rate the third message is not due yet.
        let slow = RoundRobin {
            count: 3,
            ..RoundRobin::new(2, 1.0)
        };
        assert!(slow.wait().is_some());
    }
}
