//! A process a test starts (a gateway or router binary, mosquitto, ...):
//! killed when the test ends however it ends, its output kept in a log of
//! its own and shown when the test fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{WAIT, http_get, scrape, wait_until};

/// How much of a process's log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

/// A running child process; SIGKILLed and reaped when dropped if still
/// running. When the test is failing (panicking), the drop first prints
/// the last lines of its log and, where it serves an admin endpoint, its
/// non-zero metrics.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: tempfile::NamedTempFile,
    admin: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
}

impl Proc {
    /// Starts `command` as `name`, stdin closed, stdout and stderr into
    /// its log.
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let log = tempfile::NamedTempFile::new().expect("a temporary file for the log");
        let stdout = Self::log_writer(&log);
        Self::start(name, command, log, stdout.into())
    }

    /// As [`Proc::spawn`], with stdout for the test to read (only stderr
    /// goes into the log).
    pub fn spawn_reading_stdout(name: &str, command: &mut Command) -> (Self, ChildStdout) {
        let log = tempfile::NamedTempFile::new().expect("a temporary file for the log");
        let mut process = Self::start(name, command, log, Stdio::piped());
        let stdout = process.child.stdout.take().expect("a piped stdout");
        (process, stdout)
    }

    /// The log, opened for appending: stdout and stderr each get one, and
    /// neither writes over the other (two plain openings would each write
    /// from offset 0).
    fn log_writer(log: &tempfile::NamedTempFile) -> std::fs::File {
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .expect("the log for writing")
    }

    fn start(
        name: &str,
        command: &mut Command,
        log: tempfile::NamedTempFile,
        stdout: Stdio,
    ) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Self::log_writer(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name} ({:?}): {e}", command.get_program()));
        Self {
            name: name.to_owned(),
            child,
            log,
            admin: None,
            mqtt: None,
        }
    }

    /// Names the admin endpoint the process serves (gateway and router):
    /// [`Proc::metric`], [`Proc::ready`] and the metrics of a failing test
    /// read it.
    #[must_use]
    pub fn with_admin(mut self, admin: SocketAddr) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Names the MQTT listener the process serves (gateway).
    #[must_use]
    pub fn with_mqtt(mut self, mqtt: SocketAddr) -> Self {
        self.mqtt = Some(mqtt);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
            .unwrap_or_else(|| panic!("{} has no admin endpoint", self.name))
    }

    pub fn mqtt(&self) -> SocketAddr {
        self.mqtt
            .unwrap_or_else(|| panic!("{} has no MQTT listener", self.name))
    }

    /// One sample of the admin endpoint's metrics, 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }

    /// All samples, or none if the process does not answer.
    pub fn metrics(&self) -> HashMap<String, f64> {
        scrape(self.admin()).unwrap_or_default()
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        http_get(self.admin(), "/readyz").is_some_and(|(status, _)| status == 200)
    }

    /// Waits, at most [`WAIT`], until `condition` holds; fails at once if
    /// the process exits meanwhile (the drop then shows its log).
    pub fn wait_for(&mut self, what: &str, mut condition: impl FnMut(&Self) -> bool) {
        wait_until(&format!("{} {what}", self.name), WAIT, || {
            if let Some(status) = self.try_exit_status() {
                panic!("{} exited ({status}) before {what}", self.name);
            }
            condition(self)
        });
    }

    /// Waits until `/readyz` answers 200 (see [`Proc::wait_for`]).
    pub fn wait_ready(&mut self) {
        self.wait_for("to be ready", Self::ready);
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for the process to exit; its exit status. Fails if it is
    /// still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(&format!("{} to exit", self.name), within, || {
            status = self.try_exit_status();
            status.is_some()
        });
        status.expect("an exit status once it exited")
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the child's status")
    }

    /// SIGKILLs the process if it still runs, and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The process's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// What a failing test shows of this process.
    fn report(&mut self) {
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
        eprintln!("---- last lines of {}'s log ----", self.name);
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        if self.admin.is_some() && self.try_exit_status().is_none() {
            let mut samples: Vec<_> = self
                .metrics()
                .into_iter()
                .filter(|(_, value)| *value != 0.0)
                .collect();
            samples.sort_by(|a, b| a.0.cmp(&b.0));
            eprintln!("---- {}'s non-zero metrics: {samples:?}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_logged_and_the_exit_status_read() {
        let mut process = Proc::spawn(
            "sh",
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        );
        assert_eq!(process.wait_exit(WAIT).code(), Some(3));
        assert_eq!(process.log_text(), "out\nerr\n");
    }

    #[test]
    fn a_running_process_is_killed_when_dropped() {
        let mut process = Proc::spawn(
            "sleeper",
            Command::new("sh").args(["-c", "echo up; exec sleep 600"]),
        );
        process.wait_for("to start", |p| p.log_text() == "up\n");
        let pid = process.id();
        drop(process);
        // Reaped: its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    #[should_panic(expected = "quitter exited (exit status: 0) before to start")]
    fn a_wait_fails_at_once_when_the_process_exits() {
        let mut process = Proc::spawn("quitter", &mut Command::new("true"));
        process.wait_for("to start", |_| false);
    }
}
