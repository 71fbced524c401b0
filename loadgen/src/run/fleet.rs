//! The fleet: worker processes, each with its share of the cars (or, for
//! `--raw-kafka`, one producer thread in their place), their ticks, and
//! stopping them.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use rustix::process::{Pid, Signal, kill_process};

use super::kafka::{RawPlan, produce_raw};
use super::{Options, Times};
use crate::payload;
use crate::worker::{Plan, WorkerTick};

/// Cars per worker process unless asked: the fleet over three workers
/// (connecting spreads over the cores, and more processes only add
/// switching: 45,000 cars connected at 21,487 cars/s over three workers,
/// 18,587 over nine), at most 15,000 each (below the 20,000 open files a
/// process may have here). With `--link` each car costs its worker three
/// open files (its socket, and the link proxy's two): at most 6,000.
pub fn default_cars_per_worker(cars: u64, linked: bool) -> u64 {
    cars.div_ceil(3)
        .clamp(1, if linked { 6_000 } else { 15_000 })
}

/// Open files one car costs its worker process: its socket, and with
/// `--link` the proxy's two sockets of its connection.
pub fn files_per_car(linked: bool) -> u64 {
    if linked { 3 } else { 1 }
}

/// Source addresses for loopback targets: 127.r.x.y, one per
/// `per_source` cars, so local ports never run out. `r` changes from run
/// to run: the previous run's connections linger in TIME_WAIT on the
/// server side, and a new SYN on the same address pair can stall there.
fn loopback_sources(cars: u64, per_source: u64) -> Vec<IpAddr> {
    let run = 1 + (payload::now_us() / 1_000_000 % 250) as u8;
    let needed = cars.div_ceil(per_source.max(1)).max(1);
    (0..needed)
        .map(|k| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                run,
                ((k / 250) % 256) as u8,
                (k % 250 + 1) as u8,
            ))
        })
        .collect()
}

#[derive(Debug)]
struct Worker {
    /// `None` for the raw producer thread of `--raw-kafka`.
    child: Option<Child>,
    last: WorkerTick,
    done: bool,
}

impl Worker {
    fn new(child: Option<Child>) -> Self {
        Self {
            child,
            last: WorkerTick::default(),
            done: false,
        }
    }
}

/// The workers of the run and their ticks, as `(worker index, tick)`.
#[derive(Debug)]
pub(super) struct Fleet {
    workers: Vec<Worker>,
    ticks: Receiver<(usize, WorkerTick)>,
    /// The workers were told to stop.
    stopped: bool,
}

impl Fleet {
    /// Starts the worker processes (or the raw producer), which wait for
    /// `times.start_us` to begin.
    pub(super) fn start(
        options: &Options,
        times: &Times,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        // Loopback targets: every car connects from its own source address
        // and port (see `worker::source_of`). Left to itself, the kernel
        // searches the port range for a free port at each connect (or bind),
        // which at tens of thousands of connections to one address takes
        // most of the CPU.
        let sources = if options.sources.is_empty()
            && options.targets.iter().all(|t| t.ip().is_loopback())
            && options.targets.iter().all(SocketAddr::is_ipv4)
        {
            loopback_sources(options.cars, options.cars_per_source)
        } else {
            options.sources.clone()
        };
        let workers_needed = options.cars.div_ceil(options.cars_per_worker.max(1)).max(1);
        let (ticks_tx, ticks) = crossbeam_channel::unbounded::<(usize, WorkerTick)>();
        let mut workers = Vec::new();
        let exe = std::env::current_exe().context("finding the loadgen binary")?;
        if let (true, Some(bootstrap)) = (options.raw_kafka, &options.kafka_bootstrap) {
            let raw = RawPlan::new(options, bootstrap, times);
            let (tx, stop) = (ticks_tx.clone(), stop.clone());
            std::thread::spawn(move || produce_raw(&raw, &tx, &stop));
            workers.push(Worker::new(None));
        }
        for w in 0..if options.raw_kafka { 0 } else { workers_needed } {
            let first_car = w * options.cars / workers_needed;
            let next = (w + 1) * options.cars / workers_needed;
            let plan = Plan {
                first_car,
                cars: next - first_car,
                targets: options.targets.clone(),
                sources: sources.clone(),
                cars_per_source: options.cars_per_source,
                connect_rate: options.connect_rate / workers_needed as f64,
                tls: options.tls.clone(),
                reconnect: options.reconnect,
                link: options.link.clone(),
                churn_period_secs: (options.churn > 0.0)
                    .then(|| options.cars as f64 / options.churn),
                publish_interval_ms: options.publish_interval_ms,
                keep_alive_secs: options.keep_alive_secs,
                payload_size: options.payload_size,
                topic: options.topic.clone(),
                shards: options.shards(),
                subscribe: options.subscribe.clone(),
                start_us: times.start_us,
                end_us: times.end_us,
            };
            let index = usize::try_from(w).unwrap_or(usize::MAX);
            workers.push(spawn_worker(&exe, &plan, index, ticks_tx.clone())?);
        }
        Ok(Self {
            workers,
            ticks,
            stopped: false,
        })
    }

    /// The next tick of any worker, waiting until `deadline` at most.
    pub(super) fn next_tick(&self, deadline: Instant) -> Option<(usize, WorkerTick)> {
        self.ticks.recv_deadline(deadline).ok()
    }

    /// Keeps worker `index`'s latest tick.
    pub(super) fn record(&mut self, index: usize, tick: WorkerTick) {
        if let Some(worker) = self.workers.get_mut(index) {
            worker.done |= tick.done;
            worker.last = tick;
        }
    }

    /// Counts a worker that exited without its last tick as done.
    pub(super) fn notice_exits(&mut self) {
        for worker in &mut self.workers {
            if !worker.done
                && let Some(child) = worker.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                worker.done = true;
            }
        }
    }

    /// Cars connected now, by the workers' latest ticks.
    pub(super) fn connected(&self) -> u64 {
        self.workers.iter().map(|w| w.last.connected_now).sum()
    }

    pub(super) fn all_done(&self) -> bool {
        self.workers.iter().all(|w| w.done)
    }

    /// Tells every worker process to stop (SIGTERM: they disconnect their
    /// cars and send their last tick), once.
    pub(super) fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        for child in self.workers.iter_mut().filter_map(|w| w.child.as_mut()) {
            // Only a child not yet reaped: its pid cannot have been reused.
            if matches!(child.try_wait(), Ok(None)) {
                let _ = kill_process(Pid::from_child(child), Signal::TERM);
            }
        }
    }

    /// Waits for the worker processes to exit.
    pub(super) fn wait(&mut self) {
        for worker in &mut self.workers {
            if let Some(child) = worker.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}

/// Starts one worker process on `plan`; a thread forwards its ticks (JSON
/// lines on its stdout) as `(index, tick)`.
fn spawn_worker(
    exe: &Path,
    plan: &Plan,
    index: usize,
    ticks: Sender<(usize, WorkerTick)>,
) -> anyhow::Result<Worker> {
    let mut child = Command::new(exe)
        .args(["worker", "--plan", &serde_json::to_string(plan)?])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a worker process")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(tick) = serde_json::from_str::<WorkerTick>(&line) {
                let _ = ticks.send((index, tick));
            }
        }
    });
    Ok(Worker::new(Some(child)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn stop_sends_sigterm_to_the_worker_processes_once() {
        use std::os::unix::process::ExitStatusExt;
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let (_tx, ticks) = crossbeam_channel::unbounded();
        let mut fleet = Fleet {
            workers: vec![Worker::new(Some(child)), Worker::new(None)],
            ticks,
            stopped: false,
        };
        fleet.stop();
        fleet.stop();
        let status = fleet.workers[0].child.as_mut().unwrap().wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::TERM.as_raw()));
        // Reaped: stopping again signals nothing.
        fleet.stopped = false;
        fleet.stop();
    }

    #[test]
    fn the_default_fleet_is_three_workers_of_at_most_15000() {
        assert_eq!(default_cars_per_worker(1, false), 1);
        assert_eq!(default_cars_per_worker(300, false), 100);
        assert_eq!(default_cars_per_worker(45_000, false), 15_000);
        assert_eq!(default_cars_per_worker(700_000, false), 15_000);
        assert_eq!(
            700_000u64.div_ceil(default_cars_per_worker(700_000, false)),
            47
        );
    }

    #[test]
    fn a_linked_car_costs_three_files_and_a_worker_holds_6000() {
        assert_eq!(default_cars_per_worker(1_000, true), 334);
        assert_eq!(default_cars_per_worker(45_000, true), 6_000);
        assert!(6_000 * files_per_car(true) < 20_000);
    }
}
