//! MQTT topic name → Kafka topic name (docs/architecture.md, uplink contract).
//!
//! An ordered list of rules, each a regular expression over the MQTT topic
//! name and a Kafka topic template that may use the expression's capture
//! groups: `$1` or `${1}` for a numbered group, `${name}` for a named one.
//! The first rule whose expression matches anywhere in the
//! topic wins (anchor with `^`/`$` to match the whole name). A topic no rule
//! matches is refused: the mapping is the access control that decides which
//! Kafka topics cars can write.
//!
//! A template's literal text must be legal in a Kafka topic name, and so
//! must the result after substitution: a car cannot make the gateway produce
//! to a name of its choosing beyond what the rule allows.
//!
//! Rules are compiled once. Each shard owns a clone, so [`TopicMapper::map`]
//! takes `&mut self` and reuses its scratch space: mapping allocates nothing.

use regex_automata::meta::Regex;
use regex_automata::util::captures::Captures;
use regex_automata::{Input, MatchKind, PatternID, PatternSet};

/// One mapping rule as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Regular expression over the MQTT topic name.
    pub mqtt: String,
    /// Kafka topic name, possibly with `$1`, `${1}` or `${name}`.
    pub kafka: String,
    /// The topic must have the publishing car's client id as one of its
    /// levels (`UL/VIN123/POS`); otherwise the PUBLISH closes the
    /// connection (`forbidden_topic`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_client_id: bool,
}

impl Rule {
    pub fn new(mqtt: impl Into<String>, kafka: impl Into<String>) -> Self {
        Self {
            mqtt: mqtt.into(),
            kafka: kafka.into(),
            require_client_id: false,
        }
    }
}

/// Why a topic was not mapped (a bounded metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unmapped {
    /// No rule matches the MQTT topic.
    NoRule,
    /// A rule matched, but the captured text makes an illegal Kafka name.
    InvalidKafkaTopic,
    /// The matching rule requires the car's client id in the topic, and
    /// it is not there.
    NotOwnTopic,
}

impl Unmapped {
    pub const fn label(&self) -> &'static str {
        match self {
            Self::NoRule => "no_rule",
            Self::InvalidKafkaTopic => "invalid_kafka_topic",
            Self::NotOwnTopic => "not_own_topic",
        }
    }
}

/// A rule list that cannot be used, with what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("no topic mapping rules: no car could publish anything; add at least one rule")]
    NoRules,
    #[error("rule {index}: invalid regular expression {pattern:?}: {message}")]
    InvalidRegex {
        index: usize,
        pattern: String,
        /// What is wrong, and where for a syntax error.
        message: String,
        /// Byte offset in `pattern` where a syntax error starts.
        offset: Option<usize>,
    },
    #[error(
        "rule {index}: template {template:?} refers to group {group:?}, which {pattern:?} does not have"
    )]
    UnknownGroup {
        index: usize,
        pattern: String,
        template: String,
        group: String,
    },
    #[error("rule {index}: template {template:?}: {reason}")]
    InvalidTemplate {
        index: usize,
        template: String,
        reason: &'static str,
    },
}

/// How the first matching rule is found. Both give the same answers; they
/// differ in speed (see `benches/benches/mapping.rs` and BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Try each rule's expression in order.
    Sequential,
    /// One automaton over all expressions reports which match; the lowest
    /// index wins, and only that rule's expression runs again for captures.
    Set,
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Group(usize),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    regex: Regex,
    /// `Some` when the template uses no group: the answer needs no captures.
    constant: Option<String>,
    pieces: Vec<Piece>,
    captures: Captures,
    require_client_id: bool,
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct TopicMapper {
    rules: Vec<CompiledRule>,
    set: Option<(Regex, PatternSet)>,
    scratch: String,
}

/// Above this many rules, [`TopicMapper::new`] uses [`Strategy::Set`].
const SEQUENTIAL_MAX_RULES: usize = 16;

/// Longest legal Kafka topic name.
const KAFKA_TOPIC_MAX: usize = 249;

fn kafka_legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_kafka_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= KAFKA_TOPIC_MAX
        && name != "."
        && name != ".."
        && name.chars().all(kafka_legal)
}

impl TopicMapper {
    /// Compiles `rules` with the strategy measured faster for their number.
    ///
    /// Measured (BENCHMARKS.md, "Topic mapping"): trying rules in order
    /// costs about 17 ns per rule tried, and the automaton over all rules
    /// about 200–330 ns whatever the count; up to 16 rules the sequential
    /// search wins even in its worst case, beyond that the automaton does.
    pub fn new(rules: &[Rule]) -> Result<Self, MappingError> {
        let strategy = if rules.len() <= SEQUENTIAL_MAX_RULES {
            Strategy::Sequential
        } else {
            Strategy::Set
        };
        Self::with_strategy(rules, strategy)
    }

    pub fn with_strategy(rules: &[Rule], strategy: Strategy) -> Result<Self, MappingError> {
        if rules.is_empty() {
            return Err(MappingError::NoRules);
        }
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile(index, rule))
            .collect::<Result<Vec<_>, _>>()?;
        let set = match strategy {
            Strategy::Sequential => None,
            Strategy::Set => {
                let patterns: Vec<&str> = rules.iter().map(|r| r.mqtt.as_str()).collect();
                let regex = Regex::builder()
                    .configure(Regex::config().match_kind(MatchKind::All))
                    .build_many(&patterns)
                    .map_err(|e| MappingError::InvalidRegex {
                        index: 0,
                        pattern: patterns.join(" | "),
                        message: e.to_string(),
                        offset: None,
                    })?;
                let matched = PatternSet::new(regex.pattern_len());
                Some((regex, matched))
            }
        };
        Ok(Self {
            rules: compiled,
            set,
            scratch: String::new(),
        })
    }

    /// The Kafka topic for `mqtt_topic`, published by any car.
    pub fn map(&mut self, mqtt_topic: &str) -> Result<&str, Unmapped> {
        self.map_for(mqtt_topic, None)
    }

    /// The Kafka topic for `mqtt_topic` published by car `client_id`; a
    /// rule with `require_client_id` also checks the topic's levels.
    pub fn map_for(&mut self, mqtt_topic: &str, client_id: Option<&str>) -> Result<&str, Unmapped> {
        self.map_bytes_for(mqtt_topic.as_bytes(), client_id)
    }

    /// [`TopicMapper::map_for`] for a topic name as the decoder checked it
    /// (valid UTF-8, not converted): the regexes run on bytes, so the hot
    /// path converts nothing.
    pub fn map_bytes_for(
        &mut self,
        mqtt_topic: &[u8],
        client_id: Option<&str>,
    ) -> Result<&str, Unmapped> {
        let index = match &mut self.set {
            Some((regex, matched)) => {
                matched.clear();
                regex.which_overlapping_matches(&Input::new(mqtt_topic), matched);
                matched.iter().next().map(|id| id.as_usize())
            }
            None => self
                .rules
                .iter()
                .position(|rule| rule.regex.is_match(mqtt_topic)),
        };
        let rule = index
            .and_then(|i| self.rules.get_mut(i))
            .ok_or(Unmapped::NoRule)?;
        if rule.require_client_id
            && let Some(client_id) = client_id
            && !mqtt_topic
                .split(|&byte| byte == b'/')
                .any(|level| level == client_id.as_bytes())
        {
            return Err(Unmapped::NotOwnTopic);
        }
        if let Some(constant) = &rule.constant {
            return Ok(constant);
        }
        rule.regex.captures(mqtt_topic, &mut rule.captures);
        self.scratch.clear();
        for piece in &rule.pieces {
            match piece {
                Piece::Literal(text) => self.scratch.push_str(text),
                Piece::Group(group) => {
                    // A group that did not take part in the match is empty.
                    // A span of a match on valid UTF-8 ends on character
                    // boundaries (the regexes match in UTF-8 mode).
                    if let Some(span) = rule.captures.get_group(*group) {
                        let text = mqtt_topic.get(span.range()).unwrap_or_default();
                        self.scratch
                            .push_str(std::str::from_utf8(text).unwrap_or_default());
                    }
                }
            }
        }
        if is_kafka_topic(&self.scratch) {
            Ok(&self.scratch)
        } else {
            Err(Unmapped::InvalidKafkaTopic)
        }
    }
}

/// What is wrong with a pattern that does not build and, for a syntax
/// error, the byte offset where it starts (regex-syntax's span).
fn regex_error(pattern: &str, error: &regex_automata::meta::BuildError) -> (String, Option<usize>) {
    let (what, span) = match error.syntax_error() {
        Some(regex_syntax::Error::Parse(error)) => (error.kind().to_string(), *error.span()),
        Some(regex_syntax::Error::Translate(error)) => (error.kind().to_string(), *error.span()),
        Some(other) => return (other.to_string(), None),
        None => return (error.to_string(), None),
    };
    let offset = span.start.offset;
    let message = match (pattern.get(..offset), pattern.get(offset..)) {
        (Some(before), Some(at)) => format!(
            "{what}, at byte {offset} (line {}, column {}): after {before:?}, at {at:?}",
            span.start.line, span.start.column
        ),
        _ => format!("{what}, at byte {offset}"),
    };
    (message, Some(offset))
}

fn compile(index: usize, rule: &Rule) -> Result<CompiledRule, MappingError> {
    let regex = Regex::new(&rule.mqtt).map_err(|error| {
        let (message, offset) = regex_error(&rule.mqtt, &error);
        MappingError::InvalidRegex {
            index,
            pattern: rule.mqtt.clone(),
            message,
            offset,
        }
    })?;
    let pieces = parse_template(index, rule, &regex)?;
    let constant = match pieces.as_slice() {
        [] => Some(String::new()),
        [Piece::Literal(text)] => Some(text.clone()),
        _ => None,
    };
    if constant.as_deref().is_some_and(|c| !is_kafka_topic(c)) {
        return Err(MappingError::InvalidTemplate {
            index,
            template: rule.kafka.clone(),
            reason: "not a legal Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)",
        });
    }
    let captures = regex.create_captures();
    Ok(CompiledRule {
        regex,
        constant,
        pieces,
        captures,
        require_client_id: rule.require_client_id,
    })
}

fn parse_template(index: usize, rule: &Rule, regex: &Regex) -> Result<Vec<Piece>, MappingError> {
    let invalid = |reason| MappingError::InvalidTemplate {
        index,
        template: rule.kafka.clone(),
        reason,
    };
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = rule.kafka.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            if !kafka_legal(c) {
                return Err(invalid(
                    "only A-Z a-z 0-9 . _ - and $ references are allowed",
                ));
            }
            literal.push(c);
            continue;
        }
        let name = match chars.peek() {
            Some('$') => {
                chars.next();
                return Err(invalid(
                    "'$$' gives a '$', which Kafka topic names cannot contain",
                ));
            }
            Some('{') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                if name.is_empty() {
                    return Err(invalid("empty '${}' reference"));
                }
                name
            }
            Some(d) if d.is_ascii_digit() => {
                let mut digits = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                digits
            }
            _ => {
                return Err(invalid(
                    "'$' must be followed by a group number, '{name}' or '$'",
                ));
            }
        };
        let info = regex.group_info();
        let group = match name.parse::<usize>() {
            Ok(n) if n < info.group_len(PatternID::ZERO) => Some(n),
            Ok(_) => None,
            Err(_) => info.to_index(PatternID::ZERO, &name),
        };
        let Some(group) = group else {
            return Err(MappingError::UnknownGroup {
                index,
                pattern: rule.mqtt.clone(),
                template: rule.kafka.clone(),
                group: name,
            });
        };
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Group(group));
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use proptest::prelude::{prop, prop_assert_eq, proptest};

    const STRATEGIES: [Strategy; 2] = [Strategy::Sequential, Strategy::Set];

    fn mappers(rules: &[Rule]) -> Vec<TopicMapper> {
        STRATEGIES
            .iter()
            .map(|&s| TopicMapper::with_strategy(rules, s).unwrap())
            .collect()
    }

    #[test]
    fn default_rule() {
        for mut mapper in mappers(&[Rule::new("^UL/.+", "cs.uplink")]) {
            assert_eq!(mapper.map("UL/POS"), Ok("cs.uplink"));
            assert_eq!(mapper.map("UL/temperature/roof"), Ok("cs.uplink"));
            assert_eq!(mapper.map("UL/"), Err(Unmapped::NoRule));
            assert_eq!(mapper.map("DL/WARN"), Err(Unmapped::NoRule));
            assert_eq!(mapper.map("XUL/POS"), Err(Unmapped::NoRule));
        }
    }

    #[test]
    fn capture_groups_in_templates() {
        let rules = [
            Rule::new("^UL/(?P<kind>[a-z]+)/raw$", "raw.${kind}"),
            Rule::new("^UL/([A-Z]+)/(\\d+)$", "cs.$1.v${2}"),
            Rule::new("^UL/(\\w+)(/x)?$", "cs.$1$2"),
        ];
        for mut mapper in mappers(&rules) {
            assert_eq!(mapper.map("UL/temp/raw"), Ok("raw.temp"));
            assert_eq!(mapper.map("UL/POS/2"), Ok("cs.POS.v2"));
            // A group that did not take part in the match is empty.
            assert_eq!(mapper.map("UL/speed"), Ok("cs.speed"));
            // Captured text that is not legal in a Kafka name is refused.
            assert_eq!(mapper.map("UL/x/x"), Err(Unmapped::InvalidKafkaTopic));
        }
    }

    #[test]
    fn illegal_captured_text_is_refused() {
        for mut mapper in mappers(&[Rule::new("^UL/(.+)$", "cs.$1")]) {
            assert_eq!(mapper.map("UL/POS"), Ok("cs.POS"));
            assert_eq!(mapper.map("UL/a b"), Err(Unmapped::InvalidKafkaTopic));
            assert_eq!(mapper.map("UL/a/b"), Err(Unmapped::InvalidKafkaTopic));
            assert_eq!(mapper.map("UL/é"), Err(Unmapped::InvalidKafkaTopic));
            let long = format!("UL/{}", "x".repeat(KAFKA_TOPIC_MAX));
            assert_eq!(mapper.map(&long), Err(Unmapped::InvalidKafkaTopic));
        }
        for mut mapper in mappers(&[Rule::new("^UL/(.*)$", "$1")]) {
            assert_eq!(mapper.map("UL/.."), Err(Unmapped::InvalidKafkaTopic));
            assert_eq!(mapper.map("UL/"), Err(Unmapped::InvalidKafkaTopic));
        }
    }

    #[test]
    fn first_rule_wins_even_when_a_later_one_matches_further_left() {
        // Leftmost-first multi-pattern search would pick rule 1 (match at 0).
        let rules = [Rule::new("POS$", "first"), Rule::new("^UL", "second")];
        for mut mapper in mappers(&rules) {
            assert_eq!(mapper.map("UL/POS"), Ok("first"));
            assert_eq!(mapper.map("UL/SPEED"), Ok("second"));
        }
    }

    #[test]
    fn configuration_errors_say_what_to_fix() {
        let error = |rules: &[Rule]| TopicMapper::new(rules).unwrap_err();
        assert_eq!(error(&[]), MappingError::NoRules);
        assert!(matches!(
            error(&[Rule::new("^UL/(", "x")]),
            MappingError::InvalidRegex { index: 0, .. }
        ));
        // Where in the pattern: the unclosed group opens at byte 4; the
        // unknown Unicode class in the second rule (found by the
        // translation, not the parser) starts at byte 3.
        let unclosed = error(&[Rule::new("^UL/(POS|SPEED$", "x")]);
        assert!(
            matches!(
                unclosed,
                MappingError::InvalidRegex {
                    offset: Some(4),
                    ..
                }
            ),
            "{unclosed:?}"
        );
        let said = unclosed.to_string();
        assert!(
            said.contains("unclosed group")
                && said.contains("byte 4")
                && said.contains("after \"^UL/\", at \"(POS|SPEED$\""),
            "{said}"
        );
        let class = error(&[Rule::new("^UL", "x"), Rule::new(r"^UL\p{Nope}", "y")]);
        assert!(
            matches!(
                class,
                MappingError::InvalidRegex {
                    index: 1,
                    offset: Some(3),
                    ..
                }
            ),
            "{class:?}"
        );
        assert!(matches!(
            error(&[Rule::new("^UL", "x"), Rule::new("^A(B)", "x.$2")]),
            MappingError::UnknownGroup { index: 1, ref group, .. } if group == "2"
        ));
        assert!(matches!(
            error(&[Rule::new("^UL", "x.${nope}")]),
            MappingError::UnknownGroup { ref group, .. } if group == "nope"
        ));
        for template in ["cs uplink", "cs/uplink", "$", "$$", "${}", "x.$a", "", ".."] {
            assert!(
                matches!(
                    error(&[Rule::new("^UL", template)]),
                    MappingError::InvalidTemplate { .. }
                ),
                "{template:?}"
            );
        }
        let message = error(&[Rule::new("^UL", "x.${nope}")]).to_string();
        assert!(
            message.contains("rule 0") && message.contains("nope"),
            "{message}"
        );
    }

    proptest! {
        /// Both strategies give the same answer on random rule sets and topics.
        #[test]
        fn strategies_agree(
            rules in proptest::collection::vec(
                (prop::sample::select(vec!["^UL/", "^DL/", "POS$", "/a/", "^UL/(\\w+)$", "(x|y)+", "^$"]),
                 prop::sample::select(vec!["t.one", "t.$1", "t.two"])),
                1..8,
            ),
            topics in proptest::collection::vec("[ULDPOSaxy/]{0,12}", 1..20),
        ) {
            // Templates referring to a group the pattern lacks are configuration errors in both.
            let rules: Vec<Rule> = rules.into_iter().map(|(m, k)| Rule::new(m, k)).collect();
            let sequential = TopicMapper::with_strategy(&rules, Strategy::Sequential);
            let set = TopicMapper::with_strategy(&rules, Strategy::Set);
            match (sequential, set) {
                (Ok(mut a), Ok(mut b)) => {
                    for topic in &topics {
                        let left = a.map(topic).map(str::to_owned);
                        let right = b.map(topic).map(str::to_owned);
                        prop_assert_eq!(left, right, "topic {:?}", topic);
                    }
                }
                (a, b) => prop_assert_eq!(a.err(), b.err()),
            }
        }
    }

    #[test]
    fn a_rule_may_require_the_cars_own_id_in_the_topic() {
        let mut rule = Rule::new("^UL/[^/]+/POS$", "cs.uplink");
        rule.require_client_id = true;
        let mut mapper = TopicMapper::new(&[rule]).unwrap();
        assert_eq!(mapper.map_for("UL/VIN1/POS", Some("VIN1")), Ok("cs.uplink"));
        assert_eq!(
            mapper.map_for("UL/VIN2/POS", Some("VIN1")),
            Err(Unmapped::NotOwnTopic)
        );
        // A substring is not the id: only a whole level is.
        assert_eq!(
            mapper.map_for("UL/VIN12/POS", Some("VIN1")),
            Err(Unmapped::NotOwnTopic)
        );
        assert_eq!(
            mapper.map_for("DL/VIN1", Some("VIN1")),
            Err(Unmapped::NoRule)
        );
    }
}
