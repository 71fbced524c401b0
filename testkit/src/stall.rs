//! One thread of a process under test stopped on purpose: a gateway
//! shard, the router's routing loop. The rest of the process runs on (its
//! admin thread answers `/livez`), which is what a stuck loop looks like.
//!
//! ptrace stops exactly one thread (PTRACE_SEIZE, then PTRACE_INTERRUPT);
//! SIGSTOP would stop the whole process. Nothing in the binaries helps:
//! there is no hook to fire in production by accident. Needs the right to
//! trace the process: root, or a child of the test under Yama's
//! `ptrace_scope` 0 or 1 (the test's processes are its children).

use nix::sys::ptrace;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::{WAIT, wait_until};

/// Stopped threads; they run on when this is dropped (on the thread that
/// stopped them: ptrace belongs to the tracing thread).
#[derive(Debug)]
pub struct Stalled {
    tids: Vec<Pid>,
    name: String,
}

impl Stalled {
    /// Stops every thread of process `pid` whose name (its `comm`, as
    /// `/proc/<pid>/task/<tid>/comm` shows it) starts with `prefix`: a
    /// glommio executor named `shard-1` runs on a thread `shard-1-<n>` and
    /// has a helper thread of the same name, both stopped.
    pub fn threads(pid: u32, prefix: &str) -> Self {
        let mut found = Vec::new();
        wait_until(&format!("threads {prefix}* of process {pid}"), WAIT, || {
            found = thread_ids(pid, prefix);
            !found.is_empty()
        });
        let mut stalled = Self {
            tids: Vec::new(),
            name: prefix.to_owned(),
        };
        for tid in found {
            let tid = Pid::from_raw(tid);
            ptrace::seize(tid, ptrace::Options::empty())
                .unwrap_or_else(|e| panic!("cannot trace thread {prefix}* ({tid}): {e}"));
            stalled.tids.push(tid);
            ptrace::interrupt(tid)
                .unwrap_or_else(|e| panic!("cannot stop thread {prefix}* ({tid}): {e}"));
            match waitpid(tid, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..)) => {}
                other => panic!("thread {prefix}* ({tid}) did not stop: {other:?}"),
            }
        }
        stalled
    }

    /// Lets the threads run on.
    pub fn resume(self) {}
}

impl Drop for Stalled {
    fn drop(&mut self) {
        for tid in &self.tids {
            if let Err(error) = ptrace::detach(*tid, None) {
                eprintln!("thread {}* ({tid}): detach failed: {error}", self.name);
            }
        }
    }
}

/// The ids of the threads of process `pid` whose names start with `prefix`.
fn thread_ids(pid: u32, prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect()
}
