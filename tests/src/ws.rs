//! A WebSocket test client: sends [`ClientFrame`]s, receives [`ServerFrame`]s.
//!
//! Replies are matched by `ref`: while a helper waits for the reply to its frame, envelopes
//! and other frames that arrive are queued, and [`WsClient::recv`] hands them out later in
//! arrival order, so nothing is lost to a helper.
//!
//! ```no_run
//! # async fn demo() -> tidewire_tests::Result<()> {
//! use std::time::Duration;
//! use serde_json::json;
//! use tidewire_tests::WsClient;
//! let mut ws = WsClient::connect("ws://127.0.0.1:8080", Some("ada")).await?;
//! let cursor = ws.subscribe(&["a"], None, false).await?;
//! let ack = ws.put("a", "x", json!({"n": 1}), Some("k-1"), None).await?;
//! let event = ws.next_envelope(Duration::from_secs(5)).await?;
//! ws.ping().await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tidewire_protocol::{AckError, ClientFrame, Envelope, RawAppEvent, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Error, Result};

/// How long the helpers wait for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open WebSocket to `/v1/ws`.
#[derive(Debug)]
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    queued: VecDeque<ServerFrame>,
    next_ref: u64,
    pings: usize,
}

impl WsClient {
    /// Connects to `{base}/v1/ws` (`base` is `ws://host:port`, or `http://…` which is
    /// rewritten), with `?client_id=` when given.
    pub async fn connect(base: &str, client_id: Option<&str>) -> Result<WsClient> {
        let base = base.trim_end_matches('/').replacen("http://", "ws://", 1);
        let mut url = format!("{base}/v1/ws");
        if let Some(id) = client_id {
            url.push_str(&format!("?client_id={id}"));
        }
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .map_err(|_| Error::Timeout {
            after: Duration::from_secs(10),
            what: "the WebSocket handshake".into(),
        })??;
        Ok(WsClient {
            ws,
            queued: VecDeque::new(),
            next_ref: 0,
            pings: 0,
        })
    }

    /// Connects to `{base}/v1/ws?{query}`, e.g. `ticket=…` when auth is on.
    pub async fn connect_query(base: &str, query: &str) -> Result<WsClient> {
        let base = base.trim_end_matches('/').replacen("http://", "ws://", 1);
        let url = format!("{base}/v1/ws?{query}");
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .map_err(|_| Error::Timeout {
            after: Duration::from_secs(10),
            what: "the WebSocket handshake".into(),
        })??;
        Ok(WsClient {
            ws,
            queued: VecDeque::new(),
            next_ref: 0,
            pings: 0,
        })
    }

    /// Connects over a TCP stream the caller opened (e.g. with a small receive buffer).
    pub async fn connect_over(
        base: &str,
        client_id: Option<&str>,
        stream: TcpStream,
    ) -> Result<WsClient> {
        let base = base.trim_end_matches('/').replacen("http://", "ws://", 1);
        let mut url = format!("{base}/v1/ws");
        if let Some(id) = client_id {
            url.push_str(&format!("?client_id={id}"));
        }
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)),
        )
        .await
        .map_err(|_| Error::Timeout {
            after: Duration::from_secs(10),
            what: "the WebSocket handshake".into(),
        })??;
        Ok(WsClient {
            ws,
            queued: VecDeque::new(),
            next_ref: 0,
            pings: 0,
        })
    }

    /// A fresh `ref` for a frame.
    pub fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("r{}", self.next_ref)
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        self.send_text(frame.encode()).await
    }

    /// Sends any text frame (for bad-input tests).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// The next frame (queued ones first) within `timeout`. A close frame is
    /// [`Error::Closed`] with its code and reason.
    pub async fn recv(&mut self, timeout: Duration) -> Result<ServerFrame> {
        if let Some(frame) = self.queued.pop_front() {
            return Ok(frame);
        }
        self.read(timeout).await
    }

    async fn read(&mut self, timeout: Duration) -> Result<ServerFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| Error::Timeout {
                    after: timeout,
                    what: "a WebSocket frame".into(),
                })?;
            match msg {
                None => return Err(Error::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    return Ok(ServerFrame::<RawAppEvent>::decode(text.as_str())?);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Error::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    ));
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(Error::Sse("unexpected binary WebSocket frame".into()));
                }
                // Pings are answered by tungstenite itself; they are only counted.
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the reply (`ack`, `pong` or `error`) carrying `r`, queueing everything else.
    pub async fn reply(&mut self, r: &str, timeout: Duration) -> Result<ServerFrame> {
        if let Some(i) = self.queued.iter().position(|f| reply_ref(f) == Some(r)) {
            return Ok(self.queued.remove(i).expect("position is in range"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.read(left).await.map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout {
                    after: timeout,
                    what: format!("the reply to ref {r}"),
                },
                e => e,
            })?;
            if reply_ref(&frame) == Some(r) {
                return Ok(frame);
            }
            self.queued.push_back(frame);
        }
    }

    /// Sends `frame` (which should carry `r`) and waits for its reply.
    pub async fn request(&mut self, r: &str, frame: &ClientFrame) -> Result<ServerFrame> {
        self.send(frame).await?;
        self.reply(r, REPLY_TIMEOUT).await
    }

    /// Subscribes and answers the cursor the subscription starts from.
    pub async fn subscribe(
        &mut self,
        rooms: &[&str],
        since: Option<&str>,
        presence: bool,
    ) -> Result<String> {
        let r = self.new_ref();
        let frame = ClientFrame::Subscribe {
            r#ref: Some(r.clone()),
            rooms: rooms.iter().map(|s| (*s).to_owned()).collect(),
            since: since.map(str::to_owned),
            presence,
        };
        match self.request(&r, &frame).await? {
            ServerFrame::Ack {
                result: Ok(_),
                cursor,
                ..
            } => Ok(cursor.unwrap_or_default()),
            other => Err(unexpected("subscribe", other)),
        }
    }

    /// `put` and its ack: the envelope, or the ack's error.
    pub async fn put(
        &mut self,
        room: &str,
        id: &str,
        value: Value,
        key: Option<&str>,
        if_match: Option<u64>,
    ) -> Result<std::result::Result<Envelope, AckError>> {
        let r = self.new_ref();
        let frame = ClientFrame::Put {
            r#ref: Some(r.clone()),
            room: room.into(),
            id: id.into(),
            value,
            key: key.map(str::to_owned),
            if_match,
        };
        let reply = self.request(&r, &frame).await?;
        ack_envelope("put", reply)
    }

    /// `publish` and its ack.
    pub async fn publish(
        &mut self,
        room: &str,
        event_type: &str,
        data: Value,
        key: Option<&str>,
    ) -> Result<std::result::Result<Envelope, AckError>> {
        let r = self.new_ref();
        let frame = ClientFrame::Publish {
            r#ref: Some(r.clone()),
            room: room.into(),
            event: RawAppEvent {
                event_type: event_type.into(),
                data,
            },
            key: key.map(str::to_owned),
        };
        let reply = self.request(&r, &frame).await?;
        ack_envelope("publish", reply)
    }

    /// Sends a `broadcast` (without waiting for any reply).
    pub async fn broadcast(&mut self, room: &str, event: &str, data: Value) -> Result<()> {
        let r = self.new_ref();
        self.send(&ClientFrame::Broadcast {
            r#ref: Some(r),
            room: room.into(),
            event: event.into(),
            data,
        })
        .await
    }

    /// Sends a `presence` join/update and answers its ack when one comes (`None` when the
    /// server acknowledges nothing within a short while).
    pub async fn presence(&mut self, room: &str, meta: Value) -> Result<Option<ServerFrame>> {
        let r = self.new_ref();
        self.send(&ClientFrame::Presence {
            r#ref: Some(r.clone()),
            room: room.into(),
            meta,
        })
        .await?;
        match self.reply(&r, Duration::from_secs(2)).await {
            Ok(f) => Ok(Some(f)),
            Err(Error::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ping` and its `pong`.
    pub async fn ping(&mut self) -> Result<()> {
        let r = self.new_ref();
        match self
            .request(
                &r,
                &ClientFrame::Ping {
                    r#ref: Some(r.clone()),
                },
            )
            .await?
        {
            ServerFrame::Pong { .. } => Ok(()),
            other => Err(unexpected("ping", other)),
        }
    }

    /// The next envelope (skipping replies), within `timeout` in total.
    pub async fn next_envelope(&mut self, timeout: Duration) -> Result<Envelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.recv(left).await.map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout {
                    after: timeout,
                    what: "a WebSocket envelope".into(),
                },
                e => e,
            })?;
            if let ServerFrame::Event(env) = frame {
                return Ok(env);
            }
        }
    }

    /// The next durable envelope (with a `seq`), within `timeout` in total.
    pub async fn next_durable(&mut self, timeout: Duration) -> Result<Envelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let env = self.next_envelope(left).await?;
            if env.seq.is_some() {
                return Ok(env);
            }
        }
    }

    /// The next envelope of type `ty`, within `timeout` in total.
    pub async fn next_of_type(&mut self, ty: &str, timeout: Duration) -> Result<Envelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let env = self.next_envelope(left).await.map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout {
                    after: timeout,
                    what: format!("a WebSocket `{ty}` envelope"),
                },
                e => e,
            })?;
            if env.event.event_type() == ty {
                return Ok(env);
            }
        }
    }

    /// WebSocket pings received from the server so far.
    pub fn pings_seen(&self) -> usize {
        self.pings
    }

    /// Frames received but not yet handed out.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Sends a close frame and waits briefly for the server's.
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        Ok(())
    }
}

fn reply_ref(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::Ack { r#ref, .. }
        | ServerFrame::Pong { r#ref }
        | ServerFrame::Error { r#ref, .. } => r#ref.as_deref(),
        _ => None,
    }
}

fn ack_envelope(what: &str, reply: ServerFrame) -> Result<std::result::Result<Envelope, AckError>> {
    match reply {
        ServerFrame::Ack {
            result: Ok(Some(env)),
            ..
        } => Ok(Ok(env)),
        ServerFrame::Ack { result: Err(e), .. } => Ok(Err(e)),
        other => Err(unexpected(what, other)),
    }
}

fn unexpected(what: &str, frame: ServerFrame) -> Error {
    Error::Status {
        status: 0,
        body: format!("unexpected reply to {what}: {}", frame.encode()),
    }
}
