//! A real browser as a WebTransport peer: headless Chromium running js-libp2p
//! (`tests/browser/`), driven by `node tests/browser/run.mjs`. It dials one address, pings,
//! echoes on many streams of `/libp2p-quinn/echo/1.0.0`, hangs up, and prints JSON lines,
//! which land here in a [`BrowserReport`].
//!
//! Needs `node` (>= 18) and npm, and Chromium (`CHROMIUM`, else Debian's `chromium`).
//! [`run_browser`] runs `npm ci` in `tests/browser` and installs Chromium first when they are
//! missing and it can ([`super::prepare`]); when it cannot, it returns an error that says what
//! to install: a test that cannot run must fail, not pass.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use libp2p_core::Multiaddr;
use libp2p_identity::PeerId;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What the browser is asked to do.
#[derive(Debug, Clone)]
pub struct BrowserRun {
    /// Echo streams, each: open, write `bytes`, close the write side, read to EOF, compare.
    pub streams: usize,
    /// Echo streams in flight at once.
    pub concurrency: usize,
    /// Bytes written on each echo stream.
    pub bytes: usize,
    /// Pings before the echo streams.
    pub pings: usize,
    /// run.mjs's own bound on the whole run (Chromium start included). We wait 20 s longer
    /// before we stop it ourselves.
    pub timeout: Duration,
}

impl Default for BrowserRun {
    fn default() -> Self {
        Self {
            streams: 100,
            concurrency: 10,
            bytes: 32,
            pings: 3,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The `echo` line.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoReport {
    pub streams: u64,
    pub ok: u64,
    pub failed: u64,
    pub concurrency: u64,
    pub bytes: u64,
    pub elapsed_ms: f64,
    pub slowest_ms: f64,
}

/// What one browser run printed.
#[derive(Debug, Clone, Default)]
pub struct BrowserReport {
    /// e.g. `Chrome/156.0.8078.114`.
    pub browser: Option<String>,
    /// Chromium's start, as run.mjs measured it.
    pub launch_ms: Option<f64>,
    /// The browser's own peer id.
    pub local_peer: Option<PeerId>,
    /// The peer the browser reached (after Noise), and the address it reports for it.
    pub remote_peer: Option<PeerId>,
    pub remote_addr: Option<String>,
    /// From the start of `dial` to the connection being usable.
    pub dial_ms: Option<f64>,
    /// One per successful ping, in milliseconds (js-libp2p measures whole ms).
    pub ping_rtts_ms: Vec<f64>,
    pub echo: Option<EchoReport>,
    /// `node.stop()` returned: the browser hung up.
    pub closed: bool,
    /// The `what` of every `error` line (`"<step>: <JS error name>: <message>"` from the page).
    pub errors: Vec<String>,
    /// run.mjs printed `done`: every step passed.
    pub done: bool,
    pub exit: Option<ExitStatus>,
    /// Every JSON line, in order.
    pub lines: Vec<Value>,
    /// The last lines of stderr (the page's console, Chromium's complaints).
    pub stderr: Vec<String>,
}

impl BrowserReport {
    /// Every step passed: `done` was printed, no error, exit code 0.
    pub fn ok(&self) -> bool {
        self.done && self.errors.is_empty() && self.exit.is_some_and(|s| s.success())
    }

    /// The first error line's `what`.
    pub fn error(&self) -> Option<&str> {
        self.errors.first().map(String::as_str)
    }

    /// Panic with everything the run printed unless it passed.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.ok(), "the browser run failed:{}", self.history());
    }

    pub fn history(&self) -> String {
        let mut s = format!("\n  exit: {:?}", self.exit);
        for v in &self.lines {
            s.push_str(&format!("\n  {v}"));
        }
        for l in &self.stderr {
            s.push_str(&format!("\n  stderr: {l}"));
        }
        s
    }

    fn take(&mut self, v: Value) {
        let str_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let f64_of = |k: &str| v.get(k).and_then(Value::as_f64);
        let u64_of = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let peer_of = |k: &str| str_of(k).and_then(|p| p.parse::<PeerId>().ok());
        match v.get("event").and_then(Value::as_str).unwrap_or("") {
            "browser" => {
                self.browser = str_of("version");
                self.launch_ms = f64_of("launch_ms");
            }
            "node" => self.local_peer = peer_of("peer"),
            "connected" => {
                self.remote_peer = peer_of("peer");
                self.remote_addr = str_of("remote_addr");
                self.dial_ms = f64_of("dial_ms");
            }
            "ping" => self.ping_rtts_ms.extend(f64_of("rtt_ms")),
            "echo" => {
                self.echo = Some(EchoReport {
                    streams: u64_of("streams"),
                    ok: u64_of("ok"),
                    failed: u64_of("failed"),
                    concurrency: u64_of("concurrency"),
                    bytes: u64_of("bytes"),
                    elapsed_ms: f64_of("elapsed_ms").unwrap_or(0.0),
                    slowest_ms: f64_of("slowest_ms").unwrap_or(0.0),
                })
            }
            "closed" => self.closed = true,
            "error" => self
                .errors
                .push(str_of("what").unwrap_or_else(|| v.to_string())),
            "done" => self.done = true,
            _ => {}
        }
        self.lines.push(v);
    }
}

/// Errors of these run.mjs steps mean the harness itself could not run (bad arguments, no
/// Chromium, a missing package), not that the peer misbehaved.
const HARNESS_STEPS: [&str; 4] = ["args", "chromium", "runner", "signal"];

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Make the harness ready: `npm ci` and Chromium when missing ([`super::prepare`]); the
/// Chromium to run. [`run_browser_with`] calls it; a test that bounds its whole run in time
/// calls it before starting the clock, as the first call on a fresh machine takes minutes.
pub async fn prepare_harness() -> Result<PathBuf, String> {
    // npm and apt-get: off the runtime's threads.
    tokio::task::spawn_blocking(|| {
        super::prepare::browser_packages()?;
        super::prepare::chromium()
    })
    .await
    .map_err(|e| format!("preparing the browser harness panicked: {e}"))?
}

/// Run the browser against `addr` (a `/quic-v1/webtransport/certhash/…/p2p/…` address) with
/// `streams` echo streams and the other defaults of [`BrowserRun`].
pub async fn run_browser(addr: &Multiaddr, streams: usize) -> Result<BrowserReport, String> {
    run_browser_with(
        addr,
        &BrowserRun {
            streams,
            ..BrowserRun::default()
        },
    )
    .await
}

/// Run the browser against `addr`.
///
/// `Ok` whenever the browser ran, whether the steps passed or not: see
/// [`BrowserReport::ok`] and [`BrowserReport::errors`] (a test that expects a failed dial
/// looks there). `Err` when it could not run at all: `node` missing, `npm ci` failing,
/// Chromium missing (and not installable) or not starting, or run.mjs not ending within its
/// own timeout plus 20 s (it is then stopped: SIGTERM, then SIGKILL; Chromium, on a pipe to
/// it, exits with it).
///
/// Cancel safety: dropping the future kills run.mjs (and so Chromium).
pub async fn run_browser_with(addr: &Multiaddr, run: &BrowserRun) -> Result<BrowserReport, String> {
    let dir = browser_dir();
    let chromium = prepare_harness().await?;
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("run.mjs"))
        .args(["--addr", &addr.to_string()])
        .args(["--streams", &run.streams.to_string()])
        .args(["--concurrency", &run.concurrency.to_string()])
        .args(["--bytes", &run.bytes.to_string()])
        .args(["--pings", &run.pings.to_string()])
        .args(["--timeout-ms", &run.timeout.as_millis().to_string()])
        .current_dir(&dir)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot run `node` (>= 18 is needed for the browser test, on PATH): {e}")
        })?;
    println!(
        "[browser] $ node tests/browser/run.mjs --addr {addr} --streams {}",
        run.streams
    );
    let stdout = lines_of(child.stdout.take().expect("piped stdout"), true);
    let stderr = lines_of(child.stderr.take().expect("piped stderr"), false);

    let within = run.timeout + Duration::from_secs(20);
    let exit = match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("wait for run.mjs: {e}"))?,
        Err(_) => {
            stop(&mut child).await;
            let (out, err) = (collect(stdout).await, collect(stderr).await);
            return Err(format!(
                "run.mjs did not end within {within:?} (its own timeout is {:?}); stopped it. \
                 It printed:\n  {}\nstderr:\n  {}",
                run.timeout,
                out.join("\n  "),
                err.join("\n  ")
            ));
        }
    };

    let mut report = BrowserReport {
        exit: Some(exit),
        ..BrowserReport::default()
    };
    let out = collect(stdout).await;
    let mut stderr = collect(stderr).await;
    let keep = stderr.len().saturating_sub(40);
    report.stderr = stderr.split_off(keep);
    for line in out {
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.is_object() => report.take(v),
            _ => report.errors.push(format!(
                "run.mjs printed a line that is not a JSON object: {line}"
            )),
        }
    }
    let harness_error = report.lines.iter().find(|v| {
        v.get("event").and_then(Value::as_str) == Some("error")
            && v.get("step")
                .and_then(Value::as_str)
                .is_some_and(|s| HARNESS_STEPS.contains(&s))
    });
    if let Some(v) = harness_error {
        return Err(format!(
            "the browser harness could not run: {}{}",
            v.get("what").and_then(Value::as_str).unwrap_or("?"),
            report.history()
        ));
    }
    if report.lines.is_empty() {
        return Err(format!("run.mjs printed nothing{}", report.history()));
    }
    Ok(report)
}

/// Read `pipe` to its end in a task, line by line; stdout lines are echoed to the test output.
fn lines_of(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    echo: bool,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if echo {
                println!("[browser] {line}");
            }
            lines.push(line);
        }
        lines
    })
}

/// The lines a [`lines_of`] task read. Bounded: a grandchild that kept the pipe open must not
/// hold the test once run.mjs has exited.
async fn collect(task: tokio::task::JoinHandle<Vec<String>>) -> Vec<String> {
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(lines)) => lines,
        _ => vec!["(output not complete: the pipe stayed open after run.mjs exited)".into()],
    }
}

/// SIGTERM first, so that run.mjs closes Chromium and its profile; SIGKILL after 5 s.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which `child` has not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
