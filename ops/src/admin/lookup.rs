//! Lookups: `GET <prefix><key>` answered by the process from another
//! thread (the gateway's `/cars/<client id>`, answered by the shard that
//! holds the car). The admin thread percent-decodes the key, hands it to
//! the process's [`Lookup`] with a [`Respond`], and awaits the answer
//! within [`LOOKUP_TIMEOUT`] without blocking its other connections.

use std::time::Duration;

use futures_channel::oneshot;
use hyper::StatusCode;

/// How long the admin thread waits for a lookup's answer before it says
/// 504: a shard answers within a turn of its poller (milliseconds); one
/// that takes longer is stuck or busy, and `/livez` says which.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest key a lookup takes, decoded: MQTT client ids are at most
/// 65,535 bytes, the gateway's limit is far lower, and the request head is
/// at most 8 KiB anyway.
const MAX_KEY: usize = 4096;

/// Answers a lookup of `key` (decoded) through `Respond`, from any thread.
pub type Lookup = Box<dyn Fn(&str, Respond) + Send>;

/// A lookup's answer: found (200) or not here (404), with a JSON body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) status: StatusCode,
    pub(crate) json: String,
}

/// Where a lookup's answer goes. Dropped without an answer, the caller
/// gets 503.
#[derive(Debug)]
pub struct Respond(oneshot::Sender<Found>);

impl Respond {
    /// A pair: this, for whoever answers, and the awaited end.
    pub(crate) fn pair() -> (Self, oneshot::Receiver<Found>) {
        let (sender, receiver) = oneshot::channel();
        (Self(sender), receiver)
    }

    /// 200 with `json`.
    pub fn found(self, json: String) {
        let _ = self.0.send(Found {
            status: StatusCode::OK,
            json,
        });
    }

    /// 404 with `json`: the key is not here (the body says what is known).
    pub fn not_found(self, json: String) {
        let _ = self.0.send(Found {
            status: StatusCode::NOT_FOUND,
            json,
        });
    }
}

/// Why a path under a lookup's prefix names no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadKey {
    #[error("no key after the prefix")]
    Empty,
    #[error("a `%` not followed by two hexadecimal digits")]
    BadEscape,
    #[error("not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("longer than {MAX_KEY} bytes")]
    TooLong,
}

/// `raw` (a path's rest, as sent) percent-decoded: `%XX` is the byte XX,
/// everything else stands for itself (`+` too: this is a path, not a
/// query).
pub(crate) fn decode_key(raw: &str) -> Result<String, BadKey> {
    if raw.is_empty() {
        return Err(BadKey::Empty);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let (Some(high), Some(low)) = (
                after.first().and_then(|&h| hex(h)),
                after.get(1).and_then(|&l| hex(l)),
            ) else {
                return Err(BadKey::BadEscape);
            };
            bytes.push(high << 4 | low);
            rest = after.get(2..).unwrap_or_default();
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    if bytes.len() > MAX_KEY {
        return Err(BadKey::TooLong);
    }
    String::from_utf8(bytes).map_err(|_| BadKey::NotUtf8)
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(decode_key("VIN0001").as_deref(), Ok("VIN0001"));
        assert_eq!(decode_key("fleet%2Fcar%201").as_deref(), Ok("fleet/car 1"));
        assert_eq!(decode_key("a+b%2bc").as_deref(), Ok("a+b+c"));
        // A raw slash in the rest is part of the key.
        assert_eq!(decode_key("fleet/7").as_deref(), Ok("fleet/7"));
        assert_eq!(decode_key("%C3%A9t%C3%A9").as_deref(), Ok("été"));
    }

    #[test]
    fn a_bad_key_says_why() {
        assert_eq!(decode_key(""), Err(BadKey::Empty));
        assert_eq!(decode_key("VIN%2"), Err(BadKey::BadEscape));
        assert_eq!(decode_key("VIN%zz01"), Err(BadKey::BadEscape));
        assert_eq!(decode_key("%"), Err(BadKey::BadEscape));
        assert_eq!(decode_key("%FF%FE"), Err(BadKey::NotUtf8));
        assert_eq!(decode_key(&"%41".repeat(MAX_KEY + 1)), Err(BadKey::TooLong));
    }

    #[test]
    fn an_answer_reaches_the_awaited_end_from_another_thread() {
        let (respond, mut awaited) = Respond::pair();
        std::thread::spawn(move || respond.found("{}".to_owned()))
            .join()
            .unwrap_or_default();
        // Sent before it is looked at: no waiting needed.
        assert_eq!(
            awaited.try_recv().ok().flatten(),
            Some(Found {
                status: StatusCode::OK,
                json: "{}".to_owned()
            })
        );
        let (dropped, mut awaited) = Respond::pair();
        drop(dropped);
        assert!(awaited.try_recv().is_err(), "a dropped Respond cancels");
    }
}
