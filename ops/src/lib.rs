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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
