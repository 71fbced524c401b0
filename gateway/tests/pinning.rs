//! Shards pin only onto CPUs that are the process's own: the real binary
//! under `taskset` with one CPU (a strict subset of the machine: pinned
//! there) and with every online CPU (the whole machine: not pinned unless
//! `--pin always`). What the log says is checked, and so is where the
//! kernel lets each shard thread run (`Cpus_allowed_list` of its task).

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::process::Command;

use gateway::pinning::{cpu_list, online_cpus};
use testkit::{Proc, WAIT, wait_until};

/// A gateway started under `taskset -c <cpus>`, running.
struct Started {
    process: Proc,
    /// Everything it logged up to "gateway running" (and perhaps a little
    /// after).
    log: String,
}

impl Started {
    /// The CPUs each shard thread may run on, by thread name; every thread
    /// of that name (glommio's helpers take their shard's name) agrees.
    fn shard_cpus(&self) -> BTreeMap<String, String> {
        let mut shards = BTreeMap::new();
        let tasks = format!("/proc/{}/task", self.process.id());
        for task in std::fs::read_dir(tasks).unwrap() {
            let task = task.unwrap().path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            let name = name.trim();
            // glommio names an executor's thread `<name>-<executor id>`.
            let Some(name) = name
                .strip_prefix("shard-")
                .and_then(|rest| rest.split_once('-'))
                .map(|(shard, _)| format!("shard-{shard}"))
            else {
                continue;
            };
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_owned();
            if let Some(seen) = shards.insert(name.clone(), cpus.clone()) {
                assert_eq!(seen, cpus, "two threads of {name} disagree");
            }
        }
        shards
    }
}

/// Starts the gateway under `taskset -c cpus` with `args`, and waits
/// (reading its log as it comes) until it says it is running. `None` when
/// taskset may not give it those CPUs (a cpuset narrower than the machine).
fn start(cpus: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Started> {
    // taskset (util-linux) execs the gateway: one process.
    let mut process = Proc::spawn(
        "the gateway under taskset",
        Command::new("taskset")
            .args(["-c", cpus, env!("CARGO_BIN_EXE_gateway")])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "",
                "--no-downlink",
                "--kafka-bootstrap",
                "127.0.0.1:1",
                "--log-format",
                "json",
            ])
            .args(args)
            .env_remove("CARBRIDGE_CONFIG")
            .env_remove("CARBRIDGE_PIN")
            .env_remove("CARBRIDGE_SHARDS")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied()),
    );
    let mut log = String::new();
    let mut refused = false;
    wait_until("the gateway to run", WAIT, || {
        // The status first: once it has exited, the log is complete.
        let exited = process.try_exit_status();
        log = process.log_text();
        refused = log.contains("failed to set") && log.contains("affinity");
        if let (Some(status), false) = (exited, refused) {
            // The drop shows its log.
            panic!("the gateway exited ({status}) before running");
        }
        refused || log.contains("gateway running")
    });
    (!refused).then_some(Started { process, log })
}

#[test]
fn under_taskset_with_one_cpu_the_shard_is_pinned_there() {
    let online = online_cpus();
    assert!(!online.is_empty());
    if online.len() < 2 {
        eprintln!("one online CPU: no mask is a strict subset of this machine; nothing to test");
        return;
    }
    let cpu = online[online.len() - 1].to_string();
    let started = start(&cpu, &[], &[]).expect("taskset -c <one online CPU>");
    let said = format!(
        "pinning shards to CPUs {cpu}: the affinity mask is 1 of the {} online CPUs",
        online.len()
    );
    assert!(started.log.contains(&said), "{}", started.log);
    // shards = 0: one per CPU of the mask.
    let shards = started.shard_cpus();
    assert_eq!(
        shards,
        BTreeMap::from([("shard-0".to_owned(), cpu.clone())]),
        "{}",
        started.log
    );
    drop(started);

    // Forced off: the shard may run anywhere in the mask (here, the same
    // one CPU), and the log says why.
    let started = start(&cpu, &["--pin", "never"], &[]).unwrap();
    assert!(
        started.log.contains("not pinning: pin = \\\"never\\\""),
        "{}",
        started.log
    );
    assert_eq!(started.shard_cpus().get("shard-0"), Some(&cpu));
}

#[test]
fn with_the_whole_machine_shards_are_not_pinned_unless_forced() {
    let online = online_cpus();
    let all = cpu_list(&online);
    let Some(started) = start(&all, &["--shards", "2"], &[]) else {
        eprintln!(
            "this process's cpuset does not reach every online CPU ({all}): \
             the whole machine cannot be given to the gateway here"
        );
        return;
    };
    let said = format!(
        "not pinning: the affinity mask is the whole machine ({} CPUs); set pin = \\\"always\\\" to force",
        online.len()
    );
    assert!(started.log.contains(&said), "{}", started.log);
    let shards = started.shard_cpus();
    assert_eq!(shards.len(), 2, "{shards:?}");
    for (name, cpus) in &shards {
        assert_eq!(cpus, &all, "{name} is pinned: {shards:?}");
    }
    drop(started);

    // Forced on through the environment: one shard per CPU of the mask,
    // in order, as before this rule.
    let started = start(&all, &["--shards", "2"], &[("CARBRIDGE_PIN", "always")]).unwrap();
    assert!(
        started.log.contains(&format!(
            "pinning shards to CPUs {all}: pin = \\\"always\\\""
        )),
        "{}",
        started.log
    );
    let shards = started.shard_cpus();
    for shard in 0..2 {
        let cpu = online[shard % online.len()].to_string();
        assert_eq!(
            shards.get(&format!("shard-{shard}")),
            Some(&cpu),
            "{shards:?}"
        );
    }
}
