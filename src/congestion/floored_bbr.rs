//! quinn's BBR with a floor under its window on short paths.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use super::INITIAL_WINDOW;

/// Paths whose minimum RTT is below this are short (loopback, a LAN), where BBR's window gets
/// [`SHORT_PATH_FLOOR`].
const SHORT_PATH: Duration = Duration::from_millis(2);

/// BBR's least window on a short path: 76,800 bytes, 64 packets of QUIC's least size (fewer
/// of a larger MTU). Loopback bulk against `libp2p-quic`'s CUBIC,
/// median of six paired turns: quinn's floor of 4 packets 0.78×, 32 packets 0.86×, 64 packets
/// 1.04×, 128 packets 1.03×; CUBIC 1.02× (`docs/performance.md`).
const SHORT_PATH_FLOOR: u64 = 64 * 1200;

/// BBR's `window` on a path whose minimum RTT is `min_rtt`.
fn floored(window: u64, min_rtt: Duration) -> u64 {
    if min_rtt < SHORT_PATH {
        window.max(SHORT_PATH_FLOOR)
    } else {
        window
    }
}

/// Builds [`FlooredBbr`]s.
pub(super) struct FlooredBbrConfig;

impl ControllerFactory for FlooredBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let mut config = BbrConfig::default();
        config.initial_window(INITIAL_WINDOW);
        Box::new(FlooredBbr {
            bbr: Arc::new(config).build(now, current_mtu),
            min_rtt: Duration::MAX,
            floor: true,
        })
    }
}

/// quinn's BBR, with a floor under its window on short paths. BBR sets its window to twice the
/// bottleneck rate times the minimum RTT; where that RTT is tens of microseconds (loopback, a
/// LAN) that is a few packets, so any pause in the receiver's scheduling stalls the sender and
/// the rate it then measures is lower still. On longer paths the floor would only queue: a
/// slow link's BBR keeps its own window.
pub(super) struct FlooredBbr {
    bbr: Box<dyn Controller>,
    /// The path's minimum RTT, as of the last acknowledgement.
    min_rtt: Duration,
    /// Whether the floor applies: persistent congestion clears it for the rest of the
    /// connection, as it takes any window to its minimum (RFC 9002 §7.6.2). A short path that
    /// loses three probe timeouts' worth is a congested one, not the loopback the floor is for.
    floor: bool,
}

impl Controller for FlooredBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.min_rtt = rtt.min();
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.bbr
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            self.floor = false;
        }
        self.bbr
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.floor {
            floored(self.bbr.window(), self.min_rtt)
        } else {
            self.bbr.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.bbr.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(FlooredBbr {
            bbr: self.bbr.clone_box(),
            min_rtt: self.min_rtt,
            floor: self.floor,
        })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::congestion::tests::Fixed;

    #[test]
    fn on_a_short_path_the_floor_holds_below_it_and_bbr_decides_above_it() {
        let now = Instant::now();
        let mut floored = FlooredBbr {
            bbr: Box::new(Fixed(200 * 1200)),
            min_rtt: Duration::from_micros(50),
            floor: true,
        };
        assert_eq!(floored.window(), 200 * 1200);
        floored.on_congestion_event(now, now, false, 1200);
        assert_eq!(floored.window(), 100 * 1200);
        floored.on_congestion_event(now, now, false, 1200);
        assert_eq!(floored.window(), SHORT_PATH_FLOOR, "50 packets, held at 64");
        assert_eq!(floored.metrics().congestion_window, SHORT_PATH_FLOOR);
        assert_eq!(floored.clone_box().window(), SHORT_PATH_FLOOR);
        // Persistent congestion: BBR's own window from then on, in copies too.
        floored.on_congestion_event(now, now, true, 1200);
        assert_eq!(floored.window(), 25 * 1200);
        assert_eq!(floored.clone_box().window(), 25 * 1200);
    }

    #[test]
    fn on_a_longer_path_or_before_any_sample_bbr_keeps_its_own_window() {
        assert_eq!(
            floored(4 * 1200, Duration::from_millis(1)),
            SHORT_PATH_FLOOR
        );
        assert_eq!(floored(4 * 1200, SHORT_PATH), 4 * 1200);
        assert_eq!(floored(4 * 1200, Duration::from_millis(60)), 4 * 1200);
        assert_eq!(floored(4 * 1200, Duration::MAX), 4 * 1200);
    }
}
