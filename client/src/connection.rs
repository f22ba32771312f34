//! One connection, from open to end: with auth on it first gets the credential (an SSE
//! ticket, a token for the WebSocket's first frame), opens the transport, and then handles
//! what arrives: envelopes (dispatched to the rooms), snapshots, acks of writes sent over the
//! WebSocket, heartbeats. It sleeps until the next deadline ([`crate::deadlines`]: open bound,
//! stall watchdog, climb back, token refresh, reorder gaps) and ends with an [`End`] that the
//! supervisor acts on.
//!
//! ```ignore
//! let end = connect(&shared, &mut rx, TransportKind::Sse, false).await;
//! if let End::Lost { stalled: true, .. } = end { /* the ladder may step down */ }
//! ```

use std::rc::Rc;

use futures::channel::mpsc::UnboundedReceiver;
use tidewire_protocol::{Envelope, Event};

use crate::browser::{now_ms, warn};
use crate::deadlines::{earliest, wall_to_monotonic, Expiry, Watch};
use crate::frames;
use crate::http;
use crate::shared::{AckResult, Msg, Shared};
use crate::state::{Input, TransportKind};
use crate::supervisor::{recv, End};
use crate::transport::{Active, PollLoop, SseTransport, TransportMsg, WsTransport};
use crate::types::{BroadcastMessage, ErrorInfo, PresenceUpdate};
use crate::Error;

impl Shared {
    /// Opens a transport of kind `kind` for connection number `gen`; `cred`: with auth on,
    /// the SSE ticket or the WebSocket token.
    fn open(&self, kind: TransportKind, gen: u64, cred: Option<String>) -> Result<Active, Error> {
        let rooms = self.room_list();
        let positions: Vec<(String, u64)> = rooms.iter().map(|r| r.position()).collect();
        let names: Vec<String> = positions.iter().map(|(n, _)| n.clone()).collect();
        let o = &self.options;
        let sink = self.sink(gen);
        Ok(match kind {
            TransportKind::Sse => {
                let url = frames::sse_url(&o.url, &positions, &self.client_id, cred.as_deref());
                Active::Sse(SseTransport::open(&url, sink)?)
            }
            TransportKind::Ws => {
                let mut first = vec![frames::subscribe(&positions)];
                for r in &rooms {
                    let mut inner = r.inner.borrow_mut();
                    if let Some(meta) = &inner.meta {
                        first.push(frames::presence(&r.name, meta.clone()));
                    }
                    first.append(&mut inner.outbox);
                }
                if let Some(token) = cred {
                    // The auth frame goes first: nothing else is accepted before it.
                    first.insert(0, frames::auth(token));
                }
                let url = frames::ws_url(&o.url, &self.client_id);
                Active::Ws(WsTransport::open(&url, first, o.ws_ping_ms, sink)?)
            }
            TransportKind::LongPoll => Active::Poll(PollLoop::long_poll(
                self.api.clone(),
                names.join(","),
                self.cursor().to_string(),
                o.long_poll_wait_secs,
                o.open_timeout_ms,
                sink,
            )),
            TransportKind::Poll => Active::Poll(PollLoop::snapshots(
                self.api.clone(),
                names,
                o.poll_interval_ms,
                sink,
            )),
        })
    }

    /// Feeds any envelope from a transport. Returns a server reconnect hint when there is one.
    pub(crate) async fn dispatch(&self, env: Envelope) -> Option<u64> {
        match &env.event {
            Event::Reconnect(r) => return Some(r.retry_ms),
            Event::Error(e) => {
                self.errors.emit(&ErrorInfo {
                    code: e.code.as_str().to_owned(),
                    message: e.message.clone(),
                });
                return None;
            }
            _ => {}
        }
        let room = self.room(&env.room)?;
        match &env.event {
            Event::Resync(_) => {
                self.refetch(&room).await;
            }
            Event::Broadcast(b) => room.broadcasts.emit(&BroadcastMessage {
                event: b.event.clone(),
                data: b.data.clone(),
                from: b.from.clone(),
                user: b.user.clone(),
            }),
            Event::PresenceJoin(_) | Event::PresenceLeave(_) | Event::PresenceState(_) => {
                let members = {
                    let mut inner = room.inner.borrow_mut();
                    inner.state.apply_presence(&env.event);
                    inner.state.members().to_vec()
                };
                let (kind, member) = match &env.event {
                    Event::PresenceJoin(m) => ("join", Some(m.clone())),
                    Event::PresenceLeave(m) => ("leave", Some(m.clone())),
                    _ => ("state", None),
                };
                room.presence.emit(&PresenceUpdate {
                    kind,
                    member,
                    members,
                });
            }
            _ if env.event.is_durable() => self.apply_durable(&room, env),
            _ => {}
        }
        None
    }

    /// Hands an `ack` to the write waiting for it (a refusal nobody waits for is logged).
    fn ack(&self, r#ref: Option<String>, result: AckResult) {
        let waiter = r#ref.and_then(|r| self.acks.borrow_mut().remove(&r));
        match (waiter, result) {
            (Some(tx), result) => {
                let _ = tx.send(result);
            }
            (None, Err(e)) => warn(&format!("tidewire: {}: {}", e.code, e.title)),
            (None, Ok(_)) => {}
        }
    }
}

/// Runs one connection until it ends.
pub(crate) async fn connect(
    shared: &Rc<Shared>,
    rx: &mut UnboundedReceiver<Msg>,
    kind: TransportKind,
    degraded: bool,
) -> End {
    let gen = {
        let mut c = shared.conn.borrow_mut();
        c.gen += 1;
        c.gen
    };
    // With auth on: a ticket for SSE, a token for the WebSocket's first frame.
    let source = shared.api.token_source().cloned();
    let cred = match (&source, kind) {
        (Some(_), TransportKind::Sse) => http::ticket(&shared.api).await.map(Some),
        (Some(src), TransportKind::Ws) => src.token().await.map(Some),
        _ => Ok(None),
    };
    let Ok(cred) = cred else {
        return End::lost(None);
    };
    let Ok(active) = shared.open(kind, gen, cred) else {
        return End::lost(None);
    };
    shared.conn.borrow_mut().active = Some(active);
    let bounds = shared.bounds();
    let mut watch = Watch::new(kind, degraded, now_ms(), shared.options.ws_ping_ms);
    let end = loop {
        let now = now_ms();
        // Refresh the token before it expires: a new auth frame on the WebSocket, a new
        // ticket (a reconnect from the same cursor) for SSE. The token's expiry is wall-clock
        // time: what is left of it becomes a deadline on the monotonic clock.
        let refresh_at = match (&source, kind, watch.opened_at()) {
            (Some(src), TransportKind::Sse | TransportKind::Ws, Some(_)) => src
                .refresh_at()
                .map(|t| wall_to_monotonic(now, js_sys::Date::now(), t)),
            _ => None,
        };
        let gaps: Vec<Option<u64>> = shared
            .room_list()
            .iter()
            .map(|r| r.inner.borrow().state.gap_deadline())
            .collect();
        let deadline = earliest(
            [watch.deadline(&bounds), refresh_at]
                .into_iter()
                .chain(gaps),
        );
        let msg = recv(rx, deadline.map(|d| d.saturating_sub(now))).await;
        let now = now_ms();
        match msg {
            None => {
                if let (Some(src), Some(t)) = (&source, refresh_at) {
                    if now >= t {
                        if kind == TransportKind::Sse {
                            break End::Again;
                        }
                        match src.fetch().await {
                            Ok(token) => {
                                shared.send_ws(&frames::auth(token));
                            }
                            Err(_) => break End::lost(watch.opened_for(now)),
                        }
                    }
                }
                for r in shared.room_list() {
                    let expired = r.inner.borrow().state.gap_expired(now);
                    if expired {
                        shared.refetch(&r).await;
                    }
                }
                match watch.expired(now, &bounds) {
                    Some(Expiry::Stalled { opened_for }) => {
                        // Neither an event nor a heartbeat (nor, on a WebSocket, a `pong`):
                        // the connection stalled after it opened (a proxy that stopped
                        // forwarding, a half-open path). It is closed and counts as a stall.
                        warn(match kind {
                            TransportKind::Ws => "tidewire: the WebSocket stalled (no frame)",
                            _ => "tidewire: the event stream stalled (no heartbeat)",
                        });
                        break End::Lost {
                            opened_for,
                            stalled: true,
                            retry_ms: watch.retry_ms(),
                        };
                    }
                    Some(Expiry::OpenTimeout) => {
                        break End::Lost {
                            opened_for: None,
                            stalled: true,
                            retry_ms: None,
                        }
                    }
                    Some(Expiry::Climb) => {
                        shared.conn.borrow_mut().ladder.climb();
                        break End::Again;
                    }
                    None => {}
                }
            }
            Some(Msg::Transport(g, _)) if g != gen => {}
            Some(Msg::Transport(_, m)) => match m {
                TransportMsg::Alive => watch.seen(now),
                TransportMsg::Heartbeat {
                    heartbeat_ms,
                    retry_ms,
                } => watch.heartbeat(now, heartbeat_ms, retry_ms),
                TransportMsg::Opened => {
                    watch.opened(now);
                    shared.conn.borrow_mut().ladder.opened(kind);
                    shared.set(Input::Opened {
                        transport: kind,
                        degraded,
                    });
                }
                TransportMsg::Envelope(env) => {
                    watch.seen(now);
                    if let Some(retry_ms) = shared.dispatch(env).await {
                        shared.conn.borrow_mut().backoff.hint(retry_ms);
                        break End::lost(watch.opened_for(now));
                    }
                }
                TransportMsg::Snapshot(snap) => {
                    if let Some(room) = shared.room(&snap.room) {
                        let changed = room.inner.borrow().state.seq() != snap.seq;
                        if changed {
                            shared.load_snapshot(&room, snap);
                        }
                    }
                }
                TransportMsg::Ack { r#ref, result } => {
                    watch.seen(now);
                    shared.ack(r#ref, result);
                }
                TransportMsg::Bad(info) => {
                    watch.seen(now);
                    warn(&format!("tidewire: {}: {}", info.code, info.message));
                    shared.errors.emit(&info);
                }
                TransportMsg::Closed { reason, code } => {
                    if code.is_some_and(|c| c >= 4500) {
                        warn(&format!("tidewire: {reason}"));
                    }
                    break End::lost(watch.opened_for(now));
                }
                TransportMsg::Stalled => {
                    break End::Lost {
                        opened_for: None,
                        stalled: watch.opened_at().is_none() || kind == TransportKind::LongPoll,
                        retry_ms: None,
                    }
                }
            },
            Some(Msg::RoomAdded) => {
                if kind == TransportKind::Ws && watch.opened_at().is_some() {
                    // Subscribe the new rooms on the open socket, after their snapshot.
                    let mut fresh = Vec::new();
                    for r in shared.room_list() {
                        if !r.inner.borrow().state.is_synced() {
                            shared.refetch(&r).await;
                            fresh.push(r);
                        }
                    }
                    if !fresh.is_empty() {
                        let positions: Vec<(String, u64)> =
                            fresh.iter().map(|r| r.position()).collect();
                        shared.send_ws(&frames::subscribe(&positions));
                    }
                } else {
                    break End::Again;
                }
            }
            Some(Msg::WantWs) => {
                if kind != TransportKind::Ws && shared.options.transport.is_none() {
                    break End::Again;
                }
            }
            Some(Msg::Drop) => break End::lost(watch.opened_for(now)),
            Some(Msg::Offline) => break End::Offline,
            Some(Msg::Online) | Some(Msg::Visible) | Some(Msg::Tick) => {}
            Some(Msg::Close) => break End::Close,
        }
    };
    // Whatever ended an SSE stream that announced the server's `retry:`, the next delay
    // honours it as a floor.
    let end = match end {
        End::Lost {
            opened_for,
            stalled,
            retry_ms: None,
        } => End::Lost {
            opened_for,
            stalled,
            retry_ms: watch.retry_ms(),
        },
        end => end,
    };
    let active = shared.conn.borrow_mut().active.take();
    drop(active);
    // Writes waiting for an ack on this socket fail now and retry with the same key.
    let waiting = std::mem::take(&mut *shared.acks.borrow_mut());
    drop(waiting);
    end
}
