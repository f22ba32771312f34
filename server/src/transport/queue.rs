//! The bounded per-connection outbound queue every transport drains.
//!
//! The hub pushes without waiting; when a connection's queue is full the connection is marked
//! slow, its transport closes it (`slow_consumer`), and the client resumes from its position.
//! Server memory per connection is bounded by the capacity, and payloads are shared bytes
//! serialised once for all subscribers.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tidewire_server::transport::queue::{queue, Outbound, Push};
//! let (outbox, mut inbox) = queue(1);
//! assert_eq!(outbox.push(Outbound::Message("a".into())), Push::Queued);
//! assert_eq!(outbox.push(Outbound::Message("b".into())), Push::Slow);
//! assert!(inbox.is_slow());
//! assert!(inbox.recv().await.is_none(), "a slow connection stops reading and closes");
//! # });
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, Notify};

/// One item for a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A durable event of `room` with its `seq`; `payload` is the envelope JSON.
    Durable {
        /// The room.
        room: Arc<str>,
        /// The event's seq.
        seq: u64,
        /// The envelope JSON, shared by every subscriber.
        payload: Utf8Bytes,
    },
    /// An ephemeral or control envelope (no `seq`, no SSE `id:`).
    Message(Utf8Bytes),
}

/// The outcome of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The queue was full: the connection is now marked slow and will be closed.
    Slow,
    /// The connection is gone.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    slow: AtomicBool,
    notify: Notify,
}

/// The sending side, held by the hub (cheap to clone).
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    state: Arc<State>,
}

/// The receiving side, drained by the connection's transport.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Outbound>,
    state: Arc<State>,
}

/// A queue holding at most `capacity` items.
pub fn queue(capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let state = Arc::new(State::default());
    (
        Outbox {
            tx,
            state: state.clone(),
        },
        Inbox { rx, state },
    )
}

impl Outbox {
    /// Queues without waiting.
    pub fn push(&self, item: Outbound) -> Push {
        if self.state.slow.load(Ordering::Relaxed) {
            return Push::Slow;
        }
        match self.tx.try_send(item) {
            Ok(()) => Push::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.state.slow.store(true, Ordering::Relaxed);
                self.state.notify.notify_one();
                Push::Slow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Push::Closed,
        }
    }

    /// Whether the connection fell behind.
    pub fn is_slow(&self) -> bool {
        self.state.slow.load(Ordering::Relaxed)
    }
}

impl Inbox {
    /// The next item; `None` once the connection is slow (or every sender is gone).
    pub async fn recv(&mut self) -> Option<Outbound> {
        if self.is_slow() {
            return None;
        }
        tokio::select! {
            biased;
            _ = self.state.notify.notified() => None,
            item = self.rx.recv() => item,
        }
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        if self.is_slow() {
            return None;
        }
        self.rx.try_recv().ok()
    }

    /// Whether the connection fell behind.
    pub fn is_slow(&self) -> bool {
        self.state.slow.load(Ordering::Relaxed)
    }

    /// Resolves once the connection is marked slow (to abandon a write that blocks on a
    /// client that does not read).
    pub async fn wait_slow(&self) {
        while !self.is_slow() {
            self.state.notify.notified().await;
        }
    }

    /// A handle that resolves once the connection is marked slow, usable while the inbox
    /// itself is borrowed.
    pub fn slow_signal(&self) -> SlowSignal {
        SlowSignal(self.state.clone())
    }
}

/// See [`Inbox::slow_signal`].
#[derive(Debug, Clone)]
pub struct SlowSignal(Arc<State>);

impl SlowSignal {
    /// Resolves once the connection is marked slow.
    pub async fn wait(&self) {
        while !self.0.slow.load(Ordering::Relaxed) {
            self.0.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifo_then_slow_when_full() {
        let (outbox, mut inbox) = queue(3);
        for i in 0..3 {
            assert_eq!(
                outbox.push(Outbound::Message(format!("{i}").into())),
                Push::Queued
            );
        }
        assert_eq!(inbox.recv().await, Some(Outbound::Message("0".into())));
        assert_eq!(inbox.try_recv(), Some(Outbound::Message("1".into())));
        assert_eq!(outbox.push(Outbound::Message("3".into())), Push::Queued);
        assert_eq!(outbox.push(Outbound::Message("4".into())), Push::Queued);
        assert_eq!(outbox.push(Outbound::Message("5".into())), Push::Slow);
        assert!(outbox.is_slow());
        assert_eq!(inbox.recv().await, None);
        assert_eq!(
            outbox.push(Outbound::Message("6".into())),
            Push::Slow,
            "stays slow"
        );
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_when_marked_slow() {
        let (outbox, mut inbox) = queue(1);
        let reader = tokio::spawn(async move {
            let first = inbox.recv().await;
            let second = inbox.recv().await;
            (first, second)
        });
        outbox.push(Outbound::Message("a".into()));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        outbox.push(Outbound::Message("b".into()));
        outbox.push(Outbound::Message("c".into()));
        let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(2), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, Some(Outbound::Message("a".into())));
        assert!(second.is_none() || second == Some(Outbound::Message("b".into())));
    }

    #[tokio::test]
    async fn closed_when_the_reader_is_gone() {
        let (outbox, inbox) = queue(1);
        drop(inbox);
        assert_eq!(outbox.push(Outbound::Message("a".into())), Push::Closed);
    }
}
