//! Typed events: the `type` + `data` part of an [`Envelope`](crate::Envelope).
//!
//! Built-in types change state (`item.put`, `item.deleted`), carry ephemeral traffic
//! (`broadcast`, `presence.*`) or control the connection (`resync`, `reconnect`, `error`).
//! Every other type is an application event, decoded into the application's own type through
//! [`AppEvent`]:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tidewire_protocol::{impl_app_event, Envelope, Event};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum Chat {
//!     #[serde(rename = "chat.message")]
//!     Message { text: String },
//!     #[serde(rename = "chat.cleared")]
//!     Cleared,
//! }
//! impl_app_event!(Chat);
//!
//! let json = r#"{"v":1,"type":"chat.message","room":"r","seq":3,"id":"e3","ts":"t","key":null,"data":{"text":"hi"}}"#;
//! let env: Envelope<Chat> = Envelope::decode(json).unwrap();
//! assert_eq!(env.event, Event::App(Chat::Message { text: "hi".into() }));
//! ```

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::borrow::Cow;

use crate::{ErrorCode, ProtocolError};

/// The built-in event types, in the order of [`Event`]'s variants.
pub const BUILTIN_EVENT_TYPES: &[&str] = &[
    "item.put",
    "item.deleted",
    "broadcast",
    "presence.join",
    "presence.leave",
    "presence.state",
    "resync",
    "reconnect",
    "error",
];

/// Whether an application may not use `ty` as its own event type: built-in types, the
/// `item.` / `presence.` / `tidewire.` families, and the WebSocket reply types `ack` and `pong`.
pub(crate) fn is_reserved_event_type(ty: &str) -> bool {
    BUILTIN_EVENT_TYPES.contains(&ty)
        || ty.starts_with("item.")
        || ty.starts_with("presence.")
        || ty.starts_with("tidewire.")
        || ty == "ack"
        || ty == "pong"
}

/// An item as a state-changing event carries it: the whole new value and its version, so a
/// client can rebuild from a single late event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Item {
    /// The item id, unique within its room.
    pub id: String,
    /// The item's value: any JSON.
    pub value: Value,
    /// The item's version: 1 on first write, +1 on every write or delete.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub version: u64,
}

/// `item.deleted`: the item is gone; `version` is the version the delete produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ItemDeleted {
    /// The item id.
    pub id: String,
    /// The version of the deletion (the last version + 1).
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub version: u64,
}

/// `broadcast`: an ephemeral message to everyone in the room (cursor moves, typing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct BroadcastData {
    /// The application's name for this broadcast (`cursor`, `typing`, …).
    pub event: String,
    /// Any JSON payload.
    #[serde(default)]
    pub data: Value,
    /// The sending connection's client id, when known (chosen by that client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub from: Option<String>,
    /// The sender's authenticated subject, set by the server when auth is on (a client cannot
    /// choose it): what to trust about who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub user: Option<String>,
}

/// One member of a room's presence set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Member {
    /// The connection's client id (stable across a quick reconnect).
    pub client_id: String,
    /// The authenticated subject, when auth is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub user: Option<String>,
    /// Application metadata (name, colour, …).
    #[serde(default)]
    pub meta: Value,
}

/// `presence.state`: the whole presence set, sent when a connection starts following presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PresenceState {
    /// Everyone present now.
    pub members: Vec<Member>,
}

/// `resync`: the log no longer reaches back to the client's position; re-fetch the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ResyncData {
    /// Why (`history_trimmed`, `slow_consumer`, …).
    pub reason: String,
    /// The room's latest `seq` when the resync was sent.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub seq: u64,
}

/// `reconnect`: the server is going away; reconnect after `retry_ms` (already jittered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ReconnectData {
    /// How long to wait before reconnecting, in milliseconds.
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    pub retry_ms: u64,
    /// Why (`shutting_down`, `slow_consumer`, `token_expired`, …).
    pub reason: String,
}

/// `error`: something went wrong on this stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ErrorData {
    /// The stable code.
    #[cfg_attr(feature = "ts", ts(type = "ErrorCode"))]
    pub code: ErrorCode,
    /// A human-readable message.
    pub message: String,
}

/// An application event in its dynamic form: any non-reserved `type` with any JSON `data`.
/// This is also the body of `POST /v1/rooms/{room}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RawAppEvent {
    /// The application's event type, e.g. `chat.message`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Any JSON payload.
    #[serde(default)]
    pub data: Value,
}

/// An application's own event type, carried in envelopes whose `type` is not built-in.
///
/// Contract: `event_type` returns a name that passes
/// [`validate_event_type`](crate::validate_event_type); `from_parts(t, d)` accepts what
/// `event_type` / `serialize_data` produced (round trip), and answers
/// [`ProtocolError::UnknownEventType`] for a type it does not know.
///
/// [`RawAppEvent`] accepts every type. For a serde enum tagged as
/// `#[serde(tag = "type", content = "data")]`, [`impl_app_event!`](crate::impl_app_event)
/// writes the impl.
pub trait AppEvent: Sized {
    /// The wire `type`.
    fn event_type(&self) -> Cow<'_, str>;
    /// Writes the wire `data`.
    fn serialize_data<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    /// Builds the event from its wire `type` and `data`.
    fn from_parts(event_type: &str, data: Value) -> Result<Self, ProtocolError>;
}

impl AppEvent for RawAppEvent {
    fn event_type(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.event_type)
    }
    fn serialize_data<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
    fn from_parts(event_type: &str, data: Value) -> Result<Self, ProtocolError> {
        Ok(RawAppEvent {
            event_type: event_type.to_owned(),
            data,
        })
    }
}

/// Implements [`AppEvent`] for a serde type tagged `#[serde(tag = "type", content = "data")]`.
#[macro_export]
macro_rules! impl_app_event {
    ($ty:ty) => {
        impl $crate::AppEvent for $ty {
            fn event_type(&self) -> ::std::borrow::Cow<'_, str> {
                $crate::__private::tagged_type(self)
            }
            fn serialize_data<S: $crate::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                $crate::__private::tagged_data(self, serializer)
            }
            fn from_parts(
                event_type: &str,
                data: $crate::__private::serde_json::Value,
            ) -> ::std::result::Result<Self, $crate::ProtocolError> {
                $crate::__private::tagged_from_parts(event_type, data)
            }
        }
    };
}

/// Support for [`impl_app_event!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;

    use super::*;
    use serde::de::DeserializeOwned;

    fn tagged_value<T: Serialize>(event: &T) -> Value {
        serde_json::to_value(event).unwrap_or(Value::Null)
    }

    pub fn tagged_type<T: Serialize>(event: &T) -> Cow<'static, str> {
        match tagged_value(event).get("type") {
            Some(Value::String(s)) => Cow::Owned(s.clone()),
            _ => Cow::Borrowed(""),
        }
    }

    pub fn tagged_data<T: Serialize, S: Serializer>(event: &T, s: S) -> Result<S::Ok, S::Error> {
        let mut value = tagged_value(event);
        value
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null)
            .serialize(s)
    }

    pub fn tagged_from_parts<T: DeserializeOwned>(
        ty: &str,
        data: Value,
    ) -> Result<T, ProtocolError> {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), Value::String(ty.to_owned()));
        if !data.is_null() {
            obj.insert("data".into(), data);
        }
        serde_json::from_value(Value::Object(obj)).map_err(|e| {
            let msg = e.to_string();
            if msg.starts_with("unknown variant") {
                ProtocolError::UnknownEventType(ty.to_owned())
            } else {
                ProtocolError::InvalidField {
                    field: "data",
                    reason: msg,
                }
            }
        })
    }
}

/// The typed payload of an envelope. `A` is the application's own event type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event<A = RawAppEvent> {
    /// `item.put`: an item was created or replaced. Durable.
    ItemPut(Item),
    /// `item.deleted`: an item was deleted. Durable.
    ItemDeleted(ItemDeleted),
    /// An application event from `POST /v1/rooms/{room}/events`. Durable.
    App(A),
    /// `broadcast`: ephemeral, not in the log.
    Broadcast(BroadcastData),
    /// `presence.join`: ephemeral.
    PresenceJoin(Member),
    /// `presence.leave`: ephemeral.
    PresenceLeave(Member),
    /// `presence.state`: ephemeral, the whole set.
    PresenceState(PresenceState),
    /// `resync`: control, re-fetch the snapshot.
    Resync(ResyncData),
    /// `reconnect`: control, the server is draining.
    Reconnect(ReconnectData),
    /// `error`: control.
    Error(ErrorData),
}

impl<A: AppEvent> Event<A> {
    /// The wire `type`.
    pub fn event_type(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Event::ItemPut(_) => "item.put",
            Event::ItemDeleted(_) => "item.deleted",
            Event::App(a) => return a.event_type(),
            Event::Broadcast(_) => "broadcast",
            Event::PresenceJoin(_) => "presence.join",
            Event::PresenceLeave(_) => "presence.leave",
            Event::PresenceState(_) => "presence.state",
            Event::Resync(_) => "resync",
            Event::Reconnect(_) => "reconnect",
            Event::Error(_) => "error",
        })
    }

    /// Whether the event is in the room's log and carries a `seq`.
    pub fn is_durable(&self) -> bool {
        matches!(
            self,
            Event::ItemPut(_) | Event::ItemDeleted(_) | Event::App(_)
        )
    }

    /// Builds an event from its wire `type` and `data`.
    pub fn from_parts(event_type: &str, data: Value) -> Result<Self, ProtocolError> {
        fn typed<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, ProtocolError> {
            serde_json::from_value(data).map_err(|e| ProtocolError::InvalidField {
                field: "data",
                reason: e.to_string(),
            })
        }
        Ok(match event_type {
            "item.put" => Event::ItemPut(typed(data)?),
            "item.deleted" => Event::ItemDeleted(typed(data)?),
            "broadcast" => Event::Broadcast(typed(data)?),
            "presence.join" => Event::PresenceJoin(typed(data)?),
            "presence.leave" => Event::PresenceLeave(typed(data)?),
            "presence.state" => Event::PresenceState(typed(data)?),
            "resync" => Event::Resync(typed(data)?),
            "reconnect" => Event::Reconnect(typed(data)?),
            "error" => Event::Error(typed(data)?),
            other if is_reserved_event_type(other) => {
                return Err(ProtocolError::UnknownEventType(other.to_owned()))
            }
            other => Event::App(A::from_parts(other, data)?),
        })
    }

    /// Serialises the wire `data`.
    pub(crate) fn serialize_data<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::ItemPut(d) => d.serialize(s),
            Event::ItemDeleted(d) => d.serialize(s),
            Event::App(a) => a.serialize_data(s),
            Event::Broadcast(d) => d.serialize(s),
            Event::PresenceJoin(d) | Event::PresenceLeave(d) => d.serialize(s),
            Event::PresenceState(d) => d.serialize(s),
            Event::Resync(d) => d.serialize(s),
            Event::Reconnect(d) => d.serialize(s),
            Event::Error(d) => d.serialize(s),
        }
    }
}
