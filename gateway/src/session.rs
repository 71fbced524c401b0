//! The per-connection MQTT session: a state machine with no clock and no
//! socket.
//!
//! The connection layer hands it each decoded packet (or decode error) with
//! the current instant and an output buffer; the session appends whatever
//! must be sent and answers with one [`Step`]: carry on, forward this
//! PUBLISH, decide on this CONNECT, or close for this reason. Timers are a
//! single [`Session::deadline`] the caller sleeps until, then reports with
//! [`Session::on_deadline`]. Tests drive it with synthetic instants.
//!
//! Policy (docs/gateway.md, what it accepts): QoS 0 only, no retain, no will,
//! one CONNECT per connection; SUBSCRIBE is answered with QoS 0 granted for
//! every filter the [`SubscribePolicy`] allows (0x80 for the others);
//! everything else closes the connection with a counted
//! reason. Keep alive: a car asking for `k` seconds is closed after 1.5 ×
//! min(`k`, maximum) without a packet; asking for 0 gets the maximum.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::packet::{PINGRESP, SubAck, SubAckReturnCode, encode_suback_qos0, encode_unsuback};
use codec::{
    ByteString, ConnAck, Connect, ConnectReturnCode, DecodeError, Packet, Publish, PublishView,
    QoS, Subscribe, Unsubscribe,
};

pub use crate::policy::SubscribePolicy;
use crate::rate::{Allowance, Held, UplinkLimit};
pub use close::{CloseKind, CloseReason, Unsupported};

mod close;

/// Session timing policy: its timeouts, and the pace of its uplink.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Time a new connection has to send its CONNECT.
    pub connect_timeout: Duration,
    /// Cap on the keep-alive a car may ask for; also applied to cars asking
    /// for 0 (no keep-alive), so a vanished car cannot hold a connection
    /// forever.
    pub max_keep_alive: Duration,
    /// A car that takes none of what the gateway writes to it for this
    /// long is closed (`write_stall`): it stopped reading.
    pub write_timeout: Duration,
    /// A packet begun and not complete for this long closes the
    /// connection (`packet_timeout`).
    pub packet_timeout: Duration,
    /// The most a car may publish ([`crate::rate`]).
    pub uplink: UplinkLimit,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(20 * 60),
            write_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(30),
            uplink: UplinkLimit::UNLIMITED,
        }
    }
}

/// Filters of one SUBSCRIBE answered with 0x80, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Longer than `max_filter_length`.
    pub too_long: u32,
    /// Beyond `max_filters` for the session.
    pub too_many: u32,
    /// Outside the authorization patterns.
    pub not_allowed: u32,
}

/// What the connection does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing beyond sending what was appended to the output buffer.
    Continue,
    /// A valid CONNECT: the caller decides (Kafka available? client id
    /// already connected here?) and answers with [`Session::accept`] or
    /// [`Session::refuse`].
    Connect(Box<Connect>),
    /// An accepted QoS 0 PUBLISH: map its topic and produce it.
    Publish(Publish),
    /// The filter set changed (SUBSCRIBE or UNSUBSCRIBE was answered),
    /// with the filters of a SUBSCRIBE that were refused.
    FiltersChanged(Refused),
    /// Close the connection after flushing the output buffer.
    Close(CloseReason),
    /// The PUBLISH is beyond the car's uplink limit ([`Timing::uplink`]):
    /// it was not taken, and is within the limit at [`Held::until`]. What
    /// to do (wait with it, or close) is the caller's.
    Hold(Held),
}

#[derive(Debug)]
enum State {
    AwaitingConnect {
        deadline: Instant,
    },
    /// CONNECT received, the caller has not answered yet.
    Deciding,
    Connected(Connected),
    /// The first close reason, and the client id if the car had connected
    /// (the caller's clean-up after the close needs it).
    Closed(CloseReason, Option<ByteString>),
}

#[derive(Debug)]
struct Connected {
    client_id: ByteString,
    /// 1.5 × the effective keep-alive, in milliseconds (at most 98,302,500:
    /// 12 bytes less than a `Duration` in every car).
    grace_ms: u32,
    deadline: Instant,
    /// Shared with the shard's downlink matching; none until a SUBSCRIBE.
    filters: Option<Rc<[ByteString]>>,
    /// What the car has used of its uplink limit.
    allowance: Allowance,
}

impl Connected {
    /// The deadline after a packet at `now`.
    fn renewed(&self, now: Instant) -> Instant {
        now + Duration::from_millis(self.grace_ms.into())
    }
}

/// One connection's MQTT state.
#[derive(Debug)]
pub struct Session {
    /// The shard's timing, shared by all its sessions (a reference: 24
    /// bytes less in every parked car than a copy).
    timing: &'static Timing,
    state: State,
}

impl Session {
    /// A session for a connection accepted at `now`.
    pub fn new(timing: &'static Timing, now: Instant) -> Self {
        Self {
            timing,
            state: State::AwaitingConnect {
                deadline: now + timing.connect_timeout,
            },
        }
    }

    /// The client id once connected; kept after the close.
    pub fn client_id(&self) -> Option<&ByteString> {
        match &self.state {
            State::Connected(c) => Some(&c.client_id),
            State::Closed(_, client_id) => client_id.as_ref(),
            _ => None,
        }
    }

    /// The topic filters the car subscribed to, in subscription order.
    pub fn filters(&self) -> &[ByteString] {
        self.shared_filters().map_or(&[], |filters| filters)
    }

    /// The same filters, to share without a copy (none: no filter yet).
    pub fn shared_filters(&self) -> Option<&Rc<[ByteString]>> {
        match &self.state {
            State::Connected(c) => c.filters.as_ref(),
            _ => None,
        }
    }

    /// The keep-alive in effect once connected: what the car asked for,
    /// capped (its maximum when it asked for 0).
    pub fn keep_alive(&self) -> Option<Duration> {
        match &self.state {
            State::Connected(c) => Some(Duration::from_millis(u64::from(c.grace_ms) * 2 / 3)),
            _ => None,
        }
    }

    /// When the car's last packet arrived, as its keep-alive deadline
    /// tells it (the deadline less 1.5 × the keep-alive), with no clock
    /// read of its own. Later than the packet when the gateway paused its
    /// reads since (a Kafka stall restarts the keep-alive:
    /// [`Session::excuse_pause`]).
    pub fn last_packet(&self) -> Option<Instant> {
        match &self.state {
            State::Connected(c) => c
                .deadline
                .checked_sub(Duration::from_millis(c.grace_ms.into())),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(..))
    }

    /// When the caller must call [`Session::on_deadline`] unless a packet
    /// arrives first.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingConnect { deadline } => Some(*deadline),
            State::Connected(c) => Some(c.deadline),
            State::Deciding | State::Closed(..) => None,
        }
    }

    /// Checks the timers at `now`.
    pub fn on_deadline(&mut self, now: Instant) -> Option<CloseReason> {
        let reason = match &self.state {
            State::AwaitingConnect { deadline } if now >= *deadline => CloseReason::ConnectTimeout,
            State::Connected(c) if now >= c.deadline => CloseReason::KeepAliveTimeout,
            _ => return None,
        };
        Some(self.close(reason))
    }

    /// The gateway stopped reading this connection for reasons of its own
    /// (Kafka backpressure) and resumes at `now`: the car must not be
    /// charged for the pause, so its keep-alive (or connect timeout) restarts.
    pub fn excuse_pause(&mut self, now: Instant) {
        match &mut self.state {
            State::Connected(c) => c.deadline = c.deadline.max(c.renewed(now)),
            State::AwaitingConnect { deadline } => {
                *deadline = (*deadline).max(now + self.timing.connect_timeout);
            }
            State::Deciding | State::Closed(..) => {}
        }
    }

    /// Closes the session for a reason found outside it (socket closed,
    /// takeover, unmapped topic, shutdown). Idempotent: the first reason
    /// stays.
    pub fn close(&mut self, reason: CloseReason) -> CloseReason {
        let client_id = match &mut self.state {
            State::Closed(first, _) => return *first,
            State::Connected(c) => Some(std::mem::take(&mut c.client_id)),
            _ => None,
        };
        self.state = State::Closed(reason, client_id);
        reason
    }

    /// The codec refused the input. Appends a CONNACK where the spec asks
    /// for one (bad protocol level, rejected client id) before the close.
    pub fn on_decode_error(&mut self, error: DecodeError, out: &mut BytesMut) -> CloseReason {
        if let (State::AwaitingConnect { .. }, Some(code)) = (&self.state, error.connack_code()) {
            ConnAck {
                session_present: false,
                code,
            }
            .encode(out);
        }
        self.close(CloseReason::Malformed(error))
    }

    /// Handles one packet received at `now`, any filter allowed.
    pub fn on_packet(&mut self, packet: Packet, now: Instant, out: &mut BytesMut) -> Step {
        self.on_packet_with(packet, now, &SubscribePolicy::default(), out)
    }

    /// Handles one packet received at `now`; `policy` decides which
    /// filters of a SUBSCRIBE are granted.
    pub fn on_packet_with(
        &mut self,
        packet: Packet,
        now: Instant,
        policy: &SubscribePolicy,
        out: &mut BytesMut,
    ) -> Step {
        match &mut self.state {
            State::Closed(..) => Step::Continue,
            State::AwaitingConnect { .. } => match packet {
                Packet::Connect(connect) => self.on_connect(connect),
                _ => self.fail(CloseReason::Unsupported(Unsupported::PacketBeforeConnect)),
            },
            // The caller answers a CONNECT before it decodes further.
            State::Deciding => self.fail(CloseReason::Unsupported(Unsupported::SecondConnect)),
            State::Connected(session) => {
                // Any packet counts as activity (MQTT-3.1.2-24).
                session.deadline = session.renewed(now);
                match packet {
                    Packet::Publish(publish) => self.on_publish(publish),
                    Packet::Subscribe(subscribe) => {
                        Step::FiltersChanged(Self::on_subscribe(session, &subscribe, policy, out))
                    }
                    Packet::Unsubscribe(unsubscribe) => {
                        Self::on_unsubscribe(session, &unsubscribe, out);
                        Step::FiltersChanged(Refused::default())
                    }
                    Packet::PingReq => {
                        out.extend_from_slice(&PINGRESP);
                        Step::Continue
                    }
                    Packet::Disconnect => self.fail(CloseReason::Disconnect),
                    Packet::Connect(_) => {
                        self.fail(CloseReason::Unsupported(Unsupported::SecondConnect))
                    }
                    Packet::PubAck(_)
                    | Packet::PubRec(_)
                    | Packet::PubRel(_)
                    | Packet::PubComp(_) => {
                        self.fail(CloseReason::Unsupported(Unsupported::QosAcknowledgement))
                    }
                    // A server-role decoder never yields these; if one
                    // appears all the same, it is a protocol violation.
                    Packet::ConnAck(_)
                    | Packet::SubAck(_)
                    | Packet::UnsubAck(_)
                    | Packet::PingResp => {
                        let packet = packet.packet_type();
                        self.fail(CloseReason::Malformed(DecodeError::UnexpectedPacket {
                            packet,
                        }))
                    }
                }
            }
        }
    }

    fn fail(&mut self, reason: CloseReason) -> Step {
        Step::Close(self.close(reason))
    }

    fn on_connect(&mut self, connect: Box<Connect>) -> Step {
        if connect.will.is_some() {
            return self.fail(CloseReason::Unsupported(Unsupported::Will));
        }
        self.state = State::Deciding;
        Step::Connect(connect)
    }

    /// Accepts the CONNECT returned by the last [`Step::Connect`]: appends
    /// CONNACK 0 and starts the keep-alive timer.
    ///
    /// Session present is always 0, also for a car asking for a persistent
    /// session (clean session 0): no state survives a connection here, and
    /// the flag tells a conforming client to subscribe again (§3.2.2.2).
    pub fn accept(&mut self, connect: &Connect, now: Instant, out: &mut BytesMut) {
        if !matches!(self.state, State::Deciding) {
            return;
        }
        let asked = Duration::from_secs(u64::from(connect.keep_alive));
        let keep_alive = if asked.is_zero() {
            self.timing.max_keep_alive
        } else {
            asked.min(self.timing.max_keep_alive)
        };
        let grace = keep_alive + keep_alive / 2;
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted,
        }
        .encode(out);
        self.state = State::Connected(Connected {
            // A copy, not a view: a view would keep the whole read buffer
            // the CONNECT arrived in alive for the connection's lifetime.
            client_id: ByteString::from(&*connect.client_id),
            grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
            deadline: now + grace,
            filters: None,
            allowance: Allowance::default(),
        });
    }

    /// Refuses the pending CONNECT with `code` (for example
    /// `ServerUnavailable` while Kafka cannot take data).
    pub fn refuse(&mut self, code: ConnectReturnCode, out: &mut BytesMut) -> CloseReason {
        ConnAck {
            session_present: false,
            code,
        }
        .encode(out);
        self.close(CloseReason::Refused(code))
    }

    /// Refuses the pending CONNECT with 0x05 (not authorized): its client
    /// id is not the identity the connection proved.
    pub fn deny(&mut self, out: &mut BytesMut) -> CloseReason {
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        }
        .encode(out);
        self.close(CloseReason::NotAuthorized)
    }

    fn on_publish(&mut self, publish: Publish) -> Step {
        self.refuse_publish(publish.qos(), publish.retain())
            .unwrap_or(Step::Publish(publish))
    }

    /// A PUBLISH decoded in place ([`codec::Decoder::decode_publish_in_place`]),
    /// handled as [`Session::on_packet`] handles one, without taking it:
    /// `None` when the caller is to hand it over (what `Step::Publish`
    /// says), otherwise the step to take instead.
    ///
    /// Only here is the car's uplink limit applied (`frame`: the
    /// PUBLISH's whole size): a held PUBLISH stays where it lies, to be
    /// offered again. Every whole PUBLISH is decoded in place, so
    /// [`Session::on_packet`] sees none in the gateway.
    pub fn on_publish_in_place(
        &mut self,
        publish: &PublishView<'_>,
        frame: usize,
        now: Instant,
    ) -> Option<Step> {
        let timing: &'static Timing = self.timing;
        let limit = &timing.uplink;
        match &mut self.state {
            State::Closed(..) => Some(Step::Continue),
            State::AwaitingConnect { .. } => {
                Some(self.fail(CloseReason::Unsupported(Unsupported::PacketBeforeConnect)))
            }
            State::Deciding => {
                Some(self.fail(CloseReason::Unsupported(Unsupported::SecondConnect)))
            }
            State::Connected(session) => {
                // Any packet counts as activity (MQTT-3.1.2-24).
                session.deadline = session.renewed(now);
                if publish.qos() == QoS::AtMostOnce && !publish.retain() {
                    return limit
                        .admit(&mut session.allowance, now, frame)
                        .err()
                        .map(Step::Hold);
                }
                self.refuse_publish(publish.qos(), publish.retain())
            }
        }
    }

    /// What this gateway refuses in a PUBLISH: QoS above 0, retain.
    fn refuse_publish(&mut self, qos: QoS, retain: bool) -> Option<Step> {
        if qos != QoS::AtMostOnce {
            return Some(self.fail(CloseReason::Unsupported(Unsupported::QosAboveZero)));
        }
        if retain {
            return Some(self.fail(CloseReason::Unsupported(Unsupported::Retain)));
        }
        None
    }

    fn on_subscribe(
        session: &mut Connected,
        subscribe: &Subscribe,
        policy: &SubscribePolicy,
        out: &mut BytesMut,
    ) -> Refused {
        let mut filters = session.filters.as_deref().unwrap_or_default().to_vec();
        let mut codes = Vec::new();
        let mut refused = Refused::default();
        for (filter, _requested) in subscribe.filters() {
            // A repeated filter replaces the old one (MQTT-3.8.4-3); with
            // QoS 0 only, there is nothing to replace but the entry itself.
            let held = filters.contains(&filter);
            let granted = if held {
                true
            } else if filter.len() > policy.max_filter_length {
                refused.too_long += 1;
                false
            } else if filters.len() >= policy.max_filters {
                refused.too_many += 1;
                false
            } else if !policy.allows(&session.client_id, &filter) {
                refused.not_allowed += 1;
                false
            } else {
                true
            };
            if granted && !held {
                // A copy: the decoded filter shares the whole read buffer,
                // which it would keep alive for as long as the session.
                filters.push(ByteString::from(&*filter));
            }
            codes.push(if granted {
                SubAckReturnCode::Success(QoS::AtMostOnce)
            } else {
                SubAckReturnCode::Failure
            });
        }
        // Held for the whole session: one exact allocation, shared with
        // the shard's downlink matching.
        session.filters = (!filters.is_empty()).then(|| filters.into());
        // Granted at QoS 0 whatever was asked (docs/gateway.md). The codec
        // refuses a SUBSCRIBE without filters, so `codes` is not empty.
        if codes.iter().all(|code| *code != SubAckReturnCode::Failure) {
            let _ = encode_suback_qos0(out, subscribe.packet_id, codes.len());
        } else if let Ok(suback) = SubAck::new(subscribe.packet_id, codes) {
            let _ = suback.encode(out);
        }
        refused
    }

    fn on_unsubscribe(session: &mut Connected, unsubscribe: &Unsubscribe, out: &mut BytesMut) {
        let mut filters = session.filters.as_deref().unwrap_or_default().to_vec();
        for filter in unsubscribe.filters() {
            filters.retain(|f| *f != filter);
        }
        session.filters = (!filters.is_empty()).then(|| filters.into());
        encode_unsuback(out, unsubscribe.packet_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{Subscribe, Unsubscribe, Will};
    use std::num::NonZeroU16;

    const TIMING: Timing = Timing {
        connect_timeout: Duration::from_secs(10),
        max_keep_alive: Duration::from_secs(600),
        write_timeout: Duration::from_secs(10),
        packet_timeout: Duration::from_secs(30),
        uplink: UplinkLimit::UNLIMITED,
    };

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    /// A session that accepted a CONNECT with `keep_alive` at `t0`.
    fn connected(t0: Instant, keep_alive: u16) -> Session {
        connected_with(&TIMING, t0, keep_alive)
    }

    fn connected_with(timing: &'static Timing, t0: Instant, keep_alive: u16) -> Session {
        let mut session = Session::new(timing, t0);
        let mut out = BytesMut::new();
        let connect = Connect::new("VIN0001", keep_alive);
        let Step::Connect(connect) =
            session.on_packet(Packet::Connect(Box::new(connect)), t0, &mut out)
        else {
            panic!("CONNECT not passed to the caller");
        };
        session.accept(&connect, t0, &mut out);
        assert_eq!(&out[..], &[0x20, 2, 0, 0], "CONNACK accepted");
        session
    }

    fn feed(session: &mut Session, packet: Packet, now: Instant) -> (Step, BytesMut) {
        let mut out = BytesMut::new();
        let step = session.on_packet(packet, now, &mut out);
        (step, out)
    }

    /// `on_publish_in_place` does what `on_packet` does with the same
    /// PUBLISH, in every state: the same step (or "hand it over"), the
    /// same deadline after it, nothing written.
    #[test]
    fn a_publish_in_place_is_handled_as_a_decoded_one() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let decoder = codec::Decoder::new(codec::Role::Server, 1024);
        let sessions: [fn(Instant) -> Session; 4] = [
            |t0| Session::new(&TIMING, t0),
            |t0| connected(t0, 30),
            |t0| {
                let mut session = connected(t0, 30);
                session.close(CloseReason::PeerClosed);
                session
            },
            |t0| {
                let mut session = Session::new(&TIMING, t0);
                let connect = Packet::Connect(Box::new(Connect::new("VIN0001", 30)));
                assert!(matches!(
                    feed(&mut session, connect, t0).0,
                    Step::Connect(_)
                ));
                session
            },
        ];
        let publishes = [
            Publish::qos0("UL/POS", b"x").unwrap(),
            Publish::new("UL/POS", b"x", QoS::AtLeastOnce, Some(id(1)), false, false).unwrap(),
            Publish::new("UL/POS", b"x", QoS::AtMostOnce, None, false, true).unwrap(),
        ];
        for make in sessions {
            for publish in &publishes {
                let mut frame = BytesMut::new();
                publish.encode(&mut frame).unwrap();
                let (view, size) = decoder.decode_publish_in_place(&frame).unwrap().unwrap();
                let (mut a, mut b) = (make(t0), make(t0));
                let (step, out) = feed(&mut a, Packet::Publish(publish.clone()), t1);
                let in_place = b.on_publish_in_place(&view, size, t1);
                match (step, in_place) {
                    (Step::Publish(handed), None) => assert_eq!(&handed, publish),
                    (step, Some(other)) => assert_eq!(format!("{step:?}"), format!("{other:?}")),
                    (step, None) => panic!("on_packet: {step:?}, in place: hand it over"),
                }
                assert!(out.is_empty());
                assert_eq!((a.deadline(), a.is_closed()), (b.deadline(), b.is_closed()));
            }
        }
    }

    /// Beyond its uplink limit, a PUBLISH is held (not taken, not closed),
    /// with the instant it is within the limit; the keep-alive counts it.
    #[test]
    fn a_publish_beyond_the_uplink_limit_is_held() {
        static LIMITED: Timing = Timing {
            uplink: UplinkLimit::new(1, 2, 0, 0, crate::rate::OverLimit::Pause),
            ..TIMING
        };
        let t0 = Instant::now();
        let mut session = connected_with(&LIMITED, t0, 30);
        let mut frame = BytesMut::new();
        Publish::qos0("UL/POS", b"x")
            .unwrap()
            .encode(&mut frame)
            .unwrap();
        let decoder = codec::Decoder::new(codec::Role::Server, 1024);
        let (view, size) = decoder.decode_publish_in_place(&frame).unwrap().unwrap();
        assert!(session.on_publish_in_place(&view, size, t0).is_none());
        assert!(session.on_publish_in_place(&view, size, t0).is_none());
        let t1 = t0 + Duration::from_millis(10);
        match session.on_publish_in_place(&view, size, t1) {
            Some(Step::Hold(held)) => {
                assert_eq!(held.by, crate::metrics::Limit::CarMessages);
                assert_eq!(held.until, t0 + Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(!session.is_closed());
        assert_eq!(session.deadline(), Some(t1 + Duration::from_secs(45)));
        assert!(
            session
                .on_publish_in_place(&view, size, t0 + Duration::from_secs(1))
                .is_none()
        );
    }

    #[test]
    fn connect_then_accept() {
        let t0 = Instant::now();
        let session = connected(t0, 30);
        assert_eq!(session.client_id().map(|c| &**c), Some("VIN0001"));
        assert_eq!(session.deadline(), Some(t0 + Duration::from_secs(45)));
    }

    #[test]
    fn a_closed_session_still_names_its_client_for_the_clean_up() {
        let t0 = Instant::now();
        let mut session = connected(t0, 30);
        assert_eq!(
            session.close(CloseReason::PeerClosed),
            CloseReason::PeerClosed
        );
        assert_eq!(session.close(CloseReason::Io), CloseReason::PeerClosed);
        assert!(session.is_closed());
        assert_eq!(session.client_id().map(|c| &**c), Some("VIN0001"));
        assert!(session.filters().is_empty());
        // A connection that never connected has no client to clean up.
        let mut never = Session::new(&TIMING, t0);
        never.close(CloseReason::PeerClosed);
        assert_eq!(never.client_id(), None);
    }

    #[test]
    fn persistent_session_request_is_answered_without_a_session() {
        let t0 = Instant::now();
        let mut session = Session::new(&TIMING, t0);
        let mut connect = Connect::new("VIN0001", 30);
        connect.clean_session = false;
        let (Step::Connect(connect), _) =
            feed(&mut session, Packet::Connect(Box::new(connect)), t0)
        else {
            panic!("refused");
        };
        let mut out = BytesMut::new();
        session.accept(&connect, t0, &mut out);
        assert_eq!(&out[..], &[0x20, 2, 0, 0], "session present must be 0");
    }

    #[test]
    fn connect_timeout() {
        let t0 = Instant::now();
        let mut session = Session::new(&TIMING, t0);
        assert_eq!(session.deadline(), Some(t0 + TIMING.connect_timeout));
        assert_eq!(session.on_deadline(t0 + Duration::from_millis(9_999)), None);
        assert_eq!(
            session.on_deadline(t0 + TIMING.connect_timeout),
            Some(CloseReason::ConnectTimeout)
        );
        assert!(session.is_closed());
        assert_eq!(session.deadline(), None);
    }

    #[test]
    fn keep_alive_is_enforced_at_one_and_a_half_times() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        // Any packet is activity: a PUBLISH at 14 s moves the deadline to 29 s.
        let t14 = t0 + Duration::from_secs(14);
        let (step, _) = feed(
            &mut session,
            Packet::Publish(Publish::qos0("UL/POS", b"x").unwrap()),
            t14,
        );
        assert!(matches!(step, Step::Publish(_)));
        // What an inspection reads back, with no clock of the session's.
        assert_eq!(session.keep_alive(), Some(Duration::from_secs(10)));
        assert_eq!(session.last_packet(), Some(t14));
        assert_eq!(
            session.on_deadline(t0 + Duration::from_millis(28_999)),
            None
        );
        assert_eq!(
            session.on_deadline(t0 + Duration::from_secs(29)),
            Some(CloseReason::KeepAliveTimeout)
        );
    }

    #[test]
    fn keep_alive_zero_or_above_the_maximum_gets_the_maximum() {
        let t0 = Instant::now();
        for asked in [0, 601, u16::MAX] {
            let session = connected(t0, asked);
            assert_eq!(
                session.deadline(),
                Some(t0 + Duration::from_secs(900)),
                "asked {asked}"
            );
            assert_eq!(session.keep_alive(), Some(Duration::from_secs(600)));
            assert_eq!(session.last_packet(), Some(t0));
        }
    }

    #[test]
    fn our_own_stall_is_not_charged_to_the_car() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        // Reads were paused from 5 s to 40 s; the car's timer restarts at 40 s.
        session.excuse_pause(t0 + Duration::from_secs(40));
        assert_eq!(session.on_deadline(t0 + Duration::from_secs(54)), None);
        assert_eq!(
            session.on_deadline(t0 + Duration::from_secs(55)),
            Some(CloseReason::KeepAliveTimeout)
        );
    }

    #[test]
    fn a_stall_before_connect_is_not_charged_either() {
        let t0 = Instant::now();
        let mut session = Session::new(&TIMING, t0);
        session.excuse_pause(t0 + Duration::from_secs(30));
        assert_eq!(session.on_deadline(t0 + Duration::from_secs(39)), None);
        assert_eq!(
            session.on_deadline(t0 + Duration::from_secs(40)),
            Some(CloseReason::ConnectTimeout)
        );
    }

    #[test]
    fn ping() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        let (step, out) = feed(&mut session, Packet::PingReq, t0);
        assert_eq!(step, Step::Continue);
        assert_eq!(&out[..], &PINGRESP);
    }

    #[test]
    fn subscribe_grants_qos0_and_unsubscribe_removes() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        let subscribe = Subscribe::new(
            id(7),
            [
                ("DL/#", QoS::ExactlyOnce),
                ("DL/WARN", QoS::AtLeastOnce),
                ("DL/#", QoS::AtMostOnce),
            ],
        )
        .unwrap();
        let (step, out) = feed(&mut session, Packet::Subscribe(subscribe), t0);
        assert_eq!(step, Step::FiltersChanged(Refused::default()));
        // One QoS 0 grant per filter in the request, duplicates included.
        assert_eq!(&out[..], &[0x90, 5, 0, 7, 0, 0, 0]);
        assert_eq!(session.filters(), ["DL/#", "DL/WARN"]);

        let unsubscribe = Unsubscribe::new(id(8), ["DL/#", "never/subscribed"]).unwrap();
        let (step, out) = feed(&mut session, Packet::Unsubscribe(unsubscribe), t0);
        assert_eq!(step, Step::FiltersChanged(Refused::default()));
        assert_eq!(&out[..], &[0xb0, 2, 0, 8]);
        assert_eq!(session.filters(), ["DL/WARN"]);
    }

    #[test]
    fn filters_outside_the_policy_get_0x80_and_the_session_stays() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        let policy = SubscribePolicy {
            max_filters: 2,
            max_filter_length: 16,
            allowed: vec!["DL/{client_id}/#".to_owned(), "DL/ALL".to_owned()],
        };
        let subscribe = Subscribe::new(
            id(9),
            [
                ("DL/VIN0001/#", QoS::AtMostOnce),
                ("DL/VIN0002/#", QoS::AtMostOnce),
                ("DL/VIN0001/a/very/long", QoS::AtMostOnce),
                ("DL/ALL", QoS::AtMostOnce),
                ("DL/VIN0001/x", QoS::AtMostOnce),
            ],
        )
        .unwrap();
        let mut out = BytesMut::new();
        let step = session.on_packet_with(Packet::Subscribe(subscribe), t0, &policy, &mut out);
        assert_eq!(
            step,
            Step::FiltersChanged(Refused {
                too_long: 1,
                too_many: 1,
                not_allowed: 1,
            })
        );
        assert_eq!(&out[..], &[0x90, 7, 0, 9, 0, 0x80, 0x80, 0, 0x80]);
        assert_eq!(session.filters(), ["DL/VIN0001/#", "DL/ALL"]);
        assert!(!session.is_closed());
    }

    #[test]
    fn unsupported_and_out_of_order_packets_close() {
        let t0 = Instant::now();
        let qos1 =
            Publish::new("UL/POS", b"x", QoS::AtLeastOnce, Some(id(1)), false, false).unwrap();
        let retained = Publish::new("UL/POS", b"x", QoS::AtMostOnce, None, false, true).unwrap();
        let cases: Vec<(Packet, CloseReason)> = vec![
            (
                Packet::Publish(qos1),
                CloseReason::Unsupported(Unsupported::QosAboveZero),
            ),
            (
                Packet::Publish(retained),
                CloseReason::Unsupported(Unsupported::Retain),
            ),
            (
                Packet::Connect(Box::new(Connect::new("VIN0001", 10))),
                CloseReason::Unsupported(Unsupported::SecondConnect),
            ),
            (
                Packet::PubAck(id(1)),
                CloseReason::Unsupported(Unsupported::QosAcknowledgement),
            ),
            (
                Packet::PubRel(id(1)),
                CloseReason::Unsupported(Unsupported::QosAcknowledgement),
            ),
            (Packet::Disconnect, CloseReason::Disconnect),
        ];
        for (packet, reason) in cases {
            let mut session = connected(t0, 10);
            let (step, out) = feed(&mut session, packet, t0);
            assert_eq!(step, Step::Close(reason));
            assert!(
                out.is_empty(),
                "nothing is sent before closing for {reason:?}"
            );
            assert!(session.is_closed());
            // A closed session ignores whatever still arrives.
            let (step, _) = feed(&mut session, Packet::PingReq, t0);
            assert_eq!(step, Step::Continue);
        }
    }

    #[test]
    fn anything_before_connect_closes() {
        let t0 = Instant::now();
        for packet in [
            Packet::PingReq,
            Packet::Publish(Publish::qos0("UL/POS", b"x").unwrap()),
            Packet::Disconnect,
        ] {
            let mut session = Session::new(&TIMING, t0);
            let (step, _) = feed(&mut session, packet, t0);
            assert_eq!(
                step,
                Step::Close(CloseReason::Unsupported(Unsupported::PacketBeforeConnect))
            );
        }
    }

    #[test]
    fn server_packets_from_a_car_are_protocol_violations() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        let (step, _) = feed(&mut session, Packet::PingResp, t0);
        assert_eq!(
            step,
            Step::Close(CloseReason::Malformed(DecodeError::UnexpectedPacket {
                packet: codec::PacketType::PingResp
            }))
        );
    }

    #[test]
    fn will_is_refused() {
        let t0 = Instant::now();
        let mut session = Session::new(&TIMING, t0);
        let mut connect = Connect::new("VIN0001", 10);
        connect.will = Some(Will {
            topic: "UL/LAST".into(),
            message: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        let (step, _) = feed(&mut session, Packet::Connect(Box::new(connect)), t0);
        assert_eq!(
            step,
            Step::Close(CloseReason::Unsupported(Unsupported::Will))
        );
    }

    #[test]
    fn a_connect_must_be_answered_before_the_next_packet() {
        let t0 = Instant::now();
        let mut session = Session::new(&TIMING, t0);
        let (step, _) = feed(
            &mut session,
            Packet::Connect(Box::new(Connect::new("a", 1))),
            t0,
        );
        assert!(matches!(step, Step::Connect(_)));
        assert_eq!(
            session.deadline(),
            None,
            "no timer runs while the caller decides"
        );
        let (step, _) = feed(
            &mut session,
            Packet::Connect(Box::new(Connect::new("a", 1))),
            t0,
        );
        assert_eq!(
            step,
            Step::Close(CloseReason::Unsupported(Unsupported::SecondConnect))
        );
    }

    #[test]
    fn refusal_sends_the_connack_code() {
        let t0 = Instant::now();
        let mut session = Session::new(&TIMING, t0);
        let _ = feed(
            &mut session,
            Packet::Connect(Box::new(Connect::new("VIN0001", 10))),
            t0,
        );
        let mut out = BytesMut::new();
        let reason = session.refuse(ConnectReturnCode::ServerUnavailable, &mut out);
        assert_eq!(
            reason,
            CloseReason::Refused(ConnectReturnCode::ServerUnavailable)
        );
        assert_eq!(&out[..], &[0x20, 2, 0, 3]);
    }

    #[test]
    fn decode_errors_answer_with_connack_only_where_the_spec_asks() {
        let t0 = Instant::now();
        let cases = [
            (
                DecodeError::UnsupportedProtocolLevel(3),
                &[0x20, 2, 0, 1][..],
            ),
            (DecodeError::EmptyClientId, &[0x20, 2, 0, 2][..]),
            (DecodeError::InvalidProtocolName, &[][..]),
            (DecodeError::InvalidQos, &[][..]),
        ];
        for (error, expected) in cases {
            let mut session = Session::new(&TIMING, t0);
            let mut out = BytesMut::new();
            assert_eq!(
                session.on_decode_error(error, &mut out),
                CloseReason::Malformed(error)
            );
            assert_eq!(&out[..], expected, "{error:?}");
        }
        // After CONNECT, no CONNACK is ever sent again.
        let mut session = connected(t0, 10);
        let mut out = BytesMut::new();
        session.on_decode_error(DecodeError::EmptyClientId, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_first_close_reason_stays() {
        let t0 = Instant::now();
        let mut session = connected(t0, 10);
        assert_eq!(
            session.close(CloseReason::TakenOver),
            CloseReason::TakenOver
        );
        assert_eq!(
            session.close(CloseReason::PeerClosed),
            CloseReason::TakenOver
        );
        assert_eq!(session.on_deadline(t0 + Duration::from_secs(3600)), None);
    }
}
