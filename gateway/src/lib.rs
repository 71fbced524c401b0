//! The MQTT ⇄ Kafka gateway.
//!
//! Pure logic first: [`session`] is the per-connection state machine
//! (handed packets and instants, it answers with what to do), [`mapping`]
//! turns MQTT topic names into Kafka topic names.

pub mod mapping;
pub mod session;
