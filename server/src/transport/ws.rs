//! `GET /v1/ws` — WebSocket: subscribe/unsubscribe with positions, writes with acks,
//! broadcast, presence, ping. One task per connection reads frames, drains the outbound queue
//! with write batching (everything queued is fed, then one flush), pings every heartbeat and
//! closes idle connections.
//!
//! ```text
//! → {"type":"subscribe","ref":"1","rooms":["a"],"since":"a=4"}
//! ← {"type":"ack","ref":"1","ok":true,"cursor":"a=4"}
//! ← {"v":1,"type":"item.put","room":"a","seq":5,…}
//! ```

use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::stream::SplitSink;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tidewire_protocol::{ClientFrame, Cursor, ErrorCode, ProtocolError, RawAppEvent, ServerFrame};

use super::queue::Outbound;
use super::{Ready, Session};
use crate::identity::{authorize, Access, ClientIdentity};
use crate::store::{WriteOp, WriteRequest};
use crate::{metrics, AppState, Error, Result};

/// Query parameters of `/v1/ws`.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    client_id: Option<String>,
}

/// Seconds a WebSocket opened without credentials has to send its `auth` frame.
const AUTH_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket handler. With auth on, credentials come with the upgrade (`?ticket=`,
/// Bearer, cookie) or, when there are none, as the first frame `{"type":"auth","token":…}`.
pub async fn handler(
    State(state): State<AppState>,
    identity: std::result::Result<ClientIdentity, Error>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    query: std::result::Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let ws = ws.map_err(|e| {
        Error::BadRequest(format!(
            "{}: connect with a WebSocket client",
            e.body_text()
        ))
    })?;
    let max = state.config.max_body_bytes;
    let ws = ws
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(max)
        .max_frame_size(max);
    let identity = match identity {
        Ok(identity) => identity,
        Err(Error::Unauthorized(_)) if !crate::identity::has_credentials(&headers, uri.query()) => {
            // No credentials on the upgrade: the first frame must be `auth`.
            if state.shutdown.is_draining() {
                return Err(Error::ShuttingDown);
            }
            return Ok(ws.on_upgrade(move |socket| async move {
                if let Some((socket, session)) = first_frame_auth(socket, state, q.client_id).await
                {
                    run(socket, session).await;
                }
            }));
        }
        Err(err) => return Err(err),
    };
    let session = Session::open(state.clone(), identity, "ws", q.client_id)?;
    Ok(ws.on_upgrade(move |socket| async move {
        run(socket, session).await;
    }))
}

async fn close_socket(socket: &mut WebSocket, err: &Error) {
    let frame = Message::Close(Some(CloseFrame {
        code: err.code().number(),
        reason: err.code().as_str().into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
}

/// Waits for the `auth` frame of a connection opened without credentials, acks it and opens
/// the session; closes with the error's code (4513 `unauthorized`, 4007 `token_expired`,
/// 4006 `too_many_connections` …) otherwise.
async fn first_frame_auth(
    mut socket: WebSocket,
    state: AppState,
    client_id: Option<String>,
) -> Option<(WebSocket, Session)> {
    let auth = state.auth.clone()?;
    let text = match tokio::time::timeout(AUTH_FRAME_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(Some(Ok(_))) | Err(_) => {
            let err = Error::Unauthorized("the first frame must be `auth`".into());
            close_socket(&mut socket, &err).await;
            return None;
        }
        Ok(_) => return None,
    };
    let (r#ref, token) = match ClientFrame::decode(text.as_str()) {
        Ok(ClientFrame::Auth { r#ref, token }) => (r#ref, token),
        _ => {
            let err = Error::Unauthorized("the first frame must be `auth`".into());
            close_socket(&mut socket, &err).await;
            return None;
        }
    };
    let opened = auth
        .verify(&token)
        .map(ClientIdentity::authenticated)
        .and_then(|identity| Session::open(state.clone(), identity, "ws", client_id));
    match opened {
        Ok(session) => {
            let ack: ServerFrame = ServerFrame::Ack {
                r#ref,
                result: Ok(None),
                cursor: None,
            };
            if socket
                .send(Message::Text(ack.encode().into()))
                .await
                .is_err()
            {
                return None;
            }
            Some((socket, session))
        }
        Err(err) => {
            let frame: ServerFrame = ServerFrame::Ack {
                r#ref,
                result: Err(err.ack_error()),
                cursor: None,
            };
            let _ = socket.send(Message::Text(frame.encode().into())).await;
            close_socket(&mut socket, &err).await;
            None
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;

struct Conn {
    session: Session,
    sink: Sink,
    fed: u64,
    bytes: u64,
    /// Reused for what `admit` lets through.
    ready: Vec<Ready>,
}

impl Conn {
    async fn feed(&mut self, text: Utf8Bytes) -> bool {
        self.bytes += text.len() as u64;
        self.fed += 1;
        self.sink.feed(Message::Text(text)).await.is_ok()
    }

    async fn feed_frame(&mut self, frame: ServerFrame) -> bool {
        self.feed(frame.encode().into()).await
    }

    /// Writes everything fed; false when the client is gone, does not read within the idle
    /// timeout, or fell behind (its queue overflowed) meanwhile.
    async fn flush(&mut self) -> bool {
        metrics::sent("ws", self.fed, self.bytes);
        self.fed = 0;
        self.bytes = 0;
        // Usually the socket takes everything at once: no timer and no wait then.
        if let Some(done) = self.sink.flush().now_or_never() {
            return done.is_ok();
        }
        let patience = self.session.state.config.idle_timeout();
        tokio::select! {
            r = tokio::time::timeout(patience, self.sink.flush()) => matches!(r, Ok(Ok(()))),
            _ = self.session.inbox.wait_slow() => false,
        }
    }

    async fn feed_items(&mut self, items: Vec<Outbound>) -> Result<bool> {
        let mut ready = std::mem::take(&mut self.ready);
        let mut ok = true;
        for item in items {
            self.session.admit_into(item, &mut ready).await?;
            for r in ready.drain(..) {
                ok = ok && self.feed(r.payload).await;
            }
            if !ok {
                break;
            }
        }
        self.ready = ready;
        Ok(ok)
    }

    async fn close(&mut self, code: ErrorCode, reason: &str) {
        self.close_within(code, reason, Duration::from_secs(1))
            .await;
    }

    async fn close_within(&mut self, code: ErrorCode, reason: &str, patience: Duration) {
        let frame = Message::Close(Some(CloseFrame {
            code: code.number(),
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(patience, self.sink.send(frame)).await;
    }

    /// Closes a connection that stopped: a slow consumer with 4002. Its close frame queues
    /// behind what the client has not read yet, so it gets up to the idle timeout to arrive.
    async fn end(&mut self) {
        if self.session.inbox.is_slow() {
            let patience = self.session.state.config.idle_timeout();
            self.close_within(ErrorCode::SlowConsumer, "slow_consumer", patience)
                .await;
        }
    }
}

async fn run(socket: WebSocket, session: Session) {
    let (sink, mut stream) = socket.split();
    let state = session.state.clone();
    let mut conn = Conn {
        session,
        sink,
        fed: 0,
        bytes: 0,
        ready: Vec::new(),
    };
    let draining = state.shutdown.draining();
    tokio::pin!(draining);
    let mut ping = tokio::time::interval(state.config.heartbeat());
    ping.tick().await;
    let idle = state.config.idle_timeout();
    let mut last_seen = Instant::now();
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let expiry = tokio::time::sleep_until(conn.session.expires_at().unwrap_or_else(far));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            biased;
            _ = &mut expiry => {
                if conn.session.identity.grant.as_ref().is_some_and(|g| g.expired()) {
                    conn.close(ErrorCode::TokenExpired, "token_expired").await;
                    return;
                }
                // A fresh token arrived meanwhile.
                expiry.as_mut().reset(conn.session.expires_at().unwrap_or_else(far));
            }
            _ = &mut draining => {
                let env = state.shutdown.reconnect_envelope();
                let _ = conn.feed(env.into()).await;
                let _ = conn.flush().await;
                conn.close(ErrorCode::ShuttingDown, "shutting_down").await;
                return;
            }
            msg = stream.next() => {
                last_seen = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let result = handle_frame(&mut conn, text.as_str()).await;
                        expiry.as_mut().reset(conn.session.expires_at().unwrap_or_else(far));
                        match result {
                            Ok(true) => {}
                            Ok(false) => return,
                            Err(err) => {
                                tracing::warn!(%err, "websocket frame failed");
                                conn.close(err.code(), "internal").await;
                                return;
                            }
                        }
                        if !conn.flush().await { return conn.end().await; }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let frame = ServerFrame::Error {
                            r#ref: None,
                            code: ErrorCode::BadRequest,
                            message: "binary frames are not supported; send JSON text".into(),
                        };
                        if !conn.feed_frame(frame).await || !conn.flush().await { return; }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => conn.session.touch().await,
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(err)) => {
                        let too_big = std::error::Error::source(&err)
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| err.to_string());
                        if too_big.contains("too long") || too_big.contains("Space limit")
                            || too_big.contains("capacity") || too_big.contains("Capacity") {
                            let _ = conn.sink.send(Message::Close(Some(CloseFrame {
                                code: 1009,
                                reason: "message too big".into(),
                            }))).await;
                        }
                        return;
                    }
                }
            }
            item = conn.session.inbox.recv() => {
                let Some(item) = item else {
                    conn.end().await;
                    return;
                };
                let mut batch = vec![item];
                while batch.len() < 512 {
                    match conn.session.inbox.try_recv() {
                        Some(more) => batch.push(more),
                        None => break,
                    }
                }
                let slow = conn.session.inbox.slow_signal();
                let done = tokio::select! {
                    r = async { Ok::<bool, Error>(conn.feed_items(batch).await? && conn.flush().await) } => r.unwrap_or(false),
                    _ = slow.wait() => false,
                };
                if !done { return conn.end().await; }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= idle {
                    conn.close(ErrorCode::IdleTimeout, "idle_timeout").await;
                    return;
                }
                if conn.sink.send(Message::Ping(Default::default())).await.is_err() { return; }
            }
        }
    }
}

fn reference_of(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text)
        .ok()?
        .get("ref")?
        .as_str()
        .map(str::to_owned)
}

/// Handles one client frame; `Ok(false)` when the socket is gone.
async fn handle_frame(conn: &mut Conn, text: &str) -> Result<bool> {
    conn.session.touch().await;
    let state = conn.session.state.clone();
    let frame = match ClientFrame::decode_limited(
        text,
        state.config.max_body_bytes,
        state.config.max_rooms_per_connection,
    ) {
        Ok(f) => f,
        Err(err) => {
            let frame = ServerFrame::Error {
                r#ref: reference_of(text),
                code: err.code(),
                message: err.to_string(),
            };
            return Ok(conn.feed_frame(frame).await);
        }
    };
    let r#ref = frame.reference().map(str::to_owned);
    let ack = |result: std::result::Result<Option<tidewire_protocol::Envelope>, Error>| {
        ServerFrame::Ack {
            r#ref: r#ref.clone(),
            result: result.map_err(|e| e.ack_error()),
            cursor: None,
        }
    };
    match frame {
        ClientFrame::Subscribe {
            rooms,
            since,
            presence,
            ..
        } => {
            let since: Cursor = since.as_deref().unwrap_or("").parse()?;
            let first = match conn.session.follow(&rooms, &since, presence).await {
                Ok(first) => first,
                Err(err) => return Ok(conn.feed_frame(ack(Err(err))).await),
            };
            let mut started = Cursor::new();
            for room in &rooms {
                if let Some(seq) = conn.session.cursor.get(room) {
                    started.set(room, seq);
                }
            }
            let frame = ServerFrame::Ack {
                r#ref: r#ref.clone(),
                result: Ok(None),
                cursor: Some(started.to_string()),
            };
            if !conn.feed_frame(frame).await || !conn.feed_items(first).await? {
                return Ok(false);
            }
            while let Some(page) = conn.session.replay_next().await? {
                if !conn.feed_items(page).await? || !conn.flush().await {
                    return Ok(false);
                }
            }
            if presence {
                let states = conn.session.presence_states(&rooms).await?;
                return conn.feed_items(states).await;
            }
            Ok(true)
        }
        ClientFrame::Unsubscribe { rooms, .. } => {
            conn.session.unfollow(&rooms).await;
            if r#ref.is_some() {
                return Ok(conn.feed_frame(ack(Ok(None))).await);
            }
            Ok(true)
        }
        ClientFrame::Put {
            room,
            id,
            value,
            key,
            if_match,
            ..
        } => {
            let size = value.to_string().len();
            let result = if size > state.config.max_item_bytes {
                Err(Error::PayloadTooLarge {
                    size,
                    limit: state.config.max_item_bytes,
                })
            } else {
                write(conn, room, WriteOp::Put { id, value }, key, if_match).await
            };
            Ok(conn.feed_frame(ack(result)).await)
        }
        ClientFrame::Delete {
            room,
            id,
            key,
            if_match,
            ..
        } => {
            let result = write(conn, room, WriteOp::Delete { id }, key, if_match).await;
            Ok(conn.feed_frame(ack(result)).await)
        }
        ClientFrame::Publish {
            room, event, key, ..
        } => {
            let result = write(
                conn,
                room,
                WriteOp::Publish(RawAppEvent {
                    event_type: event.event_type,
                    data: event.data,
                }),
                key,
                None,
            )
            .await;
            Ok(conn.feed_frame(ack(result)).await)
        }
        ClientFrame::Broadcast {
            room, event, data, ..
        } => {
            let result = async {
                authorize(&conn.session.identity, &room, Access::Write)?;
                if event.is_empty() || event.len() > 64 {
                    return Err(Error::BadRequest(
                        "broadcast `event` must be 1 to 64 characters".into(),
                    ));
                }
                state
                    .service
                    .broadcast(
                        &room,
                        &conn.session.id,
                        &conn.session.client_id,
                        event,
                        data,
                    )
                    .await
            }
            .await;
            if r#ref.is_some() || result.is_err() {
                return Ok(conn.feed_frame(ack(result.map(|()| None))).await);
            }
            Ok(true)
        }
        ClientFrame::Presence { room, meta, .. } => {
            let result = conn.session.join_presence(&room, meta).await;
            if r#ref.is_some() || result.is_err() {
                return Ok(conn.feed_frame(ack(result.map(|()| None))).await);
            }
            Ok(true)
        }
        ClientFrame::Ping { .. } => Ok(conn.feed_frame(ServerFrame::Pong { r#ref }).await),
        ClientFrame::Auth { token, .. } => {
            let result = match state.auth.as_ref() {
                // Open access: the frame is accepted and changes nothing.
                None => Ok(None),
                Some(auth) => match auth.verify(&token) {
                    Ok(grant) => conn
                        .session
                        .reauthenticate(ClientIdentity::authenticated(grant))
                        .await
                        .map(|()| None),
                    Err(err) => Err(err),
                },
            };
            Ok(conn.feed_frame(ack(result)).await)
        }
        _ => {
            let err = ProtocolError::UnknownFrameType("unsupported".into());
            Ok(conn
                .feed_frame(ServerFrame::Error {
                    r#ref,
                    code: err.code(),
                    message: err.to_string(),
                })
                .await)
        }
    }
}

async fn write(
    conn: &Conn,
    room: String,
    op: WriteOp,
    key: Option<String>,
    if_match: Option<u64>,
) -> Result<Option<tidewire_protocol::Envelope>> {
    let state = &conn.session.state;
    authorize(&conn.session.identity, &room, Access::Write)?;
    state.limits.check_write(&conn.session.identity.key)?;
    let written = state
        .service
        .write(WriteRequest {
            room,
            op,
            key,
            if_match,
        })
        .await?;
    Ok(Some(written.envelope))
}
