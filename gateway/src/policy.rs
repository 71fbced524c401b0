//! What a car may subscribe to: the shard's limits on filters and the
//! authorization patterns (`[authorization] subscribe`), applied per
//! filter of a SUBSCRIBE. A filter refused gets 0x80 in the SUBACK; the
//! session stays.

/// What `{client_id}` in a pattern stands for.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// The subscribe rules of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribePolicy {
    /// Most filters one session holds.
    pub max_filters: usize,
    /// Longest filter, in bytes.
    pub max_filter_length: usize,
    /// Filters a car may subscribe to, or narrower ones; a level that is
    /// exactly `{client_id}` stands for the car's id. Empty: any filter.
    pub allowed: Vec<String>,
}

impl Default for SubscribePolicy {
    /// No limits, any filter (the state machine's tests).
    fn default() -> Self {
        Self {
            max_filters: usize::MAX,
            max_filter_length: usize::MAX,
            allowed: Vec::new(),
        }
    }
}

impl SubscribePolicy {
    /// Whether car `client_id` may subscribe to `filter` (a valid filter),
    /// limits aside.
    pub fn allows(&self, client_id: &str, filter: &str) -> bool {
        self.allowed.is_empty()
            || self
                .allowed
                .iter()
                .any(|pattern| covers(pattern, filter, client_id))
    }
}

/// Whether every topic `filter` matches is also matched by `pattern`, in
/// which a level `{client_id}` is the literal `client_id`.
///
/// A `$` topic is never covered by a leading wildcard, as MQTT's wildcards
/// never match one (MQTT-4.7.2-1).
pub fn covers(pattern: &str, filter: &str, client_id: &str) -> bool {
    if filter.starts_with('$') && (pattern.starts_with('#') || pattern.starts_with('+')) {
        return false;
    }
    let (mut pattern, mut filter) = (pattern.split('/'), filter.split('/'));
    loop {
        match (pattern.next(), filter.next()) {
            // "a/#" matches "a" and everything below it.
            (Some("#"), _) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            // "+" covers any one level, not the many of "#".
            (Some("+"), Some(level)) => {
                if level == "#" {
                    return false;
                }
            }
            (Some(CLIENT_ID_PLACEHOLDER), Some(level)) => {
                if level != client_id || level == "+" || level == "#" {
                    return false;
                }
            }
            (Some(wanted), Some(level)) => {
                if wanted != level {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_follows_mqtt_matching() {
        let car = "VIN1";
        for (pattern, filter, covered) in [
            ("DL/#", "DL/WARN", true),
            ("DL/#", "DL/#", true),
            ("DL/#", "DL", true),
            ("DL/#", "DL/+/x", true),
            ("DL/#", "UL/POS", false),
            ("DL/#", "#", false),
            ("DL/+", "DL/WARN", true),
            ("DL/+", "DL/+", true),
            ("DL/+", "DL/#", false),
            ("DL/+", "DL/a/b", false),
            ("DL/WARN", "DL/+", false),
            ("DL/WARN", "DL/WARN", true),
            ("DL/{client_id}/#", "DL/VIN1/WARN", true),
            ("DL/{client_id}/#", "DL/VIN2/WARN", false),
            ("DL/{client_id}/#", "DL/+/WARN", false),
            ("DL/{client_id}/#", "DL/#", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("#", "anything/at/all", true),
        ] {
            assert_eq!(
                covers(pattern, filter, car),
                covered,
                "{pattern} covers {filter}"
            );
        }
        // An id with a separator or a wildcard is one literal level only.
        assert!(!covers("DL/{client_id}", "DL/a/b", "a/b"));
        assert!(!covers("DL/{client_id}", "DL/+", "+"));
    }

    #[test]
    fn no_patterns_allow_any_filter() {
        let open = SubscribePolicy::default();
        assert!(open.allows("VIN1", "#"));
        let closed = SubscribePolicy {
            allowed: vec!["DL/{client_id}/#".to_owned(), "DL/BROADCAST".to_owned()],
            ..SubscribePolicy::default()
        };
        assert!(closed.allows("VIN1", "DL/VIN1/#"));
        assert!(closed.allows("VIN1", "DL/BROADCAST"));
        assert!(!closed.allows("VIN1", "DL/#"));
    }
}
