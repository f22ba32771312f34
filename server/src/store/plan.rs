//! The backend-independent part of a write. From the item as the backend stored it, decide
//! the event the write appends and the change it makes to the item row; each backend only
//! reads the row and applies the change in its own SQL, inside its one transaction.
//!
//! ```ignore
//! let (event, change) = plan::decide(&req, stored)?;   // If-Match, not_found, next version
//! // apply `change` to the items table, then:
//! let (envelope, json) = plan::envelope(&req, seq, ts, event);
//! ```

use tidewire_protocol::{Envelope, Event, Item, ItemDeleted};

use super::{WriteOp, WriteRequest};
use crate::{Error, Result};

/// An item row as stored: `value` is `None` for a tombstone (a deleted item keeps its version).
#[derive(Debug, Clone)]
pub(crate) struct StoredItem {
    /// The value as JSON text, or `None` for a tombstone.
    pub value: Option<String>,
    /// The last version written (by a put or a delete).
    pub version: u64,
}

/// What a write does to the item row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ItemChange {
    /// App events leave items alone.
    None,
    /// Insert or replace the row with this value and version.
    Upsert {
        /// The item id.
        id: String,
        /// The new value as JSON text.
        value_json: String,
        /// The new version.
        version: u64,
    },
    /// Turn the row into a tombstone at this version.
    Tombstone {
        /// The item id.
        id: String,
        /// The version of the deletion.
        version: u64,
    },
}

/// Decides the event and the row change of `req`, given the item row as stored now (`None`
/// when there is none, and always `None` for app events). Fails with `version_conflict` (with
/// the live item) when `If-Match` does not name the live version (0 = must not exist), and
/// with `not_found` when deleting an item that is not live.
pub(crate) fn decide(
    req: &WriteRequest,
    stored: Option<StoredItem>,
) -> Result<(Event, ItemChange)> {
    let id = match &req.op {
        WriteOp::Publish(app) => return Ok((Event::App(app.clone()), ItemChange::None)),
        WriteOp::Put { id, .. } | WriteOp::Delete { id } => id,
    };
    let last_version = stored.as_ref().map_or(0, |s| s.version);
    let live = match stored {
        Some(StoredItem {
            value: Some(text),
            version,
        }) => Some(Item {
            id: id.clone(),
            value: serde_json::from_str(&text)
                .map_err(|e| Error::Internal(format!("stored item is not JSON: {e}")))?,
            version,
        }),
        _ => None,
    };
    if let Some(expected) = req.if_match {
        if live.as_ref().map_or(0, |i| i.version) != expected {
            return Err(conflict(expected, live));
        }
    }
    let version = last_version + 1;
    Ok(match &req.op {
        WriteOp::Put { value, .. } => (
            Event::ItemPut(Item {
                id: id.clone(),
                value: value.clone(),
                version,
            }),
            ItemChange::Upsert {
                id: id.clone(),
                value_json: value.to_string(),
                version,
            },
        ),
        _ => {
            if live.is_none() {
                return Err(Error::NotFound(format!("no item `{id}` in this room")));
            }
            (
                Event::ItemDeleted(ItemDeleted {
                    id: id.clone(),
                    version,
                }),
                ItemChange::Tombstone {
                    id: id.clone(),
                    version,
                },
            )
        }
    })
}

/// The envelope a write appends at `seq`, and its JSON (serialised once, stored and sent as is).
pub(crate) fn envelope(
    req: &WriteRequest,
    seq: u64,
    ts: String,
    event: Event,
) -> (Envelope, String) {
    let envelope = Envelope {
        room: req.room.clone(),
        seq: Some(seq),
        id: ulid::Ulid::generate().to_string(),
        ts,
        key: req.key.clone(),
        event,
    };
    let json = envelope.encode();
    (envelope, json)
}

fn conflict(expected: u64, current: Option<Item>) -> Error {
    let detail = match &current {
        Some(item) => format!(
            "If-Match {expected} but the item is at version {}",
            item.version
        ),
        None => format!("If-Match {expected} but the item does not exist"),
    };
    Error::VersionConflict { detail, current }
}
