//! Expected changes: optimistic updates for writes that never touch Tidewire's REST API.
//!
//! The application writes through its own backend (which feeds Tidewire, e.g. from its
//! PostgreSQL through the outbox) and gives that write an idempotency key; the event the
//! write becomes carries the key in its envelope `key`. [`Room::expect`] shows the change at
//! once, with the same machinery as [`Room::put`]: the item is `pending: true` in
//! [`Room::items`] and an update with cause `pending` is emitted. The first durable event of
//! the room (`item.put`, `item.deleted` or an application event) whose `key` is the expected
//! key confirms it: the event's state replaces the pending one and the expectation resolves
//! with the envelope (`Expected` is a future of it). Until then, [`Expected::fail`] (the backend said it failed) or the
//! timeout rolls it back like a refused write: a `rollback` to the listeners naming the item,
//! with the error code `failed` (and the application's reason as message) or `timeout`.
//!
//! Call `expect` before the backend request, so its event cannot come first. A change that
//! reaches the client only through a snapshot (after a `resync`) confirms nothing: it is
//! rolled back at the timeout, and the room then shows the snapshot's (right) state.
//!
//! ```ignore
//! let expected = room.expect("order-17", ExpectedChange::put("slot-3", json!({"free": false})), None)?;
//! if app_backend_call("order-17").await.is_err() {
//!     expected.fail("the backend refused it");
//! }
//! let event = expected.await?; // or Err: failed / timeout
//! ```

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use futures::FutureExt;
use gloo_timers::future::TimeoutFuture;
use serde_json::Value;
use tidewire_protocol::{validate_idempotency_key, validate_item_id, Envelope};

use crate::browser::timer_ms;
use crate::room::WriteOp;
use crate::room_handle::Room;
use crate::types::{Cause, LocalCause};
use crate::Error;

/// How long an expected change waits for its event unless told otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The longest timeout (a larger one is cut to this).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// At most this many expected changes wait in one room at a time.
pub const MAX_EXPECTED_PER_ROOM: usize = 1_024;

/// The change the application expects to see.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedChange {
    /// The item.
    pub id: String,
    /// Its new value, or `None` for a delete.
    pub value: Option<Value>,
}

impl ExpectedChange {
    /// The item `id` gets `value`.
    pub fn put(id: impl Into<String>, value: Value) -> ExpectedChange {
        ExpectedChange {
            id: id.into(),
            value: Some(value),
        }
    }

    /// The item `id` is deleted.
    pub fn delete(id: impl Into<String>) -> ExpectedChange {
        ExpectedChange {
            id: id.into(),
            value: None,
        }
    }
}

type Outcome = Result<Envelope, Error>;

struct Waiting {
    key: String,
    id: String,
    /// Which expectation of this key (a key may be expected again after it settled).
    gen: u64,
    tx: oneshot::Sender<Outcome>,
}

/// A room's expected changes (in [`crate::shared::RoomShared`]); a list, as there are few
/// (at most [`MAX_EXPECTED_PER_ROOM`]) and a map would cost the module more code.
#[derive(Default)]
pub(crate) struct Expectations {
    waiting: RefCell<Vec<Waiting>>,
    gen: Cell<u64>,
}

impl Expectations {
    /// An applied durable event: resolves the expectation of its key, if there is one. (Its
    /// pending write was dropped when the room state applied the event.)
    pub(crate) fn confirm(&self, env: &Envelope) {
        let Some(key) = &env.key else {
            return;
        };
        if let Some(w) = self.take(key, None) {
            let _ = w.tx.send(Ok(env.clone()));
        }
    }

    /// Removes the expectation `key` (only generation `gen`, when given).
    fn take(&self, key: &str, gen: Option<u64>) -> Option<Waiting> {
        let mut waiting = self.waiting.borrow_mut();
        let i = waiting
            .iter()
            .position(|w| w.key == key && gen.is_none_or(|g| g == w.gen))?;
        Some(waiting.swap_remove(i))
    }
}

/// An expected change ([`Room::expect`]): a future of the confirming event (an error with
/// code `failed` or `timeout` after a rollback). Dropping it changes nothing: the timeout
/// still applies.
pub struct Expected {
    handle: ExpectedHandle,
    rx: oneshot::Receiver<Outcome>,
}

/// What fails an expected change: its room, key and generation.
#[derive(Clone)]
pub(crate) struct ExpectedHandle {
    room: Room,
    key: String,
    gen: u64,
}

impl ExpectedHandle {
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn fail(&self, reason: &str) -> bool {
        self.room
            .give_up(&self.key, Some(self.gen), Error::Failed(reason.to_owned()))
    }
}

impl Expected {
    /// The idempotency key the change is expected with.
    pub fn key(&self) -> &str {
        self.handle.key()
    }

    /// Rolls the change back now (the backend said it failed); the rollback's error has the
    /// code `failed` and `reason` as its message. False when it had already been confirmed
    /// or rolled back.
    pub fn fail(&self, reason: &str) -> bool {
        self.handle.fail(reason)
    }

    /// The handle (for `fail`) and the outcome, apart.
    pub(crate) fn into_parts(self) -> (ExpectedHandle, Self) {
        (self.handle.clone(), self)
    }
}

impl Future for Expected {
    type Output = Result<Envelope, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.rx
            .poll_unpin(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl Room {
    /// Shows `change` at once as a pending write with idempotency key `key`, confirmed by
    /// the room's first event carrying that key, rolled back by [`Expected::fail`] or after
    /// `timeout_ms` (default [`DEFAULT_TIMEOUT_MS`], at most [`MAX_TIMEOUT_MS`]). See the
    /// module docs.
    pub fn expect(
        &self,
        key: &str,
        change: ExpectedChange,
        timeout_ms: Option<u64>,
    ) -> Result<Expected, Error> {
        validate_idempotency_key(key)?;
        validate_item_id(&change.id)?;
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        let timeout_ms = timeout_ms
            .unwrap_or(DEFAULT_TIMEOUT_MS)
            .clamp(1, MAX_TIMEOUT_MS);
        let expectations = &self.room.expected;
        let (tx, rx) = oneshot::channel();
        let gen = expectations.gen.get() + 1;
        {
            let mut waiting = expectations.waiting.borrow_mut();
            if waiting.iter().any(|w| w.key == key) {
                return Err(Error::BadOption {
                    name: "key",
                    reason: format!("`{key}` is already expected in this room"),
                });
            }
            if waiting.len() >= MAX_EXPECTED_PER_ROOM {
                return Err(Error::TooManyExpected(MAX_EXPECTED_PER_ROOM));
            }
            waiting.push(Waiting {
                key: key.to_owned(),
                id: change.id.clone(),
                gen,
                tx,
            });
        }
        expectations.gen.set(gen);
        let op = match change.value {
            Some(v) => WriteOp::Put(v),
            None => WriteOp::Delete,
        };
        self.room
            .inner
            .borrow_mut()
            .state
            .begin_write(key, change.id.as_str(), op);
        self.room.emit_update(Cause::Local(LocalCause::Pending {
            room: self.room.name.clone(),
            id: change.id,
            key: key.to_owned(),
        }));
        let this = self.clone();
        let k = key.to_owned();
        wasm_bindgen_futures::spawn_local(async move {
            TimeoutFuture::new(timer_ms(timeout_ms)).await;
            let error = Error::Timeout {
                key: k.clone(),
                timeout_ms,
            };
            this.give_up(&k, Some(gen), error);
        });
        Ok(Expected {
            handle: ExpectedHandle {
                room: self.clone(),
                key: key.to_owned(),
                gen,
            },
            rx,
        })
    }

    /// Rolls back the expectation `key` (of generation `gen`) with `error`, if it still waits.
    fn give_up(&self, key: &str, gen: Option<u64>, error: Error) -> bool {
        let Some(w) = self.room.expected.take(key, gen) else {
            return false;
        };
        self.roll_back(key, &w.id, &error);
        let _ = w.tx.send(Err(error));
        true
    }
}
