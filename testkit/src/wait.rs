//! Bounded waits: how long a test waits for something before it fails, and
//! the loop that waits for a condition.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// The bound on anything the integration tests wait for: a process to be
/// ready, a reply on a socket, records through the broker, messages through
/// the router and the gateway, a counter to reach its value.
///
/// One value serves every purpose because it decides only how long a
/// broken test takes to fail: a passing test waits as long as the event
/// takes and not a moment more. It is generous because the slowest event
/// waited for is a consumer-group rebalance on tansu after a router dies
/// (a 6 s session timeout, then the router's orphan watch and a rejoin),
/// in a debug build, on a 2-core machine that may be compiling meanwhile.
/// Checks of speed use bounds of their own, named where they are used.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often [`wait_until`] looks again: often enough that a test barely
/// outlives its event, rarely enough to leave the cores to the processes
/// under test.
const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; fails the test naming `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    if poll(timeout, condition, |held| *held).is_err() {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Polls `value` until it equals `wanted`; fails the test naming `what`
/// and the last value seen after `timeout`.
pub fn wait_until_eq<T: PartialEq + Debug>(
    what: &str,
    timeout: Duration,
    wanted: &T,
    value: impl FnMut() -> T,
) {
    if let Err(seen) = poll(timeout, value, |seen| seen == wanted) {
        panic!("timed out after {timeout:?} waiting for {what}: {seen:?}, wanted {wanted:?}");
    }
}

/// Reads `value` every [`POLL`] until `done` accepts it; the last value
/// read if `timeout` passes first.
fn poll<T>(
    timeout: Duration,
    mut value: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Result<(), T> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = value();
        if done(&seen) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(seen);
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_condition_holds() {
        let mut calls = 0;
        wait_until("the third call", WAIT, || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for a value: 1, wanted 2")]
    fn a_timeout_names_what_and_the_last_value() {
        wait_until_eq("a value", Duration::from_millis(50), &2, || 1);
    }
}
