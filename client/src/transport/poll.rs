//! The fallbacks: long-polling `GET /v1/poll`, and polling each room's snapshot. Each runs as a
//! task that stops (and aborts its request) when the [`PollLoop`] is dropped.
//!
//! ```ignore
//! let lp = PollLoop::long_poll(base, "a,b".into(), "a=4,b=0".into(), 25, 5_000, sink);
//! drop(lp); // aborts the request in flight
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::future::{select, Either};
use gloo_timers::future::TimeoutFuture;
use web_sys::AbortController;

use super::{Sink, TransportMsg};
use crate::http;
use crate::types::ErrorInfo;

/// A running poll task.
pub(crate) struct PollLoop {
    stop: Rc<Cell<bool>>,
    abort: Rc<RefCell<Option<AbortController>>>,
}

fn ms(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl PollLoop {
    /// Long-polls `rooms` from `since`. The first request does not wait, so the transport is
    /// live at once; a request unanswered after `wait` seconds plus `stall_ms` is a stall.
    pub(crate) fn long_poll(
        server: http::Endpoint,
        rooms: String,
        since: String,
        wait: u32,
        stall_ms: u64,
        sink: Sink,
    ) -> PollLoop {
        let stop = Rc::new(Cell::new(false));
        let abort: Rc<RefCell<Option<AbortController>>> = Rc::new(RefCell::new(None));
        let (st, ab) = (stop.clone(), abort.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let mut since = since;
            let mut opened = false;
            loop {
                if st.get() {
                    return;
                }
                let w = if opened { wait } else { 0 };
                let controller = AbortController::new().ok();
                let signal = controller.as_ref().map(|c| c.signal());
                *ab.borrow_mut() = controller;
                let req = Box::pin(http::poll(&server, &rooms, &since, w, signal.as_ref()));
                let timer = TimeoutFuture::new(ms(u64::from(w) * 1000 + stall_ms));
                let outcome = match select(req, timer).await {
                    Either::Left((r, _)) => Some(r),
                    Either::Right(_) => None,
                };
                if st.get() {
                    return;
                }
                match outcome {
                    None => {
                        if let Some(c) = ab.borrow_mut().take() {
                            c.abort();
                        }
                        sink(TransportMsg::Stalled);
                        return;
                    }
                    Some(Err(e)) => {
                        sink(TransportMsg::Closed {
                            reason: e.to_string(),
                            code: None,
                        });
                        return;
                    }
                    Some(Ok(resp)) => {
                        if !opened {
                            opened = true;
                            sink(TransportMsg::Opened);
                        }
                        for env in resp.events {
                            if st.get() {
                                return;
                            }
                            sink(match env {
                                Ok(env) => TransportMsg::Envelope(env),
                                Err(e) => TransportMsg::Bad(ErrorInfo::from(&e)),
                            });
                        }
                        since = resp.cursor;
                    }
                }
            }
        });
        PollLoop { stop, abort }
    }

    /// Fetches every room's snapshot every `interval_ms`.
    pub(crate) fn snapshots(
        server: http::Endpoint,
        rooms: Vec<String>,
        interval_ms: u64,
        sink: Sink,
    ) -> PollLoop {
        let stop = Rc::new(Cell::new(false));
        let st = stop.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let mut opened = false;
            loop {
                for room in &rooms {
                    if st.get() {
                        return;
                    }
                    match http::snapshot(&server, room).await {
                        Ok(snap) => {
                            if st.get() {
                                return;
                            }
                            if !opened {
                                opened = true;
                                sink(TransportMsg::Opened);
                            }
                            sink(TransportMsg::Snapshot(snap));
                        }
                        Err(e) => {
                            if !st.get() {
                                sink(TransportMsg::Closed {
                                    reason: e.to_string(),
                                    code: None,
                                });
                            }
                            return;
                        }
                    }
                }
                TimeoutFuture::new(ms(interval_ms)).await;
            }
        });
        PollLoop {
            stop,
            abort: Rc::new(RefCell::new(None)),
        }
    }
}

impl Drop for PollLoop {
    fn drop(&mut self) {
        self.stop.set(true);
        if let Some(c) = self.abort.borrow_mut().take() {
            c.abort();
        }
    }
}
