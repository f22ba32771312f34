//! Bodies of the REST endpoints.
//!
//! ```
//! use tidewire_protocol::Snapshot;
//! let s: Snapshot = serde_json::from_str(r#"{"room":"r","seq":3,"items":{"a":{"value":1,"version":2,"updated_at":"t"}}}"#).unwrap();
//! assert_eq!(s.items["a"].version, 2);
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::event::{Member, RawAppEvent};
use crate::Envelope;

/// One item in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ItemState {
    /// The value.
    pub value: Value,
    /// The version (see [`Item::version`](crate::Item::version)).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub version: u64,
    /// When it was last written, RFC 3339.
    pub updated_at: String,
}

/// `GET /v1/rooms/{room}/snapshot`: the room's state and the `seq` it reflects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Snapshot {
    /// The room.
    pub room: String,
    /// The last `seq` whose effect the items include.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub seq: u64,
    /// Live items by id.
    pub items: BTreeMap<String, ItemState>,
}

/// `GET /v1/poll`: events after the cursor and the cursor to poll from next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    deserialize = "Envelope<A>: Deserialize<'de>",
    serialize = "Envelope<A>: Serialize"
))]
pub struct PollResponse<A = RawAppEvent> {
    /// Events in `seq` order per room.
    pub events: Vec<Envelope<A>>,
    /// The position after these events, for every room polled.
    pub cursor: String,
}

/// `GET /v1/rooms/{room}/presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PresenceList {
    /// The room.
    pub room: String,
    /// Who is here now.
    pub members: Vec<Member>,
}

/// `POST /v1/tickets`: a short-lived single-use ticket for `?ticket=` on SSE and WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TicketResponse {
    /// The ticket.
    pub ticket: String,
    /// Seconds until it expires.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub expires_in: u64,
}
