//! qlog (feature `qlog`): when `QLOGDIR` is set, as in go-libp2p, each connection writes one
//! qlog file there: quinn's packet-level events, and our stream events beside them, since
//! quinn 0.11 does not log frames and so never names a stream.

use std::{
    fs::File,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::ledger::{Direction, HalfState};

/// One connection's qlog file, shared by quinn's streamer and our own events.
#[derive(Clone)]
pub(crate) struct QlogFile {
    file: Arc<Mutex<File>>,
    start: Instant,
}

/// The qlog directory, if qlog is asked for.
pub(crate) fn dir() -> Option<PathBuf> {
    std::env::var_os("QLOGDIR").map(PathBuf::from)
}

impl QlogFile {
    /// Create `<QLOGDIR>/<time>_<role>_<remote>.sqlog` and the quinn stream that writes to it.
    pub(crate) fn create(role: &str, remote: SocketAddr) -> Option<(Self, quinn::QlogStream)> {
        let dir = dir()?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let name = format!("{millis}_{role}_{remote}.sqlog").replace([':', '[', ']'], "-");
        let path = dir.join(name);
        let file = match std::fs::create_dir_all(&dir).and_then(|()| File::create(&path)) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot create qlog file");
                return None;
            }
        };
        let this = Self {
            file: Arc::new(Mutex::new(file)),
            start: Instant::now(),
        };
        let mut config = quinn::QlogConfig::default();
        config
            .writer(Box::new(LineWriter {
                file: this.clone(),
                line: Vec::new(),
            }))
            .title(Some(format!("libp2p-quinn {role} {remote}")))
            .start_time(this.start);
        let stream = config.into_stream()?;
        Some((this, stream))
    }

    fn write_record(&self, record: &[u8]) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_all(record);
    }

    /// A stream was opened, or one of its halves changed state.
    pub(crate) fn stream_event(&self, id: u64, direction: Direction, side: &str, state: HalfState) {
        let time = self.start.elapsed().as_secs_f64() * 1000.0;
        let record = format!(
            "\x1e{{\"time\":{time:.3},\"name\":\"transport:stream_state_updated\",\"data\":{{\
             \"stream_id\":{id},\"stream_type\":\"bidirectional\",\"initiator\":\"{}\",\
             \"stream_side\":\"{side}\",\"new\":\"{state}\"}}}}\n",
            match direction {
                Direction::Inbound => "remote",
                Direction::Outbound => "local",
            }
        );
        self.write_record(record.as_bytes());
    }
}

/// Hands quinn's output to the file a whole record (line) at a time, so that our events never
/// land inside one of quinn's.
struct LineWriter {
    file: QlogFile,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        if let Some(end) = self.line.iter().rposition(|&b| b == b'\n') {
            let rest = self.line.split_off(end + 1);
            self.file.write_record(&self.line);
            self.line = rest;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
