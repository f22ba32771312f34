//! Browser transports. Each one owns its browser object and its listeners; dropping it closes
//! the connection and removes the listeners. A transport reports through a [`Sink`]:
//! `Opened` once it is live, every envelope it receives, and one `Closed` or `Stalled` when it
//! ends. The client's supervisor decides what happens next; transports never reconnect by
//! themselves.
//!
//! ```ignore
//! let sink: Sink = Rc::new(|msg| log(&format!("{msg:?}")));
//! let sse = SseTransport::open("http://127.0.0.1:8080/v1/sse?rooms=a", sink)?;
//! drop(sse); // closes the EventSource and removes its listeners
//! ```

mod poll;
mod sse;
mod ws;

use std::rc::Rc;

pub(crate) use poll::PollLoop;
pub(crate) use sse::SseTransport;
pub(crate) use ws::WsTransport;

use tidewire_protocol::{AckError, Envelope, Snapshot};

use crate::types::ErrorInfo;

/// What a transport reports.
#[derive(Debug)]
pub(crate) enum TransportMsg {
    /// The connection is live.
    Opened,
    /// An event arrived.
    Envelope(Envelope),
    /// A polled snapshot.
    Snapshot(Snapshot),
    /// A WebSocket reply to a frame with a `ref`.
    Ack {
        /// The frame's `ref`.
        r#ref: Option<String>,
        /// The outcome.
        result: Result<Option<Envelope>, AckError>,
    },
    /// Something arrived that breaks the protocol, or the server sent an error frame; the
    /// transport keeps running.
    Bad(ErrorInfo),
    /// A frame arrived that carries nothing for the supervisor (a WebSocket `pong`): the
    /// connection is alive.
    Alive,
    /// The transport ended.
    Closed {
        /// Why, for people.
        reason: String,
        /// A WebSocket close code, when there was one.
        code: Option<u16>,
    },
    /// The transport got no answer within its bound (a buffering proxy).
    Stalled,
    /// An SSE heartbeat: the server's heartbeat interval and its `retry:` hint.
    Heartbeat {
        /// Milliseconds between heartbeats when nothing else is sent.
        heartbeat_ms: u64,
        /// The server's reconnect delay hint (`retry:`).
        retry_ms: u64,
    },
}

/// Where a transport reports to.
pub(crate) type Sink = Rc<dyn Fn(TransportMsg)>;

/// The live transport of a client (each is held for its `Drop`, which closes it).
#[allow(dead_code)]
pub(crate) enum Active {
    Sse(SseTransport),
    Ws(WsTransport),
    Poll(PollLoop),
}

impl Active {
    /// Sends a WebSocket frame; false when this is not an open WebSocket.
    pub(crate) fn send(&self, text: &str) -> bool {
        match self {
            Active::Ws(ws) => ws.send(text),
            _ => false,
        }
    }
}
