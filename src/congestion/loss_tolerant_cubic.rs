//! CUBIC that backs off on congestion rather than on every loss.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use super::CongestionControl;

/// The share of its packets a path may lose without a queue in sight before a loss counts as
/// congestion all the same: BBRv2's loss threshold. A path that loses more is overloaded
/// whatever its RTT says, as a shallow buffer is that overflows before it delays anything.
const LOSS_TOLERATED: f64 = 0.02;

/// The packets a loss rate is read over, counted since the last back-off: between one and two
/// of these. At 1 % random loss, 1,000 packets lose 10 on average and more than 20 in 0.2 %
/// of samples, so a lossy link is not taken for an overloaded one.
const SAMPLE: u64 = 1000;

/// A queue is in sight when the smoothed RTT exceeds the least by a quarter of it, but by at
/// least this: on a path of a few milliseconds a quarter is within a scheduler's noise.
const LEAST_QUEUE_DELAY: Duration = Duration::from_millis(1);

/// ... and by at most this: queues managed by delay hold theirs near a few milliseconds
/// whatever the path (CoDel's target is 5 ms), and a quarter of a long path's RTT would never
/// see them. Over the WAN benchmark's lossy paths this costs nothing measurable against a
/// quarter alone (`docs/performance.md`).
const MOST_QUEUE_DELAY: Duration = Duration::from_millis(5);

/// Builds [`LossTolerantCubic`]s.
pub(super) struct LossTolerantCubicConfig;

impl ControllerFactory for LossTolerantCubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let cubic = CongestionControl::Cubic.factory().build(now, current_mtu);
        Box::new(LossTolerantCubic::new(cubic, current_mtu))
    }
}

/// quinn's CUBIC, told of a loss only when the path shows congestion: a queue (the smoothed
/// RTT a quarter above the least seen, 1–5 ms), a loss rate over [`LOSS_TOLERATED`],
/// persistent congestion, or an ECN mark.
///
/// A loss on a path whose queue is empty and which loses few packets is the link's own (radio,
/// a bad cable, an overloaded middlebox upstream), and backing off for it only leaves the link
/// idle: CUBIC's rate falls as 1 / (RTT √p), to 3.7 Mbit/s of a 100 Mbit/s path with 1 % loss
/// in our benchmark. A drop-tail queue of some depth overflows with the RTT it adds, so flows
/// sharing it back off as CUBIC does; a shallower one is left to the loss rate, and there this
/// controller takes more than CUBIC's share (`docs/performance.md`). The idea is TCP Veno's
/// (Fu and Liew, 2003: read the queue to tell congestion losses from random ones), with
/// BBRv2's loss threshold as the guard.
///
/// Losses it swallows do not restart CUBIC's epoch: on a lossy path the window keeps growing
/// along CUBIC's curve, convex once past its last peak, until a queue shows.
pub(super) struct LossTolerantCubic {
    cubic: Box<dyn Controller>,
    /// The smoothed and the least RTT, as of the last acknowledgement.
    rtt: Option<(Duration, Duration)>,
    losses: LossRate,
    mtu: u64,
    /// When CUBIC last backed off: a loss of a packet sent before then is one it has already
    /// answered for (it ignores it too).
    backed_off: Option<Instant>,
}

impl LossTolerantCubic {
    pub(super) fn new(cubic: Box<dyn Controller>, mtu: u16) -> Self {
        Self {
            cubic,
            rtt: None,
            losses: LossRate::default(),
            mtu: mtu.into(),
            backed_off: None,
        }
    }

    /// Takes note of `bytes` acknowledged on a path of these RTTs.
    fn acknowledged(&mut self, sent: Instant, bytes: u64, smoothed: Duration, least: Duration) {
        self.rtt = Some((smoothed, least));
        if !self.answered(sent) {
            self.losses.count(bytes, 0, self.mtu);
        }
    }

    /// Whether a packet sent at `sent` left before CUBIC's last back-off: its loss is one CUBIC
    /// has answered for already (and ignores), its acknowledgement belongs to that sample.
    fn answered(&self, sent: Instant) -> bool {
        self.backed_off.is_some_and(|at| sent <= at)
    }

    /// Whether the path shows a queue: the smoothed RTT well above the least.
    fn queueing(&self) -> bool {
        self.rtt.is_some_and(|(smoothed, least)| {
            smoothed > least + (least / 4).clamp(LEAST_QUEUE_DELAY, MOST_QUEUE_DELAY)
        })
    }
}

impl Controller for LossTolerantCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.acknowledged(sent, bytes, rtt.get(), rtt.min());
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // No bytes lost: an ECN mark, congestion by definition.
        let signalled = is_persistent_congestion || lost_bytes == 0;
        if self.answered(sent) && !signalled {
            return;
        }
        self.losses.count(0, lost_bytes, self.mtu);
        if signalled || self.queueing() || self.losses.overloaded(self.mtu) {
            // A burst behind the back-off would otherwise read as a loss rate for the next
            // thousand packets, and every random loss among them as congestion.
            self.losses = LossRate::default();
            self.backed_off = Some(now);
            self.cubic
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu.into();
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.cubic.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            cubic: self.cubic.clone_box(),
            rtt: self.rtt,
            losses: self.losses.clone(),
            mtu: self.mtu,
            backed_off: self.backed_off,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Bytes acknowledged and lost since the last back-off: the ones counted so far, and the
/// [`SAMPLE`] of packets before them.
#[derive(Debug, Clone, Default)]
struct LossRate {
    acked: u64,
    lost: u64,
    before: (u64, u64),
}

impl LossRate {
    fn count(&mut self, acked: u64, lost: u64, mtu: u64) {
        self.acked += acked;
        self.lost += lost;
        if self.acked + self.lost >= SAMPLE * mtu {
            self.before = (self.acked, self.lost);
            (self.acked, self.lost) = (0, 0);
        }
    }

    /// Whether more than [`LOSS_TOLERATED`] of a sample's worth of bytes were lost.
    fn overloaded(&self, mtu: u64) -> bool {
        let lost = self.lost + self.before.1;
        let all = lost + self.acked + self.before.0;
        all >= SAMPLE * mtu && lost as f64 > LOSS_TOLERATED * all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::congestion::tests::Fixed;

    const MTU: u16 = 1200;
    const PACKET: u64 = MTU as u64;
    const WINDOW: u64 = 1000 * PACKET;
    const RTT: Duration = Duration::from_millis(40);

    /// A sender with a window of 1,000 packets in flight over a path of least RTT [`RTT`]: a
    /// packet leaves every [`RTT`] / 1,000 and is acknowledged or found lost one RTT later.
    struct Sender {
        cc: LossTolerantCubic,
        clock: Instant,
    }

    impl Sender {
        fn new() -> Self {
            Self {
                cc: LossTolerantCubic::new(Box::new(Fixed(WINDOW)), MTU),
                clock: Instant::now(),
            }
        }

        /// Sends `packets` with the smoothed RTT at `smoothed`; `lost(i)` says whether the
        /// `i`th (from 1) is lost. Returns the window after.
        fn run(
            &mut self,
            packets: u64,
            smoothed: Duration,
            mut lost: impl FnMut(u64) -> bool,
        ) -> u64 {
            for packet in 1..=packets {
                let sent = self.clock;
                self.clock += RTT / 1000;
                if lost(packet) {
                    self.cc.on_congestion_event(sent + RTT, sent, false, PACKET);
                } else {
                    self.cc.acknowledged(sent, PACKET, smoothed, RTT);
                }
            }
            self.cc.window()
        }

        /// As [`Sender::run`], losing every `nth` packet.
        fn every(&mut self, packets: u64, nth: u64, smoothed: Duration) -> u64 {
            self.run(packets, smoothed, |i| i % nth == 0)
        }

        /// A congestion event now for a packet sent one RTT ago.
        fn event(&mut self, persistent: bool, lost_bytes: u64) -> u64 {
            self.cc
                .on_congestion_event(self.clock, self.clock - RTT, persistent, lost_bytes);
            self.cc.window()
        }
    }

    #[test]
    fn random_loss_on_a_path_without_a_queue_leaves_the_window() {
        let mut sender = Sender::new();
        assert_eq!(sender.every(20_000, 100, RTT), WINDOW, "every 100th");
        assert_eq!(sender.every(20_000, 60, RTT), WINDOW, "every 60th");
        // 1 % at random (a seeded xorshift): a sample over 2 % is rare, not impossible.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random_loss = std::iter::from_fn(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Some(state.is_multiple_of(100))
        });
        let window = sender.run(100_000, RTT, |_| random_loss.next().unwrap_or(false));
        assert!(
            window >= WINDOW / 2,
            "at most one back-off in 100,000 packets"
        );
        // Before any RTT sample there is no queue to see either.
        assert_eq!(Sender::new().event(false, PACKET), WINDOW);
    }

    #[test]
    fn a_loss_behind_a_queue_backs_off() {
        let mut sender = Sender::new();
        // A quarter of 40 ms is over the 5 ms cap: 5 ms above the least RTT is the edge.
        let edge = RTT + MOST_QUEUE_DELAY;
        assert_eq!(sender.every(100, 100, edge), WINDOW);
        assert_eq!(sender.every(100, 100, edge + RTT / 40), WINDOW / 2);
    }

    #[test]
    fn a_queue_is_one_to_five_milliseconds() {
        let mut cc = LossTolerantCubic::new(Box::new(Fixed(WINDOW)), MTU);
        let mut now = Instant::now();
        // The window after a loss on a path of `least` RTT, `queue` above it.
        let mut after = |least: Duration, queue: Duration| {
            now += RTT;
            cc.acknowledged(now, PACKET, least + queue, least);
            cc.on_congestion_event(now, now, false, PACKET);
            cc.window()
        };
        let ms = Duration::from_millis;
        let (short, medium, long) = (Duration::from_micros(200), ms(8), ms(200));
        assert_eq!(
            after(short, Duration::from_micros(900)),
            WINDOW,
            "scheduling"
        );
        assert_eq!(after(medium, ms(2)), WINDOW, "a quarter of 8 ms");
        assert_eq!(after(long, ms(5)), WINDOW, "a quarter would be 50 ms");
        assert_eq!(after(short, Duration::from_micros(1100)), WINDOW / 2);
        assert_eq!(after(medium, Duration::from_micros(2100)), WINDOW / 4);
        assert_eq!(after(long, ms(6)), WINDOW / 8);
    }

    #[test]
    fn a_loss_rate_over_two_percent_backs_off_without_a_queue() {
        let mut sender = Sender::new();
        // 1 in 40: 2.5 %. The first sample ends at packet 1,000; the 1,000th is a loss.
        assert_eq!(
            sender.every(999, 40, RTT),
            WINDOW,
            "too few packets to judge"
        );
        assert_eq!(sender.every(1, 1, RTT), WINDOW / 2, "the sample is full");
        // What was in flight at the back-off is CUBIC's answered loss: not counted again.
        assert_eq!(sender.every(1_000, 40, RTT), WINDOW / 2);
        // A new sample starts after it.
        assert_eq!(sender.every(999, 40, RTT), WINDOW / 2);
        assert_eq!(sender.every(1, 1, RTT), WINDOW / 4);
    }

    #[test]
    fn persistent_congestion_and_ecn_marks_always_back_off() {
        let mut sender = Sender::new();
        sender.every(10, 20, RTT);
        assert_eq!(
            sender.event(true, PACKET),
            WINDOW / 2,
            "persistent congestion"
        );
        assert_eq!(
            sender.event(false, 0),
            WINDOW / 4,
            "an ECN mark: no bytes lost"
        );
    }

    #[test]
    fn the_sample_is_a_thousand_packets_of_the_current_mtu() {
        let mut sender = Sender::new();
        sender.cc.on_mtu_update(1452);
        // A sample is 1,452,000 bytes: 1,210 of the test's 1,200-byte packets, so the losses at
        // 1,000 and 1,200 are not judged, and the one at 1,240 is.
        assert_eq!(sender.every(1_239, 40, RTT), WINDOW);
        assert_eq!(sender.every(1, 1, RTT), WINDOW / 2);
    }

    #[test]
    fn copies_keep_what_was_counted() {
        let mut sender = Sender::new();
        sender.every(999, 40, RTT);
        let mut copy = sender.cc.clone_box();
        let now = sender.clock + RTT;
        copy.on_congestion_event(now, sender.clock, false, PACKET);
        assert_eq!(copy.window(), WINDOW / 2);
        assert_eq!(copy.metrics().congestion_window, WINDOW / 2);
        assert_eq!(sender.cc.window(), WINDOW, "the original is untouched");
    }
}
