//! What the listener child uses: the heap it holds, its resident memory, its CPU time.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Heap bytes the Rust program holds: what it asked the allocator for and has not freed. Not
/// counted: the allocator's own overhead, and what C code allocates with `malloc` (aws-lc).
pub fn heap() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Heap bytes in use by glibc's count (`mallinfo2`): C allocations too, and also the freed
/// chunks its per-thread caches keep (up to 7 of each size below 1 KiB per thread, ~0.3 MiB in
/// this listener once its threads have freed chunks of every size, which a first flood does).
pub fn glibc_in_use() -> usize {
    // SAFETY: mallinfo2 takes no pointers and may be called at any time from any thread.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// The system allocator, counting the bytes requested and not yet freed.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// SAFETY: every call is passed to the system allocator as it came; the count is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            HELD.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            HELD.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            HELD.fetch_add(new_size, Ordering::Relaxed);
            HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        q
    }
}

/// Resident bytes of process `pid` (0 if /proc does not tell).
pub fn rss_of(pid: u32) -> u64 {
    super::resident::resident_bytes(pid).unwrap_or(0)
}

/// CPU time of process `pid` so far.
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}
