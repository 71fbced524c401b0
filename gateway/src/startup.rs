//! Start-up checks: what the host must allow before the shards start, each
//! failure saying what to change (the container's seccomp profile, a
//! sysctl, a ulimit), and the open-files limit raised as far as allowed.
//! A seccomp profile that blocks io_uring shows when the first shard
//! creates its ring: [`io_uring_refused`] words that error.
//!
//! Also the files a start reads ([`check_files`], `gateway check-config`):
//! loaded by the very functions a start calls ([`terminator`]), so the
//! check cannot pass a configuration that a start refuses for its files.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rlimit::Resource;

use crate::config::{Config, Listener};
use crate::tls::{Terminator, TlsError};

/// Why the process limits or the kernel would not let the gateway start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("reading the process's resource limits")]
    Limits(#[source] std::io::Error),
    #[error(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {0} bytes; glommio needs at least \
         {MEMLOCK_NEEDED} for its io_uring rings: set LimitMEMLOCK=infinity (systemd), \
         `ulimit -l unlimited`, or the container runtime's memlock ulimit (Kubernetes has \
         no field for it: see docs/operations.md)"
    )]
    Memlock(u64),
    #[error(
        "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2, the default \
         on some distributions): set it to 0, or to 1 with the gateway's user in \
         kernel.io_uring_group"
    )]
    IoUringDisabled,
    #[error("{}", io_uring_refused(.0))]
    IoUringRefused(std::io::Error),
    #[error("the io_uring probe could not run: {0}")]
    Probe(String),
}

/// A file (or variable) a start would not load, and what it is for.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    // The TLS error's text is part of this one's (not a `source`), so
    // that a chain printed whole does not say it twice.
    #[error("TLS of the listener on {address}: {error}")]
    Tls {
        address: SocketAddr,
        error: TlsError,
    },
    /// A Kafka property's file or environment variable.
    #[error(transparent)]
    Kafka(ops::secrets::SecretError),
}

/// Every problem [`check_files`] found, one a line.
#[derive(Debug, thiserror::Error)]
#[error("{}", list(.0))]
pub struct FileErrors(pub Vec<FileError>);

fn list(errors: &[FileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The TLS of `listener` as a start loads it (certificate chain, key and
/// its match, CA bundle, CRLs, ticket keys); `None` for plain TCP.
pub fn terminator(listener: &Listener) -> Result<Option<Arc<Terminator>>, FileError> {
    listener
        .tls
        .as_ref()
        .map(|spec| {
            Terminator::new(spec)
                .map(Arc::new)
                .map_err(|error| FileError::Tls {
                    address: listener.address,
                    error,
                })
        })
        .transpose()
}

/// Loads every file a start of `config` would load (TLS files, Kafka
/// properties from files or environment variables), and says what of it
/// would stop the start: every problem, not only the first. On success,
/// how many TLS listeners loaded. Nothing is bound or started.
pub fn check_files(config: &Config) -> Result<usize, FileErrors> {
    let mut loaded = 0;
    let mut errors = Vec::new();
    for listener in config.listeners() {
        match terminator(&listener) {
            Ok(Some(_)) => loaded += 1,
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    errors.extend(
        config
            .kafka
            .check_secrets()
            .into_iter()
            .map(FileError::Kafka),
    );
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(FileErrors(errors))
    }
}

/// glommio locks its io_uring rings into memory: 512 KiB at least.
pub const MEMLOCK_NEEDED: u64 = 512 * 1024;
/// Files a gateway needs beyond its cars: listeners (four per listener per
/// shard), librdkafka's sockets and pipes, the admin endpoint, logs.
pub const FILES_RESERVED: u64 = 256;

/// Why io_uring could not be had, with what to change.
pub fn io_uring_refused(error: &io::Error) -> String {
    let fix = match error.raw_os_error() {
        Some(1) => {
            "io_uring is refused (EPERM). In a container, the default seccomp profiles of \
             Docker 25+, containerd 2.0+ and CRI-O block io_uring_setup: run the gateway \
             with the Localhost profile in deploy/k8s (the runtime's profile plus the three \
             io_uring calls). On a host, check `sysctl kernel.io_uring_disabled` (0 allows \
             it; 1 allows only the group kernel.io_uring_group)."
        }
        Some(38) => {
            "io_uring is not available (ENOSYS): the kernel lacks it (Linux 5.8 or later is needed) or it is compiled out."
        }
        Some(12) => {
            "io_uring rings could not be allocated (ENOMEM): raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity, or ulimit -l)."
        }
        _ => {
            "io_uring could not be set up. Check, in this order: the container's seccomp \
             profile (it must allow io_uring_setup, io_uring_enter and io_uring_register: \
             the Localhost profile in deploy/k8s), `sysctl kernel.io_uring_disabled` (0 \
             allows it), and the locked-memory limit (LimitMEMLOCK=infinity)."
        }
    };
    format!("{fix} ({error})")
}

/// What the checks found, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The open-files limit in force (raised to the hard limit).
    pub files: u64,
    pub memlock: u64,
}

/// Raises the open-files soft limit to the hard limit, checks the
/// locked-memory limit and that io_uring is allowed. Warns when the
/// open-files limit caps the connections the configuration allows.
pub fn check(config: &Config, shards: usize) -> Result<Limits, StartupError> {
    let (soft, hard) = Resource::NOFILE.get().map_err(StartupError::Limits)?;
    let files = if soft < hard {
        match Resource::NOFILE.set(hard, hard) {
            Ok(()) => {
                tracing::info!(
                    from = soft,
                    to = hard,
                    "raised the open-files limit to its hard limit"
                );
                hard
            }
            Err(error) => {
                tracing::warn!(%error, soft, hard, "could not raise the open-files limit");
                soft
            }
        }
    } else {
        soft
    };
    let wanted = (shards as u64)
        .saturating_mul(config.limits.max_connections_per_shard as u64)
        .saturating_add(FILES_RESERVED);
    if files < wanted {
        tracing::warn!(
            open_files = files,
            connections = files.saturating_sub(FILES_RESERVED),
            configured = wanted - FILES_RESERVED,
            "the open-files limit caps this gateway at about {} connections, fewer than \
             shards x limits.max_connections_per_shard: raise LimitNOFILE= (systemd), \
             the container runtime's nofile ulimit, or the hard limit (ulimit -Hn)",
            files.saturating_sub(FILES_RESERVED)
        );
    }

    if let Some(cap) = crate::shard::somaxconn()
        && cap < crate::shard::BACKLOG
    {
        tracing::warn!(
            somaxconn = cap,
            backlog = crate::shard::BACKLOG,
            "net.core.somaxconn caps each shard's listen backlog at {cap}: a reconnect \
             storm beyond the accept rate overflows it sooner (cars retry after a second \
             or more); set net.core.somaxconn = {} (deploy/sysctl; a pod's sysctls)",
            crate::shard::BACKLOG
        );
    }

    let (mut memlock, memlock_hard) = Resource::MEMLOCK.get().map_err(StartupError::Limits)?;
    if memlock < MEMLOCK_NEEDED
        && memlock_hard >= MEMLOCK_NEEDED
        && Resource::MEMLOCK.set(MEMLOCK_NEEDED, memlock_hard).is_ok()
    {
        tracing::info!(
            from = memlock,
            to = MEMLOCK_NEEDED,
            "raised the locked-memory limit"
        );
        memlock = MEMLOCK_NEEDED;
    }
    if memlock < MEMLOCK_NEEDED {
        return Err(StartupError::Memlock(memlock));
    }

    if let Ok(disabled) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && disabled.trim() == "2"
    {
        return Err(StartupError::IoUringDisabled);
    }
    // glommio panics on a refused ring with a word about the kernel's
    // version before its error reaches us: ask first, and say what to fix.
    // On a thread of its own: closing a ring leaves the kernel's clean-up
    // work queued on the thread that made it, which interrupts that
    // thread's next blocking call with a timeout (EINTR), and the caller's
    // thread goes on to serve.
    let probe = std::thread::Builder::new()
        .name("io-uring-probe".into())
        .spawn(|| io_uring::IoUring::new(2).map(drop))
        .map_err(|error| StartupError::Probe(error.to_string()))?;
    match probe.join() {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(StartupError::IoUringRefused(error)),
        Err(_) => return Err(StartupError::Probe("it panicked".to_owned())),
    }
    Ok(Limits { files, memlock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_what_to_change() {
        let eperm = io_uring_refused(&io::Error::from_raw_os_error(1));
        assert!(
            eperm.contains("seccomp") && eperm.contains("io_uring_disabled"),
            "{eperm}"
        );
        let enosys = io_uring_refused(&io::Error::from_raw_os_error(38));
        assert!(enosys.contains("kernel"), "{enosys}");
        let other = io_uring_refused(&io::Error::other("the executor panicked"));
        assert!(
            other.contains("seccomp") && other.contains("io_uring_disabled"),
            "{other}"
        );
    }
}
