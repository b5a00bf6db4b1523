//! Code written against `libp2p-quic` 0.14's `Config` compiles unchanged against ours: the
//! same function, using every public field and method of theirs, is built for both. And the
//! MTU settings do what they say on a real connection.

mod common;

use std::time::Duration;

use common::{bounded, eventually, listen};
use libp2p_core::Transport as _;
use libp2p_identity::Keypair;

/// One function, as a user of `libp2p-quic` 0.14 would write it, for the `Config` at `$path`.
macro_rules! written_for_libp2p_quic {
    ($path:path) => {
        use $path as Config;

        /// Every public field and method of `libp2p_quic::Config` 0.14.
        #[allow(deprecated)]
        pub fn configure(keypair: &libp2p_identity::Keypair, mtu: Option<u16>) -> Config {
            let mut config = Config::new(keypair);
            config.handshake_timeout = std::time::Duration::from_secs(3);
            config.max_idle_timeout = 20_000;
            config.keep_alive_interval = std::time::Duration::from_secs(4);
            config.max_concurrent_stream_limit = 128;
            config.max_stream_data = 5_000_000;
            config.max_connection_data = 8_000_000;
            config.support_draft_29 = false;
            let config = config.clone();
            match mtu {
                Some(bound) => config.mtu_upper_bound(bound),
                None => config.disable_path_mtu_discovery(),
            }
        }

        /// The fields as they read back.
        pub fn fields(config: &Config) -> (Duration, u32, Duration, u32, u32, u32) {
            (
                config.handshake_timeout,
                config.max_idle_timeout,
                config.keep_alive_interval,
                config.max_concurrent_stream_limit,
                config.max_stream_data,
                config.max_connection_data,
            )
        }
    };
}

mod theirs {
    use super::*;
    written_for_libp2p_quic!(libp2p::quic::Config);
}

mod ours {
    use super::*;
    written_for_libp2p_quic!(libp2p_quinn::Config);
}

#[test]
fn the_same_code_configures_both_alike() {
    let keypair = Keypair::generate_ed25519();
    for mtu in [Some(1420), None] {
        let (theirs, ours) = (
            theirs::configure(&keypair, mtu),
            ours::configure(&keypair, mtu),
        );
        assert_eq!(theirs::fields(&theirs), ours::fields(&ours));
        assert_eq!(ours.mtu_discovery, mtu.is_some());
    }
    // Both hand the result to their transport the same way.
    let _ = libp2p::quic::tokio::Transport::new(theirs::configure(&keypair, None));
    let _ = libp2p_quinn::tokio::Transport::new(ours::configure(&keypair, None));
}

/// A connection from a transport with `config` to a default one: the dialer's quinn handle,
/// and what must live as long as the connection.
async fn connect(config: libp2p_quinn::Config) -> (quinn::Connection, Box<dyn std::any::Any>) {
    let mut listener = common::transport();
    let addr = listen(&mut listener, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let mut dialer = libp2p_quinn::tokio::Transport::new(config);
    let dial = dialer.dial(addr, common::dial_opts()).unwrap();
    let (dialed, accepted) = futures::join!(bounded("dial", dial), common::accept(&mut listener));
    let (_, connection) = dialed.unwrap();
    let quinn = connection.quinn().clone();
    (quinn, Box::new((connection, accepted, dialer, listener)))
}

#[tokio::test]
async fn mtu_discovery_stops_at_the_bound_or_does_not_start() {
    let config = || libp2p_quinn::Config::new(&Keypair::generate_ed25519());
    let (default, _a) = connect(config()).await;
    let (bounded_, _b) = connect(config().mtu_upper_bound(1300)).await;
    let (off, _c) = connect(config().mtu_upper_bound(1300).disable_path_mtu_discovery()).await;
    // On loopback no probe is lost, and a search ends with a probe of its upper bound.
    let mtu = |q: &quinn::Connection| q.stats().path.current_mtu;
    eventually("the default search reaches quinn's 1452", || {
        mtu(&default) == 1452
    })
    .await;
    eventually("the bounded search reaches 1300", || mtu(&bounded_) == 1300).await;
    // By now the others have long searched: the switched-off one sent no probe at all.
    assert_eq!(off.stats().path.sent_plpmtud_probes, 0);
    assert_eq!(mtu(&off), 1200);
}
