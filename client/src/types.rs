//! The public event types: what listeners receive and what the JavaScript callbacks get as
//! plain objects (their TypeScript declarations are generated from these types, see
//! `client/types/client.d.ts`). Pure data, built natively too.
//!
//! ```
//! use tidewire_client::state::ConnState;
//! use tidewire_client::{Cause, LocalCause, RoomUpdate, StateChange};
//! let change = StateChange { state: ConnState::Open, transport: None };
//! assert_eq!(serde_json::to_value(&change).unwrap(), serde_json::json!({"state": "open", "transport": null}));
//! let update = RoomUpdate {
//!     items: vec![],
//!     seq: 3,
//!     event: Cause::Local(LocalCause::Snapshot { room: "board".into(), seq: 3 }),
//! };
//! assert_eq!(serde_json::to_value(&update).unwrap()["event"]["type"], "snapshot");
//! ```

use serde::Serialize;
use serde_json::Value;
use tidewire_protocol::{Envelope, Member};

use crate::room::ViewItem;
use crate::state::{ConnState, TransportKind};
use crate::Error;

/// A state change, as listeners see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    /// The new state.
    #[serde(flatten)]
    pub state: ConnState,
    /// The transport in use or being tried.
    pub transport: Option<TransportKind>,
}

/// Why a room's state changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cause {
    /// A durable event from the server was applied.
    Event(Envelope),
    /// Something local or a snapshot.
    Local(LocalCause),
}

/// A change not caused by one server event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum LocalCause {
    /// The snapshot was (re-)fetched.
    #[serde(rename = "snapshot")]
    Snapshot {
        /// The room.
        room: String,
        /// The seq the snapshot reflects.
        seq: u64,
    },
    /// An optimistic write was applied locally.
    #[serde(rename = "pending")]
    Pending {
        /// The room.
        room: String,
        /// The item.
        id: String,
        /// The write's idempotency key.
        key: String,
    },
    /// An optimistic write was rolled back.
    #[serde(rename = "rollback")]
    Rollback {
        /// The room.
        room: String,
        /// The item.
        id: String,
        /// The write's idempotency key.
        key: String,
    },
}

/// A room's new state and what caused it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RoomUpdate {
    /// The items, sorted by id, pending ones included.
    pub items: Vec<ViewItem>,
    /// The last applied seq.
    pub seq: u64,
    /// The cause.
    #[cfg_attr(feature = "ts", ts(type = "RoomUpdateCause"))]
    pub event: Cause,
}

/// An error as listeners see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ErrorInfo {
    /// The stable code.
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

impl From<&Error> for ErrorInfo {
    fn from(e: &Error) -> Self {
        ErrorInfo {
            code: e.code().to_owned(),
            message: e.to_string(),
        }
    }
}

/// An optimistic write the server refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "RollbackInfo"))]
pub struct Rollback {
    /// The item.
    pub id: String,
    /// The server's current value (`null` when the item does not exist).
    #[cfg_attr(feature = "ts", ts(type = "any"))]
    pub value: Value,
    /// The server's current version, when known.
    pub version: Option<u64>,
    /// Why.
    pub error: ErrorInfo,
}

/// A presence change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PresenceUpdate {
    /// `join`, `leave` or `state`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "ts", ts(type = "'join' | 'leave' | 'state'"))]
    pub kind: &'static str,
    /// Who joined or left (absent for `state`).
    #[cfg_attr(feature = "ts", ts(type = "PresenceMember | null"))]
    pub member: Option<Member>,
    /// Everyone present now.
    #[cfg_attr(feature = "ts", ts(type = "PresenceMember[]"))]
    pub members: Vec<Member>,
}

/// A broadcast message from another client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct BroadcastMessage {
    /// The application's name for it.
    pub event: String,
    /// Its payload.
    #[cfg_attr(feature = "ts", ts(type = "any"))]
    pub data: Value,
    /// The sender's client id (chosen by the sending client).
    pub from: Option<String>,
    /// The sender's authenticated subject, set by the server when auth is on: what to trust
    /// about who sent it.
    pub user: Option<String>,
}
