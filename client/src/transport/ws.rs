//! WebSocket through the browser's `WebSocket`: one JSON frame per text message.
//!
//! ```ignore
//! let t = WsTransport::open("ws://127.0.0.1:8080/v1/ws", vec![subscribe_frame], sink)?;
//! t.send(&ClientFrame::Ping { r#ref: None }.encode());
//! ```

use gloo_events::EventListener;
use serde_json::Value;
use tidewire_protocol::ServerFrame;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use super::{Sink, TransportMsg};
use crate::http::{from_js, parse_json};
use crate::Error;

/// An open WebSocket and its listeners.
pub(crate) struct WsTransport {
    socket: WebSocket,
    _listeners: [EventListener; 3],
}

impl WsTransport {
    /// Connects to `url`; `first` frames are sent as soon as the socket opens.
    pub(crate) fn open(url: &str, first: Vec<String>, sink: Sink) -> Result<WsTransport, Error> {
        let socket = WebSocket::new(url)
            .map_err(|_| Error::Network(format!("cannot open a WebSocket on {url}")))?;
        let s = sink.clone();
        let sock = socket.clone();
        let open = EventListener::new(&socket, "open", move |_| {
            for frame in &first {
                let _ = sock.send_with_str(frame);
            }
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
                Ok(ServerFrame::Error { code, message, .. }) => {
                    s(TransportMsg::Bad(format!("{code}: {message}")))
                }
                Ok(_) => {}
                Err(err) => s(TransportMsg::Bad(err.to_string())),
            }
        });
        let s = sink;
        let close = EventListener::new(&socket, "close", move |e| {
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
        })
    }

    /// Sends a text frame; false when the socket is not open.
    pub(crate) fn send(&self, text: &str) -> bool {
        self.socket.ready_state() == WebSocket::OPEN && self.socket.send_with_str(text).is_ok()
    }
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        let _ = self.socket.close();
    }
}
