//! With `QLOGDIR` set, each connection writes a parseable qlog file that names its streams.

#![cfg(feature = "qlog")]

mod common;

use common::*;
use libp2p_identity::Keypair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_writes_a_qlog_file_naming_its_streams() {
    let dir = std::env::temp_dir().join(format!("libp2p-quinn-qlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("QLOGDIR", &dir);
    let Pair {
        mut dialer,
        mut listener,
        ..
    } = pair_with(
        config(&Keypair::generate_ed25519(), 16),
        config(&Keypair::generate_ed25519(), 16),
    )
    .await;
    exchange(&dialer, &mut listener).await;
    exchange(&listener, &mut dialer).await;
    drop(dialer);
    drop(listener);

    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "one file per side: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut records = 0;
        let mut stream_ids = std::collections::BTreeSet::new();
        for record in text.split('\x1e').filter(|r| !r.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(record.trim())
                .unwrap_or_else(|e| panic!("{}: bad record {record:?}: {e}", file.display()));
            records += 1;
            if let Some(id) = value.pointer("/data/stream_id").and_then(|v| v.as_u64()) {
                stream_ids.insert(id);
            }
        }
        assert!(records > 10, "{}: only {records} records", file.display());
        // Each exchange used one stream: the dialer's first (0) and the listener's first (1).
        assert_eq!(stream_ids, [0, 1].into(), "{}", file.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
