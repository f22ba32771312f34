//! `GET /v1/ws` — WebSocket: subscribe/unsubscribe with positions, writes with acks,
//! broadcast, presence, ping. One task per connection reads frames, drains the outbound queue
//! with write batching (everything queued is fed, then one flush), pings every heartbeat and
//! closes idle connections. A delivery costs one wake-up by the queue: the socket's read side,
//! the timer and the shutdown signal are polled only when one of them woke the task.
//!
//! ```text
//! → {"type":"subscribe","ref":"1","rooms":["a"],"since":"a=4"}
//! ← {"type":"ack","ref":"1","ok":true,"cursor":"a=4"}
//! ← {"v":1,"type":"item.put","room":"a","seq":5,…}
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::task::AtomicWaker;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tidewire_protocol::{ClientFrame, ErrorCode, ServerFrame};
use tokio::time::Sleep;

use crate::identity::ClientIdentity;
use crate::outbound::{Outbound, TransportKind};
use crate::session::commands::{self, Reply};
use crate::session::{Ready, Session, Sessions};
use crate::{metrics, Error, Result};

/// Query parameters of `/v1/ws`.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    client_id: Option<String>,
}

/// Bytes of the per-connection read buffer, and the most read per `read` call. Clients send
/// small frames (subscribe, acks, pings, writes); a larger frame grows the buffer to its size
/// and takes one read per KiB. Every connection holds it, idle or not, so it is much of what
/// an idle connection costs.
const READ_BUFFER: usize = 1024;

/// Seconds a WebSocket opened without credentials has to send its `auth` frame.
const AUTH_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket handler. With auth on, credentials come with the upgrade (`?ticket=`,
/// Bearer, cookie) or, when there are none, as the first frame `{"type":"auth","token":…}`.
pub async fn handler(
    State(state): State<Arc<Sessions>>,
    identity: std::result::Result<ClientIdentity, Error>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    query: std::result::Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    check_origin(&headers, &state.settings().allowed_origins)?;
    let ws = ws.map_err(|e| {
        Error::BadRequest(format!(
            "{}: connect with a WebSocket client",
            e.body_text()
        ))
    })?;
    let max = state.settings().max_frame_bytes;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(4096)
        .max_message_size(max)
        .max_frame_size(max);
    let identity = match identity {
        Ok(identity) => identity,
        Err(Error::Unauthorized(_)) if !crate::identity::has_credentials(&headers, uri.query()) => {
            // No credentials on the upgrade: the first frame must be `auth`.
            if state.shutdown().is_draining() {
                return Err(Error::ShuttingDown);
            }
            return Ok(ws.on_upgrade(move |socket| {
                let auth = Box::pin(first_frame_auth(socket, state, q.client_id));
                async move {
                    if let Some(conn) = auth.await {
                        run(conn).await;
                    }
                }
            }));
        }
        Err(err) => return Err(err),
    };
    // Boxed, and the socket with it once upgraded: the connection's task then holds pointers.
    let session = Box::new(state.open(identity, TransportKind::Ws, q.client_id).await?);
    Ok(ws.on_upgrade(move |socket| run(Conn::boxed(socket, session))))
}

/// With `--allowed-origin`, a WebSocket whose `Origin` is not listed is refused: a browser
/// always sends `Origin` on an upgrade, so another site's page cannot open one. Clients that
/// are not browsers send none and are not affected.
fn check_origin(headers: &axum::http::HeaderMap, allowed: &[String]) -> Result<()> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        return Ok(());
    }
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "WebSocket from origin `{}` is not allowed (--allowed-origin)",
        origin.chars().take(100).collect::<String>()
    )))
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
    state: Arc<Sessions>,
    client_id: Option<String>,
) -> Option<Box<Conn>> {
    state.auth()?;
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
    let opened = state
        .open_with_token(&token, TransportKind::Ws, client_id)
        .await;
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
            Some(Conn::boxed(socket, Box::new(session)))
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

/// Items fed per flush at most, so that a connection under a steady stream still looks at
/// its socket, timer and shutdown signal.
const BATCH: usize = 512;

/// One connection: its session and its socket. Boxed once, so that the task's future stays a
/// few pointers plus what it awaits.
struct Conn {
    session: Box<Session>,
    socket: WebSocket,
    fed: u64,
    bytes: u64,
    /// Reused for what `admit` lets through.
    ready: Vec<Ready>,
}

impl Conn {
    fn boxed(socket: WebSocket, session: Box<Session>) -> Box<Conn> {
        Box::new(Conn {
            session,
            socket,
            fed: 0,
            bytes: 0,
            ready: Vec::new(),
        })
    }

    async fn feed(&mut self, text: Utf8Bytes) -> bool {
        self.bytes += text.len() as u64;
        self.fed += 1;
        // `SinkExt::feed` by hand: its future would hold a second copy of the message.
        let socket = &mut self.socket;
        if std::future::poll_fn(|cx| socket.poll_ready_unpin(cx))
            .await
            .is_err()
        {
            return false;
        }
        socket.start_send_unpin(Message::Text(text)).is_ok()
    }

    async fn feed_frame(&mut self, frame: ServerFrame) -> bool {
        self.feed(frame.encode().into()).await
    }

    /// Writes everything fed; false when the client is gone, does not read within the idle
    /// timeout, or fell behind (its queue overflowed) meanwhile.
    async fn flush(&mut self) -> bool {
        metrics::sent(TransportKind::Ws.as_str(), self.fed, self.bytes);
        crate::stats::sent(TransportKind::Ws.as_str(), self.fed);
        self.fed = 0;
        self.bytes = 0;
        // Usually the socket takes everything at once: no timer and no wait then.
        if let Some(done) = self.socket.flush().now_or_never() {
            return done.is_ok();
        }
        // Boxed: the rare wait should not take space in every waiting connection.
        Box::pin(self.flush_within_idle_timeout()).await
    }

    async fn flush_within_idle_timeout(&mut self) -> bool {
        let patience = self.session.sessions.settings().idle_timeout;
        tokio::select! {
            r = tokio::time::timeout(patience, self.socket.flush()) => matches!(r, Ok(Ok(()))),
            _ = self.session.inbox.wait_slow() => false,
        }
    }

    /// Feeds what the session made ready.
    async fn feed_ready(&mut self, page: Vec<Ready>) -> bool {
        for r in page {
            if !self.feed(r.payload).await {
                return false;
            }
        }
        true
    }

    /// Feeds `first` and whatever else is queued now (up to [`BATCH`]), then flushes once.
    async fn deliver(&mut self, first: Outbound) -> Result<bool> {
        let mut ready = std::mem::take(&mut self.ready);
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(item) = next {
            if let Some(gap) = self.session.admit_now(item, &mut ready) {
                // Rare (the events before it come from the store): boxed, like every rare
                // wait here, so that the waiting connection does not carry its space.
                Box::pin(self.session.admit_into(gap, &mut ready)).await?;
            }
            for r in ready.drain(..) {
                if !self.feed(r.payload).await {
                    return Ok(false);
                }
            }
            taken += 1;
            next = if taken < BATCH {
                self.session.inbox.try_recv()
            } else {
                None
            };
        }
        self.ready = ready;
        Ok(self.flush().await)
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
        let _ = tokio::time::timeout(patience, self.socket.send(frame)).await;
    }

    /// Closes a connection that stopped: a slow consumer with 4002. Its close frame queues
    /// behind what the client has not read yet, so it gets up to the idle timeout to arrive.
    async fn end(&mut self) {
        if self.session.inbox.is_slow() {
            let patience = self.session.sessions.settings().idle_timeout;
            self.close_within(ErrorCode::SlowConsumer, "slow_consumer", patience)
                .await;
        }
    }
}

/// The waker the socket, the timer and the shutdown signal get: it wakes the connection's
/// task and records that one of them did. The queue wakes the task directly, so a delivery
/// polls neither the socket (a read attempt) nor the timer nor the shutdown signal.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What the connection's task woke for.
enum Woke {
    /// The next queued item; `None` once the connection is slow.
    Item(Option<Outbound>),
    /// The next frame from the client; `None` once the socket is closed.
    Frame(Option<std::result::Result<Message, axum::Error>>),
    /// The next ping or the token's expiry is due.
    Timer,
    /// The server is shutting down.
    Draining,
}

/// The connection's clock: one timer serves the ping (which also checks the idle timeout) and
/// the token's expiry.
struct Clock {
    heartbeat: Duration,
    idle: Duration,
    last_seen: Instant,
    next_ping: tokio::time::Instant,
    expires: Option<tokio::time::Instant>,
}

impl Clock {
    /// The earlier of the next ping and the token's expiry.
    fn due(&self) -> tokio::time::Instant {
        self.expires
            .map_or(self.next_ping, |at| at.min(self.next_ping))
    }
}

async fn run(mut conn: Box<Conn>) {
    let state = conn.session.sessions.clone();
    let slow = conn.session.inbox.slow_signal();
    let gate = Arc::new(Gate {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let gate_waker = Waker::from(gate.clone());
    let draining = state.shutdown().draining();
    tokio::pin!(draining);
    let heartbeat = state.settings().heartbeat;
    let mut clock = Clock {
        heartbeat,
        idle: state.settings().idle_timeout,
        last_seen: Instant::now(),
        next_ping: tokio::time::Instant::now() + heartbeat,
        expires: conn.session.expires_at(),
    };
    let timer = tokio::time::sleep_until(clock.due());
    tokio::pin!(timer);
    loop {
        let woke = std::future::poll_fn(|cx| {
            gate.task.register(cx.waker());
            if gate.woken.swap(false, Ordering::AcqRel) {
                let mut gated = Context::from_waker(&gate_waker);
                let woke = if timer.as_mut().poll(&mut gated).is_ready() {
                    Some(Woke::Timer)
                } else if draining.as_mut().poll(&mut gated).is_ready() {
                    Some(Woke::Draining)
                } else if let Poll::Ready(msg) = conn.socket.poll_next_unpin(&mut gated) {
                    Some(Woke::Frame(msg))
                } else {
                    None
                };
                if let Some(woke) = woke {
                    // What comes after it was not polled: look again next time.
                    gate.woken.store(true, Ordering::Release);
                    return Poll::Ready(woke);
                }
            }
            conn.session.inbox.poll_recv(cx).map(Woke::Item)
        })
        .await;
        let go_on = match woke {
            Woke::Item(Some(item)) => {
                let done = tokio::select! {
                    biased;
                    r = conn.deliver(item) => r.unwrap_or(false),
                    _ = slow.wait() => false,
                };
                if !done {
                    return Box::pin(conn.end()).await;
                }
                true
            }
            Woke::Item(None) => return Box::pin(conn.end()).await,
            // Rare and large: boxed, so that the waiting connection does not carry its space.
            Woke::Timer => Box::pin(conn.on_timer(&mut clock, timer.as_mut())).await,
            Woke::Draining => {
                Box::pin(conn.on_draining(&state)).await;
                return;
            }
            Woke::Frame(msg) => {
                clock.last_seen = Instant::now();
                let go_on = Box::pin(conn.on_frame(msg)).await;
                clock.expires = conn.session.expires_at();
                timer.as_mut().reset(clock.due());
                go_on
            }
        };
        if !go_on {
            return;
        }
    }
}

impl Conn {
    /// The ping is due (and the idle check with it), or the token expired.
    async fn on_timer(&mut self, clock: &mut Clock, timer: Pin<&mut Sleep>) -> bool {
        let now = tokio::time::Instant::now();
        if clock.expires.is_some_and(|at| at <= now) {
            if self
                .session
                .identity
                .grant
                .as_ref()
                .is_some_and(|g| g.expired())
            {
                self.close(ErrorCode::TokenExpired, "token_expired").await;
                return false;
            }
            // A fresh token arrived meanwhile.
            clock.expires = self.session.expires_at();
        }
        if clock.next_ping <= now {
            if clock.last_seen.elapsed() >= clock.idle {
                self.close(ErrorCode::IdleTimeout, "idle_timeout").await;
                return false;
            }
            if self
                .socket
                .send(Message::Ping(Default::default()))
                .await
                .is_err()
            {
                return false;
            }
            clock.next_ping += clock.heartbeat;
            if clock.next_ping <= now {
                clock.next_ping = now + clock.heartbeat;
            }
        }
        timer.reset(clock.due());
        true
    }

    /// The server is shutting down: the client is told when to reconnect.
    async fn on_draining(&mut self, state: &Sessions) {
        let env = state.shutdown().reconnect_envelope();
        let _ = self.feed(env.into()).await;
        let _ = self.flush().await;
        self.close(ErrorCode::ShuttingDown, "shutting_down").await;
    }

    /// A frame from the client; false when the connection ends (closed as a slow consumer
    /// when its queue overflowed while the answer was being written).
    async fn on_frame(&mut self, msg: Option<std::result::Result<Message, axum::Error>>) -> bool {
        match msg {
            Some(Ok(Message::Text(text))) => {
                match self.on_text(text.as_str()).await {
                    Ok(true) => {}
                    Ok(false) => return false,
                    Err(err) => {
                        tracing::warn!(%err, "websocket frame failed");
                        self.close(err.code(), "internal").await;
                        return false;
                    }
                }
                if !self.flush().await {
                    self.end().await;
                    return false;
                }
                true
            }
            Some(Ok(Message::Binary(_))) => {
                let frame = ServerFrame::Error {
                    r#ref: None,
                    code: ErrorCode::BadRequest,
                    message: "binary frames are not supported; send JSON text".into(),
                };
                self.feed_frame(frame).await && self.flush().await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.session.touch().await;
                true
            }
            Some(Ok(Message::Close(_))) | None => false,
            Some(Err(err)) => {
                let too_big = std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| err.to_string());
                if too_big.contains("too long")
                    || too_big.contains("Space limit")
                    || too_big.contains("capacity")
                    || too_big.contains("Capacity")
                {
                    let _ = self
                        .socket
                        .send(Message::Close(Some(CloseFrame {
                            code: 1009,
                            reason: "message too big".into(),
                        })))
                        .await;
                }
                false
            }
        }
    }

    /// Hands a text frame to the session's command handler and writes its reply: the frames,
    /// then a subscription's catch-up page by page. `Ok(false)` when the socket is gone.
    async fn on_text(&mut self, text: &str) -> Result<bool> {
        let Reply { frames, catch_up } = commands::handle(&mut self.session, text).await?;
        for frame in frames {
            if !self.feed_frame(frame).await {
                return Ok(false);
            }
        }
        if let Some(mut catch_up) = catch_up {
            while let Some(page) = catch_up.next(&mut self.session).await? {
                if !self.feed_ready(page).await || (!catch_up.is_done() && !self.flush().await) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
