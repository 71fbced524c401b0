//! What can stop the gateway from starting, or end it with an error.

use crate::{config, shard, startup};

/// Why the gateway could not start, or stopped with an error. Each says
/// what failed; the cause, where there is one, is its source (the
/// binary's `main` prints the chain).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(Box<config::ConfigError>),
    #[error("reading the Kafka properties taken from files and variables")]
    Secrets(#[source] Box<ops::secrets::SecretError>),
    #[error(transparent)]
    Startup(Box<startup::StartupError>),
    #[error(transparent)]
    TlsFiles(Box<startup::FileError>),
    #[error("starting the TLS file watcher")]
    TlsWatcher(#[source] std::io::Error),
    #[error("the admin endpoint's token")]
    AdminToken(#[source] Box<ops::admin::TokenError>),
    #[error("the admin endpoint on {address}")]
    Admin {
        address: String,
        #[source]
        source: ops::admin::AdminError,
    },
    #[error(
        "{shards} shards but downlink.shards_per_bridge = {per_bridge}: two shards would \
         share a downlink slot"
    )]
    SlotsShared { shards: usize, per_bridge: u32 },
    #[error("starting shard {shard}{}", cpu.map(|cpu| format!(" on CPU {cpu}")).unwrap_or_default())]
    Executor {
        shard: usize,
        cpu: Option<usize>,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {shard}")]
    Shard {
        shard: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {shard}: {}", startup::io_uring_refused(source))]
    IoUringRefused {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard} exited before listening")]
    ShardExited { shard: usize },
    #[error("shard {shard} panicked or failed: {reason}")]
    ShardFailed { shard: usize, reason: String },
    #[error("shard {shard} stopped with an error")]
    ShardStopped {
        shard: usize,
        #[source]
        source: Box<shard::StartError>,
    },
}

/// Boxed: some of these are large, and an error is rare.
macro_rules! boxed_from {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for Error {
            fn from(error: $source) -> Self {
                Self::$variant(Box::new(error))
            }
        })*
    };
}

boxed_from! {
    config::ConfigError => Config,
    ops::secrets::SecretError => Secrets,
    startup::StartupError => Startup,
    startup::FileError => TlsFiles,
    ops::admin::TokenError => AdminToken,
}
