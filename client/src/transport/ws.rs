//! WebSocket through the browser's `WebSocket`: one JSON frame per text message.
//!
//! Browsers answer the server's WebSocket pings out of sight of the page, so a half-open path
//! would go unnoticed. While the socket is open the transport therefore sends the protocol's
//! `ping` frame every `ping_ms`, and reports every frame it receives (the server's `pong`
//! included) to the supervisor, whose watchdog closes a socket that brings no frame within
//! `2 × ping_ms + heartbeat slack`. The ping timer belongs to the transport: it stops when the
//! socket closes or the transport is dropped.
//!
//! ```ignore
//! let t = WsTransport::open("ws://127.0.0.1:8080/v1/ws", vec![subscribe_frame], 15_000, sink)?;
//! t.send(&ClientFrame::Ping { r#ref: None }.encode());
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use gloo_events::EventListener;
use gloo_timers::callback::Interval;
use serde_json::Value;
use tidewire_protocol::{ClientFrame, ServerFrame};
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use super::{Sink, TransportMsg};
use crate::http::{from_js, parse_json};
use crate::types::ErrorInfo;
use crate::Error;

/// An open WebSocket, its listeners and its ping timer.
pub(crate) struct WsTransport {
    socket: WebSocket,
    _listeners: [EventListener; 3],
    /// Sends `ping` every `ping_ms` from the `open` event until the socket closes.
    pinger: Rc<RefCell<Option<Interval>>>,
}

impl WsTransport {
    /// Connects to `url`; `first` frames are sent as soon as the socket opens, then a `ping`
    /// frame every `ping_ms` while it stays open.
    pub(crate) fn open(
        url: &str,
        first: Vec<String>,
        ping_ms: u64,
        sink: Sink,
    ) -> Result<WsTransport, Error> {
        let socket = WebSocket::new(url)
            .map_err(|_| Error::Network(format!("cannot open a WebSocket on {url}")))?;
        let pinger: Rc<RefCell<Option<Interval>>> = Rc::default();
        let s = sink.clone();
        let sock = socket.clone();
        let p = pinger.clone();
        let open = EventListener::new(&socket, "open", move |_| {
            for frame in &first {
                let _ = sock.send_with_str(frame);
            }
            let ping = ClientFrame::Ping { r#ref: None }.encode();
            let to = sock.clone();
            let every = ping_ms.clamp(1, u32::MAX as u64) as u32;
            *p.borrow_mut() = Some(Interval::new(every, move || {
                if to.ready_state() == WebSocket::OPEN {
                    let _ = to.send_with_str(&ping);
                }
            }));
            s(TransportMsg::Opened)
        });
        let s = sink.clone();
        let message = EventListener::new(&socket, "message", move |e| {
            let Some(text) = e
                .dyn_ref::<MessageEvent>()
                .and_then(|e| e.data().as_string())
            else {
                return;
            };
            let frame = parse_json(&text)
                .and_then(from_js::<Value>)
                .and_then(|v| ServerFrame::decode_value(v).map_err(Error::from));
            match frame {
                Ok(ServerFrame::Event(env)) => s(TransportMsg::Envelope(env)),
                Ok(ServerFrame::Ack { r#ref, result, .. }) => {
                    s(TransportMsg::Ack { r#ref, result })
                }
                Ok(ServerFrame::Error { code, message, .. }) => s(TransportMsg::Bad(ErrorInfo {
                    code: code.as_str().to_owned(),
                    message,
                })),
                Ok(_) => s(TransportMsg::Alive),
                Err(err) => s(TransportMsg::Bad(ErrorInfo::from(&err))),
            }
        });
        let s = sink;
        let p = pinger.clone();
        let close = EventListener::new(&socket, "close", move |e| {
            // Dropping the interval cancels it.
            drop(p.borrow_mut().take());
            let (code, reason) = match e.dyn_ref::<CloseEvent>() {
                Some(c) => (Some(c.code()), c.reason()),
                None => (None, String::new()),
            };
            s(TransportMsg::Closed {
                reason: format!("the WebSocket closed ({}) {reason}", code.unwrap_or(0)),
                code,
            })
        });
        Ok(WsTransport {
            socket,
            _listeners: [open, message, close],
            pinger,
        })
    }

    /// Sends a text frame; false when the socket is not open.
    pub(crate) fn send(&self, text: &str) -> bool {
        self.socket.ready_state() == WebSocket::OPEN && self.socket.send_with_str(text).is_ok()
    }
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        drop(self.pinger.borrow_mut().take());
        let _ = self.socket.close();
    }
}
