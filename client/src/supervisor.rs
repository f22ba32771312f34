//! The supervisor: one task per client that waits while the browser is offline, fetches every
//! room's snapshot, runs one connection at a time ([`crate::connection::connect`]), and after
//! each decides what next: the ladder (fall back or climb), or a reconnect after the backoff
//! delay (the server's `retry:` floor and `reconnect` hints included). It ends when the client
//! closes.
//!
//! ```ignore
//! let (tx, rx) = futures::channel::mpsc::unbounded();
//! wasm_bindgen_futures::spawn_local(supervisor::run(shared, rx));
//! tx.unbounded_send(Msg::RoomAdded)?; // the supervisor connects
//! ```

use std::rc::Rc;

use futures::channel::mpsc::UnboundedReceiver;
use futures::future::{select, Either};
use futures::StreamExt;
use gloo_timers::future::TimeoutFuture;

use crate::browser::{now_ms, online, timer_ms};
use crate::connection::connect;
use crate::http;
use crate::ladder::Outcome;
use crate::shared::{Msg, Shared};
use crate::state::Input;

/// How a connection ended.
pub(crate) enum End {
    /// The client closed.
    Close,
    /// The connection was lost (or never opened).
    Lost {
        opened_for: Option<u64>,
        /// No answer within the bound: before the first byte, or no event and no heartbeat
        /// (SSE) or no frame (WebSocket) within the watchdog bound after it opened.
        stalled: bool,
        /// The server's SSE `retry:` hint, when the stream announced it.
        retry_ms: Option<u64>,
    },
    /// Connect again at once (rooms changed, the WebSocket is wanted, a token refresh, a climb).
    Again,
    /// The browser went offline.
    Offline,
}

impl End {
    /// Lost, neither stalled nor with a hint.
    pub(crate) fn lost(opened_for: Option<u64>) -> End {
        End::Lost {
            opened_for,
            stalled: false,
            retry_ms: None,
        }
    }
}

/// Waits for the next message, or `None` after `timeout_ms`.
pub(crate) async fn recv(rx: &mut UnboundedReceiver<Msg>, timeout_ms: Option<u64>) -> Option<Msg> {
    match timeout_ms {
        None => Some(rx.next().await.unwrap_or(Msg::Close)),
        Some(ms) => {
            let timer = TimeoutFuture::new(timer_ms(ms));
            match select(rx.next(), timer).await {
                Either::Left((m, _)) => Some(m.unwrap_or(Msg::Close)),
                Either::Right(_) => None,
            }
        }
    }
}

/// The supervisor: one task per client.
pub(crate) async fn run(shared: Rc<Shared>, mut rx: UnboundedReceiver<Msg>) {
    // Set by the browser's `offline` event, cleared by `online`.
    let mut offline_event = false;
    'outer: loop {
        if shared.is_closed() {
            break;
        }
        if offline_event || !online() {
            // Nothing is attempted while offline.
            let by_event = offline_event;
            shared.set(Input::Offline);
            loop {
                match recv(&mut rx, Some(1_000)).await {
                    Some(Msg::Close) => break 'outer,
                    Some(Msg::Online) => break,
                    _ if !by_event && online() => break,
                    _ => {}
                }
            }
            offline_event = false;
            shared.set(Input::Online);
        }
        if shared.rooms.borrow().is_empty() {
            match recv(&mut rx, None).await {
                Some(Msg::Close) => break,
                Some(Msg::Offline) => offline_event = true,
                _ => {}
            }
            continue;
        }
        let (kind, degraded) = shared.conn.borrow().ladder.choose();
        shared.set(Input::Connect);
        // Every room starts from its snapshot.
        let mut fetch_failed = false;
        for room in shared.room_list() {
            if !room.inner.borrow().state.is_synced() && !shared.refetch(&room).await {
                fetch_failed = true;
                break;
            }
        }
        let end = if fetch_failed {
            End::lost(None)
        } else {
            connect(&shared, &mut rx, kind, degraded).await
        };
        if shared.is_closed() {
            break;
        }
        match end {
            End::Close => break,
            End::Again => continue,
            End::Offline => {
                offline_event = true;
                continue;
            }
            End::Lost {
                opened_for,
                stalled,
                retry_ms,
            } => {
                // A connection that never opened, or an SSE stream or WebSocket that stalled
                // after it opened, may move the client down the ladder (a failed snapshot
                // fetch says nothing about the transport).
                if (opened_for.is_none() || stalled) && !fetch_failed {
                    let probe = shared.conn.borrow().ladder.needs_probe(kind, stalled);
                    let reachable = if probe {
                        Some(http::reachable(&shared.options.url).await)
                    } else {
                        None
                    };
                    let outcome = shared
                        .conn
                        .borrow_mut()
                        .ladder
                        .failed(kind, stalled, reachable);
                    if outcome == Outcome::Switch {
                        continue;
                    }
                }
                let (attempt, delay) = {
                    let mut c = shared.conn.borrow_mut();
                    let c = &mut *c;
                    c.backoff.connection_ended(opened_for.unwrap_or(0));
                    let delay = match retry_ms {
                        Some(floor) => c.backoff.next_delay_with_floor(&mut *c.random, floor),
                        None => c.backoff.next_delay(&mut *c.random),
                    };
                    (c.backoff.attempt(), delay)
                };
                shared.set(Input::Lost {
                    attempt,
                    delay_ms: delay,
                });
                let deadline = now_ms() + delay;
                loop {
                    let left = deadline.saturating_sub(now_ms());
                    if left == 0 {
                        break;
                    }
                    match recv(&mut rx, Some(left)).await {
                        None => break,
                        Some(Msg::Close) => break 'outer,
                        Some(Msg::Online) | Some(Msg::Visible) => break,
                        Some(Msg::Offline) => {
                            offline_event = true;
                            continue 'outer;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    let active = shared.conn.borrow_mut().active.take();
    drop(active);
}
