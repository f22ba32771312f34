//! `GET /v1/poll?rooms=a,b&since=<cursor>&wait=25` — long-poll. Answers at once when there are
//! durable events after the cursor (at most 1000), otherwise waits up to `wait` seconds for
//! one; always answers the next cursor. A wait cut short by the server draining answers a
//! `reconnect` envelope with a jittered `retry_ms`, as SSE and WebSocket clients get. A position the log no longer holds answers a `resync`
//! envelope for that room and moves the cursor to its head.
//!
//! ```text
//! GET /v1/poll?rooms=a&since=a=4&wait=25
//! 200 {"events":[{"v":1,"type":"item.put","room":"a","seq":5,…}],"cursor":"a=5"}
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use tidewire_protocol::{Cursor, Envelope, PollResponse};

use crate::identity::ClientIdentity;
use crate::outbound::{Outbound, TransportKind};
use crate::session::{parse_rooms, Ready, Sessions};
use crate::{Error, Result};

/// Most events in one answer.
const MAX_EVENTS: usize = 1000;

/// Query parameters of `/v1/poll`.
#[derive(Debug, Default, Deserialize)]
pub struct PollQuery {
    rooms: Option<String>,
    since: Option<String>,
    wait: Option<String>,
}

/// The long-poll handler.
pub async fn handler(
    State(state): State<Arc<Sessions>>,
    identity: ClientIdentity,
    query: std::result::Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PollResponse>> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let limit = state.settings().max_rooms_per_connection;
    let rooms = parse_rooms(q.rooms.as_deref(), limit)?;
    let since = Cursor::parse_limited(q.since.as_deref().unwrap_or(""), limit)?;
    let wait = match q.wait.as_deref() {
        None => 25,
        Some(w) => match w.parse::<u64>() {
            Ok(n) if n <= 60 => n,
            _ => return Err(Error::BadRequest("`wait` must be 0 to 60 seconds".into())),
        },
    };
    let mut session = state.open(identity, TransportKind::Poll, None).await?;
    let mut payloads = Vec::new();
    let mut catch_up = session.catch_up(&rooms, &since, false).await?;
    while payloads.len() < MAX_EVENTS {
        let Some(page) = catch_up.next(&mut session).await? else {
            break;
        };
        payloads.extend(page);
    }
    if payloads.is_empty() && wait > 0 {
        // Never wait past the token's expiry: a later answer would carry events it may not see.
        let mut wait = Duration::from_secs(wait);
        if let Some(grant) = &session.identity.grant {
            wait = wait.min(grant.remaining());
        }
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let draining = state.shutdown().draining();
        tokio::pin!(draining);
        while payloads.is_empty() {
            tokio::select! {
                _ = &mut deadline => break,
                _ = &mut draining => {
                    // A waiting client is told when to come back, spread over the drain
                    // window like every other transport's clients.
                    let env = state.shutdown().reconnect_envelope();
                    payloads.push(Ready { payload: env.into(), id: None });
                    break;
                }
                item = session.inbox.recv() => {
                    let Some(item) = item else { break };
                    let mut batch = vec![item];
                    while batch.len() < MAX_EVENTS {
                        match session.inbox.try_recv() {
                            Some(more) => batch.push(more),
                            None => break,
                        }
                    }
                    for item in batch {
                        if matches!(item, Outbound::Durable { .. }) {
                            payloads.extend(session.admit(item).await?);
                        }
                    }
                }
            }
        }
    }
    let events = payloads
        .iter()
        .map(|r| Envelope::decode(r.payload.as_str()).map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    crate::metrics::sent(TransportKind::Poll.as_str(), events.len() as u64, 0);
    crate::stats::sent(TransportKind::Poll.as_str(), events.len() as u64);
    Ok(Json(PollResponse {
        events,
        cursor: session.cursor.to_string(),
    }))
}
