//! `GET /v1/sse?rooms=a,b` — Server-Sent Events, many rooms on one connection.
//!
//! The stream starts with `retry:` and an `id:`-only event carrying the starting cursor; each
//! durable event carries `id: <cursor after it>`; ephemeral and control events carry only
//! `data:`. Everything queued when the connection gets to write is batched into one chunk.
//!
//! ```text
//! retry: 1000
//! id: board-1=41
//!
//! id: board-1=42
//! data: {"v":1,"type":"item.put","room":"board-1","seq":42,…}
//!
//! : hb
//! ```
//!
//! With `&heartbeat=event` the heartbeat is a named event instead of a comment, also sent once
//! right after `retry:`, so a browser `EventSource` (which hides comments and consumes
//! `retry:`) can watch for stalls and learn the retry hint. It has no `id:`, so it never moves
//! the cursor, and `onmessage` does not see it:
//!
//! ```text
//! retry: 1000
//! event: heartbeat
//! data: {"heartbeat_ms":15000,"retry_ms":1000}
//!
//! id: board-1=41
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::Utf8Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidewire_protocol::{Cursor, ErrorCode};

use crate::identity::ClientIdentity;
use crate::outbound::TransportKind;
use crate::session::{parse_rooms, CatchUp, Ready, Session, Sessions};
use crate::{metrics, Error, Result};

/// Most bytes written as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

/// Every this many live waits look at the token expiry and the shutdown before the queue.
const ENDINGS_EVERY: u32 = 32;

/// Query parameters of `/v1/sse`.
#[derive(Debug, Default, Deserialize)]
pub struct SseQuery {
    rooms: Option<String>,
    since: Option<String>,
    presence: Option<String>,
    client_id: Option<String>,
    heartbeat: Option<String>,
}

/// How heartbeats are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    /// `: hb` comments (the default).
    Comment,
    /// `event: heartbeat` events with the interval and the retry hint.
    Event,
}

impl Heartbeat {
    fn parse(v: Option<&str>) -> Result<Heartbeat> {
        match v {
            None | Some("comment") => Ok(Heartbeat::Comment),
            Some("event") => Ok(Heartbeat::Event),
            Some(other) => Err(Error::BadRequest(format!(
                "query parameter `heartbeat` is `comment` or `event`, not `{other}`"
            ))),
        }
    }
}

/// The bytes of one heartbeat.
fn heartbeat_bytes(kind: Heartbeat, heartbeat: Duration, retry_ms: u64) -> Vec<u8> {
    match kind {
        Heartbeat::Comment => b": hb\n\n".to_vec(),
        Heartbeat::Event => format!(
            "event: heartbeat\ndata: {{\"heartbeat_ms\":{},\"retry_ms\":{retry_ms}}}\n\n",
            heartbeat.as_millis()
        )
        .into_bytes(),
    }
}

fn flag(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true" | "yes"))
}

fn push_ready(buf: &mut Vec<u8>, ready: &Ready) {
    buf.reserve(ready.id.as_ref().map_or(0, |id| id.len() + 5) + ready.payload.len() + 8);
    if let Some(id) = &ready.id {
        buf.extend_from_slice(b"id: ");
        buf.extend_from_slice(id.as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"data: ");
    buf.extend_from_slice(ready.payload.as_str().as_bytes());
    buf.extend_from_slice(b"\n\n");
}

/// The SSE handler.
pub async fn handler(
    State(state): State<Arc<Sessions>>,
    identity: ClientIdentity,
    headers: HeaderMap,
    query: std::result::Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let settings = state.settings();
    let rooms = parse_rooms(q.rooms.as_deref(), settings.max_rooms_per_connection)?;
    let beat = Heartbeat::parse(q.heartbeat.as_deref())?;
    let since = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.since.as_deref())
    {
        Some(s) => Cursor::parse_limited(s.trim(), settings.max_rooms_per_connection)?,
        None => Cursor::new(),
    };
    let presence = flag(q.presence.as_deref());
    let mut session = state
        .open(identity, TransportKind::Sse, q.client_id)
        .await?;
    let catch_up = session.catch_up(&rooms, &since, presence).await?;

    let retry_ms = settings.sse_retry_ms;
    let heartbeat = settings.heartbeat;
    let mut head = format!("retry: {retry_ms}\n").into_bytes();
    if beat == Heartbeat::Event {
        head.extend_from_slice(&heartbeat_bytes(beat, heartbeat, retry_ms));
    }
    head.extend_from_slice(format!("id: {}\n\n", session.cursor).as_bytes());

    let stream = Stream {
        hb: heartbeat_bytes(beat, heartbeat, retry_ms),
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        expiry: Box::pin(expiry(session.expires_at())),
        draining: Box::pin(state.shutdown().draining()),
        session,
        ready: Vec::new(),
        wrote: false,
        polls: 0,
        phase: Phase::Head(head, catch_up),
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        crate::stats::sent(TransportKind::Sse.as_str(), chunk.events);
        metrics::sent(
            TransportKind::Sse.as_str(),
            chunk.events,
            chunk.bytes.len() as u64,
        );
        Some((Ok::<_, Infallible>(Bytes::from(chunk.bytes)), stream))
    });
    let mut res = Body::from_stream(body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // When the stream ends (slow consumer, shutdown) the connection closes too, so a client
    // that stopped reading is really let go; EventSource reconnects on a new one anyway.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(res)
}

/// Resolves when a token that expires at `at` has expired (never without one).
async fn expiry(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where a stream is.
enum Phase {
    /// The prologue (`retry:`, the starting `id:`) is next, then the catch-up.
    Head(Vec<u8>, CatchUp),
    /// Catching up: resyncs, the replay from the log, presence states.
    CatchUp(CatchUp),
    /// Live delivery from the connection's queue.
    Live,
    /// Ended: the last chunk (if any) was handed out.
    Done,
}

/// One chunk of the body.
struct Chunk {
    bytes: Vec<u8>,
    events: u64,
}

impl Chunk {
    fn control(payload: Utf8Bytes) -> Chunk {
        let mut bytes = Vec::new();
        push_ready(&mut bytes, &Ready { payload, id: None });
        Chunk { bytes, events: 0 }
    }
}

/// The response body of one SSE connection.
///
/// Hyper's connection task polls it directly: a delivery is one wake-up of that task, with no
/// forwarding task and no channel in between. The body is only polled when the previous chunk
/// has been written, so everything queued meanwhile goes out as one chunk. A client that stops
/// reading overflows its queue: the hub drops it, the queue is emptied (its memory freed), and
/// the stream ends with a `slow_consumer` error when the client reads again. Dropping the body
/// (the client went away) drops the session and its registrations.
struct Stream {
    session: Session,
    hb: Vec<u8>,
    heartbeat: tokio::time::Interval,
    expiry: Pin<Box<dyn Future<Output = ()> + Send>>,
    draining: Pin<Box<dyn Future<Output = ()> + Send>>,
    ready: Vec<Ready>,
    /// Something was written since the last heartbeat tick (that tick then sends nothing).
    wrote: bool,
    /// Live waits so far: every [`ENDINGS_EVERY`]th looks at the endings first.
    polls: u32,
    phase: Phase,
}

impl Stream {
    /// The next chunk to write; `None` ends the response.
    async fn next_chunk(&mut self) -> Option<Chunk> {
        match self.step().await {
            Ok(chunk) => chunk,
            Err(err) => {
                tracing::debug!(%err, "sse stream ended with an error");
                self.phase = Phase::Done;
                None
            }
        }
    }

    /// The `slow_consumer` ending, when the connection fell behind.
    fn slow_ending(&mut self) -> Option<Chunk> {
        self.phase = Phase::Done;
        if !self.session.inbox.is_slow() {
            return None;
        }
        Some(Chunk::control(Session::error_message(
            ErrorCode::SlowConsumer,
            "the connection fell behind; resume from the last id",
        )))
    }

    async fn step(&mut self) -> Result<Option<Chunk>> {
        loop {
            // The prologue goes out even to a connection that is already slow: its `id:` is
            // where the client resumes from.
            if !matches!(self.phase, Phase::Done | Phase::Head(..)) && self.session.inbox.is_slow()
            {
                return Ok(self.slow_ending());
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return Ok(None),
                Phase::Head(bytes, catch_up) => {
                    self.phase = Phase::CatchUp(catch_up);
                    return Ok(Some(Chunk { bytes, events: 0 }));
                }
                Phase::CatchUp(mut catch_up) => {
                    // Live events queue meanwhile and are deduplicated after.
                    let Some(page) = catch_up.next(&mut self.session).await? else {
                        self.phase = Phase::Live;
                        continue;
                    };
                    self.phase = Phase::CatchUp(catch_up);
                    let mut chunk = Chunk {
                        bytes: Vec::new(),
                        events: 0,
                    };
                    for ready in &page {
                        push_ready(&mut chunk.bytes, ready);
                        chunk.events += u64::from(ready.id.is_some());
                    }
                    if !chunk.bytes.is_empty() {
                        return Ok(Some(chunk));
                    }
                }
                Phase::Live => {
                    if let Some(chunk) = self.live().await? {
                        return Ok(Some(chunk));
                    }
                }
            }
        }
    }

    /// Waits for what to write next in the live phase; `None` to look again (the phase says
    /// whether the stream ended).
    ///
    /// The queue is looked at first: a delivery does not poll the timers and the shutdown
    /// signal again. So that a busy connection still ends on time, every [`ENDINGS_EVERY`]th
    /// wait looks at the token expiry and the shutdown first.
    async fn live(&mut self) -> Result<Option<Chunk>> {
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(ENDINGS_EVERY) {
            let (expired, draining) = std::future::poll_fn(|cx| {
                Poll::Ready((
                    self.expiry.as_mut().poll(cx).is_ready(),
                    self.draining.as_mut().poll(cx).is_ready(),
                ))
            })
            .await;
            if expired {
                return Ok(Some(self.token_expired()));
            }
            if draining {
                return Ok(Some(self.reconnect()));
            }
        }
        tokio::select! {
            biased;
            item = self.session.inbox.recv() => {
                let Some(item) = item else {
                    return Ok(self.slow_ending());
                };
                self.phase = Phase::Live;
                let mut chunk = Chunk { bytes: Vec::new(), events: 0 };
                self.session.admit_into(item, &mut self.ready).await?;
                loop {
                    for r in self.ready.drain(..) {
                        push_ready(&mut chunk.bytes, &r);
                        chunk.events += 1;
                    }
                    if chunk.bytes.len() >= MAX_CHUNK {
                        break;
                    }
                    let Some(more) = self.session.inbox.try_recv() else { break };
                    self.session.admit_into(more, &mut self.ready).await?;
                }
                if chunk.bytes.is_empty() {
                    return Ok(None);
                }
                self.wrote = true;
                Ok(Some(chunk))
            }
            _ = &mut self.expiry => Ok(Some(self.token_expired())),
            _ = &mut self.draining => Ok(Some(self.reconnect())),
            _ = self.heartbeat.tick() => {
                self.phase = Phase::Live;
                // A connection that wrote within the period needs no heartbeat: the silence
                // between writes stays under two periods.
                if std::mem::take(&mut self.wrote) {
                    return Ok(None);
                }
                Ok(Some(Chunk { bytes: self.hb.clone(), events: 0 }))
            }
        }
    }

    /// The `token_expired` ending.
    fn token_expired(&mut self) -> Chunk {
        self.phase = Phase::Done;
        // The client reconnects with a fresh ticket and its last id: nothing is lost.
        Chunk::control(Session::error_message(
            ErrorCode::TokenExpired,
            "the token expired: reconnect with a fresh ticket and the last id",
        ))
    }

    /// The `reconnect` ending (the server is shutting down).
    fn reconnect(&mut self) -> Chunk {
        self.phase = Phase::Done;
        Chunk::control(self.session.sessions.shutdown().reconnect_envelope().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_parameter() {
        assert_eq!(Heartbeat::parse(None).ok(), Some(Heartbeat::Comment));
        assert_eq!(
            Heartbeat::parse(Some("comment")).ok(),
            Some(Heartbeat::Comment)
        );
        assert_eq!(Heartbeat::parse(Some("event")).ok(), Some(Heartbeat::Event));
        for bad in ["", "Event", "events", "1"] {
            assert!(
                matches!(Heartbeat::parse(Some(bad)), Err(Error::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn heartbeat_bytes_by_kind() {
        let h = Duration::from_secs(15);
        assert_eq!(heartbeat_bytes(Heartbeat::Comment, h, 1000), b": hb\n\n");
        assert_eq!(
            String::from_utf8(heartbeat_bytes(Heartbeat::Event, h, 1000)).unwrap(),
            "event: heartbeat\ndata: {\"heartbeat_ms\":15000,\"retry_ms\":1000}\n\n"
        );
    }
}
