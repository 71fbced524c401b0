//! Topic names, topic filters, and matching one against the other (§4.7).
//!
//! The gateway uses [`matches`] to decide whether a downlink message may be
//! delivered to a subscription, and the router uses the same function for
//! its join: one definition of the rules for both.

use crate::error::DecodeError;
use crate::reader::check_utf8;

/// Checks a topic name as a PUBLISH carries it: at least one character
/// (MQTT-4.7.3-1), no U+0000 (MQTT-1.5.3-2) and no wildcard (MQTT-3.3.2-2).
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    check_topic_name(topic.as_bytes())
}

/// A topic name as PUBLISH carries it, in one pass for the common case:
/// not empty (MQTT-4.7.3-1), no U+0000 (MQTT-1.5.3-2), no wildcard
/// (MQTT-3.3.2-2), well-formed UTF-8 (MQTT-1.5.3-1).
#[inline]
pub(crate) fn check_topic_name(topic: &[u8]) -> Result<(), DecodeError> {
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopic);
    }
    if plain_ascii(topic) {
        // ASCII is well-formed UTF-8.
        return Ok(());
    }
    // Something to look at closely: a byte above 0x7f (UTF-8 to validate),
    // or a NUL or wildcard to report.
    match memchr::memchr3(0, b'+', b'#', topic).and_then(|at| topic.get(at)) {
        Some(0) => return Err(DecodeError::NullCharacter),
        Some(_) => {
            // A NUL later on is still a NUL: report the rule the spec
            // lists first for strings.
            if memchr::memchr(0, topic).is_some() {
                return Err(DecodeError::NullCharacter);
            }
            check_utf8(topic)?;
            return Err(DecodeError::WildcardInTopicName);
        }
        None => {}
    }
    check_utf8(topic)
}

/// Whether every byte of `topic` is ASCII other than NUL, `+` and `#`,
/// eight bytes at a time: the common topic name in one pass, where UTF-8
/// validation and a search for the three bytes took two (a third of a
/// PUBLISH decode's instructions, BENCHMARKS.md). `false` means only "look
/// closer".
fn plain_ascii(topic: &[u8]) -> bool {
    let mut flags = 0;
    let mut rest = topic;
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        flags |= flagged(u64::from_le_bytes(*word));
        rest = tail;
    }
    if !rest.is_empty() {
        match topic.last_chunk::<8>() {
            // The last eight bytes again, overlapping checked ones: no harm.
            Some(last) => flags |= flagged(u64::from_le_bytes(*last)),
            // Shorter than a word.
            None => {
                return rest
                    .iter()
                    .all(|&byte| byte.is_ascii() && !matches!(byte, 0 | b'+' | b'#'));
            }
        }
    }
    flags == 0
}

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of some byte set when a byte of `word` is not ASCII, is
/// NUL, `+` or `#`; zero otherwise.
///
/// `(x - LOW) & !x & HIGH` is non-zero exactly when some byte of `x` is
/// zero (a borrow may mark bytes above a zero byte too, but never without
/// one). `+` (0x2b) and `#` (0x23) differ only in bit 3, so setting that
/// bit and comparing with `+` finds both.
const fn flagged(word: u64) -> u64 {
    let wild = (word | 0x0808_0808_0808_0808) ^ 0x2b2b_2b2b_2b2b_2b2b;
    (word | (word.wrapping_sub(LOW) & !word) | (wild.wrapping_sub(LOW) & !wild)) & HIGH
}

/// Checks a topic filter as SUBSCRIBE and UNSUBSCRIBE carry it: at least
/// one character (MQTT-4.7.3-1), `#` alone in the last level
/// (MQTT-4.7.1-2), `+` alone in its level (MQTT-4.7.1-3).
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::EmptyTopic);
    }
    // Fast path: most filters carry no wildcard at all.
    if memchr::memchr2(b'+', b'#', filter.as_bytes()).is_none() {
        return Ok(());
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => {
                return Err(DecodeError::MisplacedMultiLevelWildcard);
            }
            "#" | "+" => {}
            _ if level.contains('#') => return Err(DecodeError::MisplacedMultiLevelWildcard),
            _ if level.contains('+') => {
                return Err(DecodeError::MisplacedSingleLevelWildcard);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether the topic name `topic` matches the topic filter `filter`.
///
/// Both are expected to be valid (see [`validate_topic_name`] and
/// [`validate_topic_filter`]); for invalid input the answer is unspecified
/// but the function neither panics nor loops.
///
/// `+` matches exactly one level (possibly empty), `#` matches the parent
/// level and any number of levels below it, and a filter starting with a
/// wildcard does not match a topic starting with `$` (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    let (filter, topic) = (filter.as_bytes(), topic.as_bytes());
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    // One pass over both, byte by byte: this runs per downlink request in
    // the router and per message in the gateway, and splitting into levels
    // cost more than the comparison itself.
    let (mut f, mut t) = (0, 0);
    loop {
        match filter.get(f) {
            None => return t == topic.len(),
            // Valid filters have '#' only as their whole last level.
            Some(b'#') => return true,
            Some(b'+') => {
                while topic.get(t).is_some_and(|&c| c != b'/') {
                    t += 1;
                }
                f += 1;
            }
            Some(c) if topic.get(t) == Some(c) => {
                f += 1;
                t += 1;
            }
            // "a/#" also matches "a": the topic ends where the filter
            // has only "/#" left.
            Some(_) => return t == topic.len() && filter.get(f..) == Some(&b"/#"[..]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, level by level: what the fast `matches` must agree
    /// with.
    fn matches_by_levels(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut filter_levels = filter.split('/');
        let mut topic_levels = topic.split('/');
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(t)) if f == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_the_level_by_level_definition(
            filter in "([a$]|b|\\+)?(/(a|b|\\+|)){0,3}(/#)?|#",
            topic in "[a$b]?(/[ab]?){0,4}",
        ) {
            prop_assume!(validate_topic_filter(&filter).is_ok());
            prop_assert_eq!(matches(&filter, &topic), matches_by_levels(&filter, &topic));
        }
    }

    #[test]
    fn matching_follows_section_4_7() {
        let cases = [
            // §4.7.1.2: '#'.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            ("sport/tennis/#", "sport/tennisplayer1", false),
            // §4.7.1.3: '+'.
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/tennis/#", "sport/tennis/player1", true),
            ("a/+/c", "a//c", true),
            // §4.7.2: '$' topics.
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            // §4.7.3: case-sensitive, levels are exact.
            ("ACCOUNTS", "Accounts", false),
            ("DL/WARN", "DL/WARN", true),
            ("DL/WARN", "DL/INFO", false),
            ("DL/#", "DL/INFO", true),
            ("DL/WARN", "DL/WARN/", false),
            ("DL", "DL/WARN", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn filters_follow_section_4_7_1() {
        for valid in [
            "#",
            "+",
            "/",
            "sport/#",
            "+/+",
            "/+",
            "sport/+/player1",
            "a/b/c",
            "+/#",
        ] {
            assert_eq!(validate_topic_filter(valid), Ok(()), "{valid:?}");
        }
        let invalid = [
            ("", DecodeError::EmptyTopic),
            ("sport/tennis#", DecodeError::MisplacedMultiLevelWildcard),
            (
                "sport/tennis/#/ranking",
                DecodeError::MisplacedMultiLevelWildcard,
            ),
            ("#/", DecodeError::MisplacedMultiLevelWildcard),
            ("sport+", DecodeError::MisplacedSingleLevelWildcard),
            ("sport/+player", DecodeError::MisplacedSingleLevelWildcard),
        ];
        for (filter, error) in invalid {
            assert_eq!(validate_topic_filter(filter), Err(error), "{filter:?}");
        }
    }

    /// The definition of what `plain_ascii` answers, a byte at a time.
    fn plain_by_bytes(topic: &[u8]) -> bool {
        topic
            .iter()
            .all(|&b| b != 0 && b != b'+' && b != b'#' && b < 0x80)
    }

    proptest! {
        #[test]
        fn plain_ascii_agrees_with_a_byte_by_byte_check(
            // Mostly plain bytes, with the ones it must find mixed in at
            // every position and length (short, whole words, a tail).
            topic in proptest::collection::vec(
                prop_oneof![
                    8 => 0x20u8..0x7f,
                    1 => Just(0u8),
                    1 => Just(b'+'),
                    1 => Just(b'#'),
                    1 => 0x80u8..=0xff,
                    1 => Just(0x01u8),
                    1 => Just(0x2au8),
                    1 => Just(0x7fu8),
                ],
                0..40,
            ),
        ) {
            prop_assert_eq!(plain_ascii(&topic), plain_by_bytes(&topic));
        }
    }

    #[test]
    fn every_flagged_byte_is_found_at_every_position() {
        for len in 1..=24 {
            for at in 0..len {
                for byte in [0u8, b'+', b'#', 0x80, 0xc3, 0xff] {
                    let mut topic = vec![b'a'; len];
                    topic[at] = byte;
                    assert!(!plain_ascii(&topic), "{byte:#x} at {at} of {len}");
                }
            }
            assert!(plain_ascii(&vec![b'~'; len]));
        }
    }

    #[test]
    fn names_follow_section_4_7_3() {
        assert_eq!(validate_topic_name("UL/POS"), Ok(()));
        assert_eq!(
            validate_topic_name("UL/\0"),
            Err(DecodeError::NullCharacter)
        );
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name(" "), Ok(()));
        assert_eq!(validate_topic_name(""), Err(DecodeError::EmptyTopic));
        assert_eq!(
            validate_topic_name("UL/+"),
            Err(DecodeError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("UL/#"),
            Err(DecodeError::WildcardInTopicName)
        );
    }
}
