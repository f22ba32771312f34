//! Optimistic writes of a [`Room`]: the write shows at once (`pending: true`), is sent over
//! the open WebSocket (answered by an `ack`) or over REST (`Idempotency-Key`, `If-Match`),
//! is retried with the same key after a network failure, a `5xx` or a `429` (waiting its
//! `Retry-After`, see [`crate::retry`]), so it is applied once, and is confirmed by the
//! server's event or rolled back when the server refuses it. [`Room::publish`] is sent the
//! same way (it has nothing to show or roll back).
//!
//! ```ignore
//! let write = room.put("slot-3", serde_json::json!({"free": false}));
//! assert!(room.items()[0].pending); // before the future is polled
//! let event = write.await?;         // or Err, after a rollback
//! ```

use std::future::Future;

use futures::channel::oneshot;
use futures::future::{select, Either};
use gloo_timers::future::TimeoutFuture;
use serde_json::Value;
use tidewire_protocol::{validate_event_type, validate_item_id, Envelope};

use crate::browser::{online, timer_ms};
use crate::frames;
use crate::http;
use crate::retry::write_retry_delay_ms;
use crate::room::WriteOp;
use crate::room_handle::Room;
use crate::types::{Cause, ErrorInfo, LocalCause, Rollback};
use crate::Error;

/// How long a write sent over the WebSocket waits for its `ack`.
const ACK_TIMEOUT_MS: u32 = 10_000;

/// What a write sends: an item change or an application event.
#[derive(Clone, Copy)]
enum Outgoing<'a> {
    Item {
        id: &'a str,
        op: &'a WriteOp,
        if_match: Option<u64>,
    },
    Publish {
        event_type: &'a str,
        data: &'a Value,
    },
}

impl Room {
    /// Optimistically puts `value`; confirmed with the server's event, rolled back on refusal.
    /// `If-Match` is the version the client knows, when it knows the item. The pending value
    /// shows in [`Room::items`] as soon as this is called, before the future is polled.
    pub fn put(
        &self,
        id: &str,
        value: Value,
    ) -> impl Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Put(value), None)
    }

    /// [`Room::put`] with an explicit `If-Match` version (`Some(0)`: only if absent).
    pub fn put_if(
        &self,
        id: &str,
        value: Value,
        if_match: Option<u64>,
    ) -> impl Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Put(value), if_match)
    }

    /// Optimistically deletes an item.
    pub fn delete(&self, id: &str) -> impl Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Delete, None)
    }

    /// [`Room::delete`] with an explicit `If-Match` version.
    pub fn delete_if(
        &self,
        id: &str,
        if_match: Option<u64>,
    ) -> impl Future<Output = Result<Envelope, Error>> + 'static {
        self.write(id, WriteOp::Delete, if_match)
    }

    /// Applies the write locally at once; the returned future sends it.
    fn write(
        &self,
        id: &str,
        op: WriteOp,
        if_match: Option<u64>,
    ) -> impl Future<Output = Result<Envelope, Error>> + 'static {
        let started = self.begin(id, &op, if_match);
        let this = self.clone();
        let id = id.to_owned();
        async move {
            let (key, expected) = started?;
            this.send_write(key, id, op, expected).await
        }
    }

    fn begin(
        &self,
        id: &str,
        op: &WriteOp,
        if_match: Option<u64>,
    ) -> Result<(String, Option<u64>), Error> {
        validate_item_id(id)?;
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        let key = self.shared.next_key();
        let expected = {
            let mut inner = self.room.inner.borrow_mut();
            let expected = if_match.or_else(|| inner.state.expected_version(id));
            inner.state.begin_write(key.clone(), id, op.clone());
            expected
        };
        self.room.emit_update(Cause::Local(LocalCause::Pending {
            room: self.room.name.clone(),
            id: id.to_owned(),
            key: key.clone(),
        }));
        Ok((key, expected))
    }

    async fn send_write(
        self,
        key: String,
        id: String,
        op: WriteOp,
        expected: Option<u64>,
    ) -> Result<Envelope, Error> {
        let out = Outgoing::Item {
            id: &id,
            op: &op,
            if_match: expected,
        };
        let result = self.send(&key, out).await;
        if let Err(e) = &result {
            self.roll_back(&key, &id, e);
        }
        result
    }

    /// Appends an application event to the room's log: over the open WebSocket (answered by
    /// an `ack`) or over REST, retried with the same idempotency key after a network failure,
    /// a `5xx` or a `429` (after its `Retry-After`), so it is appended once. A refusal (a
    /// `4xx`) is the error.
    pub fn publish(
        &self,
        event_type: &str,
        data: Value,
    ) -> impl Future<Output = Result<Envelope, Error>> + 'static {
        let checked = validate_event_type(event_type)
            .map_err(Error::from)
            .and_then(|()| match self.shared.is_closed() {
                true => Err(Error::Closed),
                false => Ok(self.shared.next_key()),
            });
        let this = self.clone();
        let event_type = event_type.to_owned();
        async move {
            let key = checked?;
            let out = Outgoing::Publish {
                event_type: &event_type,
                data: &data,
            };
            this.send(&key, out).await
        }
    }

    /// Sends a write until it is answered: over the WebSocket when one is open, else over
    /// REST; a retryable failure is retried with the same key (see [`crate::retry`]). The
    /// server's event is applied before it is returned.
    async fn send(&self, key: &str, out: Outgoing<'_>) -> Result<Envelope, Error> {
        let api = &self.shared.api;
        let room = self.room.name.as_str();
        let mut attempt = 0u32;
        loop {
            let result = match self.write_over_ws(&out, key) {
                Some(ack) => ack.await,
                None => match out {
                    Outgoing::Item {
                        id,
                        op: WriteOp::Put(v),
                        if_match,
                    } => http::put(api, room, id, v, key, if_match).await,
                    Outgoing::Item {
                        id,
                        op: WriteOp::Delete,
                        if_match,
                    } => http::delete(api, room, id, key, if_match).await,
                    Outgoing::Publish { event_type, data } => {
                        http::publish(api, room, event_type, data, key).await
                    }
                },
            };
            match result {
                Ok(env) => {
                    self.shared.apply_durable(&self.room, env.clone());
                    return Ok(env);
                }
                Err(e) if e.is_retryable() && attempt < self.shared.options.write_retries => {
                    let hint = match &e {
                        Error::Server { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let wait = write_retry_delay_ms(attempt, hint);
                    attempt += 1;
                    TimeoutFuture::new(timer_ms(wait)).await;
                    while !online() && !self.shared.is_closed() {
                        TimeoutFuture::new(500).await;
                    }
                    if self.shared.is_closed() {
                        return Err(Error::Closed);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends the write as a frame when a WebSocket is open; the future resolves with its ack
    /// (a network error when the socket closes first or no ack comes within 10 s).
    fn write_over_ws(
        &self,
        out: &Outgoing<'_>,
        key: &str,
    ) -> Option<impl Future<Output = Result<Envelope, Error>>> {
        let r = format!("w{}", self.shared.next_key());
        let room = &self.room.name;
        let frame = match *out {
            Outgoing::Item { id, op, if_match } => frames::write(&r, room, id, op, key, if_match),
            Outgoing::Publish { event_type, data } => {
                frames::publish(&r, room, event_type, data.clone(), key)
            }
        };
        let (tx, rx) = oneshot::channel();
        self.shared.acks.borrow_mut().insert(r.clone(), tx);
        if !self.shared.send_ws(&frame) {
            self.shared.acks.borrow_mut().remove(&r);
            return None;
        }
        let shared = self.shared.clone();
        Some(async move {
            let outcome = match select(rx, TimeoutFuture::new(ACK_TIMEOUT_MS)).await {
                Either::Left((Ok(result), _)) => Some(result),
                _ => None,
            };
            shared.acks.borrow_mut().remove(&r);
            match outcome {
                Some(Ok(Some(env))) => Ok(env),
                Some(Ok(None)) => Err(Error::Network("an ack without the event".into())),
                Some(Err(e)) => Err(Error::Server {
                    code: e.code,
                    status: 0,
                    message: e.title,
                    current: e.current,
                    retry_after: None,
                }),
                None => Err(Error::Network("the WebSocket closed before the ack".into())),
            }
        })
    }

    /// Drops the pending write `key` and tells the listeners (with the server's value).
    pub(crate) fn roll_back(&self, key: &str, id: &str, error: &Error) {
        let (value, version) = match error {
            Error::Server {
                current: Some(item),
                ..
            } => (item.value.clone(), Some(item.version)),
            _ => {
                let inner = self.room.inner.borrow();
                match inner.state.confirmed(id) {
                    Some((v, ver)) => (v.clone(), Some(ver)),
                    None => (Value::Null, None),
                }
            }
        };
        let removed = self.room.inner.borrow_mut().state.rollback(key);
        if removed.is_none() {
            return;
        }
        self.room.rollbacks.emit(&Rollback {
            id: id.to_owned(),
            value,
            version,
            error: ErrorInfo::from(error),
        });
        self.room.emit_update(Cause::Local(LocalCause::Rollback {
            room: self.room.name.clone(),
            id: id.to_owned(),
            key: key.to_owned(),
        }));
    }
}
