//! A network namespace of the test's own whose loopback device carries addresses of
//! 198.18.0.0/15, the range kept for test networks: sources and listeners that are not
//! loopback *addresses* (so no limit exempts them), on one host, with the kernel's loopback
//! path between them. Needs root and `ip` (iproute2); removed when dropped, and namespaces left
//! by killed test processes are removed by the next one.
//!
//! A thread that [`Lab::enter`]s it makes its sockets there, and so do the threads it starts
//! afterwards (a tokio runtime's workers); a socket stays in the namespace it was made in,
//! whichever thread uses it. Shared by `tests/admission.rs` and `examples/flood/` (and its
//! helpers by the NAT tests' `tests/nat/netns.rs`); needs
//! nothing of the rest of `tests/common`.
#![allow(dead_code)]

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

/// The namespaces' names start with this, then the process id and a number.
const PREFIX: &str = "lqadm";

/// The namespace; dropping it removes it.
pub struct Lab {
    name: String,
}

impl Lab {
    /// A namespace with `lo` up and carrying `addresses` (each in 198.18.0.0/15), or why not.
    pub fn new(addresses: &[IpAddr]) -> Result<Self, String> {
        for ip in addresses {
            let IpAddr::V4(v4) = ip else {
                return Err(format!("{ip}: only IPv4 test addresses"));
            };
            if v4.octets()[0] != 198 || v4.octets()[1] & 0xfe != 18 {
                return Err(format!("{ip} is outside 198.18.0.0/15"));
            }
        }
        remove_stale(PREFIX);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}x{number}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let lab = Self { name };
        lab.ip(&["link", "set", "lo", "up"])?;
        // One batch: a few hundred addresses in one `ip` call.
        let batch: String = addresses
            .iter()
            .map(|ip| format!("addr add {ip}/32 dev lo\n"))
            .collect();
        lab.ip_batch(&batch)?;
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, for [`enter`].
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Move the calling thread into the namespace.
    pub fn enter(&self) -> io::Result<()> {
        enter(&self.path())
    }

    /// Run `f` on a thread of its own inside the namespace, and wait for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        let thread = std::thread::Builder::new()
            .name("lab".into())
            .spawn(move || {
                enter(&path).unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
                f()
            })
            .expect("spawn a thread");
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn ip_batch(&self, batch: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("`ip` cannot run ({e}): install iproute2"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(batch.as_bytes())
            .map_err(|e| e.to_string())?;
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "`ip -batch` failed: {} (the test needs root and iproute2)",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("could not remove the test namespace {}: {e}", self.name);
        }
    }
}

/// `198.18.<third>.<1..=n>`.
pub fn addresses(third: u8, n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|d| IpAddr::V4(Ipv4Addr::new(198, 18, third, d)))
        .collect()
}

/// Move the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run a command; its stderr is the error. Shared with the NAT tests' namespaces.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        format!("`{program}` cannot run ({e}): install iproute2 (and iptables for the NAT tests)")
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}` failed ({}): {} (network tests need root, iproute2 and, for NAT, iptables)",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// Remove the namespaces named `prefix`, then a process id, that test processes now gone left
/// behind (killed before they could clean up).
pub fn remove_stale(prefix: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('x').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}
