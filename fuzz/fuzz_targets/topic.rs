//! Topic validation and matching on arbitrary strings: no panic, and the
//! rules hold together: a valid filter without wildcards matches exactly
//! the equal topic name, `#` matches every topic not starting with `$`.
#![no_main]

use codec::topic::{matches, validate_topic_filter, validate_topic_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (filter, topic) = text.split_once('\u{1}').unwrap_or((text, text));
    let filter_ok = validate_topic_filter(filter).is_ok();
    let topic_ok = validate_topic_name(topic).is_ok();
    let matched = matches(filter, topic);
    if filter_ok && topic_ok {
        if !filter.contains(['+', '#']) {
            assert_eq!(matched, filter == topic);
        }
        assert_eq!(matches("#", topic), !topic.starts_with('$'));
    }
});
