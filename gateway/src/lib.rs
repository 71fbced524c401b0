//! The MQTT ⇄ Kafka gateway.
//!
//! Pure logic first: [`session`] is the per-connection state machine
//! (handed packets and instants, it answers with what to do).

pub mod session;
