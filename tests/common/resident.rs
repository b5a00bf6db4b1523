//! A process's resident memory, from /proc. Shared by `tests/hostile.rs` and, through
//! `#[path]`, by `examples/flood/` and `examples/soak/`.

/// Resident bytes of process `pid`, in 4 KiB pages (what Linux uses on the machines this runs
/// on); `None` where /proc does not tell.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
