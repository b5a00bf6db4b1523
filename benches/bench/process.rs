//! What the process and the kernel say: memory, CPU time, dropped datagrams.

use std::time::{Duration, Instant};

use super::STEP;

/// The process's memory: resident set (`/proc/self/statm`) and heap in use (glibc's
/// `mallinfo2`).
pub(super) struct Memory {
    rss: f64,
    heap: f64,
}

/// Memory growth per item.
pub(super) struct PerItem {
    pub(super) rss: f64,
    pub(super) heap: f64,
}

impl Memory {
    /// How little the heap may move between two readings [`Self::INTERVAL`] apart for the
    /// process to count as still.
    const STILL: f64 = 16.0 * 1024.0;
    const INTERVAL: Duration = Duration::from_millis(100);
    /// How many still intervals in a row make the process settled.
    const SETTLED_AFTER: usize = 3;

    /// Measure once memory has stopped moving: a fresh connection frees its handshake state
    /// only once the handshake is confirmed, and acknowledgements and stream-credit updates
    /// trickle in after the last write. Bounded by [`STEP`].
    pub(super) async fn settled() -> Self {
        let deadline = Instant::now() + STEP;
        let mut last = Self::now();
        let mut still = 0;
        while still < Self::SETTLED_AFTER && Instant::now() < deadline {
            tokio::time::sleep(Self::INTERVAL).await;
            let next = Self::now();
            still = if (next.heap - last.heap).abs() < Self::STILL {
                still + 1
            } else {
                0
            };
            last = next;
        }
        last
    }

    /// Hands free memory back to the kernel first: otherwise RSS would mostly tell how much
    /// freed memory earlier workloads left in the allocator for this one to reuse.
    fn now() -> Self {
        Self {
            heap: trimmed_heap_bytes(),
            rss: rss_bytes(),
        }
    }

    pub(super) fn growth_since(&self, before: &Memory, items: usize) -> PerItem {
        let items = items.max(1) as f64;
        PerItem {
            rss: (self.rss - before.rss) / items,
            heap: (self.heap - before.heap) / items,
        }
    }
}

/// CPU time this process has used so far, user and system, all threads.
pub(super) fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into the one it is
    // given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Datagrams the kernel dropped, machine-wide, because a UDP socket's receive buffer was full.
pub(super) fn udp_receive_drops() -> f64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    // Two `Udp:` lines: the field names, then the values.
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return f64::NAN;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(f64::NAN)
}

fn rss_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    pages * page_size
}

/// Heap bytes in use, after trimming the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trimmed_heap_bytes() -> f64 {
    // SAFETY: glibc's malloc_trim and mallinfo2 take no pointers and may be called at any time
    // from any thread.
    let info = unsafe {
        libc::malloc_trim(0);
        libc::mallinfo2()
    };
    // Small chunks in the arenas plus large ones mapped on their own.
    (info.uordblks + info.hblkhd) as f64
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trimmed_heap_bytes() -> f64 {
    f64::NAN
}
