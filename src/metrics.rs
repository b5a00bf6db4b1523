//! Prometheus metrics (feature `metrics`), in the `prometheus-client` registry that
//! rust-libp2p's own metrics use.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `libp2p_quinn_streams_opened_total` | counter | `direction`, `transport` | streams opened |
//! | `libp2p_quinn_streams_dropped_total` | counter | `direction`, `transport` | `Stream` handles dropped |
//! | `libp2p_quinn_streams_live` | gauge | `direction`, `transport` | `Stream` handles alive |
//! | `libp2p_quinn_stream_halves_ended_total` | counter | `half`, `how`, `transport` | how halves ended: `send`/`finished`, `send`/`reset`, `recv`/`finished`, `recv`/`reset`, `recv`/`stopped` |
//! | `libp2p_quinn_stream_credit_wait_seconds` | histogram | — | how long opens that had to wait for stream credit waited |
//! | `libp2p_quinn_stream_credit_warnings_total` | counter | — | opens that waited past `credit_wait_warning` |
//! | `libp2p_quinn_stream_leak_warnings_total` | counter | `kind`, `transport` | leak warnings: `held_after_drop`, `idle_handle` |
//! | `libp2p_quinn_incoming_total` | counter | `outcome`, `reason` | new connections a listener decided on before their handshake (`docs/admission.md`): `accepted`, `retried`, `refused`, `ignored` |
//! | `libp2p_quinn_handshakes_in_flight` | gauge | — | handshakes admitted and not yet done, over all listeners |
//!
//! `transport` is `quic` or `webtransport`: the kind of session the stream belongs to.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::ledger::{Direction, HalfState, LeakKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HalfLabel {
    half: &'static str,
    how: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabel {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
    transport: &'static str,
}

/// The transport's metrics; register once, then hand to [`Config::with_metrics`](crate::Config::with_metrics).
/// Cheap to clone: clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opened: Family<DirectionLabel, Counter>,
    dropped: Family<DirectionLabel, Counter>,
    live: Family<DirectionLabel, Gauge>,
    halves_ended: Family<HalfLabel, Counter>,
    credit_wait: Histogram,
    credit_warnings: Counter,
    leak_warnings: Family<KindLabel, Counter>,
    incoming: Family<AdmissionLabel, Counter>,
    handshakes_in_flight: Gauge,
}

impl Metrics {
    /// Create the metrics and register them under the prefix `libp2p_quinn`.
    pub fn new(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("libp2p_quinn");
        let inner = Inner {
            opened: Family::default(),
            dropped: Family::default(),
            live: Family::default(),
            halves_ended: Family::default(),
            // 1 ms .. ~65 s
            credit_wait: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            credit_warnings: Counter::default(),
            leak_warnings: Family::default(),
            incoming: Family::default(),
            handshakes_in_flight: Gauge::default(),
        };
        registry.register("streams_opened", "Streams opened", inner.opened.clone());
        registry.register(
            "streams_dropped",
            "Stream handles dropped",
            inner.dropped.clone(),
        );
        registry.register("streams_live", "Stream handles alive", inner.live.clone());
        registry.register(
            "stream_halves_ended",
            "Stream halves ended, by half and how",
            inner.halves_ended.clone(),
        );
        registry.register(
            "stream_credit_wait_seconds",
            "Time opens waited for stream credit from the peer",
            inner.credit_wait.clone(),
        );
        registry.register(
            "stream_credit_warnings",
            "Opens that waited past the credit-wait warning threshold",
            inner.credit_warnings.clone(),
        );
        registry.register(
            "stream_leak_warnings",
            "Possible stream leaks reported",
            inner.leak_warnings.clone(),
        );
        registry.register(
            "incoming",
            "New connections decided on before their handshake, by outcome and reason",
            inner.incoming.clone(),
        );
        registry.register(
            "handshakes_in_flight",
            "Handshakes admitted and not yet done",
            inner.handshakes_in_flight.clone(),
        );
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn stream_opened(&self, direction: Direction, transport: &'static str) {
        let label = DirectionLabel {
            direction: direction.as_str(),
            transport,
        };
        self.inner.opened.get_or_create(&label).inc();
        self.inner.live.get_or_create(&label).inc();
    }

    pub(crate) fn stream_dropped(&self, direction: Direction, transport: &'static str) {
        let label = DirectionLabel {
            direction: direction.as_str(),
            transport,
        };
        self.inner.dropped.get_or_create(&label).inc();
        self.inner.live.get_or_create(&label).dec();
    }

    pub(crate) fn half_ended(&self, half: &'static str, how: HalfState, transport: &'static str) {
        self.inner
            .halves_ended
            .get_or_create(&HalfLabel {
                half,
                how: how.as_str(),
                transport,
            })
            .inc();
    }

    pub(crate) fn credit_waited(&self, waited: Duration) {
        self.inner.credit_wait.observe(waited.as_secs_f64());
    }

    pub(crate) fn credit_wait_warning(&self) {
        self.inner.credit_warnings.inc();
    }

    pub(crate) fn leak_warning(&self, kind: LeakKind, transport: &'static str) {
        self.inner
            .leak_warnings
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
                transport,
            })
            .inc();
    }

    pub(crate) fn incoming(&self, outcome: &'static str, reason: &'static str) {
        self.inner
            .incoming
            .get_or_create(&AdmissionLabel { outcome, reason })
            .inc();
    }

    pub(crate) fn handshake_started(&self) {
        self.inner.handshakes_in_flight.inc();
    }

    pub(crate) fn handshake_ended(&self) {
        self.inner.handshakes_in_flight.dec();
    }
}
