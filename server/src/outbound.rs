//! The bounded per-connection outbound queue: the hub fills it, the connection's session
//! drains it through whichever transport the client uses.
//!
//! The hub pushes without waiting; when a connection's queue is full the connection is marked
//! slow, its transport closes it (`slow_consumer`), and the client resumes from its position.
//! Server memory per connection is bounded by the capacity and follows what is queued (an
//! idle connection holds no slots), and payloads are shared bytes serialised once for all
//! subscribers.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tidewire_server::outbound::{queue, Outbound, Push};
//! let (outbox, mut inbox) = queue(1);
//! assert_eq!(outbox.push(Outbound::Message("a".into())), Push::Queued);
//! assert_eq!(outbox.push(Outbound::Message("b".into())), Push::Slow);
//! assert!(inbox.is_slow());
//! assert!(inbox.recv().await.is_none(), "a slow connection stops reading and closes");
//! # });
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use futures::task::AtomicWaker;
use tokio::sync::Notify;

use crate::payload::Payload;

/// Which transport a connection uses (the label of its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    Ws,
    /// Long-poll (and plain polling).
    Poll,
}

impl TransportKind {
    /// The metrics label: `sse`, `ws` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Sse => "sse",
            TransportKind::Ws => "ws",
            TransportKind::Poll => "poll",
        }
    }
}

/// An envelope's shared bytes as the text the transports write (no copy).
pub fn text(payload: Payload) -> Utf8Bytes {
    // A payload is made from strings only, so this never fails.
    Utf8Bytes::try_from(payload.into_bytes()).unwrap_or_default()
}

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

impl Outbound {
    /// Bytes of payload it holds.
    pub fn size(&self) -> usize {
        match self {
            Outbound::Durable { payload, .. } | Outbound::Message(payload) => payload.len(),
        }
    }
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

/// Above this many slots an emptied queue gives its memory back.
const KEEP_SLOTS: usize = 64;

/// What is queued, and its payload bytes.
#[derive(Debug, Default)]
struct Queued {
    items: VecDeque<Outbound>,
    bytes: usize,
}

/// The queue itself: it grows with what is queued (an idle connection holds no slots) up to
/// `capacity` items and `max_bytes` of payload.
#[derive(Debug)]
struct State {
    items: Mutex<Queued>,
    capacity: usize,
    max_bytes: usize,
    /// The reader waiting for an item.
    reader: AtomicWaker,
    slow: AtomicBool,
    /// The inbox is gone.
    closed: AtomicBool,
    /// Wakes [`Inbox::wait_slow`].
    notify: Notify,
    /// The transport whose slow-consumer counter counts this connection's cut, if any.
    transport: Option<TransportKind>,
}

impl State {
    fn items(&self) -> MutexGuard<'_, Queued> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// The next item, unless the connection is slow.
    fn pop(&self) -> Option<Outbound> {
        if self.is_slow() {
            return None;
        }
        let mut queued = self.items();
        let item = queued.items.pop_front();
        if let Some(item) = &item {
            queued.bytes -= item.size();
        }
        if queued.items.is_empty() && queued.items.capacity() > KEEP_SLOTS {
            queued.items = VecDeque::new();
        }
        item
    }
}

/// The sending side, held by the hub (cheap to clone).
#[derive(Debug, Clone)]
pub struct Outbox {
    state: Arc<State>,
}

/// The receiving side, drained by the connection's transport.
#[derive(Debug)]
pub struct Inbox {
    state: Arc<State>,
}

/// A queue holding at most `capacity` items.
pub fn queue(capacity: usize) -> (Outbox, Inbox) {
    new_queue(capacity, usize::MAX, None)
}

/// A queue holding at most `capacity` items and `max_bytes` of payload, whose overflow counts
/// as a slow-consumer cut of `transport` (counted when it is decided, not when the client
/// next reads).
pub fn queue_for(capacity: usize, max_bytes: usize, transport: TransportKind) -> (Outbox, Inbox) {
    new_queue(capacity, max_bytes, Some(transport))
}

fn new_queue(
    capacity: usize,
    max_bytes: usize,
    transport: Option<TransportKind>,
) -> (Outbox, Inbox) {
    let state = Arc::new(State {
        items: Mutex::default(),
        capacity: capacity.max(1),
        max_bytes,
        reader: AtomicWaker::new(),
        slow: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        notify: Notify::new(),
        transport,
    });
    (
        Outbox {
            state: state.clone(),
        },
        Inbox { state },
    )
}

impl Outbox {
    /// Queues without waiting.
    pub fn push(&self, item: Outbound) -> Push {
        let state = &*self.state;
        if state.is_slow() {
            return Push::Slow;
        }
        if state.closed.load(Ordering::Acquire) {
            return Push::Closed;
        }
        {
            let mut queued = state.items();
            let size = item.size();
            // One item always fits, however large: the byte bound is about what piles up.
            let fits =
                queued.items.is_empty() || queued.bytes.saturating_add(size) <= state.max_bytes;
            if queued.items.len() < state.capacity && fits {
                queued.items.push_back(item);
                queued.bytes += size;
                drop(queued);
                state.reader.wake();
                return Push::Queued;
            }
        }
        if !state.slow.swap(true, Ordering::AcqRel) {
            if let Some(transport) = state.transport {
                crate::metrics::slow_consumer(transport.as_str());
                tracing::info!(
                    transport = transport.as_str(),
                    queued_bytes = state.items().bytes,
                    "slow consumer cut: its queue overflowed; it resumes from its cursor"
                );
                crate::stats::slow_consumer(transport.as_str());
            }
        }
        // A slow connection reads no more: its queue is freed now, not when it closes.
        let dropped = std::mem::take(&mut *state.items());
        drop(dropped);
        state.notify.notify_one();
        state.reader.wake();
        Push::Slow
    }

    /// Whether the connection fell behind.
    pub fn is_slow(&self) -> bool {
        self.state.is_slow()
    }
}

impl Inbox {
    /// The next item; `None` once the connection is slow.
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`Inbox::recv`] for a hand-written poll loop: the next item, `None` once the connection
    /// is slow, or pending (and `cx` woken by the next push).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let state = &*self.state;
        if let Some(item) = state.pop() {
            return Poll::Ready(Some(item));
        }
        if state.is_slow() {
            return Poll::Ready(None);
        }
        state.reader.register(cx.waker());
        match state.pop() {
            Some(item) => Poll::Ready(Some(item)),
            None if state.is_slow() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.state.pop()
    }

    /// Whether the connection fell behind.
    pub fn is_slow(&self) -> bool {
        self.state.is_slow()
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

impl Drop for Inbox {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        *self.state.items() = Queued::default();
    }
}

/// See [`Inbox::slow_signal`].
#[derive(Debug, Clone)]
pub struct SlowSignal(Arc<State>);

impl SlowSignal {
    /// Resolves once the connection is marked slow.
    pub async fn wait(&self) {
        while !self.0.is_slow() {
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
    async fn bounded_by_bytes_as_well_as_count() {
        let (outbox, mut inbox) = queue_for(100, 10, TransportKind::Ws);
        let six = || Outbound::Message("123456".into());
        assert_eq!(outbox.push(six()), Push::Queued);
        assert_eq!(outbox.push(Outbound::Message("1234".into())), Push::Queued);
        assert_eq!(inbox.try_recv(), Some(six()), "reading frees its bytes");
        assert_eq!(outbox.push(six()), Push::Queued, "4 + 6 fit again");
        assert_eq!(
            outbox.push(Outbound::Message("x".into())),
            Push::Slow,
            "11 > 10"
        );
        assert!(inbox.is_slow());
        // Alone, an item larger than the bound is still delivered.
        let (outbox, mut inbox) = queue_for(100, 3, TransportKind::Sse);
        assert_eq!(outbox.push(six()), Push::Queued);
        assert_eq!(inbox.try_recv(), Some(six()));
    }

    #[tokio::test]
    async fn closed_when_the_reader_is_gone() {
        let (outbox, inbox) = queue(1);
        drop(inbox);
        assert_eq!(outbox.push(Outbound::Message("a".into())), Push::Closed);
    }
}
