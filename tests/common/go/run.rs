//! Running one interop test: the Go peer built first, then the test on a runtime of its own,
//! bounded, one test at a time in the process.

use std::{future::Future, sync::Mutex, time::Duration};

use super::{go_peer_binary, GoBuild};

/// The tests of a binary run one at a time: the storms' timings are numbers worth reading, and
/// two storms sharing a small machine would blur them.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How many threads the test's runtime has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// A multi-thread runtime, as the machine has cores.
    Many,
    /// One thread: quinn's connection task then runs only when the test yields.
    One,
}

/// Build `build`'s Go peer (outside the time limit: the first build may fetch modules or a
/// toolchain), then run `test` on a fresh runtime within `limit`; panics with `name` if it
/// takes longer.
pub fn run_go_test<F: Future<Output = ()>>(
    build: GoBuild,
    threads: Threads,
    name: &str,
    limit: Duration,
    test: impl FnOnce() -> F,
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    go_peer_binary(build);
    let runtime = match threads {
        Threads::Many => tokio::runtime::Builder::new_multi_thread(),
        Threads::One => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
    .expect("runtime");
    runtime.block_on(async {
        if tokio::time::timeout(limit, test()).await.is_err() {
            panic!("{name}: timed out after {limit:?}");
        }
    });
}
