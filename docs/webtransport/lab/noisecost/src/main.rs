//! What libp2p-noise's XX handshake with the WebTransport certhash extension costs in CPU,
//! both sides on one thread over an in-memory pipe (no network wait at all).
use std::{collections::HashSet, time::Instant};

use futures::AsyncWriteExt;
use libp2p_core::{
    multihash::Multihash,
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade},
};
use tokio_util::compat::TokioAsyncReadCompatExt;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let server = libp2p_identity::Keypair::generate_ed25519();
    let client = libp2p_identity::Keypair::generate_ed25519();
    let hashes: HashSet<Multihash<64>> = (0..3u8)
        .map(|i| Multihash::wrap(0x12, &[i; 32]).unwrap())
        .collect();
    let cached = std::env::var("CACHED").is_ok();
    let server_config = libp2p_noise::Config::new(&server).unwrap();
    let client_config = libp2p_noise::Config::new(&client).unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let started = Instant::now();
        let (responder, initiator) = if cached {
            (server_config.clone(), client_config.clone())
        } else {
            (libp2p_noise::Config::new(&server).unwrap(), libp2p_noise::Config::new(&client).unwrap())
        };
        let responder = responder.with_webtransport_certhashes(hashes.clone());
        let initiator =
            initiator.with_webtransport_certhashes(hashes.iter().take(2).copied().collect());
        let (r, i) = futures::join!(
            responder.upgrade_inbound(a.compat(), "/noise"),
            initiator.upgrade_outbound(b.compat(), "/noise")
        );
        let (_, mut r) = r.unwrap();
        let (_, mut i) = i.unwrap();
        let _ = i.close().await;
        let _ = r.close().await;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "noise XX + certhashes, both sides, one thread, config {}: {n} handshakes, p50 {:.0} us, p10 {:.0} us, p90 {:.0} us",
        if cached { "made once" } else { "made per handshake" },
        times[n / 2],
        times[n / 10],
        times[n * 9 / 10]
    );
}
