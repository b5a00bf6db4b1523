//! Building the Go peer, and the identity it takes.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Instant, SystemTime},
};

use libp2p_identity::{Keypair, PeerId};

// -------------------------------------------------------------------------------------------
// Building the Go peer

/// Which build of the Go peer (interop/README.md says which test uses which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoBuild {
    /// go-libp2p v0.52.0, quic-go v0.64.1, webtransport-go v0.13.0 (`interop/go-peer`): today's.
    /// Its WebTransport dialer refuses a listener without RESET_STREAM_AT.
    Current,
    /// go-libp2p v0.48.0, quic-go v0.59.0, webtransport-go v0.10.0 (`interop/go-peer-v048`):
    /// the older half of the network. Its quic-go advertises RESET_STREAM_AT only under the
    /// draft-07 transport parameter id, and its WebTransport dialer does not require it.
    V048,
    /// go-libp2p v0.38.2, quic-go v0.48.2 (`interop/go-peer-old`), built with Go
    /// [`OLD_TOOLCHAIN`] so that it can listen as well as dial. No RESET_STREAM_AT.
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
            GoBuild::V048 => "go-peer-v048",
            GoBuild::Old => "go-peer-old",
        }
    }

    /// The `GOTOOLCHAIN` this build is made with: `None` is the installed Go
    /// (`GOTOOLCHAIN=local`, unless the caller's environment sets `GOTOOLCHAIN`).
    pub fn toolchain(self) -> Option<&'static str> {
        match self {
            GoBuild::Current | GoBuild::V048 => None,
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
/// binary is newer than every `.go` file, `go.mod` and `go.sum`). Panics if Go is missing or the build
/// fails: an interop test that cannot run must not pass.
pub fn go_peer_binary(which: GoBuild) -> PathBuf {
    static CURRENT: OnceLock<PathBuf> = OnceLock::new();
    static V048: OnceLock<PathBuf> = OnceLock::new();
    static OLD: OnceLock<PathBuf> = OnceLock::new();
    let cell = match which {
        GoBuild::Current => &CURRENT,
        GoBuild::V048 => &V048,
        GoBuild::Old => &OLD,
    };
    cell.get_or_init(|| build(which)).clone()
}

fn mtime(path: &Path) -> Option<SystemTime> {
    // `metadata` follows symlinks: go-peer-v048's and go-peer-old's shared files are.
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
    for f in ["main.go", "go.mod", "go.sum"] {
        assert!(
            mtime(&src.join(f)).is_some(),
            "missing {}",
            src.join(f).display()
        );
    }
    // Every Go file of the module, and its go.mod and go.sum.
    let newest_source = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "go")
                || p.file_name()
                    .is_some_and(|n| n == "go.mod" || n == "go.sum")
        })
        .filter_map(|p| mtime(&p))
        .max()
        .unwrap();
    if mtime(&bin).is_some_and(|built| built > newest_source) {
        return bin;
    }
    match std::process::Command::new("go").arg("version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`go version` failed ({}): {}; the Go toolchain (>= 1.26) is needed to build {} \
             for the interop tests",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            src.display()
        ),
        Err(e) => panic!(
            "the Go toolchain (`go`, >= 1.26) is needed to build {} for the interop tests, \
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
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("libp2p-quinn interop go-peer seed {seed}").as_bytes(),
    );
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    Keypair::ed25519_from_bytes(bytes)
        .expect("32-byte seed")
        .public()
        .to_peer_id()
}
