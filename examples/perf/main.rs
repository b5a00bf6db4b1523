//! libp2p's perf protocol (`/perf/1.0.0`) over libp2p-quinn, with test-plans' output.
//!
//! With no arguments, a server and a client run in this process on loopback and move 100 MiB
//! each way. With `--server --listen <multiaddr>` (repeat to listen on several), or
//! `--client --dial <multiaddr>`, one side runs, so that two terminals (or a peer of another
//! implementation) can measure each other.
//!
//! ```text
//! cargo run --release --example perf
//! cargo run --release --example perf -- --server --listen /ip4/127.0.0.1/udp/4001/quic-v1 \
//!     --listen /ip4/127.0.0.1/udp/4001/quic-v1/webtransport
//! cargo run --release --example perf -- --client --dial /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3… \
//!     --upload-bytes 104857600 --download-bytes 104857600
//! ```
//!
//! The client prints one JSON line about every second and one at the end of each run, as
//! libp2p's test-plans `perf` does:
//!
//! ```text
//! {"type":"intermediate","timeSeconds":1.0,"uploadBytes":104857600,"downloadBytes":0}
//! {"type":"final","timeSeconds":2.1,"uploadBytes":104857600,"downloadBytes":104857600,"connectSeconds":0.001,"firstMiBSeconds":1.2}
//! ```
//!
//! `timeSeconds` of the final line runs from the dial (a fresh node per run) to the end of the
//! download; `connectSeconds` until the connection was up, `firstMiBSeconds` until the first
//! MiB of the download had arrived.

mod node;
mod protocol;

use std::{error::Error, time::Instant};

use clap::Parser;
use libp2p::Multiaddr;
use tracing_subscriber::EnvFilter;

use node::{Measured, Options, Stack};
use protocol::Progress;

#[derive(Parser, Debug)]
#[command(about = "libp2p perf (/perf/1.0.0) over libp2p-quinn")]
struct Args {
    /// Serve perf streams until stopped.
    #[arg(long, requires = "listen", conflicts_with = "client")]
    server: bool,
    /// Listen on this address (repeat to listen on several).
    #[arg(long)]
    listen: Vec<Multiaddr>,
    /// Measure against a server.
    #[arg(long, requires = "dial")]
    client: bool,
    /// The server's address, ending in `/p2p/<peer id>`.
    #[arg(long)]
    dial: Option<Multiaddr>,
    /// Bytes to upload per run.
    #[arg(long, default_value_t = 100 << 20)]
    upload_bytes: u64,
    /// Bytes to ask back per run.
    #[arg(long, default_value_t = 100 << 20)]
    download_bytes: u64,
    /// Runs, each on a fresh connection.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The QUIC stack: `ours` or `libp2p-quic` (to compare; `/quic-v1` only).
    #[arg(long, default_value = "ours")]
    stack: Stack,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    let options = Options::new(args.stack);

    if args.server {
        let server = node::serve(&options, &args.listen, |served| {
            if let Err(error) = served {
                eprintln!("a perf stream failed: {error}");
            }
        })
        .await?;
        for addr in &server.addrs {
            println!("{} listening on {addr}", server.peer_id);
        }
        // Serves until the process is stopped.
        return std::future::pending().await;
    }

    let (_server, dial) = match args.dial {
        Some(dial) => (None, dial),
        None => {
            let listen = ["/ip4/127.0.0.1/udp/0/quic-v1".parse()?];
            let server = node::serve(&options, &listen, |_| {}).await?;
            let dial = server.addrs[0].clone();
            (Some(server), dial)
        }
    };
    for _ in 0..args.runs {
        let measured = client_run(&options, &dial, args.upload_bytes, args.download_bytes).await?;
        println!("{}", measured.final_line());
    }
    Ok(())
}

/// One run, printing test-plans' intermediate lines as it goes.
async fn client_run(
    options: &Options,
    dial: &Multiaddr,
    upload: u64,
    download: u64,
) -> Result<Measured, Box<dyn Error + Send + Sync>> {
    let mut last = Instant::now();
    let progress = move |moved: Progress| {
        println!(
            "{{\"type\":\"intermediate\",\"timeSeconds\":{:.3},\"uploadBytes\":{},\"downloadBytes\":{}}}",
            last.elapsed().as_secs_f64(),
            moved.upload_bytes,
            moved.download_bytes
        );
        last = Instant::now();
    };
    node::run(options, dial, upload, download, progress).await
}
