//! The envelope: the one JSON object every event travels in, on every transport.
//!
//! ```json
//! {"v":1,"type":"item.put","room":"board-1","seq":42,"id":"01J…","ts":"2026-…Z",
//!  "key":"idem-key-or-null","data":{"id":"slot-3","value":{},"version":7}}
//! ```
//!
//! Durable events (`item.put`, `item.deleted`, application events) always carry `seq`, `id` and
//! `ts`. Ephemeral and control events carry no `seq`; connection-wide control events
//! (`reconnect`, `error`) may carry an empty `room`.
//!
//! ```
//! use tidewire_protocol::{Envelope, ErrorCode};
//! let err = Envelope::<tidewire_protocol::RawAppEvent>::decode(r#"{"v":2,"type":"item.put"}"#).unwrap_err();
//! assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
//! ```

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::event::{AppEvent, Event, RawAppEvent};
use crate::limits::MAX_BODY_BYTES;
use crate::{validate_room, ProtocolError, PROTOCOL_VERSION};

/// One event with its routing and ordering header.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<A = RawAppEvent> {
    /// The room the event belongs to (empty for connection-wide control events).
    pub room: String,
    /// The room's sequence number for durable events: contiguous 1, 2, 3 … per room.
    pub seq: Option<u64>,
    /// A unique event id (a ULID for durable events).
    pub id: String,
    /// When the server accepted the event, RFC 3339 (informational only; order is by `seq`).
    pub ts: String,
    /// The idempotency key of the write that produced the event, if any.
    pub key: Option<String>,
    /// The typed event.
    pub event: Event<A>,
}

/// The envelope as it arrives, before its meaning is checked. Only a JSON object (a map) is
/// accepted: serde's derived impl alone would also take a positional array.
struct WireEnvelope(WireFields);

#[derive(Deserialize)]
struct WireFields {
    v: Option<Value>,
    #[serde(rename = "type")]
    ty: Option<String>,
    room: Option<String>,
    seq: Option<u64>,
    id: Option<String>,
    ts: Option<String>,
    key: Option<String>,
    data: Option<Value>,
}

impl<'de> Deserialize<'de> for WireEnvelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = WireEnvelope;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an envelope object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<WireEnvelope, M::Error> {
                WireFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(WireEnvelope)
            }
        }
        d.deserialize_map(ObjectOnly)
    }
}

impl<A: AppEvent> Envelope<A> {
    /// An ephemeral or control envelope (no `seq`).
    pub fn ephemeral(
        room: impl Into<String>,
        id: impl Into<String>,
        ts: impl Into<String>,
        event: Event<A>,
    ) -> Self {
        Envelope {
            room: room.into(),
            seq: None,
            id: id.into(),
            ts: ts.into(),
            key: None,
            event,
        }
    }

    /// Encodes to JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("envelopes always serialise")
    }

    /// Decodes JSON text of at most [`MAX_BODY_BYTES`].
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        Self::decode_limited(text, MAX_BODY_BYTES)
    }

    /// Decodes JSON text of at most `limit` bytes.
    pub fn decode_limited(text: &str, limit: usize) -> Result<Self, ProtocolError> {
        if text.len() > limit {
            return Err(ProtocolError::TooLarge {
                size: text.len(),
                limit,
            });
        }
        let wire: WireEnvelope = serde_json::from_str(text).map_err(ProtocolError::from_serde)?;
        Self::from_wire(wire)
    }

    /// Decodes from any serde deserializer (a `serde_json::Value`, or a JavaScript value
    /// through `serde-wasm-bindgen`), with the same typed errors as [`Envelope::decode`].
    pub fn decode_from<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, ProtocolError> {
        let wire = WireEnvelope::deserialize(deserializer).map_err(ProtocolError::from_serde)?;
        Self::from_wire(wire)
    }

    fn from_wire(WireEnvelope(w): WireEnvelope) -> Result<Self, ProtocolError> {
        match w.v {
            None => return Err(ProtocolError::MissingField("v")),
            Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
            Some(other) => return Err(ProtocolError::UnsupportedVersion(other.to_string())),
        }
        let ty = w.ty.ok_or(ProtocolError::MissingField("type"))?;
        let event = Event::from_parts(&ty, w.data.unwrap_or(Value::Null))?;
        let connection_wide = matches!(event, Event::Reconnect(_) | Event::Error(_));
        let room = match w.room {
            Some(room) => room,
            None if connection_wide => String::new(),
            None => return Err(ProtocolError::MissingField("room")),
        };
        if !(connection_wide && room.is_empty()) {
            validate_room(&room)?;
        }
        if event.is_durable() {
            if w.seq.is_none() {
                return Err(ProtocolError::MissingField("seq"));
            }
            if w.seq == Some(0) {
                return Err(ProtocolError::InvalidField {
                    field: "seq",
                    reason: "seq starts at 1".into(),
                });
            }
        }
        Ok(Envelope {
            room,
            seq: w.seq,
            id: w.id.unwrap_or_default(),
            ts: w.ts.unwrap_or_default(),
            key: w.key,
            event,
        })
    }
}

struct Data<'a, A>(&'a Event<A>);

impl<A: AppEvent> Serialize for Data<'_, A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_data(s)
    }
}

impl<A: AppEvent> Serialize for Envelope<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(if self.seq.is_some() { 8 } else { 7 }))?;
        map.serialize_entry("v", &PROTOCOL_VERSION)?;
        map.serialize_entry("type", &self.event.event_type())?;
        map.serialize_entry("room", &self.room)?;
        if let Some(seq) = self.seq {
            map.serialize_entry("seq", &seq)?;
        }
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("ts", &self.ts)?;
        map.serialize_entry("key", &self.key)?;
        map.serialize_entry("data", &Data(&self.event))?;
        map.end()
    }
}

impl<'de, A: AppEvent> Deserialize<'de> for Envelope<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = WireEnvelope::deserialize(d)?;
        Envelope::from_wire(wire).map_err(serde::de::Error::custom)
    }
}
