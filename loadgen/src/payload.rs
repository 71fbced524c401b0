//! What a simulated car sends and receives: its client id, and payloads
//! that carry car, sequence number and send time, so the receiving side can
//! measure latency, loss, duplication and order per car.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (the clock every process of a run
/// shares on one machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Car `car`'s client id: 17 characters, like a VIN.
pub fn client_id(car: u64) -> String {
    format!("CBLG{car:013}")
}

/// The car number in a client id made by [`client_id`].
pub fn car_of(client_id: &str) -> Option<u64> {
    client_id.strip_prefix("CBLG")?.parse().ok()
}

/// The MQTT topic of the downlink messages loadgen sends (through Kafka).
pub const DOWNLINK_TOPIC: &str = "DL/LOAD";
/// The MQTT topic of downlink messages that asked to be held (`--hold`):
/// counted like the others, kept out of the downlink latency.
pub const HELD_TOPIC: &str = "DL/LOAD/HELD";

/// The smallest payload that holds the header of the largest values.
pub const MIN_PAYLOAD: usize = 64;

/// Where car `car` is at its message `seq`: every car drives its own slow
/// circle around Gothenburg (57.70 N, 11.97 E), so some of them cross the
/// water-warning service's area now and then.
pub fn position(car: u64, seq: u64) -> (f64, f64) {
    let phase = car as f64 * 0.618_034 * std::f64::consts::TAU + seq as f64 * 0.05;
    (57.70 + 0.05 * phase.sin(), 11.97 + 0.08 * phase.cos())
}

/// `"{car} {seq} {sent_us} {lat} {lon} "` padded with `.` to `size` bytes
/// (at least the header): readable in any Kafka tool.
pub fn encode(car: u64, seq: u64, sent_us: u64, size: usize) -> Vec<u8> {
    let (lat, lon) = position(car, seq);
    let mut payload = format!("{car} {seq} {sent_us} {lat:.5} {lon:.5} ").into_bytes();
    if payload.len() < size {
        payload.resize(size, b'.');
    }
    payload
}

/// (car, seq, sent_us) of a payload made by [`encode`].
pub fn decode(payload: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(payload.get(..payload.len().min(80))?).ok()?;
    let mut fields = text.split(' ');
    let car = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let sent = fields.next()?.parse().ok()?;
    Some((car, seq, sent))
}

/// (car, latitude, longitude) of an uplink payload made by [`encode`].
pub fn car_position(payload: &[u8]) -> Option<(u64, f64, f64)> {
    let text = std::str::from_utf8(payload.get(..payload.len().min(96))?).ok()?;
    let mut fields = text.split(' ');
    let car = fields.next()?.parse().ok()?;
    let lat = fields.nth(2)?.parse().ok()?;
    let lon = fields.next()?.parse().ok()?;
    Some((car, lat, lon))
}

/// Which messages of each car arrived: counts duplicates and arrivals
/// after a later message of the same car.
#[derive(Debug, Default)]
pub struct Arrivals {
    cars: Vec<Seen>,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

#[derive(Debug, Default, Clone)]
struct Seen {
    highest: u64,
    /// Bit `seq` set once message `seq` arrived.
    bits: Vec<u64>,
}

impl Arrivals {
    /// Records message `seq` (numbered from 1) of car `car`; false if it
    /// had arrived before.
    pub fn record(&mut self, car: u64, seq: u64) -> bool {
        let Ok(index) = usize::try_from(car) else {
            return false;
        };
        if self.cars.len() <= index {
            self.cars.resize(index + 1, Seen::default());
        }
        let Some(seen) = self.cars.get_mut(index) else {
            return false;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if seen.bits.len() <= word {
            seen.bits.resize(word + 1, 0);
        }
        let Some(slot) = seen.bits.get_mut(word) else {
            return false;
        };
        if *slot & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        *slot |= 1 << bit;
        self.unique += 1;
        if seq < seen.highest {
            self.out_of_order += 1;
        }
        seen.highest = seen.highest.max(seq);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_pad() {
        let payload = encode(700_000, 42, 1_795_000_000_000_000, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(decode(&payload), Some((700_000, 42, 1_795_000_000_000_000)));
        let (lat, lon) = position(700_000, 42);
        let (car, at_lat, at_lon) = car_position(&payload).unwrap();
        assert_eq!(car, 700_000);
        assert!((at_lat - lat).abs() < 1e-4 && (at_lon - lon).abs() < 1e-4);
        assert_eq!(
            encode(
                u64::from(u32::MAX),
                u64::from(u32::MAX),
                u64::MAX,
                MIN_PAYLOAD
            )
            .len(),
            MIN_PAYLOAD
        );
        assert_eq!(decode(b"garbage"), None);
        assert_eq!(decode(b""), None);
        assert_eq!(car_of(&client_id(12)), Some(12));
        assert_eq!(client_id(12).len(), 17);
    }

    #[test]
    fn arrivals_count_duplicates_and_reordering() {
        let mut arrivals = Arrivals::default();
        assert!(arrivals.record(3, 1));
        assert!(arrivals.record(3, 3));
        assert!(arrivals.record(3, 2)); // late
        assert!(!arrivals.record(3, 3)); // again
        assert!(arrivals.record(0, 1));
        assert_eq!(
            (arrivals.unique, arrivals.duplicates, arrivals.out_of_order),
            (4, 1, 1)
        );
    }
}
