//! WebSocket frames. Every client frame may carry a `ref`, echoed in the server's reply
//! (`ack`, `pong` or `error`), so a client can match replies to requests.
//!
//! ```
//! use tidewire_protocol::{ClientFrame, ErrorCode};
//! let f = ClientFrame::decode(r#"{"type":"subscribe","ref":"1","rooms":["a","b"],"since":"a=4"}"#).unwrap();
//! assert!(matches!(f, ClientFrame::Subscribe { .. }));
//! let err = ClientFrame::decode(r#"{"type":"teleport"}"#).unwrap_err();
//! assert_eq!(err.code(), ErrorCode::UnknownType);
//! ```

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::envelope::Envelope;
use crate::event::{AppEvent, RawAppEvent};
use crate::limits::{MAX_BODY_BYTES, MAX_ROOMS_PER_CONNECTION};
use crate::{
    validate_event_type, validate_idempotency_key, validate_item_id, validate_room, Cursor,
    ErrorCode, Item, ProtocolError,
};

/// A frame from client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientFrame {
    /// Follow rooms, resuming from `since` (a [`Cursor`]); rooms missing from it start from now.
    Subscribe {
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// Rooms to follow.
        rooms: Vec<String>,
        /// Resume positions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        since: Option<String>,
        /// Also receive presence events (`presence.*`) of these rooms.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        presence: bool,
    },
    /// Stop following rooms (and leave their presence).
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// Rooms to stop following.
        rooms: Vec<String>,
    },
    /// Upsert an item.
    Put {
        /// Echoed in the ack.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// The room.
        room: String,
        /// The item id.
        id: String,
        /// The new value.
        value: Value,
        /// Idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        key: Option<String>,
        /// Expected current version (0: the item must not exist).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional, type = "number"))]
        if_match: Option<u64>,
    },
    /// Delete an item.
    Delete {
        /// Echoed in the ack.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// The room.
        room: String,
        /// The item id.
        id: String,
        /// Idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        key: Option<String>,
        /// Expected current version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional, type = "number"))]
        if_match: Option<u64>,
    },
    /// Append an application event to the room's log.
    Publish {
        /// Echoed in the ack.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// The room.
        room: String,
        /// The event: `{type, data}`.
        event: RawAppEvent,
        /// Idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        key: Option<String>,
    },
    /// Send an ephemeral message to everyone following the room.
    Broadcast {
        /// Echoed in the ack.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// The room.
        room: String,
        /// The application's name for the message.
        event: String,
        /// Any JSON.
        #[serde(default)]
        data: Value,
    },
    /// Join (or update) the room's presence set with metadata.
    Presence {
        /// Echoed in the ack.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// The room.
        room: String,
        /// Application metadata (name, colour, …).
        #[serde(default)]
        meta: Value,
    },
    /// Ask for a `pong`.
    Ping {
        /// Echoed in the pong.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
    },
    /// Present (or refresh) a token.
    Auth {
        /// Echoed in the ack.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        r#ref: Option<String>,
        /// The token (a JWT).
        token: String,
    },
}

const CLIENT_FRAME_TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "put",
    "delete",
    "publish",
    "broadcast",
    "presence",
    "ping",
    "auth",
];

impl ClientFrame {
    /// Decodes and validates a frame of at most [`MAX_BODY_BYTES`] naming at most
    /// [`MAX_ROOMS_PER_CONNECTION`] rooms.
    pub fn decode(text: &str) -> Result<ClientFrame, ProtocolError> {
        Self::decode_limited(text, MAX_BODY_BYTES, MAX_ROOMS_PER_CONNECTION)
    }

    /// Decodes and validates a frame with the given size and room limits (a `subscribe`'s
    /// `since` may name at most `max_rooms` rooms: see [`Cursor::parse_limited`]).
    pub fn decode_limited(
        text: &str,
        max_bytes: usize,
        max_rooms: usize,
    ) -> Result<ClientFrame, ProtocolError> {
        Self::decode_limited_with_cursor(text, max_bytes, max_rooms).map(|(frame, _)| frame)
    }

    /// [`ClientFrame::decode_limited`], also answering the `since` cursor of a `subscribe` as
    /// validation parsed it, so that a server does not parse it a second time. (`None` for
    /// every other frame and for a `subscribe` without `since`.)
    ///
    /// ```
    /// use tidewire_protocol::ClientFrame;
    /// let text = r#"{"type":"subscribe","rooms":["a"],"since":"a=4"}"#;
    /// let (frame, since) = ClientFrame::decode_limited_with_cursor(text, 1024, 64).unwrap();
    /// assert!(matches!(frame, ClientFrame::Subscribe { .. }));
    /// assert_eq!(since.unwrap().get("a"), Some(4));
    /// ```
    pub fn decode_limited_with_cursor(
        text: &str,
        max_bytes: usize,
        max_rooms: usize,
    ) -> Result<(ClientFrame, Option<Cursor>), ProtocolError> {
        if text.len() > max_bytes {
            return Err(ProtocolError::TooLarge {
                size: text.len(),
                limit: max_bytes,
            });
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| ProtocolError::BadJson(e.to_string()))?;
        let ty = match value.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => {
                return Err(ProtocolError::InvalidField {
                    field: "type",
                    reason: "must be a string".into(),
                })
            }
            None if value.is_object() => return Err(ProtocolError::MissingField("type")),
            None => {
                return Err(ProtocolError::BadJson(
                    "a frame must be a JSON object".into(),
                ))
            }
        };
        if !CLIENT_FRAME_TYPES.contains(&ty) {
            return Err(ProtocolError::UnknownFrameType(
                ty.chars().take(64).collect(),
            ));
        }
        let frame: ClientFrame =
            serde_json::from_value(value).map_err(ProtocolError::from_serde)?;
        let since = frame.validate_parsing(max_rooms)?;
        Ok((frame, since))
    }

    /// Checks names, keys, cursors and room counts.
    pub fn validate(&self, max_rooms: usize) -> Result<(), ProtocolError> {
        self.validate_parsing(max_rooms).map(|_| ())
    }

    /// [`ClientFrame::validate`], answering the `since` cursor it parsed.
    fn validate_parsing(&self, max_rooms: usize) -> Result<Option<Cursor>, ProtocolError> {
        let key_ok = |key: &Option<String>| key.as_deref().map_or(Ok(()), validate_idempotency_key);
        match self {
            ClientFrame::Subscribe { rooms, since, .. } => {
                if rooms.len() > max_rooms {
                    return Err(ProtocolError::TooManyRooms {
                        count: rooms.len(),
                        limit: max_rooms,
                    });
                }
                rooms.iter().try_for_each(|r| validate_room(r))?;
                since
                    .as_deref()
                    .map(|s| Cursor::parse_limited(s, max_rooms))
                    .transpose()
            }
            ClientFrame::Unsubscribe { rooms, .. } => {
                rooms.iter().try_for_each(|r| validate_room(r))?;
                Ok(None)
            }
            ClientFrame::Put { room, id, key, .. } | ClientFrame::Delete { room, id, key, .. } => {
                validate_room(room)?;
                validate_item_id(id)?;
                key_ok(key)?;
                Ok(None)
            }
            ClientFrame::Publish {
                room, event, key, ..
            } => {
                validate_room(room)?;
                validate_event_type(&event.event_type)?;
                key_ok(key)?;
                Ok(None)
            }
            ClientFrame::Broadcast { room, .. } | ClientFrame::Presence { room, .. } => {
                validate_room(room)?;
                Ok(None)
            }
            ClientFrame::Ping { .. } | ClientFrame::Auth { .. } => Ok(None),
        }
    }

    /// The frame's `ref`.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Subscribe { r#ref, .. }
            | ClientFrame::Unsubscribe { r#ref, .. }
            | ClientFrame::Put { r#ref, .. }
            | ClientFrame::Delete { r#ref, .. }
            | ClientFrame::Publish { r#ref, .. }
            | ClientFrame::Broadcast { r#ref, .. }
            | ClientFrame::Presence { r#ref, .. }
            | ClientFrame::Ping { r#ref }
            | ClientFrame::Auth { r#ref, .. } => r#ref.as_deref(),
        }
    }

    /// Encodes to JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialise")
    }
}

/// Why a request failed, inside a failed `ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct AckError {
    /// The stable code.
    #[cfg_attr(feature = "ts", ts(type = "ErrorCode"))]
    pub code: ErrorCode,
    /// A human-readable message.
    pub title: String,
    /// For `version_conflict`: the current item (absent when it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub current: Option<Item>,
}

/// A frame from server to client.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerFrame<A = RawAppEvent> {
    /// An event envelope, exactly as on SSE.
    Event(Envelope<A>),
    /// The outcome of the client frame with this `ref`.
    Ack {
        /// The client's `ref`.
        r#ref: Option<String>,
        /// The outcome: the appended event for writes (`None` for other frames), or the error.
        result: Result<Option<Envelope<A>>, AckError>,
        /// For `subscribe`: the positions the subscription starts from.
        cursor: Option<String>,
    },
    /// The reply to `ping`.
    Pong {
        /// The client's `ref`.
        r#ref: Option<String>,
    },
    /// A frame could not be handled. The connection stays open unless a close follows.
    Error {
        /// The client's `ref`, when the frame had one.
        r#ref: Option<String>,
        /// The stable code.
        code: ErrorCode,
        /// A human-readable message.
        message: String,
    },
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(rename = "ref")]
    r#ref: Option<String>,
    ok: Option<bool>,
    event: Option<Value>,
    error: Option<AckError>,
    cursor: Option<String>,
    code: Option<ErrorCode>,
    message: Option<String>,
}

impl<A: AppEvent> ServerFrame<A> {
    /// Decodes a server frame of at most [`MAX_BODY_BYTES`].
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        if text.len() > MAX_BODY_BYTES {
            return Err(ProtocolError::TooLarge {
                size: text.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| ProtocolError::BadJson(e.to_string()))?;
        Self::decode_value(value)
    }

    /// Decodes a server frame from a parsed JSON value.
    pub fn decode_value(value: Value) -> Result<Self, ProtocolError> {
        let ty = value.get("type").and_then(Value::as_str).unwrap_or("");
        let is_envelope = value.get("v").is_some();
        match ty {
            "ack" | "pong" | "error" if !is_envelope => {
                let ty = ty.to_owned();
                let r: WireReply =
                    serde_json::from_value(value).map_err(ProtocolError::from_serde)?;
                Ok(match ty.as_str() {
                    "pong" => ServerFrame::Pong { r#ref: r.r#ref },
                    "error" => ServerFrame::Error {
                        r#ref: r.r#ref,
                        code: r.code.ok_or(ProtocolError::MissingField("code"))?,
                        message: r.message.unwrap_or_default(),
                    },
                    _ => {
                        let ok = r.ok.ok_or(ProtocolError::MissingField("ok"))?;
                        let result = if ok {
                            Ok(r.event.map(Envelope::decode_from).transpose()?)
                        } else {
                            Err(r.error.ok_or(ProtocolError::MissingField("error"))?)
                        };
                        ServerFrame::Ack {
                            r#ref: r.r#ref,
                            result,
                            cursor: r.cursor,
                        }
                    }
                })
            }
            _ => Ok(ServerFrame::Event(Envelope::decode_from(value)?)),
        }
    }

    /// Encodes to JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

impl<A: AppEvent> Serialize for ServerFrame<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ServerFrame::Event(env) => env.serialize(s),
            ServerFrame::Ack {
                r#ref,
                result,
                cursor,
            } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "ack")?;
                if let Some(r) = r#ref {
                    m.serialize_entry("ref", r)?;
                }
                m.serialize_entry("ok", &result.is_ok())?;
                match result {
                    Ok(Some(env)) => m.serialize_entry("event", env)?,
                    Ok(None) => {}
                    Err(e) => m.serialize_entry("error", e)?,
                }
                if let Some(c) = cursor {
                    m.serialize_entry("cursor", c)?;
                }
                m.end()
            }
            ServerFrame::Pong { r#ref } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "pong")?;
                if let Some(r) = r#ref {
                    m.serialize_entry("ref", r)?;
                }
                m.end()
            }
            ServerFrame::Error {
                r#ref,
                code,
                message,
            } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "error")?;
                if let Some(r) = r#ref {
                    m.serialize_entry("ref", r)?;
                }
                m.serialize_entry("code", code)?;
                m.serialize_entry("message", message)?;
                m.end()
            }
        }
    }
}
