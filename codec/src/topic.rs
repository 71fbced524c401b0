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
pub(crate) fn check_topic_name(topic: &[u8]) -> Result<(), DecodeError> {
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopic);
    }
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
