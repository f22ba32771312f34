//! An SSE test client: `reqwest` byte stream parsed by `eventsource-stream`, envelopes decoded
//! with `tidewire-protocol`.
//!
//! It behaves like a browser `EventSource`: the `id:` of an event (or of an earlier `id:`-only
//! event) is its `last_id`, which a test hands back on resume as `Last-Event-ID` or `?since=`.
//! The first bytes of the stream are also kept raw (comments and `id:`-only events are not
//! dispatched by an event-source parser), for tests of the stream's prologue and heartbeats.
//!
//! ```no_run
//! # async fn demo() -> tidewire_tests::Result<()> {
//! use std::time::Duration;
//! use tidewire_tests::{SseClient, SseRequest};
//! let mut sse = SseClient::connect("http://127.0.0.1:8080", &SseRequest::rooms(&["a", "b"])).await?;
//! let ev = sse.next_durable(Duration::from_secs(5)).await?;
//! drop(sse);
//! let resumed = SseRequest::rooms(&["a", "b"]).last_event_id(&ev.id);
//! let mut sse = SseClient::connect("http://127.0.0.1:8080", &resumed).await?;
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use tidewire_protocol::Envelope;

use crate::rest::decode_body;
use crate::{Error, Result};

/// How many leading bytes of the stream are kept raw.
pub const RAW_KEEP: usize = 256 * 1024;

type EventStream = Pin<
    Box<
        dyn Stream<
                Item = std::result::Result<
                    eventsource_stream::Event,
                    EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// What to open: `GET /v1/sse?rooms=…` and its resume options.
#[derive(Debug, Clone, Default)]
pub struct SseRequest {
    /// `rooms=` (joined with commas).
    pub rooms: Vec<String>,
    /// `?since=`.
    pub since: Option<String>,
    /// The `Last-Event-ID` header.
    pub last_event_id: Option<String>,
    /// `&presence=1`.
    pub presence: bool,
    /// `&client_id=`.
    pub client_id: Option<String>,
    /// `&heartbeat=event`: heartbeats as named `heartbeat` events (see [`SseClient::heartbeats`]).
    pub heartbeat_events: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

impl SseRequest {
    /// A request for these rooms, starting from their heads.
    pub fn rooms(rooms: &[&str]) -> SseRequest {
        SseRequest {
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            ..SseRequest::default()
        }
    }

    /// Resume with `?since=`.
    pub fn since(mut self, cursor: &str) -> SseRequest {
        self.since = Some(cursor.to_owned());
        self
    }

    /// Resume with the `Last-Event-ID` header.
    pub fn last_event_id(mut self, id: &str) -> SseRequest {
        self.last_event_id = Some(id.to_owned());
        self
    }

    /// Ask for presence events.
    pub fn presence(mut self) -> SseRequest {
        self.presence = true;
        self
    }

    /// Ask for heartbeats as named `heartbeat` events.
    pub fn heartbeat_events(mut self) -> SseRequest {
        self.heartbeat_events = true;
        self
    }

    /// Send a header.
    pub fn header(mut self, name: &str, value: &str) -> SseRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One dispatched SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The event source's last event id after this event (this event's `id:`, or the last
    /// one seen before it when it has none).
    pub id: String,
    /// The decoded envelope.
    pub envelope: Envelope,
}

/// An open SSE stream.
pub struct SseClient {
    status: u16,
    headers: HeaderMap,
    events: EventStream,
    raw: Arc<Mutex<Vec<u8>>>,
    last_id: Option<String>,
    retry: Option<Duration>,
    heartbeats: Vec<serde_json::Value>,
}

impl std::fmt::Debug for SseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseClient")
            .field("status", &self.status)
            .field("last_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

impl SseClient {
    /// Opens the stream; a non-200 answer is [`Error::Problem`] (or [`Error::Status`]).
    pub async fn connect(base: &str, req: &SseRequest) -> Result<SseClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        SseClient::connect_with(&http, base, req).await
    }

    /// Opens the stream with a given HTTP client.
    pub async fn connect_with(
        http: &reqwest::Client,
        base: &str,
        req: &SseRequest,
    ) -> Result<SseClient> {
        let mut query = vec![("rooms", req.rooms.join(","))];
        if let Some(since) = &req.since {
            query.push(("since", since.clone()));
        }
        if req.presence {
            query.push(("presence", "1".into()));
        }
        if let Some(id) = &req.client_id {
            query.push(("client_id", id.clone()));
        }
        if req.heartbeat_events {
            query.push(("heartbeat", "event".into()));
        }
        let mut builder = http
            .get(format!("{}/v1/sse", base.trim_end_matches('/')))
            .query(&query)
            .header("Accept", "text/event-stream");
        if let Some(id) = &req.last_event_id {
            builder = builder.header("Last-Event-ID", id);
        }
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        let resp = tokio::time::timeout(Duration::from_secs(15), builder.send())
            .await
            .map_err(|_| Error::Timeout {
                after: Duration::from_secs(15),
                what: "SSE response headers".into(),
            })??;
        SseClient::from_response(resp).await
    }

    /// Wraps an HTTP response (`200` becomes a stream, anything else an error).
    pub async fn from_response(resp: reqwest::Response) -> Result<SseClient> {
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.as_u16() != 200 {
            let bytes = resp.bytes().await?;
            return Err(
                match decode_body::<serde_json::Value>(status, &headers, &bytes)? {
                    Err(problem) => Error::Problem(Box::new(problem)),
                    Ok(v) => Error::Status {
                        status: status.as_u16(),
                        body: v.to_string(),
                    },
                },
            );
        }
        let raw = Arc::new(Mutex::new(Vec::new()));
        let tap = Arc::clone(&raw);
        let events = resp
            .bytes_stream()
            .inspect(move |chunk| {
                if let (Ok(chunk), Ok(mut raw)) = (chunk, tap.lock()) {
                    let room = RAW_KEEP.saturating_sub(raw.len());
                    raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            })
            .eventsource();
        Ok(SseClient {
            status: status.as_u16(),
            headers,
            events: Box::pin(events),
            raw,
            last_id: None,
            retry: None,
            heartbeats: Vec::new(),
        })
    }

    /// The response status (always 200 for an open stream).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The last event id seen on a dispatched event, like `EventSource.lastEventId`.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The last `retry:` seen on a dispatched event.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The data of the named `heartbeat` events seen so far (`&heartbeat=event`), in order.
    pub fn heartbeats(&self) -> &[serde_json::Value] {
        &self.heartbeats
    }

    /// The first [`RAW_KEEP`] bytes received, as text.
    pub fn raw_text(&self) -> String {
        self.raw
            .lock()
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default()
    }

    /// The next dispatched event, within `timeout`. [`Error::Closed`] when the stream ended.
    /// Named `heartbeat` events are not returned: they are kept in [`SseClient::heartbeats`].
    pub async fn next(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let event = loop {
            let item = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .map_err(|_| Error::Timeout {
                    after: timeout,
                    what: "an SSE event".into(),
                })?;
            let event = match item {
                None => return Err(Error::Closed(None)),
                Some(Err(EventStreamError::Transport(e))) => return Err(Error::Http(e)),
                Some(Err(e)) => return Err(Error::Sse(e.to_string())),
                Some(Ok(event)) => event,
            };
            if event.event == "heartbeat" {
                let data = serde_json::from_str(&event.data)
                    .map_err(|e| Error::Sse(format!("heartbeat data {:?}: {e}", event.data)))?;
                self.heartbeats.push(data);
                continue;
            }
            break event;
        };
        if !event.id.is_empty() {
            self.last_id = Some(event.id.clone());
        }
        if event.retry.is_some() {
            self.retry = event.retry;
        }
        let envelope = Envelope::decode(&event.data)?;
        Ok(SseEvent {
            id: event.id,
            envelope,
        })
    }

    /// The next durable event (with a `seq`), skipping others, within `timeout` in total.
    pub async fn next_durable(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next(left).await.map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout {
                    after: timeout,
                    what: "a durable SSE event".into(),
                },
                e => e,
            })?;
            if ev.envelope.seq.is_some() {
                return Ok(ev);
            }
        }
    }

    /// The next event whose `type` is `ty`, skipping others, within `timeout` in total.
    pub async fn next_of_type(&mut self, ty: &str, timeout: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next(left).await.map_err(|e| match e {
                Error::Timeout { .. } => Error::Timeout {
                    after: timeout,
                    what: format!("an SSE `{ty}` event"),
                },
                e => e,
            })?;
            if ev.envelope.event.event_type() == ty {
                return Ok(ev);
            }
        }
    }

    /// Collects exactly `n` events (of any kind) within `timeout` in total.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Result<Vec<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(ev) => out.push(ev),
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        after: timeout,
                        what: format!("{n} SSE events (got {})", out.len()),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
