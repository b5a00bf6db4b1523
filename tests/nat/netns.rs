//! The test network, made of Linux network namespaces: a relay on a simulated internet, and
//! two peers each behind a router of its own that does SNAT (iptables MASQUERADE, conntrack).
//!
//! ```text
//!                  inet: bridge br0, relay 198.18.0.1
//!                 /                                  \
//!   router A: wan 198.18.0.2, lan 198.18.1.1    router B: wan 198.18.0.3, lan 198.18.2.1
//!                 |                                   |
//!         peer A: 198.18.1.2                  peer B: 198.18.2.2
//! ```
//!
//! A router forwards from its LAN to the internet, masquerading, and lets in from the internet
//! only what conntrack knows as the reply to a flow from inside (a port-restricted cone NAT).
//! With [`Input::Drop`] it also drops what the internet sends to itself, as home routers do;
//! with [`Input::Accept`] such a packet reaches the router's own stack, which answers it with
//! ICMP and keeps the flow in conntrack. Addresses come from 198.18.0.0/15, the range kept for
//! test networks, and exist only in these namespaces.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    thread::JoinHandle,
};

use super::lab::{enter, remove_stale, run};

/// The namespaces' names start with this, then the process id and a number.
const PREFIX: &str = "lqnat";

pub const RELAY_IP: &str = "198.18.0.1";
pub const A_IP: &str = "198.18.1.2";
pub const B_IP: &str = "198.18.2.2";
/// The simulated internet: the relay and the routers' WAN addresses. The rest of
/// 198.18.0.0/15, the peers' LANs included, is private.
pub const INTERNET: &str = "198.18.0.0/24";

/// The hosts of the network, each a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The internet's switch and the relay.
    Inet,
    RouterA,
    RouterB,
    A,
    B,
}

const HOSTS: [Host; 5] = [Host::Inet, Host::RouterA, Host::RouterB, Host::A, Host::B];

/// What a router does with what the internet sends to the router itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Drop,
    Accept,
}

/// The namespaces of one network; dropping it removes them.
pub struct Network {
    name: String,
    made: Vec<Host>,
}

impl Network {
    /// Build the network, or say why it cannot be built (root, `ip`, `iptables` needed; they
    /// are installed first when missing, if we are root with apt-get). Whatever was made is
    /// removed again when building fails.
    pub fn build(input: Input) -> Result<Self, String> {
        use super::prepare::{tools, IP, IPTABLES};
        tools(&[IP, IPTABLES])?;
        remove_stale(PREFIX);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut network = Self {
            name: format!("{PREFIX}{}x{number}", std::process::id()),
            made: Vec::new(),
        };
        for host in HOSTS {
            run("ip", &["netns", "add", &network.ns(host)])?;
            network.made.push(host);
        }
        network.wire()?;
        for (router, lan) in [
            (Host::RouterA, "198.18.1.0/24"),
            (Host::RouterB, "198.18.2.0/24"),
        ] {
            network.nat(router, lan, input)?;
        }
        Ok(network)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> String {
        format!("{}-{host:?}", self.name).to_lowercase()
    }

    /// The links and addresses.
    fn wire(&self) -> Result<(), String> {
        let inet = self.ns(Host::Inet);
        self.ip(Host::Inet, "link add br0 type bridge")?;
        self.ip(Host::Inet, &format!("addr add {RELAY_IP}/24 dev br0"))?;
        self.ip(Host::Inet, "link set br0 up")?;
        let routers = [(Host::RouterA, Host::A, 1), (Host::RouterB, Host::B, 2)];
        for (router, peer, n) in routers {
            let (r, p) = (self.ns(router), self.ns(peer));
            let port = format!("port{n}");
            run(
                "ip",
                &[
                    "-n", &r, "link", "add", "wan", "type", "veth", "peer", "name", &port, "netns",
                    &inet,
                ],
            )?;
            run(
                "ip",
                &[
                    "-n", &r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                    "netns", &p,
                ],
            )?;
            self.ip(Host::Inet, &format!("link set {port} master br0 up"))?;
            self.ip(router, &format!("addr add 198.18.0.{}/24 dev wan", n + 1))?;
            self.ip(router, &format!("addr add 198.18.{n}.1/24 dev lan"))?;
            self.ip(peer, &format!("addr add 198.18.{n}.2/24 dev eth0"))?;
            for host in [router, peer] {
                self.ip(host, "link set lo up")?;
            }
            self.ip(router, "link set wan up")?;
            self.ip(router, "link set lan up")?;
            self.ip(peer, "link set eth0 up")?;
            self.ip(peer, &format!("route add default via 198.18.{n}.1"))?;
        }
        Ok(())
    }

    /// Make `router` a NAT for `lan`.
    fn nat(&self, router: Host, lan: &str, input: Input) -> Result<(), String> {
        let ns = self.ns(router);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        exec(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        let known = [
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ];
        let mut rules: Vec<Vec<&str>> = vec![
            vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                lan,
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ],
            [&["-A", "FORWARD", "-i", "wan", "-o", "lan"][..], &known].concat(),
            vec!["-A", "FORWARD", "-i", "wan", "-o", "lan", "-j", "DROP"],
        ];
        if input == Input::Drop {
            rules.push([&["-A", "INPUT", "-i", "wan"][..], &known].concat());
            rules.push(vec!["-A", "INPUT", "-i", "wan", "-j", "DROP"]);
        }
        for rule in rules {
            exec(&[&["iptables", "-w"][..], &rule].concat())?;
        }
        Ok(())
    }

    fn ip(&self, host: Host, command: &str) -> Result<(), String> {
        let ns = self.ns(host);
        let mut args = vec!["-n", ns.as_str()];
        args.extend(command.split(' '));
        run("ip", &args)
    }

    /// Run `f` on a thread of its own inside the namespace of `host`: the sockets it makes,
    /// and the threads it starts, are that host's.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        host: Host,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.ns(host));
        std::thread::Builder::new()
            .name(format!("{host:?}"))
            .spawn(move || {
                enter(&path).unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
                f()
            })
            .expect("spawn a thread")
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in self.made.drain(..).collect::<Vec<_>>() {
            if let Err(e) = run("ip", &["netns", "del", &self.ns(host)]) {
                eprintln!("could not remove a test namespace: {e}");
            }
        }
    }
}
