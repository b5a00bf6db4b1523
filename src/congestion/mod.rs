//! Which congestion controller a connection runs, and how ours differ from quinn's: every
//! controller starts from 32 packets, the default CUBIC backs off only on losses that come with
//! congestion, and BBR's window stays at 64 packets or more on short paths.

use std::sync::Arc;

use quinn::congestion::{ControllerFactory, CubicConfig, NewRenoConfig};

mod floored_bbr;
mod loss_tolerant_cubic;

use floored_bbr::FlooredBbrConfig;
use loss_tolerant_cubic::LossTolerantCubicConfig;

/// Which of quinn's congestion controllers a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), as `libp2p-quic` and quic-go run: backs off on every loss.
    Cubic,
    /// NewReno (RFC 9002's example).
    NewReno,
    /// BBR (quinn's implementation of BBRv1, marked experimental there): paces at the
    /// bottleneck rate it measures and does not take random loss for congestion, so it keeps
    /// its rate on lossy paths where CUBIC collapses. Like any BBRv1, it takes more than its
    /// share of a bottleneck from CUBIC flows (beside one on a 200 Mbit/s path: 173 Mbit/s
    /// against 45). On paths under 2 ms of RTT ours keeps a window of at least 64 packets
    /// (quinn's falls to 4, and a scheduling hiccup then stalls it).
    Bbr,
    /// CUBIC that backs off on losses that come with congestion (a queue in the RTT, a loss
    /// rate over 2 %, an ECN mark) and not on the others, which are the link's own: it keeps
    /// a path with 1 % random loss full where CUBIC falls to a twentieth of it, and where
    /// losses come from a queue (one BDP deep, or a tenth of that) it shares the bottleneck
    /// with CUBIC flows evenly (`docs/performance.md`).
    #[default]
    LossTolerantCubic,
}

impl CongestionControl {
    pub(crate) fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            CongestionControl::Cubic => {
                let mut config = CubicConfig::default();
                config.initial_window(INITIAL_WINDOW);
                Arc::new(config)
            }
            CongestionControl::NewReno => {
                let mut config = NewRenoConfig::default();
                config.initial_window(INITIAL_WINDOW);
                Arc::new(config)
            }
            CongestionControl::Bbr => Arc::new(FlooredBbrConfig),
            CongestionControl::LossTolerantCubic => Arc::new(LossTolerantCubicConfig),
        }
    }
}

/// The congestion window a connection starts with: quic-go's 32 packets, where quinn starts
/// from RFC 9002's 10. Slow start then reaches a path's first MiB two round trips earlier
/// (60 ms RTT: 545 → 442 ms), and a 10 s transfer gains what those round trips were worth
/// (`docs/performance.md`, "Real paths").
const INITIAL_WINDOW: u64 = 32 * 1200;

#[cfg(test)]
mod tests {
    use std::{any::Any, time::Instant};

    use quinn::congestion::{Controller, Cubic, NewReno};

    use super::{floored_bbr::FlooredBbr, loss_tolerant_cubic::LossTolerantCubic, *};

    const ALL: [CongestionControl; 4] = [
        CongestionControl::Cubic,
        CongestionControl::NewReno,
        CongestionControl::Bbr,
        CongestionControl::LossTolerantCubic,
    ];

    fn built(cc: CongestionControl) -> Box<dyn Controller> {
        cc.factory().build(Instant::now(), 1200)
    }

    #[test]
    fn each_choice_builds_its_controller_with_our_initial_window() {
        assert!(built(CongestionControl::Cubic)
            .into_any()
            .downcast::<Cubic>()
            .is_ok());
        assert!(built(CongestionControl::NewReno)
            .into_any()
            .downcast::<NewReno>()
            .is_ok());
        assert!(built(CongestionControl::Bbr)
            .into_any()
            .downcast::<FlooredBbr>()
            .is_ok());
        assert!(built(CongestionControl::LossTolerantCubic)
            .into_any()
            .downcast::<LossTolerantCubic>()
            .is_ok());
        for cc in ALL {
            assert_eq!(built(cc).window(), 32 * 1200, "{cc:?}");
        }
    }

    /// A controller whose window starts where the test sets it and halves on each congestion
    /// event.
    #[derive(Clone)]
    pub(super) struct Fixed(pub(super) u64);

    impl Controller for Fixed {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {
            self.0 /= 2;
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.0
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            INITIAL_WINDOW
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }
}
