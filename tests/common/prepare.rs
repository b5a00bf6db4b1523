//! What the tests need from the machine, prepared by the tests that need it, so that
//! `cargo test --all-features` alone passes on a fresh machine:
//!
//! - [`browser_packages`]: `npm ci` in `tests/browser` when `node_modules` is missing or older
//!   than `package-lock.json` (a stamp file marks a finished `npm ci`).
//! - [`tools`]: programs from Debian packages (Chromium, iproute2, iptables). A missing one is
//!   installed with `apt-get` when we are root and have it; else the error names the package.
//!
//! Each is done once per run: a file lock orders test binaries and test threads, and whoever
//! gets it second finds the work done. What we install or run is said on stderr (not captured
//! by the test harness), in lines that start with [`LOG`]. Nothing here skips a test: a piece
//! that cannot be prepared is an `Err` that says what to install, and the test fails with it.
#![allow(dead_code)]

use std::{
    fs::File,
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

/// Every line we print starts with this.
pub const LOG: &str = "[libp2p-quinn test setup]";

/// A program a test runs, and the Debian package it comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

/// Headless Chromium for the browser tests (`CHROMIUM` names another binary: see [`chromium`]).
pub const CHROMIUM: Tool = Tool {
    program: "chromium",
    package: "chromium",
};
/// `ip` for the NAT test's network namespaces.
pub const IP: Tool = Tool {
    program: "ip",
    package: "iproute2",
};
/// The NAT test's routers.
pub const IPTABLES: Tool = Tool {
    program: "iptables",
    package: "iptables",
};

/// Bounds on the commands we run, so that a test waiting on the lock waits a bounded time.
const APT_UPDATE_LIMIT: Duration = Duration::from_secs(5 * 60);
const APT_INSTALL_LIMIT: Duration = Duration::from_secs(15 * 60);
const NPM_CI_LIMIT: Duration = Duration::from_secs(10 * 60);

fn log(line: &str) {
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a
    // user whose test run installs packages must see it.
    let _ = writeln!(std::io::stderr().lock(), "{LOG} {line}");
}

// -------------------------------------------------------------------------------------------
// Programs from Debian packages

/// The paths of `tools`, installing the missing ones first when we can (root, `apt-get`).
/// `Err` names every package still missing and how to install it.
pub fn tools(tools: &[Tool]) -> Result<Vec<PathBuf>, String> {
    // Looked for under the lock: a program that another test is installing may be on disk
    // before the libraries it needs.
    let _lock = FileLock::take(&std::env::temp_dir().join("libp2p-quinn-apt.lock"))?;
    if let Some(found) = find_all(tools) {
        return Ok(found);
    }
    let missing: Vec<&'static str> = tools
        .iter()
        .filter(|t| find(t.program).is_none())
        .map(|t| t.package)
        .collect();
    install(&missing)?;
    find_all(tools).ok_or_else(|| {
        format!(
            "`apt-get install {}` succeeded, but {} still cannot be found on PATH",
            missing.join(" "),
            tools
                .iter()
                .filter(|t| find(t.program).is_none())
                .map(|t| format!("`{}`", t.program))
                .collect::<Vec<_>>()
                .join(" and ")
        )
    })
}

/// The Chromium to run: `CHROMIUM` if set (it must exist), else Debian's `chromium`, installed
/// by [`tools`] if missing.
pub fn chromium() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!(
                "CHROMIUM={} is not an executable file: point it at a Chromium binary, or unset \
                 it to use Debian's `chromium` (apt-get install chromium)",
                path.display()
            ))
        };
    }
    Ok(tools(&[CHROMIUM])?.remove(0))
}

fn find_all(tools: &[Tool]) -> Option<Vec<PathBuf>> {
    tools.iter().map(|t| find(t.program)).collect()
}

/// `program` on PATH, or in the sbin directories (not on a normal user's PATH).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Packages whose install failed in this process, with the error: a second test that needs
/// one fails with the same error instead of running apt-get again.
static FAILED: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// `apt-get install -y` the `packages` (after one `apt-get update` per process). Called under
/// the apt lock.
fn install(packages: &[&'static str]) -> Result<(), String> {
    let failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, error)) = failed.iter().find(|(p, _)| packages.contains(p)) {
        return Err(error.clone());
    }
    drop(failed);
    let by_hand = format!(
        "install {} (Debian/Ubuntu: `apt-get install {}`)",
        packages.join(" and "),
        packages.join(" ")
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "not installed: {}; the tests install packages only as root: {by_hand}",
            packages.join(", ")
        ));
    }
    let Some(apt_get) = find("apt-get") else {
        return Err(format!(
            "not installed: {}; the tests install packages only with apt-get, which is not \
             here: {by_hand}",
            packages.join(", ")
        ));
    };
    let result = apt_update(&apt_get).and_then(|()| {
        log(&format!(
            "installing {}: apt-get install -y {} (once; later runs find it)",
            packages.join(" and "),
            packages.join(" ")
        ));
        let mut cmd = apt(&apt_get);
        cmd.args(["install", "-y", "-q"]).args(packages);
        run(cmd, APT_INSTALL_LIMIT).map(|_| ())
    });
    result.map_err(|e| {
        let error = format!(
            "could not install {}: {e}; {by_hand}",
            packages.join(" and ")
        );
        let mut failed = FAILED.lock().unwrap_or_else(|e| e.into_inner());
        failed.extend(packages.iter().map(|p| (*p, error.clone())));
        error
    })
}

/// `apt-get update`, once per process (a fresh machine may have no package lists at all).
fn apt_update(apt_get: &Path) -> Result<(), String> {
    static UPDATED: OnceLock<Result<(), String>> = OnceLock::new();
    UPDATED
        .get_or_init(|| {
            log("apt-get update");
            let mut cmd = apt(apt_get);
            cmd.args(["update", "-q"]);
            run(cmd, APT_UPDATE_LIMIT).map(|_| ())
        })
        .clone()
}

fn apt(apt_get: &Path) -> Command {
    let mut cmd = Command::new(apt_get);
    // No questions; wait for another apt (not ours) holding dpkg's lock rather than fail.
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=300"]);
    cmd
}

// -------------------------------------------------------------------------------------------
// npm packages of the browser harness

/// `npm ci` in `tests/browser`, unless a finished one is newer than `package.json` and
/// `package-lock.json`. Once per process; across processes the lock and the stamp see to it.
pub fn browser_packages() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("browser");
        npm_ci(&dir)
    })
    .clone()
}

/// Written into `node_modules` when `npm ci` succeeded (npm ci empties `node_modules` first, so
/// a stamp never outlives the packages it vouches for).
const STAMP: &str = ".libp2p-quinn-npm-ci";

fn npm_ci(dir: &Path) -> Result<(), String> {
    let stamp = dir.join("node_modules").join(STAMP);
    let _lock = FileLock::take(&dir.join(".npm-ci.lock"))?;
    if is_fresh(dir, &stamp)? {
        return Ok(());
    }
    let why = if dir.join("node_modules").is_dir() {
        "older than package-lock.json, or not from a finished npm ci"
    } else {
        "missing"
    };
    log(&format!(
        "npm ci in {} (node_modules {why}; about 30 s)",
        dir.display()
    ));
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"]).current_dir(dir);
    run(cmd, NPM_CI_LIMIT).map_err(|e| {
        format!(
            "`npm ci` in {} failed: {e}. The browser tests need Node.js >= 18 and npm on PATH \
             (Debian: `apt-get install nodejs npm`) and access to the npm registry once",
            dir.display()
        )
    })?;
    File::create(&stamp).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(())
}

/// The stamp exists and is newer than `package.json` and `package-lock.json`.
fn is_fresh(dir: &Path, stamp: &Path) -> Result<bool, String> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(done) = mtime(stamp) else {
        return Ok(false);
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for file in ["package.json", "package-lock.json"] {
        let path = dir.join(file);
        newest = newest.max(mtime(&path).ok_or_else(|| format!("{} is missing", path.display()))?);
    }
    Ok(done >= newest)
}

// -------------------------------------------------------------------------------------------
// Helpers

/// An exclusive `flock` on a file, held until dropped. Separate opens conflict even within one
/// process, so this orders test threads as well as test binaries.
struct FileLock(File);

impl FileLock {
    fn take(path: &Path) -> Result<Self, String> {
        // Read-only is enough for flock: a lock file that root made is still ours to take.
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .or_else(|_| File::open(path))
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        // The holder runs only bounded commands, so waiting for it is bounded too.
        loop {
            // SAFETY: flock on a descriptor we own and keep open while the lock is held.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self(file));
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("cannot lock {}: {error}", path.display()));
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as in `take`; closing the file would release it too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Run `cmd` to its end within `limit` (then its process group is killed). `Err` has the exit
/// status and the last lines it printed.
fn run(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so that a timeout kills what it started too.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(limit) {
        Ok(output) => output.map_err(|e| format!("{shown}: {e}"))?,
        Err(_) => {
            // SAFETY: kill(2) on the group of our child, which the waiting thread has not
            // reaped (it would have sent its output).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = rx.recv();
            return Err(format!("{shown} did not end within {limit:?}; killed it"));
        }
    };
    if output.status.success() {
        return Ok(output);
    }
    let text = [&output.stdout[..], &output.stderr[..]]
        .map(String::from_utf8_lossy)
        .join("");
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
    Err(format!("{shown} failed ({}):\n  {tail}", output.status))
}
