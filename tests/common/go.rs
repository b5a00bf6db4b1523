//! Interop with the Go test peer (`interop/go-peer`, go-libp2p): build it, spawn it and read its
//! JSON lines; and a Rust node, a libp2p `Swarm` on our transport, that speaks the same
//! protocols (ping, identify, and `/libp2p-quinn/echo|storm/1.0.0` through `libp2p-stream`).
//!
//! go-libp2p runs multistream-select on every stream, so the Rust side needs a `Swarm`; the
//! transport's [`Ledgers`] handle is kept before the transport goes into the builder, so that a
//! test can still look at what QUIC holds.
//!
//! Used by `tests/interop_go.rs` and, through `#[path]`, by `examples/incident_replay.rs`.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant, SystemTime},
};

use futures::{channel::mpsc, AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    identify, ping,
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent},
    Multiaddr, StreamProtocol,
};
use libp2p_identity::{Keypair, PeerId};
use libp2p_quinn::{ConnectionSnapshot, Ledgers};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const ECHO: StreamProtocol = StreamProtocol::new("/libp2p-quinn/echo/1.0.0");
pub const STORM: StreamProtocol = StreamProtocol::new("/libp2p-quinn/storm/1.0.0");

/// The echo payload both sides use: byte i = i*31 % 251 (as the Go peer's `--size`).
pub fn echo_payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31) % 251) as u8).collect()
}

// -------------------------------------------------------------------------------------------
// Building the Go peer

/// Which build of the Go peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoBuild {
    /// go-libp2p v0.48.0, quic-go v0.59.0 (`interop/go-peer`).
    Current,
    /// go-libp2p v0.38.2, quic-go v0.48.2 (`interop/go-peer-old`), built with Go
    /// [`OLD_TOOLCHAIN`] so that it can listen as well as dial.
    Old,
}

/// The Go toolchain the old peer is built with. quic-go before v0.57.1 panics on every inbound
/// handshake ("crypto/tls bug: where's my session ticket?") when built with Go >= 1.26, so the
/// old peer could not listen under the installed Go. With `GOTOOLCHAIN=go1.25.5` the go command
/// fetches that toolchain from the module proxy on first use (then it is cached).
pub const OLD_TOOLCHAIN: &str = "go1.25.5";

impl GoBuild {
    pub fn dir_name(self) -> &'static str {
        match self {
            GoBuild::Current => "go-peer",
            GoBuild::Old => "go-peer-old",
        }
    }

    /// The `GOTOOLCHAIN` this build is made with: `None` is the installed Go
    /// (`GOTOOLCHAIN=local`, unless the caller's environment sets `GOTOOLCHAIN`).
    pub fn toolchain(self) -> Option<&'static str> {
        match self {
            GoBuild::Current => None,
            GoBuild::Old => Some(OLD_TOOLCHAIN),
        }
    }
}

/// Where built Go peers go: cargo's tmp dir of the target (tests), else the system temp dir.
fn build_root() -> PathBuf {
    match option_env!("CARGO_TARGET_TMPDIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join("libp2p-quinn"),
    }
}

/// The path of the Go peer's binary, built on first use (once per process; skipped when the
/// binary is newer than `main.go`, `go.mod` and `go.sum`). Panics if Go is missing or the build
/// fails: an interop test that cannot run must not pass.
pub fn go_peer_binary(which: GoBuild) -> PathBuf {
    static CURRENT: OnceLock<PathBuf> = OnceLock::new();
    static OLD: OnceLock<PathBuf> = OnceLock::new();
    let cell = match which {
        GoBuild::Current => &CURRENT,
        GoBuild::Old => &OLD,
    };
    cell.get_or_init(|| build(which)).clone()
}

fn mtime(path: &Path) -> Option<SystemTime> {
    // `metadata` follows symlinks: go-peer-old/main.go is one.
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn build(which: GoBuild) -> PathBuf {
    let name = which.dir_name();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name);
    // One directory per toolchain: a binary built earlier with another Go is not reused.
    let out_dir = match which.toolchain() {
        Some(toolchain) => build_root().join(format!("{name}-{toolchain}")),
        None => build_root().join(name),
    };
    let bin = out_dir.join(name);
    let newest_source = ["main.go", "go.mod", "go.sum"]
        .iter()
        .map(|f| mtime(&src.join(f)).unwrap_or_else(|| panic!("missing {}", src.join(f).display())))
        .max()
        .unwrap();
    if mtime(&bin).is_some_and(|built| built > newest_source) {
        return bin;
    }
    match std::process::Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`go version` failed ({}): {}; the Go toolchain (>= 1.25.7) is needed to build {} \
             for the interop tests",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            src.display()
        ),
        Err(e) => panic!(
            "the Go toolchain (`go`, >= 1.25.7) is needed to build {} for the interop tests, \
             and running it failed: {e}. Install Go (see interop/README.md) and put it on PATH.",
            src.display()
        ),
    }
    if let Some(toolchain) = which.toolchain() {
        check_toolchain(toolchain, &src);
    }
    std::fs::create_dir_all(&out_dir).expect("create the Go peer's build dir");
    // Build to a private name and rename: concurrent builds (other test binaries, the example)
    // never see a half-written binary.
    let tmp = out_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let started = Instant::now();
    let mut cmd = std::process::Command::new("go");
    cmd.arg("build")
        .arg("-buildvcs=false")
        .arg("-o")
        .arg(&tmp)
        .arg(".")
        .current_dir(&src);
    match which.toolchain() {
        Some(toolchain) => {
            cmd.env("GOTOOLCHAIN", toolchain);
        }
        None if std::env::var_os("GOTOOLCHAIN").is_none() => {
            // Never try to download another toolchain.
            cmd.env("GOTOOLCHAIN", "local");
        }
        None => {}
    }
    let out = cmd.output().expect("run `go build`");
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "`{}go build` of {} failed ({}):\n{}",
            which
                .toolchain()
                .map(|t| format!("GOTOOLCHAIN={t} "))
                .unwrap_or_default(),
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &bin).expect("move the Go peer binary into place");
    println!(
        "built {} in {:.1} s",
        bin.display(),
        started.elapsed().as_secs_f64()
    );
    bin
}

/// Make sure `GOTOOLCHAIN={toolchain} go version` runs that toolchain (the go command downloads
/// it from the module proxy on first use), or panic saying why it does not.
fn check_toolchain(toolchain: &str, src: &Path) {
    let out = std::process::Command::new("go")
        .arg("version")
        .env("GOTOOLCHAIN", toolchain)
        .output()
        .unwrap_or_else(|e| panic!("run `GOTOOLCHAIN={toolchain} go version`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(&format!("{toolchain} ")) {
        panic!(
            "{} must be built with {toolchain} (quic-go v0.48.2 panics on every inbound \
             handshake when built with Go >= 1.26), but `GOTOOLCHAIN={toolchain} go version` \
             did not run it ({}):\n{}\nThe go command downloads that toolchain from the \
             module proxy (GOPROXY, checked against GOSUMDB) on first use and caches it in the \
             module cache. Allow it network access once (or fetch it by hand with \
             `GOTOOLCHAIN={toolchain} go version`), and make sure GOPROXY is not `off`.",
            src.display(),
            out.status,
            [stdout.trim(), String::from_utf8_lossy(&out.stderr).trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The peer id the Go peer takes with `--seed n` (sha256 of a fixed string as ed25519 seed).
pub fn go_peer_id_for_seed(seed: i64) -> PeerId {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("libp2p-quinn interop go-peer seed {seed}").as_bytes(),
    );
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    Keypair::ed25519_from_bytes(bytes)
        .expect("32-byte seed")
        .public()
        .to_peer_id()
}

// -------------------------------------------------------------------------------------------
// A minimal JSON reader for the Go peer's lines

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at {}", p.i));
        }
        Ok(v)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(key),
            _ => None,
        }
    }

    pub fn event(&self) -> &str {
        self.str("event").unwrap_or("")
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.f64(key).map(|n| n as u64)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A numeric field that must be there.
    pub fn num(&self, key: &str) -> f64 {
        self.f64(key)
            .unwrap_or_else(|| panic!("no number {key:?} in {self:?}"))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    let v = self.value()?;
                    m.insert(k, v);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return Err(format!("expected , or }} at {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(format!("expected , or ] at {}", self.i)),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .map(Json::Num)
                    .ok_or_else(|| format!("bad number at {start}"))
            }
            None => Err("unexpected end".into()),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad \\u escape at {}", self.i))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let low = self.hex4()?;
                                code = 0x10000
                                    + ((code - 0xD800) << 10)
                                    + (low.wrapping_sub(0xDC00) & 0x3FF);
                            }
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(format!("bad escape at {}", self.i)),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Running the Go peer

/// A running Go peer. It exits when dropped (stdin closes and the process is killed).
pub struct GoPeer {
    pub label: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: mpsc::UnboundedReceiver<Json>,
    /// Every JSON line received so far.
    pub seen: Vec<Json>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl GoPeer {
    /// Spawn the Go peer with `args`; `label` prefixes its lines in the test output.
    pub fn spawn(which: GoBuild, label: &str, args: &[String]) -> GoPeer {
        let bin = go_peer_binary(which);
        println!("[{label}] $ {} {}", which.dir_name(), args.join(" "));
        let mut child = tokio::process::Command::new(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded();
        let out_label = label.to_owned();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let quiet =
                    line.contains("\"storm_progress\"") || line.contains("\"storm_served\"");
                if !quiet {
                    println!("[{out_label}] {line}");
                }
                match Json::parse(&line) {
                    Ok(v) => {
                        let _ = tx.unbounded_send(v);
                    }
                    Err(e) => println!("[{out_label}] (not JSON: {e})"),
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_lines = stderr.clone();
        let err_label = label.to_owned();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                println!("[{err_label} stderr] {line}");
                let mut lines = err_lines.lock().unwrap_or_else(|e| e.into_inner());
                lines.push(line);
                if lines.len() > 200 {
                    lines.remove(0);
                }
            }
        });
        GoPeer {
            label: label.to_owned(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn history(&self) -> String {
        let mut s = String::new();
        for v in self.seen.iter().rev().take(40).rev() {
            s.push_str(&format!("\n  {v:?}"));
        }
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        for l in stderr.iter().rev().take(40).rev() {
            s.push_str(&format!("\n  stderr: {l}"));
        }
        s
    }

    /// Wait for the next line whose event is `event` (lines before it are kept in `seen`).
    /// Panics after `within`, or if the process ends first.
    pub async fn expect(&mut self, event: &str, within: Duration) -> Json {
        match self.wait_for(event, within).await {
            Some(v) => v,
            None => panic!(
                "[{}] no {event:?} line within {within:?}; last lines:{}",
                self.label,
                self.history()
            ),
        }
    }

    /// As [`GoPeer::expect`], but `None` instead of a panic.
    pub async fn wait_for(&mut self, event: &str, within: Duration) -> Option<Json> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if v.event() == event {
                        return Some(v);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next line, whatever its event (kept in `seen` too); `None` after `within` or once
    /// the process has ended.
    pub async fn next_line(&mut self, within: Duration) -> Option<Json> {
        match tokio::time::timeout(within, self.lines.next()).await {
            Ok(Some(v)) => {
                self.seen.push(v.clone());
                Some(v)
            }
            Ok(None) | Err(_) => None,
        }
    }

    /// Take in lines that have already arrived, without waiting.
    pub fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
    }

    /// The `what` of every `error` line seen so far.
    pub fn errors(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|v| v.event() == "error")
            .map(|v| v.str("what").unwrap_or_default().to_owned())
            .collect()
    }

    /// The last line seen with this event.
    pub fn last(&self, event: &str) -> Option<&Json> {
        self.seen.iter().rev().find(|v| v.event() == event)
    }

    /// Close stdin (the peer closes its host and exits 0), wait for the exit (bounded; killed
    /// after that), then take in the remaining lines.
    pub async fn shutdown(&mut self) -> Option<ExitStatus> {
        self.stdin.take();
        let status = match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                println!(
                    "[{}] did not exit within 10 s of stdin EOF: killing it",
                    self.label
                );
                let _ = self.child.kill().await;
                None
            }
        };
        // The stdout reader ends with the process; collect what it had left.
        while let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_secs(2), self.lines.next()).await
        {
            self.seen.push(v);
        }
        status
    }
}

// -------------------------------------------------------------------------------------------
// The Rust node

/// What the Rust node's swarm reports.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Listening(Multiaddr),
    Connected {
        peer: PeerId,
        remote: Multiaddr,
        dialer: bool,
    },
    Closed {
        peer: PeerId,
        cause: Option<String>,
    },
    Ping {
        peer: PeerId,
        rtt: Result<Duration, String>,
    },
    Identified {
        peer: PeerId,
        agent: String,
        protocols: Vec<String>,
    },
    ConnectionError {
        peer: Option<PeerId>,
        error: String,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: Toggle<ping::Behaviour>,
    identify: identify::Behaviour,
    /// Outbound streams (`Control::open_stream`).
    stream: libp2p_stream::Behaviour,
    /// Inbound echo and storm streams.
    accept: accept::Behaviour,
}

/// Inbound streams of a fixed set of protocols, handed over on an unbounded channel.
///
/// `libp2p-stream`'s `Control::accept` drops an inbound stream when its one-slot channel is
/// still full, which a storm of 2560 streams on a small machine does hit (a few percent of
/// them): the test would count streams our transport delivered as lost.
mod accept {
    use std::{
        convert::Infallible,
        future::{ready, Ready},
        task::{Context, Poll},
    };

    use futures::channel::mpsc;
    use libp2p::{
        core::{transport::PortUse, upgrade::DeniedUpgrade, Endpoint, InboundUpgrade, UpgradeInfo},
        swarm::{
            handler::{ConnectionEvent, FullyNegotiatedInbound},
            ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
            NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent,
            ToSwarm,
        },
        Multiaddr, Stream, StreamProtocol,
    };
    use libp2p_identity::PeerId;

    pub type Inbound = (PeerId, StreamProtocol, Stream);

    pub struct Behaviour {
        protocols: Vec<StreamProtocol>,
        tx: mpsc::UnboundedSender<Inbound>,
    }

    impl Behaviour {
        pub fn new(protocols: Vec<StreamProtocol>) -> (Self, mpsc::UnboundedReceiver<Inbound>) {
            let (tx, rx) = mpsc::unbounded();
            (Self { protocols, tx }, rx)
        }

        fn handler(&self, peer: PeerId) -> Handler {
            Handler {
                peer,
                protocols: self.protocols.clone(),
                tx: self.tx.clone(),
            }
        }
    }

    impl NetworkBehaviour for Behaviour {
        type ConnectionHandler = Handler;
        type ToSwarm = Infallible;

        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            peer: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(self.handler(peer))
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            peer: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(self.handler(peer))
        }

        fn on_swarm_event(&mut self, _: FromSwarm) {}

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            _: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            match event {}
        }

        fn poll(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
            Poll::Pending
        }
    }

    pub struct Handler {
        peer: PeerId,
        protocols: Vec<StreamProtocol>,
        tx: mpsc::UnboundedSender<Inbound>,
    }

    impl ConnectionHandler for Handler {
        type FromBehaviour = Infallible;
        type ToBehaviour = Infallible;
        type InboundProtocol = Protocols;
        type OutboundProtocol = DeniedUpgrade;
        type InboundOpenInfo = ();
        type OutboundOpenInfo = ();

        fn listen_protocol(&self) -> SubstreamProtocol<Protocols> {
            SubstreamProtocol::new(Protocols(self.protocols.clone()), ())
        }

        fn poll(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
            Poll::Pending
        }

        fn on_behaviour_event(&mut self, event: Infallible) {
            match event {}
        }

        fn on_connection_event(&mut self, event: ConnectionEvent<Protocols, DeniedUpgrade>) {
            if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) = event
            {
                let _ = self.tx.unbounded_send((self.peer, protocol, stream));
            }
        }
    }

    pub struct Protocols(Vec<StreamProtocol>);

    impl UpgradeInfo for Protocols {
        type Info = StreamProtocol;
        type InfoIter = std::vec::IntoIter<StreamProtocol>;

        fn protocol_info(&self) -> Self::InfoIter {
            self.0.clone().into_iter()
        }
    }

    impl InboundUpgrade<Stream> for Protocols {
        type Output = (Stream, StreamProtocol);
        type Error = Infallible;
        type Future = Ready<Result<Self::Output, Infallible>>;

        fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
            ready(Ok((stream, protocol)))
        }
    }
}

enum Command {
    Listen(Multiaddr),
    Dial(Multiaddr),
}

/// What the Rust node's echo and storm handlers did.
#[derive(Debug, Default)]
pub struct Served {
    pub echo_streams: AtomicU64,
    pub echo_bytes: AtomicU64,
    pub echo_failed: AtomicU64,
    pub storm_ok: AtomicU64,
    pub storm_failed: AtomicU64,
}

/// Options of a [`RustNode`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Run `libp2p::ping` (which keeps a ping stream open, so the ledger is never idle).
    pub ping: bool,
    pub ping_interval: Duration,
    /// Overrides [`libp2p_quinn::Config::credit_wait_warning`].
    pub credit_wait_warning: Option<Duration>,
    /// Sets [`libp2p_quinn::Config::reset_on_drop`].
    pub reset_on_drop: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            ping: false,
            ping_interval: Duration::from_millis(500),
            credit_wait_warning: None,
            reset_on_drop: false,
        }
    }
}

/// A libp2p `Swarm` on our transport, driven by a task, serving echo and storm.
pub struct RustNode {
    pub peer_id: PeerId,
    pub ledgers: Ledgers,
    pub control: libp2p_stream::Control,
    pub served: Arc<Served>,
    /// Every event so far.
    pub seen: Vec<NodeEvent>,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<NodeEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RustNode {
    pub fn start(keypair: Keypair, options: NodeOptions) -> RustNode {
        let peer_id = keypair.public().to_peer_id();
        let mut config = libp2p_quinn::Config::new(&keypair);
        if let Some(d) = options.credit_wait_warning {
            config.credit_wait_warning = d;
        }
        config.reset_on_drop = options.reset_on_drop;
        let transport = libp2p_quinn::tokio::Transport::new(config);
        let ledgers = transport.ledgers();
        let ping_config = ping::Config::new().with_interval(options.ping_interval);
        let ping_on = options.ping;
        let (accept, mut inbound) = accept::Behaviour::new(vec![ECHO, STORM]);
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(move |_| transport)
            .expect("infallible")
            .with_behaviour(|key| Behaviour {
                ping: Toggle::from(ping_on.then(|| ping::Behaviour::new(ping_config))),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/ipfs/0.1.0".into(),
                    key.public(),
                )),
                stream: libp2p_stream::Behaviour::new(),
                accept,
            })
            .expect("infallible")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        let control = swarm.behaviour().stream.new_control();
        let served = Arc::new(Served::default());
        let mut tasks = Vec::new();

        let s = served.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((_, protocol, stream)) = inbound.next().await {
                let s = s.clone();
                if protocol == ECHO {
                    tokio::spawn(async move {
                        match serve_echo(stream).await {
                            Ok(n) => {
                                s.echo_streams.fetch_add(1, Ordering::Relaxed);
                                s.echo_bytes.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                println!("[rust] echo handler failed: {e}");
                                s.echo_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                } else {
                    tokio::spawn(async move {
                        match serve_storm(stream).await {
                            Ok(()) => s.storm_ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => s.storm_failed.fetch_add(1, Ordering::Relaxed),
                        };
                    });
                }
            }
        }));

        let (commands, mut command_rx) = mpsc::unbounded();
        let (event_tx, events) = mpsc::unbounded();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    command = command_rx.next() => match command {
                        Some(Command::Listen(addr)) => {
                            swarm.listen_on(addr).expect("listen");
                        }
                        Some(Command::Dial(addr)) => {
                            if let Err(e) = swarm.dial(addr) {
                                let _ = event_tx.unbounded_send(NodeEvent::ConnectionError {
                                    peer: None,
                                    error: e.to_string(),
                                });
                            }
                        }
                        None => return,
                    },
                    event = swarm.select_next_some() => {
                        if let Some(event) = node_event(event) {
                            let _ = event_tx.unbounded_send(event);
                        }
                    }
                }
            }
        }));
        RustNode {
            peer_id,
            ledgers,
            control,
            served,
            seen: Vec::new(),
            commands,
            events,
            tasks,
        }
    }

    /// Listen on loopback and return the address (with `/p2p/<our id>`).
    pub async fn listen(&mut self) -> Multiaddr {
        self.commands
            .unbounded_send(Command::Listen(
                "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
            ))
            .expect("driver alive");
        match self
            .wait_for(Duration::from_secs(10), |e| {
                matches!(e, NodeEvent::Listening(_))
            })
            .await
        {
            Some(NodeEvent::Listening(addr)) => addr.with_p2p(self.peer_id).unwrap(),
            _ => panic!("no listen address within 10 s"),
        }
    }

    pub fn dial(&self, addr: Multiaddr) {
        self.commands
            .unbounded_send(Command::Dial(addr))
            .expect("driver alive");
    }

    /// Wait for the next event `pick` accepts (all events are kept in `seen`).
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pick(&e) {
                        return Some(e);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The first event `pick` accepts, among those seen already or, failing that, the next.
    pub async fn seen_or_wait(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&NodeEvent) -> bool,
    ) -> Option<NodeEvent> {
        if let Some(e) = self.seen.iter().find(|e| pick(e)) {
            return Some(e.clone());
        }
        self.wait_for(within, pick).await
    }

    /// Wait until connected to `peer` (any peer if `None`); returns the peer and its address.
    pub async fn connected(
        &mut self,
        peer: Option<PeerId>,
        within: Duration,
    ) -> (PeerId, Multiaddr) {
        if let Some(NodeEvent::Connected { peer: p, remote, .. }) = self
            .seen
            .iter()
            .find(|e| matches!(e, NodeEvent::Connected { peer: p, .. } if peer.is_none_or(|want| want == *p)))
        {
            return (*p, remote.clone());
        }
        match self
            .wait_for(within, |e| {
                matches!(e, NodeEvent::Connected { peer: p, .. } if peer.is_none_or(|want| want == *p))
                    || matches!(e, NodeEvent::ConnectionError { .. })
            })
            .await
        {
            Some(NodeEvent::Connected { peer, remote, .. }) => (peer, remote),
            other => panic!("not connected within {within:?}: {other:?}; events: {:?}", self.seen),
        }
    }

    /// Wait for `n` successful pings from `peer`; returns the RTTs.
    pub async fn pings(&mut self, peer: PeerId, n: usize, within: Duration) -> Vec<Duration> {
        let deadline = tokio::time::Instant::now() + within;
        let mut rtts = Vec::new();
        while rtts.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .wait_for(left, |e| matches!(e, NodeEvent::Ping { .. }))
                .await
            {
                Some(NodeEvent::Ping { peer: p, rtt }) => {
                    assert_eq!(p, peer, "ping event names the wrong peer");
                    match rtt {
                        Ok(rtt) => rtts.push(rtt),
                        Err(e) => panic!("our ping to {peer} failed: {e}"),
                    }
                }
                _ => panic!("only {} of {n} pings within {within:?}", rtts.len()),
            }
        }
        rtts
    }

    /// The snapshots of our connections to `peer`.
    pub fn snapshots(&self, peer: &PeerId) -> Vec<ConnectionSnapshot> {
        self.ledgers.for_peer(peer)
    }

    /// Wait until our one connection to `peer` is idle: no stream handle alive and nothing held
    /// by QUIC on our side. Panics with the snapshot after `within`.
    pub async fn settled(&self, peer: &PeerId, within: Duration) -> (ConnectionSnapshot, Duration) {
        let started = Instant::now();
        loop {
            let mut snaps = self.snapshots(peer);
            assert_eq!(snaps.len(), 1, "expected one connection to {peer}");
            let snap = snaps.remove(0);
            if snap.is_idle() {
                return (snap, started.elapsed());
            }
            if started.elapsed() > within {
                panic!(
                    "our ledger for {peer} did not empty within {within:?}: totals {:?}, \
                     first streams {:#?}",
                    snap.totals,
                    &snap.streams[..snap.streams.len().min(10)]
                );
            }
            // A bounded poll of counters the transport's watcher updates.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RustNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn node_event(event: SwarmEvent<BehaviourEvent>) -> Option<NodeEvent> {
    Some(match event {
        SwarmEvent::NewListenAddr { address, .. } => NodeEvent::Listening(address),
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => NodeEvent::Connected {
            peer: peer_id,
            dialer: endpoint.is_dialer(),
            remote: endpoint.get_remote_address().clone(),
        },
        SwarmEvent::ConnectionClosed { peer_id, cause, .. } => NodeEvent::Closed {
            peer: peer_id,
            cause: cause.map(|c| c.to_string()),
        },
        SwarmEvent::IncomingConnectionError { error, .. } => NodeEvent::ConnectionError {
            peer: None,
            error: error.to_string(),
        },
        SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => NodeEvent::ConnectionError {
            peer: peer_id,
            error: error.to_string(),
        },
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => NodeEvent::Ping {
            peer: e.peer,
            rtt: e.result.map_err(|f| f.to_string()),
        },
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => NodeEvent::Identified {
            peer: peer_id,
            agent: info.agent_version,
            protocols: info.protocols.iter().map(|p| p.to_string()).collect(),
        },
        _ => return None,
    })
}

/// Echo handler: read to the end, write it all back, close; the drop ends both halves.
async fn serve_echo(mut stream: libp2p::Stream) -> std::io::Result<u64> {
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await?;
    stream.write_all(&data).await?;
    stream.close().await?;
    Ok(data.len() as u64)
}

/// Storm handler, as the Go peer's: read 8 bytes, write them back, close; the drop stops our
/// receive half if the opener's FIN was not read.
async fn serve_storm(mut stream: libp2p::Stream) -> std::io::Result<()> {
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).await?;
    stream.write_all(&buf).await?;
    stream.close().await?;
    Ok(())
}

// -------------------------------------------------------------------------------------------
// Workloads run from the Rust side

/// Open an echo stream to `peer`, send `payload`, close, read the reply to the end.
pub async fn echo_to(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let mut s = control
        .open_stream(peer, ECHO)
        .await
        .map_err(|e| format!("open: {e}"))?;
    // The Go handler reads to the end before it answers, so writing first cannot deadlock.
    s.write_all(payload)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.close().await.map_err(|e| format!("close: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(reply)
}

/// The outcome of a storm from the Rust side.
#[derive(Debug, Default, Clone)]
pub struct StormReport {
    pub count: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failures whose open hit the open timeout (part of `failed`).
    pub blocked: u64,
    /// `close()` errors (not failures: the peer may have stopped our send half first).
    pub close_errors: u64,
    pub slowest_open: Duration,
    pub slowest_close: Duration,
    pub elapsed: Duration,
    /// The first few errors.
    pub errors: Vec<String>,
}

impl StormReport {
    pub fn line(&self) -> String {
        format!(
            "streams {} (ok {}, failed {}, blocked {}), slowest open {:.1} ms, slowest close+reply \
             {:.1} ms, elapsed {:.0} ms, close errors {}",
            self.count,
            self.ok,
            self.failed,
            self.blocked,
            self.slowest_open.as_secs_f64() * 1e3,
            self.slowest_close.as_secs_f64() * 1e3,
            self.elapsed.as_secs_f64() * 1e3,
            self.close_errors
        )
    }
}

/// Open `count` storm streams to `peer` our way: open + write the 8-byte index (the *open*,
/// bounded by `open_timeout`), close, read the 8-byte reply, drop. `concurrency` workers run
/// at once.
pub async fn storm_to(
    control: &libp2p_stream::Control,
    peer: PeerId,
    count: u64,
    concurrency: usize,
    open_timeout: Duration,
) -> StormReport {
    let report = Mutex::new(StormReport {
        count,
        ..Default::default()
    });
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let mut control = control.clone();
        let (report, next) = (&report, &next);
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let r = storm_one(&mut control, peer, i, open_timeout).await;
                let mut rep = report.lock().unwrap_or_else(|e| e.into_inner());
                rep.slowest_open = rep.slowest_open.max(r.open);
                rep.slowest_close = rep.slowest_close.max(r.end);
                match r.error {
                    None => rep.ok += 1,
                    Some(e) => {
                        rep.failed += 1;
                        if r.blocked {
                            rep.blocked += 1;
                        }
                        if rep.errors.len() < 10 {
                            rep.errors.push(format!("stream {i}: {e}"));
                        }
                    }
                }
                if r.close_error {
                    rep.close_errors += 1;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    report.elapsed = started.elapsed();
    report
}

struct One {
    open: Duration,
    end: Duration,
    blocked: bool,
    close_error: bool,
    error: Option<String>,
}

async fn storm_one(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    i: u64,
    open_timeout: Duration,
) -> One {
    let request = i.to_be_bytes();
    let started = Instant::now();
    let opened = tokio::time::timeout(open_timeout, async {
        let mut s = match control.open_stream(peer, STORM).await {
            Ok(s) => s,
            // The swarm's own substream timeout (10 s): a block as well.
            Err(libp2p_stream::OpenStreamError::Io(e))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err((
                    true,
                    format!("open: the swarm timed out the substream: {e}"),
                ))
            }
            Err(e) => return Err((false, format!("open: {e}"))),
        };
        s.write_all(&request)
            .await
            .map_err(|e| (false, format!("write: {e}")))?;
        Ok(s)
    })
    .await;
    let open = started.elapsed();
    let mut s = match opened {
        Err(_) => {
            return One {
                open,
                end: Duration::ZERO,
                blocked: true,
                close_error: false,
                error: Some(format!("open blocked for {open_timeout:?}")),
            }
        }
        Ok(Err((blocked, e))) => {
            return One {
                open,
                end: Duration::ZERO,
                blocked,
                close_error: false,
                error: Some(e),
            }
        }
        Ok(Ok(s)) => s,
    };
    let end_started = Instant::now();
    let ended = tokio::time::timeout(open_timeout, async {
        let close_error = s.close().await.is_err();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply)
            .await
            .map_err(|e| format!("read reply: {e}"))?;
        if reply != request {
            return Err(format!("reply {reply:?} differs from request {request:?}"));
        }
        Ok(close_error)
    })
    .await;
    let end = end_started.elapsed();
    drop(s);
    match ended {
        Err(_) => One {
            open,
            end,
            blocked: false,
            close_error: false,
            error: Some(format!("no reply within {open_timeout:?}")),
        },
        Ok(Err(e)) => One {
            open,
            end,
            blocked: false,
            close_error: false,
            error: Some(e),
        },
        Ok(Ok(close_error)) => One {
            open,
            end,
            blocked: false,
            close_error,
            error: None,
        },
    }
}
