//! A running Go peer and the JSON lines it prints.

use std::{
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{channel::mpsc, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{go_peer_binary, GoBuild, Json};

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
        Self::spawn_with(which, label, args, true)
    }

    /// As [`GoPeer::spawn`], but its lines are not echoed to stdout (they are kept, and a
    /// failed [`GoPeer::expect`] shows them): for runs of many peers.
    pub fn spawn_quiet(which: GoBuild, label: &str, args: &[String]) -> GoPeer {
        Self::spawn_with(which, label, args, false)
    }

    fn spawn_with(which: GoBuild, label: &str, args: &[String], echo: bool) -> GoPeer {
        let bin = go_peer_binary(which);
        if echo {
            println!("[{label}] $ {} {}", which.dir_name(), args.join(" "));
        }
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
                let quiet = line.contains("\"storm_progress\"")
                    || line.contains("\"storm_served\"")
                    || line.contains("\"reliable_reset_served\"");
                if echo && !quiet {
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
                if echo {
                    println!("[{err_label} stderr] {line}");
                }
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

    /// The next line with this event that `pick` accepts (lines before it are kept in `seen`).
    /// Panics after `within`, or if the process ends first.
    pub async fn expect_where(
        &mut self,
        event: &str,
        within: Duration,
        mut pick: impl FnMut(&Json) -> bool,
    ) -> Json {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.wait_for(event, left).await {
                Some(v) if pick(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "[{}] no matching {event:?} line within {within:?}; last lines:{}",
                    self.label,
                    self.history()
                ),
            }
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

    /// The `listening` line of `transport` (`"quic-v1"` or `"webtransport"`, the line's
    /// `transport` field), from the lines seen so far or the next ones. With several
    /// `--listen`, go-libp2p prints them in its own order (WebTransport first), so pick by
    /// transport, not by position. Panics after `within`.
    pub async fn expect_listening(&mut self, transport: &str, within: Duration) -> Json {
        self.drain();
        let matches = |v: &Json| v.event() == "listening" && v.str("transport") == Some(transport);
        if let Some(v) = self.seen.iter().find(|v| matches(v)) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if matches(&v) {
                        return v;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "[{}] no {transport:?} listening line within {within:?}; last lines:{}",
                    self.label,
                    self.history()
                ),
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
