//! Admission before the handshake: which new connections a listener takes on, asks to prove
//! their address (a stateless QUIC Retry), refuses or ignores, before it holds any state for
//! them and before the `Swarm` hears of them. See `docs/admission.md`.
//!
//! [`Gate`](gate::Gate) decides, as plain data with the clock passed in; [`Admission`] is a
//! listener's gate behind a lock, acting on quinn's `Incoming` and handing out a [`Ticket`]
//! for each handshake it lets in, which releases the handshake's place when dropped.

mod gate;
#[cfg(test)]
mod tests;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use ipnet::IpNet;

use gate::{Address, Decision, Gate, Outcome};

/// New connections a listener's quinn endpoint holds before the listener decides on them (quinn
/// refuses beyond it). The listener decides on each at once; this only bounds what piles up
/// while its task waits for the CPU. quinn's default is 65,536.
const MAX_INCOMING: usize = 4096;
/// Datagrams buffered for one connection not yet decided on (the rest of a ClientHello that
/// spans two datagrams, a retransmission), and for all of them. quinn's defaults: 10 MiB and
/// 100 MiB.
const INCOMING_BUFFER: u64 = 16 << 10;
const INCOMING_BUFFER_TOTAL: u64 = 8 << 20;

/// Bound what quinn holds of connections no one has decided on yet.
pub(crate) fn bound_incoming(server: &mut quinn::ServerConfig) {
    server
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
}

/// Which new connections a listener admits to a handshake: a field of
/// [`Config`](crate::Config).
///
/// The defaults are go-libp2p v0.52's for an internet-facing node, applied before the
/// handshake (see `docs/admission.md` for what they allow and how to size them):
///
/// - at most [`max_handshakes`](Self::max_handshakes) (256) handshakes in flight per listener;
/// - above [`retry_above`](Self::retry_above) (64) of them, a client that has not proven its
///   address gets a stateless Retry, so that spoofed sources cost no state;
/// - per source subnet ([`ipv4_subnets`](Self::ipv4_subnets), [`ipv6_subnets`](Self::ipv6_subnets)):
///   handshakes in flight, new connections per second with a burst, and a budget of handshakes
///   from an unproven address (half the cap, one per two handshake timeouts) beyond which
///   it must prove it first;
/// - [`exempt`](Self::exempt) prefixes (loopback) are limited by the listener's cap only.
///
/// A handshake is in flight from the moment it is admitted until its [`Connecting`](crate::Connecting)
/// resolves or is dropped: for WebTransport that includes the HTTP/3 CONNECT and Noise.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Handshakes in flight per listener (per UDP socket) at most; past it new connections
    /// are refused (or first asked for a Retry). Default: 256.
    pub max_handshakes: usize,
    /// Handshakes in flight per listener above which a new connection from an address not yet
    /// proven is asked for a Retry. Default: 64.
    pub retry_above: usize,
    /// Limits per IPv4 subnet, each subnet of every level counted. Default: /32, 8 handshakes in
    /// flight, 0.2 new connections a second with a burst of 16.
    pub ipv4_subnets: Vec<SubnetLimit>,
    /// Limits per IPv6 subnet. Default: /56 as IPv4's /32; /48, 64 handshakes, 0.5 a second
    /// with a burst of 80.
    pub ipv6_subnets: Vec<SubnetLimit>,
    /// Sources limited by the listener's cap only, never asked for a Retry. Default:
    /// `127.0.0.0/8` and `::1/128`, as in go-libp2p.
    pub exempt: Vec<IpNet>,
    /// Subnets a listener keeps track of at most; a subnet is forgotten once nothing of it is
    /// in flight and its rates have refilled. When the table is full of subnets that still
    /// carry state, new sources are refused (first asked for a Retry). Default: 65,536
    /// (a few MB).
    pub max_sources: usize,
}

/// The limits of one subnet length.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetLimit {
    /// The subnet's prefix length: 32 counts each IPv4 address alone, 24 a /24 together.
    pub prefix_len: u8,
    /// Handshakes in flight from one such subnet at most.
    pub max_handshakes: usize,
    /// New connections a second that one such subnet is admitted in the long run
    /// (`f64::INFINITY`: no rate limit).
    pub per_second: f64,
    /// New connections one such subnet may make at once, after a quiet while.
    pub burst: u32,
}

impl SubnetLimit {
    /// A limit for subnets of `prefix_len`.
    pub fn new(prefix_len: u8, max_handshakes: usize, per_second: f64, burst: u32) -> Self {
        Self {
            prefix_len,
            max_handshakes,
            per_second,
            burst,
        }
    }
}

/// go-libp2p's concurrent connections per /32 and /56 (`defaultMaxConcurrentConns`).
const GO_MAX_CONCURRENT: usize = 8;

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            retry_above: 64,
            ipv4_subnets: vec![SubnetLimit::new(
                32,
                GO_MAX_CONCURRENT,
                0.2,
                2 * GO_MAX_CONCURRENT as u32,
            )],
            ipv6_subnets: vec![
                SubnetLimit::new(56, GO_MAX_CONCURRENT, 0.2, 2 * GO_MAX_CONCURRENT as u32),
                SubnetLimit::new(
                    48,
                    8 * GO_MAX_CONCURRENT,
                    0.5,
                    10 * GO_MAX_CONCURRENT as u32,
                ),
            ],
            exempt: vec![
                "127.0.0.0/8".parse().expect("a valid prefix"),
                "::1/128".parse().expect("a valid prefix"),
            ],
            max_sources: 65_536,
        }
    }
}

impl AdmissionConfig {
    /// Admit every connection, as before admission existed (quinn's own bound on connections
    /// not yet decided on still holds): for closed networks and benchmarks.
    pub fn unlimited() -> Self {
        Self {
            max_handshakes: usize::MAX,
            retry_above: usize::MAX,
            ipv4_subnets: Vec::new(),
            ipv6_subnets: Vec::new(),
            exempt: Vec::new(),
            max_sources: usize::MAX,
        }
    }
}

/// What the admission of a transport's listeners holds now
/// ([`Transport::admission_snapshot`](crate::tokio::Transport::admission_snapshot)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdmissionSnapshot {
    /// Handshakes admitted and not yet done, over all listeners.
    pub handshakes_in_flight: usize,
    /// Source subnets the listeners keep track of.
    pub sources: usize,
    /// Connections the listeners' quinn endpoints hold, handshaking, established or closing
    /// (quinn's `open_connections`; dials that left from a listener's port count too).
    pub endpoint_connections: usize,
}

/// One listener's gate, shared with the tickets of the handshakes it admitted.
#[derive(Clone)]
pub(crate) struct Admission {
    gate: Arc<Mutex<Gate>>,
    /// The listener's address, for the warning line.
    listener: SocketAddr,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl Admission {
    pub(crate) fn new(config: &crate::Config, listener: SocketAddr) -> Self {
        let gate = Gate::new(&config.admission, config.handshake_timeout, Instant::now());
        Self {
            gate: Arc::new(Mutex::new(gate)),
            listener,
            #[cfg(feature = "metrics")]
            metrics: config.metrics.clone(),
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decide on `incoming`: give it back with the ticket of its place, or answer it (a Retry,
    /// a refusal) or drop it here.
    pub(crate) fn admit(&self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Ticket)> {
        let remote = incoming.remote_address();
        let address = Address {
            validated: incoming.remote_address_validated(),
            may_retry: incoming.may_retry(),
        };
        let decision = self.gate().decide(Instant::now(), remote.ip(), address);
        self.record(&decision, remote);
        match decision.outcome {
            Outcome::Accepted => {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.metrics {
                    metrics.handshake_started();
                }
                let ticket = Ticket {
                    admission: self.clone(),
                    ip: remote.ip(),
                };
                return Some((incoming, ticket));
            }
            Outcome::Retried => {
                if let Err(error) = incoming.retry() {
                    // Only an address already proven cannot be retried, and it is not asked to.
                    error.into_incoming().ignore();
                }
            }
            Outcome::Refused => incoming.refuse(),
            Outcome::Ignored => incoming.ignore(),
        }
        None
    }

    fn record(&self, decision: &Decision, remote: SocketAddr) {
        let (outcome, reason) = (decision.outcome.as_str(), decision.reason.as_str());
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.incoming(outcome, reason);
        }
        if decision.outcome != Outcome::Accepted {
            tracing::trace!(%remote, outcome, reason, "incoming connection not admitted");
        }
        if let Some(warning) = &decision.warning {
            tracing::warn!(
                listener = %self.listener,
                "refusing new connections from {} ({}): {} refused or ignored from it and {} \
                 from all sources since the last such line, {} asked to prove their address \
                 (Retry); {} handshakes in flight. At most one such line every {} s; the \
                 metric libp2p_quinn_incoming_total counts them all",
                warning.source,
                warning.reason.as_str(),
                warning.from_source,
                warning.total,
                warning.retried,
                warning.in_flight,
                gate::WARN_EVERY.as_secs(),
            );
        }
    }

    /// Handshakes in flight and subnets tracked.
    pub(crate) fn snapshot(&self) -> (usize, usize) {
        let mut gate = self.gate();
        gate.sweep(Instant::now());
        (gate.in_flight(), gate.sources())
    }
}

/// The place of one admitted handshake: dropping it gives the place back.
pub(crate) struct Ticket {
    admission: Admission,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.gate().release(Instant::now(), self.ip);
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.admission.metrics {
            metrics.handshake_ended();
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("ip", &self.ip).finish()
    }
}
