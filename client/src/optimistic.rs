//! Optimistic writes of a [`Room`]: the write shows at once (`pending: true`), is sent over
//! the open WebSocket (answered by an `ack`) or over REST (`Idempotency-Key`, `If-Match`),
//! is retried with the same key after a network failure (so it is applied once), and is
//! confirmed by the server's event or rolled back when the server refuses it.
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
use tidewire_protocol::{validate_item_id, Envelope};

use crate::browser::{online, timer_ms};
use crate::frames;
use crate::http;
use crate::room::WriteOp;
use crate::room_handle::Room;
use crate::types::{Cause, ErrorInfo, LocalCause, Rollback};
use crate::Error;

/// How long a write sent over the WebSocket waits for its `ack`.
const ACK_TIMEOUT_MS: u32 = 10_000;

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
        let id = id.as_str();
        let api = &self.shared.api;
        let mut attempt = 0u32;
        loop {
            let result = match self.write_over_ws(id, &op, &key, expected) {
                Some(ack) => ack.await,
                None => match &op {
                    WriteOp::Put(v) => http::put(api, &self.room.name, id, v, &key, expected).await,
                    WriteOp::Delete => http::delete(api, &self.room.name, id, &key, expected).await,
                },
            };
            match result {
                Ok(env) => {
                    self.shared.apply_durable(&self.room, env.clone());
                    return Ok(env);
                }
                Err(e) if e.is_retryable() && attempt < self.shared.options.write_retries => {
                    let wait = (250u64 << attempt.min(5)).min(5_000);
                    attempt += 1;
                    TimeoutFuture::new(timer_ms(wait)).await;
                    while !online() && !self.shared.is_closed() {
                        TimeoutFuture::new(500).await;
                    }
                }
                Err(e) => {
                    self.roll_back(&key, id, &e);
                    return Err(e);
                }
            }
        }
    }

    /// Sends the write as a frame when a WebSocket is open; the future resolves with its ack
    /// (a network error when the socket closes first or no ack comes within 10 s).
    fn write_over_ws(
        &self,
        id: &str,
        op: &WriteOp,
        key: &str,
        if_match: Option<u64>,
    ) -> Option<impl Future<Output = Result<Envelope, Error>>> {
        let r = format!("w{}", self.shared.next_key());
        let frame = frames::write(&r, &self.room.name, id, op, key, if_match);
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
                }),
                None => Err(Error::Network("the WebSocket closed before the ack".into())),
            }
        })
    }

    /// Drops the pending write `key` and tells the listeners (with the server's value).
    fn roll_back(&self, key: &str, id: &str, error: &Error) {
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
