//! [`Gate`]: the admission decision as plain data. No sockets, no clock of its own: every call
//! takes `now`, so that the tests step time by hand.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::{AdmissionConfig, SubnetLimit};

/// At most one warning line per listener this often.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);
/// The table of sources is swept of entries that carry no state this often, and at most this
/// often again when it is full.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_WHEN_FULL: Duration = Duration::from_millis(100);
/// Sources the table keeps room for however empty it gets.
const SOURCES_KEPT: usize = 16;
/// A source that proved its address and is refused this many times in a row is ignored from
/// then on, until it is admitted again: an answer is a packet we send, and it has heard one.
pub(crate) const IGNORE_AFTER_REFUSALS: u32 = 16;

/// What happens to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its handshake goes ahead; it counts as in flight until released.
    Accepted,
    /// A stateless Retry: the client must come back with a token that proves its address.
    Retried,
    /// A CONNECTION_REFUSED in an Initial packet.
    Refused,
    /// Dropped without an answer.
    Ignored,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Retried => "retried",
            Outcome::Refused => "refused",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Accepted: within every limit.
    Within,
    /// Accepted: the source is in an exempt prefix (loopback by default).
    Exempt,
    /// Retried: the listener has `retry_above` handshakes in flight.
    Load,
    /// Retried: the source's budget of handshakes from an unproven address is spent.
    Unverified,
    /// The listener has `max_handshakes` in flight.
    ListenerCap,
    /// The source's subnet has its `max_handshakes` in flight.
    SourceCap,
    /// The source's subnet has used its rate of new connections.
    SourceRate,
    /// The table of sources is full of subnets that still carry state.
    Sources,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Within => "within_limits",
            Reason::Exempt => "exempt",
            Reason::Load => "load",
            Reason::Unverified => "unverified",
            Reason::ListenerCap => "listener_cap",
            Reason::SourceCap => "source_cap",
            Reason::SourceRate => "source_rate",
            Reason::Sources => "sources_full",
        }
    }
}

/// Whether the client has proven its address (a Retry token), and whether it can still be asked
/// to: quinn's `remote_address_validated()` and `may_retry()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) validated: bool,
    pub(crate) may_retry: bool,
}

#[cfg(test)]
impl Address {
    pub(crate) const PROVEN: Address = Address {
        validated: true,
        may_retry: false,
    };
    pub(crate) const UNPROVEN: Address = Address {
        validated: false,
        may_retry: true,
    };
}

/// A decision, and the warning line to log with it, if one is due.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub(crate) outcome: Outcome,
    pub(crate) reason: Reason,
    pub(crate) warning: Option<Warning>,
}

/// What the rate-limited warning line says: a source is being refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Warning {
    /// The subnet whose limit refused it (its /32 or /128 for the listener's own cap).
    pub(crate) source: IpNet,
    pub(crate) reason: Reason,
    /// Refused or ignored from this subnet since it was last named.
    pub(crate) from_source: u64,
    /// Refused or ignored from anywhere since the last warning line (this one included).
    pub(crate) total: u64,
    /// Retried since the last warning line.
    pub(crate) retried: u64,
    pub(crate) in_flight: usize,
}

/// A token bucket: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A refill rate and a depth.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    fn unlimited(self) -> bool {
        self.per_second.is_infinite()
    }
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    fn level(&self, rate: Rate, now: Instant) -> f64 {
        if rate.unlimited() {
            return rate.burst;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }

    fn has_token(&self, rate: Rate, now: Instant) -> bool {
        rate.unlimited() || self.level(rate, now) >= 1.0
    }

    fn take(&mut self, rate: Rate, now: Instant) {
        if rate.unlimited() {
            return;
        }
        self.tokens = self.level(rate, now) - 1.0;
        self.at = now;
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.level(rate, now) >= rate.burst
    }
}

/// One level of per-source limits: the subnet length, and what each subnet of it may do.
#[derive(Debug, Clone)]
struct Level {
    prefix_len: u8,
    max_handshakes: usize,
    rate: Rate,
    /// Handshakes from addresses not yet proven: go-libp2p's source-address verification
    /// budget, half the cap, refilled at one per two handshake timeouts. A spoofer who takes
    /// the victim's address can spend at most this much of its rate.
    unverified: Rate,
}

impl Level {
    fn new(limit: &SubnetLimit, handshake_timeout: Duration) -> Self {
        let per_handshake = handshake_timeout
            .max(Duration::from_millis(1))
            .as_secs_f64();
        Self {
            prefix_len: limit.prefix_len,
            max_handshakes: limit.max_handshakes,
            rate: Rate {
                per_second: limit.per_second,
                burst: f64::from(limit.burst),
            },
            unverified: Rate {
                per_second: 1.0 / (2.0 * per_handshake),
                burst: (limit.max_handshakes / 2).max(1) as f64,
            },
        }
    }
}

/// What the gate keeps of one subnet.
#[derive(Debug, Clone)]
struct Entry {
    in_flight: usize,
    rate: Bucket,
    unverified: Bucket,
    /// Refusals since the subnet was last admitted: past [`IGNORE_AFTER_REFUSALS`] it is
    /// ignored.
    refused_in_row: u32,
    /// Refusals since the subnet was last named in a warning.
    unwarned: u64,
}

impl Entry {
    fn new(level: &Level, now: Instant) -> Self {
        Self {
            in_flight: 0,
            rate: Bucket::full(level.rate, now),
            unverified: Bucket::full(level.unverified, now),
            refused_in_row: 0,
            unwarned: 0,
        }
    }

    /// Whether the entry tells anything a fresh one would not.
    fn carries_state(&self, level: &Level, now: Instant) -> bool {
        self.in_flight > 0
            || !self.rate.is_full(level.rate, now)
            || !self.unverified.is_full(level.unverified, now)
    }
}

/// The admission decision of one listener: handshakes in flight, in all and per source subnet,
/// rates per subnet, and when to ask for a Retry. Every new connection is [`Gate::decide`]d;
/// every accepted one is [`Gate::release`]d exactly once, when its handshake completes, fails,
/// times out or is dropped.
#[derive(Debug)]
pub(crate) struct Gate {
    max_handshakes: usize,
    retry_above: usize,
    ipv4: Vec<Level>,
    ipv6: Vec<Level>,
    exempt: Vec<IpNet>,
    max_sources: usize,
    in_flight: usize,
    /// Per subnet, its level's index with it; a subnet of each level of an address.
    sources: HashMap<(u8, IpNet), Entry>,
    last_sweep: Instant,
    last_warning: Option<Instant>,
    refused_since_warning: u64,
    retried_since_warning: u64,
}

impl Gate {
    pub(crate) fn new(config: &AdmissionConfig, handshake_timeout: Duration, now: Instant) -> Self {
        let levels = |limits: &[SubnetLimit], max_len: u8| {
            let mut levels: Vec<Level> = Vec::new();
            for limit in limits {
                let limit = SubnetLimit {
                    prefix_len: limit.prefix_len.min(max_len),
                    ..limit.clone()
                };
                // Two levels of one length would count every handshake twice in one entry.
                if levels.iter().all(|l| l.prefix_len != limit.prefix_len) {
                    levels.push(Level::new(&limit, handshake_timeout));
                }
            }
            levels
        };
        Self {
            max_handshakes: config.max_handshakes,
            retry_above: config.retry_above,
            ipv4: levels(&config.ipv4_subnets, 32),
            ipv6: levels(&config.ipv6_subnets, 128),
            exempt: config.exempt.clone(),
            max_sources: config.max_sources,
            in_flight: 0,
            sources: HashMap::new(),
            last_sweep: now,
            last_warning: None,
            refused_since_warning: 0,
            retried_since_warning: 0,
        }
    }

    /// Handshakes in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Subnets the table holds.
    pub(crate) fn sources(&self) -> usize {
        self.sources.len()
    }

    fn levels(&self, ip: IpAddr) -> &[Level] {
        match ip {
            IpAddr::V4(_) => &self.ipv4,
            IpAddr::V6(_) => &self.ipv6,
        }
    }

    fn key(level: usize, prefix_len: u8, ip: IpAddr) -> (u8, IpNet) {
        let net = IpNet::new(ip, prefix_len)
            .expect("prefix lengths are clamped to the address length")
            .trunc();
        (level as u8, net)
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|net| net.contains(&ip))
    }

    /// Decide on a new connection from `ip`. An accepted one counts as in flight until
    /// [`Gate::release`]d.
    ///
    /// A client that has not proven its address is never refused: whatever would refuse it asks
    /// for a Retry instead, which costs us no state and the client one round trip. One that
    /// does not come back was spoofed; one that does is refused if still over a limit, and
    /// ignored once it has been refused [`IGNORE_AFTER_REFUSALS`] times in a row.
    pub(crate) fn decide(&mut self, now: Instant, ip: IpAddr, address: Address) -> Decision {
        let ip = ip.to_canonical();
        if now.saturating_duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        if self.is_exempt(ip) {
            if self.in_flight >= self.max_handshakes {
                return self.refuse(now, ip, address, Reason::ListenerCap, None);
            }
            self.in_flight += 1;
            return self.decision(Outcome::Accepted, Reason::Exempt);
        }
        if let Some((reason, level)) = self.limited(now, ip) {
            return self.refuse(now, ip, address, reason, level);
        }
        if !address.validated && address.may_retry {
            if self.in_flight >= self.retry_above {
                return self.retry(Reason::Load);
            }
            if !self.has_unverified_budget(now, ip) {
                return self.retry(Reason::Unverified);
            }
        }
        self.admit(now, ip, !address.validated);
        self.decision(Outcome::Accepted, Reason::Within)
    }

    /// The first limit that stops a new connection from `ip`, with the level that set it.
    fn limited(&mut self, now: Instant, ip: IpAddr) -> Option<(Reason, Option<usize>)> {
        if self.in_flight >= self.max_handshakes {
            return Some((Reason::ListenerCap, None));
        }
        let levels = self.levels(ip);
        let missing = levels
            .iter()
            .enumerate()
            .filter(|(i, l)| !self.sources.contains_key(&Self::key(*i, l.prefix_len, ip)))
            .count();
        if self.sources.len() + missing > self.max_sources {
            if now.saturating_duration_since(self.last_sweep) >= SWEEP_WHEN_FULL {
                self.sweep(now);
            }
            if self.sources.len() + missing > self.max_sources {
                return Some((Reason::Sources, None));
            }
        }
        let levels = self.levels(ip);
        for (i, level) in levels.iter().enumerate() {
            let Some(entry) = self.sources.get(&Self::key(i, level.prefix_len, ip)) else {
                continue;
            };
            if entry.in_flight >= level.max_handshakes {
                return Some((Reason::SourceCap, Some(i)));
            }
            if !entry.rate.has_token(level.rate, now) {
                return Some((Reason::SourceRate, Some(i)));
            }
        }
        // A level whose limits stop even a fresh subnet (a cap or burst of zero).
        for (i, level) in levels.iter().enumerate() {
            if level.max_handshakes == 0 {
                return Some((Reason::SourceCap, Some(i)));
            }
            if !level.rate.unlimited() && level.rate.burst < 1.0 {
                return Some((Reason::SourceRate, Some(i)));
            }
        }
        None
    }

    fn has_unverified_budget(&self, now: Instant, ip: IpAddr) -> bool {
        self.levels(ip).iter().enumerate().all(|(i, level)| {
            self.sources
                .get(&Self::key(i, level.prefix_len, ip))
                .is_none_or(|entry| entry.unverified.has_token(level.unverified, now))
        })
    }

    fn admit(&mut self, now: Instant, ip: IpAddr, unverified: bool) {
        self.in_flight += 1;
        let levels = match ip {
            IpAddr::V4(_) => &self.ipv4,
            IpAddr::V6(_) => &self.ipv6,
        };
        for (i, level) in levels.iter().enumerate() {
            let entry = self
                .sources
                .entry(Self::key(i, level.prefix_len, ip))
                .or_insert_with(|| Entry::new(level, now));
            entry.in_flight += 1;
            entry.rate.take(level.rate, now);
            if unverified {
                entry.unverified.take(level.unverified, now);
            }
            entry.refused_in_row = 0;
        }
    }

    /// A connection from `ip` that [`Gate::decide`] accepted is done with its handshake, however
    /// it ended.
    pub(crate) fn release(&mut self, now: Instant, ip: IpAddr) {
        let ip = ip.to_canonical();
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.is_exempt(ip) {
            return;
        }
        let levels = match ip {
            IpAddr::V4(_) => &self.ipv4,
            IpAddr::V6(_) => &self.ipv6,
        };
        for (i, level) in levels.iter().enumerate() {
            let key = Self::key(i, level.prefix_len, ip);
            if let Some(entry) = self.sources.get_mut(&key) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                if !entry.carries_state(level, now) {
                    self.sources.remove(&key);
                }
            }
        }
    }

    /// Forget the subnets that carry no state: nothing in flight, their buckets full again.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let (ipv4, ipv6) = (&self.ipv4, &self.ipv6);
        self.sources.retain(|(level, net), entry| {
            let levels = match net {
                IpNet::V4(_) => ipv4,
                IpNet::V6(_) => ipv6,
            };
            levels
                .get(usize::from(*level))
                .is_some_and(|level| entry.carries_state(level, now))
        });
        // A flood from many sources grows the table, and a HashMap never shrinks by itself:
        // once under a quarter full, it shrinks to room for about twice its length (the rule
        // of our quinn-proto patch for its tables, third_party/README.md).
        let wanted = 2 * self.sources.len().max(SOURCES_KEPT);
        if self.sources.capacity() > 2 * wanted {
            self.sources.shrink_to(wanted);
        }
    }

    /// Room the table of sources has for entries.
    #[cfg(test)]
    pub(crate) fn sources_capacity(&self) -> usize {
        self.sources.capacity()
    }

    fn retry(&mut self, reason: Reason) -> Decision {
        self.retried_since_warning += 1;
        self.decision(Outcome::Retried, reason)
    }

    /// A connection over a limit: a Retry if its address is unproven, else a refusal (an
    /// answer, so that a real client learns at once), or silence for a source that keeps
    /// coming after being refused.
    fn refuse(
        &mut self,
        now: Instant,
        ip: IpAddr,
        address: Address,
        reason: Reason,
        level: Option<usize>,
    ) -> Decision {
        if !address.validated && address.may_retry {
            return self.retry(reason);
        }
        self.refused_since_warning += 1;
        let levels = self.levels(ip);
        let named = level.or((!levels.is_empty()).then_some(0));
        let key = named.map(|i| Self::key(i, levels[i].prefix_len, ip));
        let (mut outcome, mut from_source) = (Outcome::Refused, 1);
        // Refusals are counted on an entry that exists; one is not made to count them.
        if let Some(entry) = key.as_ref().and_then(|key| self.sources.get_mut(key)) {
            entry.refused_in_row = entry.refused_in_row.saturating_add(1);
            entry.unwarned += 1;
            from_source = entry.unwarned;
            if entry.refused_in_row > IGNORE_AFTER_REFUSALS || !address.validated {
                outcome = Outcome::Ignored;
            }
        } else if !address.validated {
            outcome = Outcome::Ignored;
        }
        let mut decision = self.decision(outcome, reason);
        let due = self
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= WARN_EVERY);
        if due {
            let source = key.map_or_else(|| IpNet::from(ip), |(_, net)| net);
            decision.warning = Some(Warning {
                source,
                reason,
                from_source,
                total: self.refused_since_warning,
                retried: self.retried_since_warning,
                in_flight: self.in_flight,
            });
            self.last_warning = Some(now);
            self.refused_since_warning = 0;
            self.retried_since_warning = 0;
            if let Some(entry) = key.as_ref().and_then(|key| self.sources.get_mut(key)) {
                entry.unwarned = 0;
            }
        }
        decision
    }

    fn decision(&self, outcome: Outcome, reason: Reason) -> Decision {
        Decision {
            outcome,
            reason,
            warning: None,
        }
    }
}
