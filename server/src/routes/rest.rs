//! The REST endpoints under `/v1/rooms/{room}`: snapshot, item writes, app events, history,
//! presence. Writes answer the envelope of the event they appended.
//!
//! ```text
//! PUT /v1/rooms/board-1/items/slot-3   Idempotency-Key: k-1   If-Match: "6"
//! {"free":true}
//! → 200 ETag: "7"  {"v":1,"type":"item.put","room":"board-1","seq":42,…}
//! ```

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use tidewire_protocol::{
    validate_event_type, validate_idempotency_key, validate_item_id, validate_room, Envelope,
    Event, PresenceList, RawAppEvent, Snapshot,
};

use std::sync::Arc;

use crate::identity::{authorize, Access, ClientIdentity};
use crate::policy::Policy;
use crate::service::Service;
use crate::state::BodyLimit;
use crate::store::{WriteOp, WriteRequest, Written};
use crate::{Error, Result};

type Rejectable<T, R> = std::result::Result<T, R>;

fn room_path(path: Rejectable<Path<String>, PathRejection>) -> Result<String> {
    let Path(room) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    validate_room(&room)?;
    Ok(room)
}

fn item_path(path: Rejectable<Path<(String, String)>, PathRejection>) -> Result<(String, String)> {
    let Path((room, id)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    validate_room(&room)?;
    validate_item_id(&id)?;
    Ok((room, id))
}

fn body_bytes(
    body: Rejectable<Bytes, BytesRejection>,
    BodyLimit(limit): BodyLimit,
) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge {
                size: limit + 1,
                limit,
            }
        } else {
            Error::BadRequest(e.body_text())
        }
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| tidewire_protocol::ProtocolError::BadIdempotencyKey)?;
            validate_idempotency_key(key)?;
            Ok(Some(key.to_owned()))
        }
    }
}

/// Parses `If-Match`: `"7"`, `7` or `W/"7"`.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || Error::BadRequest("If-Match must be a version: \"7\", 7 or W/\"7\"".into());
    let text = v.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map(Some).map_err(|_| bad())
}

fn write_response(written: Written) -> Response {
    let mut res = ([(header::CONTENT_TYPE, "application/json")], written.json).into_response();
    let h = res.headers_mut();
    let version = match &written.envelope.event {
        Event::ItemPut(i) => Some(i.version),
        Event::ItemDeleted(d) => Some(d.version),
        _ => None,
    };
    if let Some(v) = version {
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{v}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
    if written.replayed {
        h.insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    res
}

async fn write(
    policy: &Policy,
    who: &ClientIdentity,
    room: String,
    op: WriteOp,
    headers: &HeaderMap,
) -> Result<Response> {
    let req = WriteRequest {
        room,
        op,
        key: idempotency_key(headers)?,
        if_match: if_match(headers)?,
    };
    Ok(write_response(policy.write(who, req).await?))
}

/// `GET /v1/rooms/{room}/snapshot`
pub async fn snapshot(
    State(service): State<Arc<Service>>,
    who: ClientIdentity,
    path: Rejectable<Path<String>, PathRejection>,
) -> Result<Json<Snapshot>> {
    let room = room_path(path)?;
    authorize(&who, &room, Access::Read)?;
    Ok(Json(service.snapshot(&room).await?))
}

/// `PUT /v1/rooms/{room}/items/{id}`
pub async fn put_item(
    State(policy): State<Policy>,
    State(limit): State<BodyLimit>,
    who: ClientIdentity,
    path: Rejectable<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Rejectable<Bytes, BytesRejection>,
) -> Result<Response> {
    let (room, id) = item_path(path)?;
    let body = body_bytes(body, limit)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| tidewire_protocol::ProtocolError::BadJson(e.to_string()))?;
    write(&policy, &who, room, WriteOp::Put { id, value }, &headers).await
}

/// `DELETE /v1/rooms/{room}/items/{id}`
pub async fn delete_item(
    State(policy): State<Policy>,
    who: ClientIdentity,
    path: Rejectable<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let (room, id) = item_path(path)?;
    write(&policy, &who, room, WriteOp::Delete { id }, &headers).await
}

/// `POST /v1/rooms/{room}/events`
pub async fn post_event(
    State(policy): State<Policy>,
    State(limit): State<BodyLimit>,
    who: ClientIdentity,
    path: Rejectable<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Rejectable<Bytes, BytesRejection>,
) -> Result<Response> {
    let room = room_path(path)?;
    let body = body_bytes(body, limit)?;
    let event: RawAppEvent = serde_json::from_slice(&body)
        .map_err(|e| tidewire_protocol::ProtocolError::BadJson(e.to_string()))?;
    validate_event_type(&event.event_type)?;
    write(&policy, &who, room, WriteOp::Publish(event), &headers).await
}

/// Query of the history endpoint.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/rooms/{room}/events?after=SEQ&limit=N`
pub async fn history(
    State(service): State<Arc<Service>>,
    who: ClientIdentity,
    path: Rejectable<Path<String>, PathRejection>,
    query: Rejectable<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<Envelope>>> {
    let room = room_path(path)?;
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let number = |v: Option<&str>, name: &str, default: u64| -> Result<u64> {
        match v {
            None => Ok(default),
            Some(t) => t
                .parse()
                .map_err(|_| Error::BadRequest(format!("`{name}` must be a non-negative integer"))),
        }
    };
    let after = number(q.after.as_deref(), "after", 0)?;
    let limit = number(q.limit.as_deref(), "limit", 100)?;
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest("`limit` must be 1 to 1000".into()));
    }
    authorize(&who, &room, Access::Read)?;
    let events = service.read(&room, after, limit as usize).await?;
    let envelopes = events
        .iter()
        .map(|e| e.envelope())
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(envelopes))
}

/// `GET /v1/rooms/{room}/presence`
pub async fn presence(
    State(service): State<Arc<Service>>,
    who: ClientIdentity,
    path: Rejectable<Path<String>, PathRejection>,
) -> Result<Json<PresenceList>> {
    let room = room_path(path)?;
    authorize(&who, &room, Access::Read)?;
    let members = service.members(&room).await?;
    Ok(Json(PresenceList { room, members }))
}
