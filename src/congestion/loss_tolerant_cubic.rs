//! CUBIC that backs off on congestion rather than on every loss.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

use super::INITIAL_WINDOW;

/// The share of its packets a path may lose without a queue in sight before a loss counts as
/// congestion all the same: BBRv2's loss threshold. A path that loses more is overloaded
/// whatever its RTT says, as a shallow buffer is that overflows before it delays anything.
const LOSS_TOLERATED: f64 = 0.02;

/// The packets a loss rate is read over, counted since the last back-off: between one and two
/// of these. At 1 % random loss, 1,000 packets lose 10 on average and more than 20 in 0.2 %
/// of samples, so a lossy link is not taken for an overloaded one.
const SAMPLE: u64 = 1000;

/// A queue is in sight when the smoothed RTT exceeds the least by a quarter of it, and by at
/// least this: on a path of a few milliseconds a quarter is within a scheduler's noise.
const LEAST_QUEUE_DELAY: Duration = Duration::from_millis(1);

/// Builds [`LossTolerantCubic`]s.
pub(super) struct LossTolerantCubicConfig;

impl ControllerFactory for LossTolerantCubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let mut config = CubicConfig::default();
        config.initial_window(INITIAL_WINDOW);
        let cubic = Arc::new(config).build(now, current_mtu);
        Box::new(LossTolerantCubic::new(cubic, current_mtu))
    }
}

/// quinn's CUBIC, told of a loss only when the path shows congestion: a queue (the smoothed
/// RTT a quarter above the least seen), a loss rate over [`LOSS_TOLERATED`], persistent
/// congestion, or an ECN mark.
///
/// A loss on a path whose queue is empty and which loses few packets is the link's own (radio,
/// a bad cable, an overloaded middlebox upstream), and backing off for it only leaves the link
/// idle: CUBIC falls to about MSS / (RTT √p), 3.7 Mbit/s of a 100 Mbit/s path with 1 % loss. A
/// drop-tail queue that overflows does so full, with the RTT it adds, so flows sharing a
/// bottleneck back off as CUBIC does. The idea is TCP Veno's (Fu and Liew, 2003: read the
/// queue to tell congestion losses from random ones), with BBRv2's loss threshold as the guard
/// for buffers too shallow to show.
pub(super) struct LossTolerantCubic {
    cubic: Box<dyn Controller>,
    /// The smoothed and the least RTT, as of the last acknowledgement.
    rtt: Option<(Duration, Duration)>,
    losses: LossRate,
    mtu: u64,
}

impl LossTolerantCubic {
    pub(super) fn new(cubic: Box<dyn Controller>, mtu: u16) -> Self {
        Self {
            cubic,
            rtt: None,
            losses: LossRate::default(),
            mtu: mtu.into(),
        }
    }

    /// Takes note of `bytes` acknowledged on a path of these RTTs.
    fn acknowledged(&mut self, bytes: u64, smoothed: Duration, least: Duration) {
        self.rtt = Some((smoothed, least));
        self.losses.count(bytes.div_ceil(self.mtu), 0);
    }

    /// Whether the path shows a queue: the smoothed RTT well above the least.
    fn queueing(&self) -> bool {
        self.rtt
            .is_some_and(|(smoothed, least)| smoothed > least + (least / 4).max(LEAST_QUEUE_DELAY))
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
        self.acknowledged(bytes, rtt.get(), rtt.min());
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
        self.losses.count(0, lost_bytes.div_ceil(self.mtu));
        // No bytes lost: an ECN mark, congestion by definition.
        let congested = is_persistent_congestion
            || lost_bytes == 0
            || self.queueing()
            || self.losses.overloaded();
        if congested {
            // A burst behind the back-off would otherwise read as a loss rate for the next
            // thousand packets, and every random loss among them as congestion.
            self.losses = LossRate::default();
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
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Packets acknowledged and lost since the last back-off: the ones counted so far, and the
/// [`SAMPLE`] before them.
#[derive(Debug, Clone, Default)]
struct LossRate {
    acked: u64,
    lost: u64,
    before: (u64, u64),
}

impl LossRate {
    fn count(&mut self, acked: u64, lost: u64) {
        self.acked += acked;
        self.lost += lost;
        if self.acked + self.lost >= SAMPLE {
            self.before = (self.acked, self.lost);
            (self.acked, self.lost) = (0, 0);
        }
    }

    /// Whether more than [`LOSS_TOLERATED`] of a sample's worth of packets were lost.
    fn overloaded(&self) -> bool {
        let lost = self.lost + self.before.1;
        let all = lost + self.acked + self.before.0;
        all >= SAMPLE && lost as f64 > LOSS_TOLERATED * all as f64
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

    fn controller() -> LossTolerantCubic {
        LossTolerantCubic::new(Box::new(Fixed(WINDOW)), MTU)
    }

    /// Sends `packets` over a path of `smoothed` RTT (least: [`RTT`]), losing every `nth`
    /// (none if zero); returns the window after.
    fn run(cc: &mut LossTolerantCubic, packets: u64, nth: u64, smoothed: Duration) -> u64 {
        let now = Instant::now();
        for packet in 1..=packets {
            if nth != 0 && packet % nth == 0 {
                cc.on_congestion_event(now, now, false, PACKET);
            } else {
                cc.acknowledged(PACKET, smoothed, RTT);
            }
        }
        cc.window()
    }

    #[test]
    fn random_loss_on_a_path_without_a_queue_leaves_the_window() {
        let mut cc = controller();
        assert_eq!(run(&mut cc, 20_000, 100, RTT), WINDOW, "1 % loss");
        assert_eq!(run(&mut cc, 20_000, 60, RTT), WINDOW, "1.7 % loss");
        // Before any RTT sample there is no queue to see either.
        let mut young = controller();
        let now = Instant::now();
        young.on_congestion_event(now, now, false, PACKET);
        assert_eq!(young.window(), WINDOW);
    }

    #[test]
    fn a_loss_behind_a_queue_backs_off() {
        let mut cc = controller();
        // A quarter above the least RTT is the edge: at it, no queue; past it, one.
        assert_eq!(run(&mut cc, 100, 100, RTT + RTT / 4), WINDOW);
        assert_eq!(run(&mut cc, 100, 100, RTT + RTT / 3), WINDOW / 2);
    }

    #[test]
    fn on_a_short_path_a_queue_is_a_millisecond_at_least() {
        let least = Duration::from_micros(200);
        let mut cc = controller();
        let now = Instant::now();
        cc.acknowledged(PACKET, least + Duration::from_micros(900), least);
        cc.on_congestion_event(now, now, false, PACKET);
        assert_eq!(cc.window(), WINDOW, "0.9 ms over the least: scheduling");
        cc.acknowledged(PACKET, least + Duration::from_micros(1100), least);
        cc.on_congestion_event(now, now, false, PACKET);
        assert_eq!(cc.window(), WINDOW / 2);
    }

    #[test]
    fn a_loss_rate_over_two_percent_backs_off_without_a_queue() {
        let mut cc = controller();
        // 1 in 40: 2.5 %. The first sample ends at packet 1,000; the 1,000th is a loss.
        assert_eq!(
            run(&mut cc, 999, 40, RTT),
            WINDOW,
            "too few packets to judge"
        );
        assert_eq!(run(&mut cc, 1, 1, RTT), WINDOW / 2, "the sample is full");
        // The back-off starts a new sample: the losses before it are not counted twice.
        assert_eq!(run(&mut cc, 999, 40, RTT), WINDOW / 2);
        assert_eq!(run(&mut cc, 1_000, 40, RTT), WINDOW / 4);
    }

    #[test]
    fn persistent_congestion_and_ecn_marks_always_back_off() {
        let mut cc = controller();
        let now = Instant::now();
        cc.acknowledged(PACKET, RTT, RTT);
        cc.on_congestion_event(now, now, true, PACKET);
        assert_eq!(cc.window(), WINDOW / 2, "persistent congestion");
        cc.on_congestion_event(now, now, false, 0);
        assert_eq!(cc.window(), WINDOW / 4, "an ECN mark: no bytes lost");
    }

    #[test]
    fn copies_keep_what_was_counted() {
        let mut cc = controller();
        run(&mut cc, 999, 40, RTT);
        let mut copy = cc.clone_box();
        let now = Instant::now();
        copy.on_congestion_event(now, now, false, PACKET);
        assert_eq!(copy.window(), WINDOW / 2);
        assert_eq!(copy.metrics().congestion_window, WINDOW / 2);
        assert_eq!(cc.window(), WINDOW, "the original is untouched");
    }
}
