//! Graceful shutdown. On SIGTERM or Ctrl-C, `/healthz` turns 503, every streaming connection
//! receives a `reconnect` envelope whose `retry_ms` is spread uniformly over the drain window
//! (so a restart is not a reconnection storm), long-polls answer at once, then streams end.
//!
//! ```
//! let s = tidewire_server::shutdown::Shutdown::new(std::time::Duration::from_millis(5000));
//! assert!(!s.is_draining());
//! s.begin();
//! assert!(s.is_draining());
//! assert!(s.retry_ms() <= 5000);
//! ```

use std::time::Duration;

use rand::Rng;
use tidewire_protocol::{Envelope, Event, ReconnectData};
use tokio::sync::watch;

/// The draining flag shared by every connection.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    window: Duration,
}

impl Shutdown {
    /// Not draining yet; reconnect delays will be spread over `window`.
    pub fn new(window: Duration) -> Self {
        Shutdown {
            tx: watch::channel(false).0,
            window,
        }
    }

    /// Starts draining (idempotent).
    pub fn begin(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once draining starts.
    pub fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// A delay drawn uniformly from `[0, window]`.
    pub fn retry_ms(&self) -> u64 {
        let max = self.window.as_millis().min(u64::MAX as u128) as u64;
        rand::thread_rng().gen_range(0..=max)
    }

    /// The drain window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The `reconnect` envelope for one connection, with its own delay.
    pub fn reconnect_envelope(&self) -> String {
        Envelope::<tidewire_protocol::RawAppEvent>::ephemeral(
            "",
            ulid::Ulid::generate().to_string(),
            crate::clock::now().0,
            Event::Reconnect(ReconnectData {
                retry_ms: self.retry_ms(),
                reason: "shutting_down".into(),
            }),
        )
        .encode()
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_wakes_waiters_and_delays_are_spread() {
        let s = Shutdown::new(Duration::from_millis(1000));
        let wait = s.draining();
        s.begin();
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .unwrap();
        let delays: Vec<u64> = (0..200).map(|_| s.retry_ms()).collect();
        assert!(delays.iter().all(|d| *d <= 1000));
        assert!(delays.iter().any(|d| *d < 300) && delays.iter().any(|d| *d > 700));
        let env: Envelope = Envelope::decode(&s.reconnect_envelope()).unwrap();
        assert_eq!(env.room, "");
        assert!(matches!(env.event, Event::Reconnect(_)));
    }
}
