//! One outbox row through the server's write path: the checks the REST and WebSocket
//! handlers make (names, sizes, key), the write request, and what the answer means for the
//! row: ingested, dead letter, or retry later.
//!
//! ```
//! use tidewire_server::outbox::ingest::{request, OutboxRow};
//! use tidewire_server::outbox::Limits;
//! let row = OutboxRow {
//!     id: 7,
//!     room: "board-1".into(),
//!     op: "put".into(),
//!     event_type: None,
//!     item_id: Some("card-1".into()),
//!     data: Some(r#"{"title": "hi"}"#.into()),
//!     key: None,
//! };
//! let limits = Limits { max_item_bytes: 1024, max_data_bytes: 1024 };
//! let req = request(&row, "abc", limits).unwrap();
//! assert_eq!(req.key.as_deref(), Some("outbox:abc:7"));
//! ```

use serde_json::Value;
use tidewire_protocol::{
    validate_event_type, validate_idempotency_key, validate_item_id, validate_room, RawAppEvent,
};

use super::Limits;
use crate::store::{WriteOp, WriteRequest};
use crate::Error;

/// A row of `tidewire.outbox`, as read (`data` as JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its id: the order of the room's calls.
    pub id: i64,
    /// The room.
    pub room: String,
    /// `publish`, `put` or `delete`.
    pub op: String,
    /// The app event's type (`publish`).
    pub event_type: Option<String>,
    /// The item id (`put`, `delete`).
    pub item_id: Option<String>,
    /// The event data or item value, as JSON text.
    pub data: Option<String>,
    /// The caller's idempotency key.
    pub key: Option<String>,
}

/// What became of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended (or already appended: an idempotent replay), or a delete of an item that is
    /// not there: the row is done.
    Done,
    /// Refused for good (a limit lowered since, a reused key): the row goes to the dead letters
    /// with this reason.
    Dead(String),
    /// The store failed: the row and the room's later rows wait for a retry.
    Retry(String),
}

/// The idempotency key of a row: the caller's, or `outbox:<install id>:<row id>`, so a row
/// read again after a crash between the Tidewire commit and the outbox delete is answered as
/// a replay instead of appended twice.
pub fn row_key(row: &OutboxRow, install_id: &str) -> String {
    match &row.key {
        Some(k) => k.clone(),
        None => format!("outbox:{install_id}:{}", row.id),
    }
}

/// The write request of `row`, or why the server refuses it (the row's dead-letter reason).
pub fn request(row: &OutboxRow, install_id: &str, limits: Limits) -> Result<WriteRequest, String> {
    let bad = |e: tidewire_protocol::ProtocolError| e.to_string();
    validate_room(&row.room).map_err(bad)?;
    if let Some(key) = &row.key {
        validate_idempotency_key(key).map_err(bad)?;
    }
    let json = |limit: usize| -> Result<Value, String> {
        let text = row.data.as_deref().ok_or("the row has no data")?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("the row's JSON: {e}"))?;
        let size = value.to_string().len();
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit }.to_string());
        }
        Ok(value)
    };
    let id = || -> Result<String, String> {
        let id = row.item_id.clone().ok_or("the row has no item id")?;
        validate_item_id(&id).map_err(bad)?;
        Ok(id)
    };
    let op = match row.op.as_str() {
        "publish" => {
            let event_type = row.event_type.clone().ok_or("the row has no event type")?;
            validate_event_type(&event_type).map_err(bad)?;
            WriteOp::Publish(RawAppEvent {
                event_type,
                data: json(limits.max_data_bytes)?,
            })
        }
        "put" => WriteOp::Put {
            id: id()?,
            value: json(limits.max_item_bytes)?,
        },
        "delete" => WriteOp::Delete { id: id()? },
        other => return Err(format!("unknown op `{other}`")),
    };
    Ok(WriteRequest::new(&row.room, op).key(row_key(row, install_id)))
}

/// What the write path's error means for a row. A delete of an item that is not there is
/// done (a table watched after its rows existed, or a row deleted twice): the room already
/// says what the app says. Refusals are dead letters; failures of the store are retried.
pub fn outcome(is_delete: bool, err: &Error) -> Outcome {
    match err {
        Error::NotFound(_) if is_delete => Outcome::Done,
        Error::Store(_)
        | Error::Unavailable(_)
        | Error::Internal(_)
        | Error::Config(_)
        | Error::Outbox(_)
        | Error::ShuttingDown => Outcome::Retry(err.to_string()),
        other => Outcome::Dead(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    const LIMITS: Limits = Limits {
        max_item_bytes: 16,
        max_data_bytes: 32,
    };

    fn row(op: &str) -> OutboxRow {
        OutboxRow {
            id: 42,
            room: "r".into(),
            op: op.into(),
            event_type: Some("chat".into()),
            item_id: Some("a".into()),
            data: Some("{\"k\": 1}".into()),
            key: None,
        }
    }

    #[test]
    fn rows_become_the_writes_the_rest_api_would_make() {
        let put = request(&row("put"), "i", LIMITS).unwrap();
        assert_eq!(
            put.op,
            WriteOp::Put {
                id: "a".into(),
                value: serde_json::json!({"k": 1})
            }
        );
        assert_eq!(put.key.as_deref(), Some("outbox:i:42"));
        let mut keyed = row("delete");
        keyed.key = Some("app-1".into());
        let del = request(&keyed, "i", LIMITS).unwrap();
        assert_eq!(del.op, WriteOp::Delete { id: "a".into() });
        assert_eq!(del.key.as_deref(), Some("app-1"));
        let publish = request(&row("publish"), "i", LIMITS).unwrap();
        assert!(matches!(publish.op, WriteOp::Publish(ref e) if e.event_type == "chat"));
    }

    #[test]
    fn what_the_server_refuses_is_a_reason() {
        let mut big = row("put");
        big.data = Some(format!("\"{}\"", "x".repeat(20)));
        assert!(request(&big, "i", LIMITS)
            .unwrap_err()
            .contains("payload too large"));
        // The compact size counts, not PostgreSQL's spaced text.
        let mut spaced = row("put");
        spaced.data = Some("[1, 2, 3, 4, 5, 6, 7]".into());
        assert!(request(&spaced, "i", LIMITS).is_ok());
        let mut room = row("put");
        room.room = "a b".into();
        assert!(request(&room, "i", LIMITS).is_err());
        let mut ty = row("publish");
        ty.event_type = Some("item.put".into());
        assert!(request(&ty, "i", LIMITS).is_err());
        let mut key = row("publish");
        key.key = Some("a key".into());
        assert!(request(&key, "i", LIMITS).is_err());
        let mut huge = row("publish");
        huge.data = Some("1e400".into());
        assert!(request(&huge, "i", LIMITS).is_err(), "out of range");
        assert!(request(&row("drop"), "i", LIMITS).is_err());
    }

    #[test]
    fn errors_sort_into_done_dead_and_retry() {
        let (del, put) = (true, false);
        let missing = Error::NotFound("no item".into());
        assert_eq!(outcome(del, &missing), Outcome::Done);
        assert!(matches!(outcome(put, &missing), Outcome::Dead(_)));
        let reused = Error::IdempotencyKeyReused("k".into());
        assert!(matches!(outcome(put, &reused), Outcome::Dead(_)));
        let down = Error::Store(StoreError::new("sqlite", std::io::Error::other("disk")));
        assert!(matches!(outcome(put, &down), Outcome::Retry(_)));
    }
}
