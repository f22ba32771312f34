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
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidewire_protocol::{Cursor, ErrorCode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::queue::Inbox;
use super::{parse_rooms, Ready, Session};
use crate::identity::ClientIdentity;
use crate::{metrics, AppState, Error, Result};

/// Most bytes written as one chunk.
const MAX_CHUNK: usize = 64 * 1024;

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
    State(state): State<AppState>,
    identity: ClientIdentity,
    headers: HeaderMap,
    query: std::result::Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let rooms = parse_rooms(q.rooms.as_deref(), state.config.max_rooms_per_connection)?;
    let beat = Heartbeat::parse(q.heartbeat.as_deref())?;
    let since = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.since.as_deref())
    {
        Some(s) => s.trim().parse::<Cursor>()?,
        None => Cursor::new(),
    };
    let presence = flag(q.presence.as_deref());
    let mut session = Session::open(state.clone(), identity, "sse", q.client_id)?;
    let first = session.follow(&rooms, &since, presence).await?;

    let retry_ms = state.config.sse_retry_ms;
    let mut head = format!("retry: {retry_ms}\n").into_bytes();
    if beat == Heartbeat::Event {
        head.extend_from_slice(&heartbeat_bytes(beat, state.config.heartbeat(), retry_ms));
    }
    head.extend_from_slice(format!("id: {}\n\n", session.cursor).as_bytes());
    for item in first {
        for ready in session.admit(item).await? {
            push_ready(&mut head, &ready);
        }
    }

    let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, Infallible>>(2);
    tokio::spawn(async move {
        if let Err(err) = run(session, tx, head, rooms, presence, beat).await {
            tracing::debug!(%err, "sse stream ended with an error");
        }
    });
    let mut res = Body::from_stream(ReceiverStream::new(rx)).into_response();
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

type Tx = mpsc::Sender<std::result::Result<Bytes, Infallible>>;

/// Sends a chunk; false when the client is gone, does not read for too long, or fell so far
/// behind that its queue overflowed meanwhile.
async fn send(tx: &Tx, inbox: &Inbox, buf: Vec<u8>, patience: Duration) -> bool {
    let n = buf.len() as u64;
    // Usually the body has room: no timer and no wait then.
    let buf = match tx.try_send(Ok(Bytes::from(buf))) {
        Ok(()) => {
            metrics::sent("sse", 0, n);
            return !inbox.is_slow();
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(buf)) => buf,
    };
    tokio::select! {
        sent = tokio::time::timeout(patience, tx.send(buf)) => match sent {
            Ok(Ok(())) => {
                metrics::sent("sse", 0, n);
                true
            }
            _ => false,
        },
        _ = inbox.wait_slow() => false,
    }
}

/// Ends a stream: a slow consumer gets an `error` event when there is room for it within
/// 500 ms (the same grace as the `reconnect` and `token_expired` endings).
async fn finish(session: &Session, tx: &Tx) {
    if session.inbox.is_slow() {
        metrics::slow_consumer("sse");
        let mut buf = Vec::new();
        let msg = Session::error_message(
            ErrorCode::SlowConsumer,
            "the connection fell behind; resume from the last id",
        );
        push_ready(
            &mut buf,
            &Ready {
                payload: msg,
                id: None,
            },
        );
        let _ =
            tokio::time::timeout(Duration::from_millis(500), tx.send(Ok(Bytes::from(buf)))).await;
    }
}

async fn run(
    mut session: Session,
    tx: Tx,
    head: Vec<u8>,
    rooms: Vec<String>,
    presence: bool,
    beat: Heartbeat,
) -> Result<()> {
    let state = session.state.clone();
    let patience = state.config.idle_timeout();
    let draining = state.shutdown.draining();
    tokio::pin!(draining);
    if !send(&tx, &session.inbox, head, patience).await {
        return Ok(());
    }
    // Replay from the log; live events queue meanwhile and are deduplicated after.
    while let Some(page) = session.replay_next().await? {
        let mut buf = Vec::new();
        let mut events = 0;
        for item in page {
            for ready in session.admit(item).await? {
                push_ready(&mut buf, &ready);
                events += 1;
            }
        }
        metrics::sent("sse", events, 0);
        if !send(&tx, &session.inbox, buf, patience).await {
            finish(&session, &tx).await;
            return Ok(());
        }
    }
    if presence {
        let mut buf = Vec::new();
        for item in session.presence_states(&rooms).await? {
            for ready in session.admit(item).await? {
                push_ready(&mut buf, &ready);
            }
        }
        if !send(&tx, &session.inbox, buf, patience).await {
            finish(&session, &tx).await;
            return Ok(());
        }
    }
    let hb = heartbeat_bytes(beat, state.config.heartbeat(), state.config.sse_retry_ms);
    let mut heartbeat = tokio::time::interval(state.config.heartbeat());
    heartbeat.tick().await;
    let expires = session.expires_at();
    let expiry = async move {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let closed = tx.closed();
    tokio::pin!(closed);
    let mut ready = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut expiry => {
                // The client reconnects with a fresh ticket and its last id: nothing is lost.
                let mut buf = Vec::new();
                let msg = Session::error_message(
                    ErrorCode::TokenExpired,
                    "the token expired: reconnect with a fresh ticket and the last id",
                );
                push_ready(&mut buf, &Ready { payload: msg, id: None });
                let _ = send(&tx, &session.inbox, buf, Duration::from_millis(500)).await;
                return Ok(());
            }
            _ = &mut draining => {
                let mut buf = Vec::new();
                push_ready(&mut buf, &Ready { payload: state.shutdown.reconnect_envelope().into(), id: None });
                let _ = send(&tx, &session.inbox, buf, Duration::from_millis(500)).await;
                return Ok(());
            }
            item = session.inbox.recv() => {
                let Some(item) = item else {
                    finish(&session, &tx).await;
                    return Ok(());
                };
                let mut buf = Vec::new();
                let mut events = 0;
                session.admit_into(item, &mut ready).await?;
                loop {
                    for r in ready.drain(..) {
                        push_ready(&mut buf, &r);
                        events += 1;
                    }
                    if buf.len() >= MAX_CHUNK {
                        break;
                    }
                    let Some(more) = session.inbox.try_recv() else { break };
                    session.admit_into(more, &mut ready).await?;
                }
                if buf.is_empty() {
                    continue;
                }
                metrics::sent("sse", events, 0);
                if !send(&tx, &session.inbox, buf, patience).await {
                    finish(&session, &tx).await;
                    return Ok(());
                }
                heartbeat.reset();
            }
            _ = &mut closed => return Ok(()),
            _ = heartbeat.tick() => {
                if !send(&tx, &session.inbox, hb.clone(), patience).await {
                    return Ok(());
                }
            }
        }
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
