//! The session layer: what a connection is, whatever transport carries it.
//!
//! A [`Session`] follows rooms in the order that makes resume exact: it **registers with the
//! hub first**, then reads the log from the client's position, then delivers live events,
//! skipping any `seq` it already sent ([`Session::admit`]). A position the log no longer
//! holds becomes one `resync` and the room continues from its head. [`CatchUp`] is the one
//! catch-up loop (resyncs, replay from the log, presence states) every transport drains
//! before live delivery; [`commands`] turns a client's frames into server frames. The
//! transports (`crate::transport`) only move bytes: they never decide what a client gets.
//!
//! ```no_run
//! # async fn f(mut session: tidewire_server::session::Session) -> tidewire_server::Result<()> {
//! let cursor: tidewire_protocol::Cursor = "board-1=42".parse()?;
//! let mut catch_up = session.catch_up(&["board-1".to_string()], &cursor, false).await?;
//! while let Some(page) = catch_up.next(&mut session).await? {
//!     for ready in page {
//!         println!("{}", ready.payload.as_str()); // write it
//!     }
//! }
//! // then live: session.inbox.recv() → session.admit(item)
//! # Ok(()) }
//! ```

mod catch_up;
pub mod commands;

pub use catch_up::CatchUp;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tidewire_protocol::{Cursor, Event, PresenceState, ResyncData};

use crate::auth::Auth;
use crate::hub::Hub;
use crate::identity::{authorize, Access, ClientIdentity};
use crate::limits::{ConnectionGuard, Limits};
use crate::metrics::ConnectionGauge;
use crate::outbound::{queue_for, Inbox, Outbound, Outbox, TransportKind};
use crate::policy::Policy;
use crate::service::{ephemeral_json, Service};
use crate::shutdown::Shutdown;
use crate::{Config, Error, Result};

/// Events read from the log per page of a replay.
const REPLAY_PAGE: u64 = 1000;

/// One item ready to write: the envelope JSON and, for durable events on SSE, the cursor
/// after it (the `id:` line).
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    /// The envelope JSON.
    pub payload: Utf8Bytes,
    /// The connection's cursor after this event (durable events, when ids are wanted).
    pub id: Option<String>,
}

/// What sessions need of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Capacity of each connection's outbound queue.
    pub queue_capacity: usize,
    /// Most payload bytes queued for one connection.
    pub max_queue_bytes: usize,
    /// Origins allowed to open a WebSocket (empty: any).
    pub allowed_origins: Vec<String>,
    /// Most rooms one connection follows.
    pub max_rooms_per_connection: usize,
    /// Heartbeat interval (SSE comments, WebSocket pings).
    pub heartbeat: Duration,
    /// A WebSocket silent this long is closed.
    pub idle_timeout: Duration,
    /// Largest client frame.
    pub max_frame_bytes: usize,
    /// The SSE `retry:` hint.
    pub sse_retry_ms: u64,
}

impl Settings {
    /// The session settings of `config`.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            queue_capacity: config.queue_capacity,
            max_queue_bytes: config.max_queue_bytes,
            allowed_origins: config.allowed_origin.clone(),
            max_rooms_per_connection: config.max_rooms_per_connection,
            heartbeat: config.heartbeat(),
            idle_timeout: config.idle_timeout(),
            max_frame_bytes: config.max_body_bytes,
            sse_retry_ms: config.sse_retry_ms,
        }
    }
}

/// Everything a connection's session works with, shared by all sessions of a server: the
/// state transports are given (`State<Arc<Sessions>>`).
pub struct Sessions {
    service: Arc<Service>,
    hub: Arc<Hub>,
    limits: Arc<Limits>,
    policy: Policy,
    shutdown: Arc<Shutdown>,
    auth: Option<Arc<Auth>>,
    settings: Settings,
}

impl Sessions {
    /// The sessions of one server.
    pub fn new(
        service: Arc<Service>,
        hub: Arc<Hub>,
        policy: Policy,
        shutdown: Arc<Shutdown>,
        auth: Option<Arc<Auth>>,
        settings: Settings,
    ) -> Sessions {
        Sessions {
            limits: policy.limits().clone(),
            service,
            hub,
            policy,
            shutdown,
            auth,
            settings,
        }
    }

    /// The settings every session follows.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The draining flag.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// JWT auth, when on.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.as_ref()
    }

    /// Opens a connection for `identity` (counted against its connection limit).
    pub async fn open(
        self: &Arc<Self>,
        identity: ClientIdentity,
        transport: TransportKind,
        client_id: Option<String>,
    ) -> Result<Session> {
        Session::open(self.clone(), identity, transport, client_id).await
    }

    /// Opens a connection for the bearer of `token` (a WebSocket's first `auth` frame).
    pub async fn open_with_token(
        self: &Arc<Self>,
        token: &str,
        transport: TransportKind,
        client_id: Option<String>,
    ) -> Result<Session> {
        let auth = self
            .auth
            .as_ref()
            .ok_or_else(|| Error::Unauthorized("auth is off".into()))?;
        let identity = ClientIdentity::authenticated(auth.verify(token)?);
        self.open(identity, transport, client_id).await
    }
}

/// The per-connection state shared by every transport.
pub struct Session {
    /// Unique connection id.
    pub id: Arc<str>,
    /// The client id used for presence and as `from` of broadcasts.
    pub client_id: String,
    /// Who is connected.
    pub identity: ClientIdentity,
    /// Which transport carries it.
    pub transport: TransportKind,
    /// What every session shares.
    pub sessions: Arc<Sessions>,
    /// The queue the hub fills.
    pub inbox: Inbox,
    /// The position of every followed room: the last seq sent.
    pub cursor: Cursor,
    outbox: Outbox,
    want_ids: bool,
    pending: VecDeque<(Arc<str>, u64)>,
    joined: HashSet<String>,
    _guard: ConnectionGuard,
    _gauge: ConnectionGauge,
    _stats: crate::stats::Connection,
}

impl Session {
    async fn open(
        state: Arc<Sessions>,
        identity: ClientIdentity,
        transport: TransportKind,
        client_id: Option<String>,
    ) -> Result<Session> {
        if state.shutdown.is_draining() {
            return Err(Error::ShuttingDown);
        }
        let guard = state.limits.connect(&identity.key).await?;
        let (outbox, inbox) = queue_for(
            state.settings.queue_capacity,
            state.settings.max_queue_bytes,
            transport,
        );
        let id: Arc<str> = ulid::Ulid::generate().to_string().into();
        let client_id = match client_id {
            Some(c) if !c.is_empty() => {
                tidewire_protocol::validate_item_id(&c).map_err(|_| {
                    Error::BadRequest("client_id: use 1 to 128 of A-Z a-z 0-9 _ . : -".into())
                })?;
                c
            }
            _ => id.to_string(),
        };
        Ok(Session {
            id,
            client_id,
            identity,
            transport,
            want_ids: transport == TransportKind::Sse,
            inbox,
            cursor: Cursor::new(),
            outbox,
            pending: VecDeque::new(),
            joined: HashSet::new(),
            _guard: guard,
            _gauge: ConnectionGauge::new(transport.as_str()),
            _stats: crate::stats::Connection::new(transport.as_str()),
            sessions: state,
        })
    }

    fn resync(&mut self, room: &str, head: u64) -> Outbound {
        crate::metrics::resync();
        self.cursor.set(room, head);
        Outbound::Message(
            ephemeral_json(
                room,
                Event::Resync(ResyncData {
                    reason: "history_trimmed".into(),
                    seq: head,
                }),
            )
            .into(),
        )
    }

    /// Follows `rooms` from the positions in `since` (missing rooms start at their head).
    /// Registers with the hub before reading positions; answers the control envelopes to send
    /// first (resyncs). Rooms already followed keep their position.
    pub async fn follow(
        &mut self,
        rooms: &[String],
        since: &Cursor,
        presence: bool,
    ) -> Result<Vec<Outbound>> {
        let new: HashSet<&String> = rooms
            .iter()
            .filter(|r| self.cursor.get(r).is_none())
            .collect();
        let limit = self.sessions.settings.max_rooms_per_connection;
        if self.cursor.len() + new.len() > limit {
            return Err(Error::TooManyRooms {
                count: self.cursor.len() + new.len(),
                limit,
            });
        }
        // Every room is checked before any is followed: a refused room follows none.
        for room in rooms {
            tidewire_protocol::validate_room(room)?;
            authorize(&self.identity, room, Access::Read)?;
        }
        let mut out = Vec::new();
        for room in rooms {
            self.sessions
                .hub
                .register(room, &self.id, self.outbox.clone(), presence);
            if self.cursor.get(room).is_some() {
                continue;
            }
            let head = self.sessions.service.head(room).await?;
            let start = since.get(room).unwrap_or(head);
            if start > head {
                out.push(self.resync(room, head));
            } else {
                self.cursor.set(room, start);
                if start < head {
                    self.pending.push_back((room.as_str().into(), head));
                }
            }
        }
        Ok(out)
    }

    /// Stops following `rooms` (and leaves their presence).
    pub async fn unfollow(&mut self, rooms: &[String]) {
        for room in rooms {
            self.sessions.hub.unregister(room, &self.id);
            self.cursor.remove(room);
            self.pending.retain(|(r, _)| &**r != room);
            if self.joined.remove(room) {
                let _ = self
                    .sessions
                    .service
                    .presence_leave(room, &self.id, &self.client_id)
                    .await;
            }
        }
    }

    /// The next page of the replay from the log, or `None` when it is done. Pass each item
    /// through [`Session::admit`].
    pub async fn replay_next(&mut self) -> Result<Option<Vec<Outbound>>> {
        while let Some((room, target)) = self.pending.pop_front() {
            let Some(pos) = self.cursor.get(&room) else {
                continue;
            };
            if pos >= target {
                continue;
            }
            let limit = (target - pos).min(REPLAY_PAGE) as usize;
            match self.sessions.service.read(&room, pos, limit).await {
                Ok(events) if events.is_empty() => continue,
                Ok(events) => {
                    crate::metrics::replay(events.len() as u64);
                    let last = events.last().map_or(pos, |e| e.seq);
                    if last < target {
                        self.pending.push_front((room.clone(), target));
                    }
                    return Ok(Some(
                        events
                            .into_iter()
                            .map(|e| Outbound::Durable {
                                room: room.clone(),
                                seq: e.seq,
                                payload: e.json.into(),
                            })
                            .collect(),
                    ));
                }
                Err(Error::HistoryTrimmed { head, .. }) => {
                    return Ok(Some(vec![self.resync(&room, head)]));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Decides what of `item` to send: a durable event the connection already has is
    /// dropped; one past a gap first brings the missing events from the store.
    pub async fn admit(&mut self, item: Outbound) -> Result<Vec<Ready>> {
        let mut out = Vec::new();
        self.admit_into(item, &mut out).await?;
        Ok(out)
    }

    /// [`Session::admit`], appending to `out` (a buffer the transport reuses).
    pub async fn admit_into(&mut self, item: Outbound, out: &mut Vec<Ready>) -> Result<()> {
        // What can be decided without the store is; a gap comes back.
        let Some(Outbound::Durable { room, seq, payload }) = self.admit_now(item, out) else {
            return Ok(());
        };
        let Some(pos) = self.cursor.get(&room) else {
            return Ok(());
        };
        if seq <= pos {
            return Ok(());
        }
        if seq > pos + 1 {
            match self
                .sessions
                .service
                .read(&room, pos, (seq - pos - 1) as usize)
                .await
            {
                Ok(events) => {
                    for e in events.into_iter().filter(|e| e.seq < seq) {
                        out.push(self.advance(&room, e.seq, e.json.into()));
                    }
                }
                Err(Error::HistoryTrimmed { head, .. }) => {
                    let Outbound::Message(payload) = self.resync(&room, head) else {
                        unreachable!("resync is a message")
                    };
                    out.push(Ready { payload, id: None });
                    if seq <= head {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        out.push(self.advance(&room, seq, payload));
        Ok(())
    }

    /// [`Session::admit_into`] without waiting: decides everything but a durable event past a
    /// gap, which it hands back for `admit_into` (which reads the missing events first).
    pub fn admit_now(&mut self, item: Outbound, out: &mut Vec<Ready>) -> Option<Outbound> {
        match item {
            Outbound::Message(payload) => {
                out.push(Ready { payload, id: None });
                None
            }
            Outbound::Durable { room, seq, payload } => {
                let pos = self.cursor.get(&room)?;
                if seq <= pos {
                    return None;
                }
                if seq > pos + 1 {
                    return Some(Outbound::Durable { room, seq, payload });
                }
                out.push(self.advance(&room, seq, payload));
                None
            }
        }
    }

    fn advance(&mut self, room: &str, seq: u64, payload: Utf8Bytes) -> Ready {
        self.cursor.set(room, seq);
        Ready {
            payload,
            id: self.want_ids.then(|| self.cursor.to_string()),
        }
    }

    /// `presence.state` envelopes for `rooms`.
    pub async fn presence_states(&self, rooms: &[String]) -> Result<Vec<Outbound>> {
        let mut out = Vec::new();
        for room in rooms {
            let members = self.sessions.service.members(room).await?;
            out.push(Outbound::Message(
                ephemeral_json(room, Event::PresenceState(PresenceState { members })).into(),
            ));
        }
        Ok(out)
    }

    /// Joins (or updates) this connection's member in `room`'s presence set.
    pub async fn join_presence(&mut self, room: &str, meta: serde_json::Value) -> Result<()> {
        tidewire_protocol::validate_room(room)?;
        self.sessions
            .policy
            .check_presence(&self.identity, room, &meta)
            .await?;
        if self.cursor.get(room).is_none() {
            // Presence is bounded by the rooms a connection may follow.
            return Err(Error::BadRequest(format!(
                "join presence in a room you subscribed to: not subscribed to `{room}`"
            )));
        }
        if self.identity.subject.is_some() {
            // A client id is held by the user who joined with it first: another user cannot
            // take over (or impersonate) that member.
            let members = self.sessions.service.members(room).await?;
            if members
                .iter()
                .any(|m| m.client_id == self.client_id && m.user != self.identity.subject)
            {
                return Err(Error::Forbidden(format!(
                    "client_id `{}` is held by another user in `{room}`",
                    self.client_id
                )));
            }
        }
        let member = tidewire_protocol::Member {
            client_id: self.client_id.clone(),
            user: self.identity.subject.clone(),
            meta,
        };
        self.sessions
            .service
            .presence_join(room, &self.id, member)
            .await?;
        self.joined.insert(room.to_owned());
        Ok(())
    }

    /// When the connection's token expires (`None`: never, auth is off). A token valid for
    /// more than 30 years (a huge `exp`) counts as valid for 30 years: no clock overflows.
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
        let grant = self.identity.grant.as_ref()?;
        tokio::time::Instant::now().checked_add(grant.remaining().min(FAR))
    }

    /// Replaces the connection's identity with a fresh token of the same subject. Rooms the
    /// new token may not read are left.
    pub async fn reauthenticate(&mut self, identity: ClientIdentity) -> Result<()> {
        if identity.subject != self.identity.subject {
            return Err(Error::Forbidden(
                "a refreshed token must be for the same subject".into(),
            ));
        }
        self.identity = identity;
        let lost: Vec<String> = self
            .cursor
            .iter()
            .map(|(room, _)| room.to_string())
            .filter(|room| authorize(&self.identity, room, Access::Read).is_err())
            .collect();
        self.unfollow(&lost).await;
        Ok(())
    }

    /// Marks the connection alive for presence TTLs.
    pub async fn touch(&self) {
        if !self.joined.is_empty() {
            let _ = self.sessions.service.presence_touch(&self.id).await;
        }
    }

    /// The write policy (for the commands a connection sends).
    pub fn policy(&self) -> &Policy {
        &self.sessions.policy
    }

    /// The `Outbound` for this connection's `error` envelope (room "").
    pub fn error_message(code: tidewire_protocol::ErrorCode, message: &str) -> Utf8Bytes {
        ephemeral_json(
            "",
            Event::Error(tidewire_protocol::ErrorData {
                code,
                message: message.to_owned(),
            }),
        )
        .into()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (room, _) in self.cursor.iter() {
            self.sessions.hub.unregister(room, &self.id);
        }
        if !self.joined.is_empty() {
            let service = self.sessions.service.clone();
            let joined = std::mem::take(&mut self.joined);
            let (id, client) = (self.id.clone(), self.client_id.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    for room in joined {
                        let _ = service.presence_leave(&room, &id, &client).await;
                    }
                });
            }
        }
    }
}

/// Parses `rooms=a,b` (required, at most `limit`).
pub fn parse_rooms(rooms: Option<&str>, limit: usize) -> Result<Vec<String>> {
    let rooms = rooms.filter(|r| !r.is_empty()).ok_or_else(|| {
        Error::BadRequest("query parameter `rooms` is required (rooms=a,b)".into())
    })?;
    let list: Vec<String> = rooms.split(',').map(str::to_owned).collect();
    if list.len() > limit {
        return Err(Error::TooManyRooms {
            count: list.len(),
            limit,
        });
    }
    let mut seen = HashSet::new();
    for r in &list {
        tidewire_protocol::validate_room(r)?;
        if !seen.insert(r) {
            return Err(Error::BadRequest(format!("room `{r}` named twice")));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{WriteOp, WriteRequest};
    use crate::{Config, Server};
    use tidewire_protocol::RawAppEvent;

    async fn server() -> Server {
        Server::new(Config {
            database: "sqlite::memory:".into(),
            retention_events: 4,
            ..Config::default()
        })
        .await
        .unwrap()
    }

    /// Appends straight to the store, as if the bus had lost the message.
    async fn append_unpublished(s: &Server, room: &str, n: u64) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let w = s
                .state()
                .service
                .store()
                .write(WriteRequest::new(
                    room,
                    WriteOp::Publish(RawAppEvent {
                        event_type: "e".into(),
                        data: serde_json::Value::Null,
                    }),
                ))
                .await
                .unwrap();
            out.push(w.json);
        }
        out
    }

    /// An anonymous session of `s` on `transport`.
    async fn open(s: &Server, transport: TransportKind) -> Session {
        let id = ClientIdentity::anonymous("t");
        s.state().sessions.open(id, transport, None).await.unwrap()
    }

    fn durable(room: &str, seq: u64, json: &str) -> Outbound {
        Outbound::Durable {
            room: room.into(),
            seq,
            payload: json.to_owned().into(),
        }
    }

    #[tokio::test]
    async fn admit_drops_duplicates_and_fills_gaps_from_the_store() {
        let s = server().await;
        let mut session = open(&s, TransportKind::Sse).await;
        let since: Cursor = "r=0".parse().unwrap();
        assert!(session
            .follow(&["r".into()], &since, false)
            .await
            .unwrap()
            .is_empty());
        let events = append_unpublished(&s, "r", 3).await;
        // seq 3 arrives first: 1 and 2 come from the store, each with its own id.
        let ready = session.admit(durable("r", 3, &events[2])).await.unwrap();
        let ids: Vec<_> = ready.iter().map(|r| r.id.clone().unwrap()).collect();
        assert_eq!(ids, ["r=1", "r=2", "r=3"]);
        assert!(session
            .admit(durable("r", 2, &events[1]))
            .await
            .unwrap()
            .is_empty());
        assert!(session
            .admit(durable("r", 3, &events[2]))
            .await
            .unwrap()
            .is_empty());
        // Rooms not followed are ignored.
        assert!(session
            .admit(durable("other", 1, &events[0]))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_gap_older_than_the_log_becomes_a_resync() {
        let s = server().await;
        let mut session = open(&s, TransportKind::Ws).await;
        append_unpublished(&s, "r", 1).await;
        session
            .follow(&["r".into()], &"r=1".parse().unwrap(), false)
            .await
            .unwrap();
        let events = append_unpublished(&s, "r", 8).await; // seq 2..=9, keeps 6..=9
        let ready = session.admit(durable("r", 9, &events[7])).await.unwrap();
        let first: serde_json::Value = serde_json::from_str(ready[0].payload.as_str()).unwrap();
        assert_eq!(first["type"], "resync");
        assert_eq!(first["data"]["seq"], 9);
        assert_eq!(ready.len(), 1, "the event itself is covered by the resync");
        assert_eq!(session.cursor.get("r"), Some(9));
    }

    #[tokio::test]
    async fn follow_checks_the_room_limit_and_future_positions_resync() {
        let s = Server::new(Config {
            database: "sqlite::memory:".into(),
            max_rooms_per_connection: 2,
            ..Config::default()
        })
        .await
        .unwrap();
        let mut session = open(&s, TransportKind::Ws).await;
        let rooms: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let err = session
            .follow(&rooms, &Cursor::new(), false)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::TooManyRooms { count: 3, limit: 2 }));
        let out = session
            .follow(&rooms[..1], &"a=50".parse().unwrap(), false)
            .await
            .unwrap();
        assert_eq!(out.len(), 1, "a position past the head is a resync");
        assert_eq!(session.cursor.get("a"), Some(0));
        assert_eq!(s.state().sessions.hub.subscribers("a"), 1);
        drop(session);
        assert_eq!(
            s.state().sessions.hub.subscribers("a"),
            0,
            "dropping unregisters"
        );
    }
}
