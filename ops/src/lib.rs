//! What every carbridge process (gateway, router) shows its operators: the
//! admin HTTP endpoint, the logging set-up and the Kafka flags, so they
//! behave alike.

pub mod admin;
pub mod exposition;
pub mod kafka;
pub mod latency;
pub mod secrets;

/// Installs the global `tracing` subscriber: `filter` unless `RUST_LOG` is
/// set; JSON lines when `json`, human-readable otherwise.
pub fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours only for a person at a terminal: not in a journal, a file or
    // `podman logs`, where escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// An error and its causes on one line, `outer: inner: root`: what a log
/// line or a message to another thread carries when it cannot carry the
/// error itself.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
