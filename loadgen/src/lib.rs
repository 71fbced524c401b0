//! The load generator: simulates a fleet of cars over MQTT 3.1.1 and
//! measures the bridge (or any MQTT server, in peer mode) end to end.
//!
//! The parent process ([`run`]) splits the fleet over worker processes
//! ([`worker`]), each running its cars as tasks on one glommio executor,
//! so no process exceeds its open-file limit. Payloads carry car, sequence
//! number and send time ([`payload`]); the parent receives the uplink from
//! Kafka (or from MQTT subscribers on the server in peer mode), sends
//! downlink messages through Kafka, and builds the [`report`], shown as a
//! text summary ([`run::summary`]) and a self-contained HTML page
//! ([`html`], with an SVG chart engine of its own). After a run through
//! the local stack, [`verdict`] judges it (`loadgen verdict`): the verdict
//! and the stack's facts go into the report, at the top of its pages.

pub mod html;
pub mod payload;
pub mod probe;
pub mod report;
pub mod run;
pub mod stats;
pub mod tls;
pub mod verdict;
pub mod worker;

#[cfg(test)]
mod golden;
