//! SSE through the browser's `EventSource`. The browser's own reconnection is not used: on the
//! first error the source is closed and the supervisor reconnects with the exact cursor.
//!
//! The stream is opened with `&heartbeat=event`, so the server's heartbeats arrive as named
//! `heartbeat` events (`EventSource` hides comments and consumes `retry:`); each one reports
//! [`TransportMsg::Heartbeat`] with the announced interval and retry hint, which the supervisor
//! uses to detect a stream that stalls after it opened.
//!
//! ```ignore
//! let t = SseTransport::open(&url, sink)?; // reports Opened, Envelope…, Closed
//! ```

use gloo_events::EventListener;
use wasm_bindgen::JsCast;
use web_sys::{EventSource, MessageEvent};

use super::{Sink, TransportMsg};
use crate::http::{envelope_from_js, from_js, parse_json};
use crate::types::ErrorInfo;
use crate::Error;

/// An open `EventSource` and its four listeners.
pub(crate) struct SseTransport {
    source: EventSource,
    _listeners: [EventListener; 4],
}

/// The data of a named `heartbeat` event.
#[derive(serde::Deserialize)]
struct HeartbeatData {
    heartbeat_ms: u64,
    retry_ms: u64,
}

impl SseTransport {
    /// Opens `url` (a full `/v1/sse?…&heartbeat=event` URL).
    pub(crate) fn open(url: &str, sink: Sink) -> Result<SseTransport, Error> {
        let source = EventSource::new(url)
            .map_err(|_| Error::Network(format!("cannot open an EventSource on {url}")))?;
        let s = sink.clone();
        let open = EventListener::new(&source, "open", move |_| s(TransportMsg::Opened));
        let s = sink.clone();
        let message = EventListener::new(&source, "message", move |e| {
            let Some(e) = e.dyn_ref::<MessageEvent>() else {
                return;
            };
            let Some(text) = e.data().as_string() else {
                return;
            };
            match parse_json(&text).and_then(envelope_from_js) {
                Ok(env) => s(TransportMsg::Envelope(env)),
                Err(err) => s(TransportMsg::Bad(ErrorInfo::from(&err))),
            }
        });
        let s = sink.clone();
        let heartbeat = EventListener::new(&source, "heartbeat", move |e| {
            let data = e
                .dyn_ref::<MessageEvent>()
                .and_then(|e| e.data().as_string())
                .ok_or_else(|| Error::Network("a heartbeat without data".to_owned()))
                .and_then(|text| from_js::<HeartbeatData>(parse_json(&text)?));
            match data {
                Ok(d) => s(TransportMsg::Heartbeat {
                    heartbeat_ms: d.heartbeat_ms,
                    retry_ms: d.retry_ms,
                }),
                Err(err) => s(TransportMsg::Bad(ErrorInfo {
                    code: err.code().to_owned(),
                    message: format!("heartbeat: {err}"),
                })),
            }
        });
        let s = sink;
        let error = EventListener::new(&source, "error", move |_| {
            s(TransportMsg::Closed {
                reason: "the event stream failed".to_owned(),
                code: None,
            })
        });
        Ok(SseTransport {
            source,
            _listeners: [open, message, heartbeat, error],
        })
    }
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.source.close();
    }
}
