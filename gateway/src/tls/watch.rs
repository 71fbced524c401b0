//! The TLS files watched: every listener's certificate, key, CA bundle,
//! CRLs and ticket-key file looked at every few seconds (`[tls_watch]`),
//! and a changed set reloaded through the very path SIGHUP and `POST
//! /reload` take ([`Reloader`]).
//!
//! Polling rather than inotify: a Kubernetes Secret volume is replaced by
//! renaming a new `..data` symlink over the old one, so the watched paths
//! never change and an inotify watch on a file sees nothing (it would have
//! to watch each directory and follow the links again on every event);
//! network and FUSE volumes send no events at all. A look is one
//! `realpath` and one `stat` per file, a few every five seconds.
//!
//! A file's state is where its path resolves to (through every symlink:
//! kubelet's timestamped directory is in it) with that file's device,
//! inode, size and modification and change times. The change time is the
//! kernel's: no copy tool preserves it, so a file rewritten in place with
//! its old modification time still shows. (Times have the kernel clock's
//! tick, a few milliseconds: a file rewritten in place twice within one
//! tick to the same size, with a look in between, would go unseen. Kubelet
//! never rewrites in place.)
//!
//! [`Debounce`] decides from successive states alone (a pure state
//! machine, tested with tables of states and instants): a set that does
//! not load yet (the certificate replaced, the key not yet) is tried again
//! at each change, quietly; only a set that still does not load once
//! `settle` has passed is reported as a failed reload.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Attempt, Reloader};
use crate::config::Listener;

/// What one watched path looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileState {
    Present {
        /// The path with every symlink resolved.
        resolved: PathBuf,
        device: u64,
        inode: u64,
        size: u64,
        /// Seconds and nanoseconds.
        modified: (i64, i64),
        changed: (i64, i64),
    },
    /// Missing (a wrong path, or removed) or not readable.
    Unreadable(io::ErrorKind),
}

impl FileState {
    pub(crate) fn of(path: &Path) -> Self {
        let resolved = match std::fs::canonicalize(path) {
            Ok(resolved) => resolved,
            Err(error) => return Self::Unreadable(error.kind()),
        };
        match std::fs::metadata(&resolved) {
            Ok(meta) => Self::Present {
                resolved,
                device: meta.dev(),
                inode: meta.ino(),
                size: meta.size(),
                modified: (meta.mtime(), meta.mtime_nsec()),
                changed: (meta.ctime(), meta.ctime_nsec()),
            },
            Err(error) => Self::Unreadable(error.kind()),
        }
    }
}

/// The files a reload reads, in a fixed order.
#[derive(Debug, Clone)]
pub(crate) struct Files(Vec<PathBuf>);

impl Files {
    /// Every file the TLS listeners among `listeners` load (a ticket-key
    /// variable is read on reload too, but no file shows its change).
    pub(crate) fn of(listeners: &[Listener]) -> Self {
        let mut paths: Vec<PathBuf> = Vec::new();
        for tls in listeners
            .iter()
            .filter_map(|listener| listener.tls.as_ref())
        {
            let files = [&tls.cert, &tls.key]
                .into_iter()
                .chain(&tls.client_ca)
                .chain(&tls.crls)
                .chain(&tls.ticket_keys);
            for path in files {
                if !paths.contains(path) {
                    paths.push(path.clone());
                }
            }
        }
        Self(paths)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each file's state now.
    pub(crate) fn look(&self) -> Vec<FileState> {
        self.0.iter().map(|path| FileState::of(path)).collect()
    }
}

/// What to do after a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing changed since the last load or the last attempt.
    Wait,
    /// The files changed: load them; a failure is not reported yet (the
    /// set may be half replaced).
    Try,
    /// Load them; a failure is reported (logged, counted, the failing
    /// gauge set): the set has not loaded for `settle`.
    Report,
}

/// A changed set of files that has not loaded yet.
#[derive(Debug)]
struct Pending<S> {
    /// The states last tried.
    seen: S,
    /// When the files first differed from the loaded ones (or changed
    /// again after a reported failure).
    since: Instant,
    /// A failure was reported for `seen`.
    reported: bool,
}

/// From successive file states `S` to reloads: reload on a change, retry
/// on each further change while the set does not load, report only when it
/// still does not load after `settle`, and once per set.
#[derive(Debug)]
pub(crate) struct Debounce<S> {
    /// The states the serving configuration was loaded from.
    loaded: S,
    pending: Option<Pending<S>>,
    settle: Duration,
}

impl<S: PartialEq> Debounce<S> {
    /// `loaded`: the states before the serving configuration was loaded
    /// (looked at before, so that a change during the load shows).
    pub(crate) fn new(loaded: S, settle: Duration) -> Self {
        Self {
            loaded,
            pending: None,
            settle,
        }
    }

    /// The step for the states `seen` at `now`; after a `Try` or a
    /// `Report`, say what the load came to with [`Debounce::loaded`].
    pub(crate) fn look(&mut self, seen: S, now: Instant) -> Step {
        let settle = self.settle;
        let attempt = |since: Instant| {
            if now.saturating_duration_since(since) >= settle {
                Step::Report
            } else {
                Step::Try
            }
        };
        match &mut self.pending {
            None if seen == self.loaded => Step::Wait,
            None => {
                self.pending = Some(Pending {
                    seen,
                    since: now,
                    reported: false,
                });
                attempt(now)
            }
            Some(pending) if pending.seen != seen => {
                // Changed again (the rest of a set arriving, a fix, or back
                // to the loaded files): try what is there now. The settle
                // time runs from the first change, so files that keep
                // changing and never load are reported all the same; after
                // a reported failure, a new change starts it again.
                if pending.reported {
                    pending.since = now;
                    pending.reported = false;
                }
                pending.seen = seen;
                attempt(pending.since)
            }
            Some(pending) if !pending.reported => {
                // The same set as the failed try: reported once settled.
                match attempt(pending.since) {
                    Step::Report => Step::Report,
                    _ => Step::Wait,
                }
            }
            Some(_) => Step::Wait,
        }
    }

    /// What the load of a `Try` or a `Report` came to.
    pub(crate) fn loaded(&mut self, step: Step, ok: bool) {
        match (ok, self.pending.take()) {
            (true, Some(pending)) => self.loaded = pending.seen,
            (false, Some(mut pending)) => {
                pending.reported |= step == Step::Report;
                self.pending = Some(pending);
            }
            (_, None) => {}
        }
    }
}

/// The watching thread; stopped and joined by [`Watcher::stop`] or when
/// dropped (a start that fails after it was spawned).
#[derive(Debug)]
pub(crate) struct Watcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Looks at `files` every `every`, starting from `loaded` (their
    /// states before the reloader's listeners loaded them).
    pub(crate) fn spawn(
        files: Files,
        loaded: Vec<FileState>,
        reloader: Arc<Reloader>,
        every: Duration,
        settle: Duration,
    ) -> io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tls-watch".to_owned())
            .spawn(move || {
                let mut debounce = Debounce::new(loaded, settle);
                // A look every `every` until told to stop (a message, or
                // the sender gone).
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let step = debounce.look(files.look(), Instant::now());
                    let attempt = match step {
                        Step::Wait => continue,
                        Step::Try => Attempt::Changed { report: false },
                        Step::Report => Attempt::Changed { report: true },
                    };
                    let outcome = reloader.reload_as(attempt);
                    if let (Err(error), Step::Try) = (&outcome, step) {
                        // Once per change: the reloader said nothing.
                        tracing::info!(
                            error = error.trim_end(),
                            settle_secs = settle.as_secs(),
                            "TLS files changed but do not load yet (a set being replaced?): \
                             the old files serve, tried again at the next change, reported \
                             if they still do not load after settle_secs"
                        );
                    }
                    debounce.loaded(step, outcome.is_ok());
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (a look in progress ends first).
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the TLS file watcher panicked");
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Runs `looks` (seconds since the start, the files' state, whether a
    /// load of them succeeds) through a debounce that settles in 10 s;
    /// the steps taken.
    fn run(loaded: &'static str, looks: &[(u64, &'static str, bool)]) -> Vec<Step> {
        let start = Instant::now();
        let mut debounce = Debounce::new(loaded, Duration::from_secs(10));
        looks
            .iter()
            .map(|&(at, seen, loads)| {
                let step = debounce.look(seen, start + Duration::from_secs(at));
                if step != Step::Wait {
                    debounce.loaded(step, loads);
                }
                step
            })
            .collect()
    }

    use Step::{Report, Try, Wait};

    #[test]
    fn unchanged_files_are_not_reloaded() {
        assert_eq!(run("a", &[(5, "a", true), (10, "a", true)]), [Wait, Wait]);
    }

    #[test]
    fn a_changed_set_that_loads_is_loaded_once() {
        assert_eq!(
            run("a", &[(5, "b", true), (10, "b", true), (15, "b", true)]),
            [Try, Wait, Wait]
        );
    }

    #[test]
    fn a_half_replaced_set_is_tried_again_when_the_rest_arrives_and_never_reported() {
        // The certificate first (no matching key yet), the key a look later.
        assert_eq!(
            run(
                "cert1+key1",
                &[
                    (5, "cert2+key1", false),
                    (10, "cert2+key2", true),
                    (15, "cert2+key2", true),
                ]
            ),
            [Try, Try, Wait]
        );
    }

    #[test]
    fn a_set_that_stays_broken_is_reported_once_after_the_settle_time() {
        assert_eq!(
            run(
                "a",
                &[
                    (5, "broken", false),
                    (10, "broken", false),
                    (14, "broken", false),
                    (15, "broken", false),
                    (20, "broken", false),
                    (600, "broken", false),
                ]
            ),
            [Try, Wait, Wait, Report, Wait, Wait]
        );
    }

    #[test]
    fn files_that_keep_changing_and_never_load_are_reported_from_the_first_change() {
        assert_eq!(
            run(
                "a",
                &[
                    (5, "b", false),
                    (10, "c", false),
                    (15, "d", false),
                    // A change after the report: tried, quietly again.
                    (20, "e", false),
                    (25, "e", false),
                ]
            ),
            [Try, Try, Report, Try, Wait]
        );
    }

    #[test]
    fn a_fix_after_a_reported_failure_loads_and_a_new_breakage_settles_again() {
        assert_eq!(
            run(
                "a",
                &[
                    (5, "broken", false),
                    (15, "broken", false),
                    // Fixed: loaded (and the failing gauge cleared by the
                    // successful reload).
                    (20, "fixed", true),
                    (25, "fixed", true),
                    // Broken again later: quiet first, reported once settled.
                    (100, "broken2", false),
                    (105, "broken2", false),
                    (110, "broken2", false),
                ]
            ),
            [Try, Report, Try, Wait, Try, Wait, Report]
        );
    }

    #[test]
    fn a_second_change_after_a_report_is_quiet_until_it_settles_too() {
        // Reported broken, then the operator's fix arrives in two steps.
        assert_eq!(
            run(
                "a",
                &[
                    (5, "cert2+key1", false),
                    (15, "cert2+key1", false),
                    (40, "cert3+key1", false),
                    (45, "cert3+key3", true),
                ]
            ),
            [Try, Report, Try, Try]
        );
    }

    #[test]
    fn files_back_to_the_loaded_ones_are_loaded_again_to_clear_a_failure() {
        assert_eq!(
            run(
                "a",
                &[(5, "broken", false), (15, "broken", false), (20, "a", true)]
            ),
            [Try, Report, Try]
        );
    }

    #[test]
    fn no_settle_time_reports_the_first_failure() {
        let start = Instant::now();
        let mut debounce = Debounce::new(1, Duration::ZERO);
        assert_eq!(debounce.look(2, start), Report);
        debounce.loaded(Report, false);
        assert_eq!(debounce.look(2, start + Duration::from_secs(5)), Wait);
    }

    /// A Kubernetes Secret volume: `..<timestamp>/` holds the files,
    /// `..data` links to it, each name links into `..data`.
    fn secret_volume(dir: &Path, stamp: &str, content: &str) {
        let data = dir.join(stamp);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("tls.crt"), content).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(stamp, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if !dir.join("tls.crt").exists() {
            std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
        }
    }

    #[test]
    fn a_secret_swapped_through_its_data_link_shows_as_a_change() {
        let dir = tempfile::tempdir().unwrap();
        secret_volume(dir.path(), "..2026_12_06_10_00_00.1", "one");
        let path = dir.path().join("tls.crt");
        let before = FileState::of(&path);
        assert!(
            matches!(&before, FileState::Present { resolved, .. }
                if resolved.ends_with("..2026_12_06_10_00_00.1/tls.crt")),
            "{before:?}"
        );
        assert_eq!(FileState::of(&path), before);
        // The same content and size in a new directory: still a change.
        secret_volume(dir.path(), "..2026_12_06_11_00_00.2", "one");
        let after = FileState::of(&path);
        assert_ne!(after, before);
        // Rewritten in place (the same path and inode) with a longer text.
        std::fs::write(dir.path().join("..2026_12_06_11_00_00.2/tls.crt"), "longer").unwrap();
        assert_ne!(FileState::of(&path), after);
        assert!(matches!(
            FileState::of(&dir.path().join("missing")),
            FileState::Unreadable(io::ErrorKind::NotFound)
        ));
    }
}
