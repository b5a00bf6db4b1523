//! Opening a stream, and the wait for stream credit that a leak turns into a hang.

use std::{
    future::IntoFuture,
    pin::pin,
    time::{Duration, Instant},
};

use futures::FutureExt;

use super::{warnings, Session};
use crate::Error;

impl Session {
    /// Complete `open`, a session's opening of a stream; if credit does not come within the
    /// configured time, say why and keep waiting (a muxer error would tear down the whole
    /// libp2p connection), saying it again, backing off, until the open goes ahead, and then
    /// that it did. The wait shows in snapshots while it lasts, and in the metrics.
    pub(crate) async fn open_with_warning<T, E>(
        &self,
        open: impl IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, Error>
    where
        Error: From<E>,
    {
        let mut open = pin!(open.into_future());
        if let Some(result) = (&mut open).now_or_never() {
            return Ok(result?);
        }
        let started = Instant::now();
        self.set_credit_wait(Some(started));
        // Cleared and counted however this future ends, including when the caller drops it.
        let _clear = scopeguard(|| {
            self.set_credit_wait(None);
            self.story.waited(started.elapsed());
        });
        // A zero threshold warns at once, and then not in a loop.
        let first = self
            .config
            .credit_wait_warning
            .max(Duration::from_millis(1));
        let mut told = 0;
        let result = loop {
            // A threshold too far to reach (`Duration::MAX`: never warn) ends the warnings.
            let Some(due) = started.checked_add(warnings::credit_warning_due(first, told)) else {
                break (&mut open).await;
            };
            match tokio::time::timeout_at(due.into(), &mut open).await {
                Ok(result) => break result,
                Err(_) => {
                    self.warn_credit_wait(started.elapsed(), told);
                    told += 1;
                }
            }
        };
        let waited = started.elapsed();
        let result = result.map_err(Error::from);
        self.credit_wait_ended(waited, told, result.as_ref().err());
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.config.metrics {
            m.credit_waited(waited);
        }
        result
    }

    fn set_credit_wait(&self, since: Option<Instant>) {
        *self
            .credit_wait_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = since;
    }

    /// How long the current outbound open has waited for credit, if one is waiting.
    pub(crate) fn credit_waited(&self) -> Option<Duration> {
        self.credit_wait_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|since| since.elapsed())
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
