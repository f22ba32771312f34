//! Error codes, the protocol's error type, and the HTTP problem body.
//!
//! Every failure a peer can see has a stable snake_case [`ErrorCode`]. The same code appears in
//! HTTP `application/problem+json` bodies ([`Problem`]), in WebSocket `error` frames and failed
//! `ack`s, and (as its number) in WebSocket close codes. Codes come in two ranges, like
//! Centrifugo's disconnect codes:
//!
//! | range | meaning |
//! |---|---|
//! | 4000–4499 | **retry**: the request or connection may succeed later unchanged (after a delay, a token refresh or a snapshot re-fetch) |
//! | 4500–4999 | **terminal**: the request is wrong; sending it again unchanged fails again |
//!
//! ```
//! use tidewire_protocol::ErrorCode;
//! let code: ErrorCode = "version_conflict".parse().unwrap();
//! assert_eq!(code.http_status(), 409);
//! assert!(!code.is_retryable());
//! assert_eq!(ErrorCode::SlowConsumer.number(), 4002);
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::Item;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $status:literal; )*) => {
        /// A stable error code. The string form (`as_str`) is what travels on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The snake_case name used on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }

            /// The number: 4000–4499 retryable, 4500–4999 terminal. Also the WebSocket close code.
            pub fn number(self) -> u16 {
                match self { $(ErrorCode::$variant => $num,)* }
            }

            /// The HTTP status a problem with this code is sent with.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// Looks a code up by its number (for WebSocket close codes).
            pub fn from_number(n: u16) -> Option<ErrorCode> {
                match n { $($num => Some(ErrorCode::$variant),)* _ => None }
            }
        }

        impl FromStr for ErrorCode {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($name => Ok(ErrorCode::$variant),)* _ => Err(()) }
            }
        }
    };
}

error_codes! {
    /// An unexpected server fault.
    Internal = 4000, "internal", 500;
    /// The server is draining for a restart: reconnect after the hinted delay.
    ShuttingDown = 4001, "shutting_down", 503;
    /// The connection fell behind its outbound queue and was cut; resume from the last position.
    SlowConsumer = 4002, "slow_consumer", 503;
    /// Nothing was heard from the peer within the idle timeout.
    IdleTimeout = 4003, "idle_timeout", 408;
    /// The database cannot be written or read right now; nothing was half-written.
    StoreUnavailable = 4004, "store_unavailable", 503;
    /// Too many writes in too short a time; see `Retry-After`.
    RateLimited = 4005, "rate_limited", 429;
    /// Too many concurrent connections for this client key or subject.
    TooManyConnections = 4006, "too_many_connections", 429;
    /// The token expired: refresh it and reconnect (or send an `auth` frame).
    TokenExpired = 4007, "token_expired", 401;
    /// The requested position is older than the retained log: re-fetch the snapshot.
    HistoryTrimmed = 4008, "history_trimmed", 410;
    /// A malformed request that fits no narrower code.
    BadRequest = 4500, "bad_request", 400;
    /// The body or frame is not valid JSON, or a field has the wrong type or is missing.
    BadJson = 4501, "bad_json", 400;
    /// The `v` field names a protocol version this peer does not speak.
    UnsupportedVersion = 4502, "unsupported_version", 400;
    /// A WebSocket frame or envelope has a `type` this peer does not know.
    UnknownType = 4503, "unknown_type", 400;
    /// A room name outside `[A-Za-z0-9_.:-]{1,128}`.
    BadRoomName = 4504, "bad_room_name", 400;
    /// An item id outside `[A-Za-z0-9_.:-]{1,128}`.
    BadItemId = 4505, "bad_item_id", 400;
    /// A cursor that is not `room=seq` pairs joined by commas.
    BadCursor = 4506, "bad_cursor", 400;
    /// The body, frame or item is larger than the limit.
    PayloadTooLarge = 4507, "payload_too_large", 413;
    /// More rooms on one connection than the limit.
    TooManyRooms = 4508, "too_many_rooms", 400;
    /// `If-Match` names a version that is not the current one; the problem carries the current item.
    VersionConflict = 4509, "version_conflict", 409;
    /// No such item or route.
    NotFound = 4510, "not_found", 404;
    /// An application event type that is malformed or reserved.
    BadEventType = 4511, "bad_event_type", 400;
    /// An `Idempotency-Key` that is empty, too long or not visible ASCII.
    BadIdempotencyKey = 4512, "bad_idempotency_key", 400;
    /// No credentials, or credentials that cannot be verified.
    Unauthorized = 4513, "unauthorized", 401;
    /// Valid credentials that do not allow this room or operation.
    Forbidden = 4514, "forbidden", 403;
    /// The same idempotency key was used before for a different request.
    IdempotencyKeyReused = 4515, "idempotency_key_reused", 422;
    /// The method is not allowed on this path.
    MethodNotAllowed = 4516, "method_not_allowed", 405;
}

impl ErrorCode {
    /// Whether the same request or connection may succeed later (range 4000–4499).
    pub fn is_retryable(self) -> bool {
        self.number() < 4500
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom(format!("unknown error code `{s}`")))
    }
}

/// Everything that can be wrong with protocol input. Decoding never panics: every bad input
/// becomes one of these, and each maps to a stable [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Not JSON at all, or JSON of the wrong shape.
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field is present but has the wrong type or an impossible value.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The `v` field is not a version this crate speaks.
    #[error("unsupported protocol version {0} (this peer speaks v1)")]
    UnsupportedVersion(String),
    /// An envelope `type` that is neither built-in nor accepted by the application's event type.
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    /// A WebSocket frame `type` this peer does not know.
    #[error("unknown frame type `{0}`")]
    UnknownFrameType(String),
    /// A room name outside the allowed alphabet or length.
    #[error("bad room name `{0}`: use 1 to 128 of A-Z a-z 0-9 _ . : -")]
    BadRoomName(String),
    /// An item id outside the allowed alphabet or length.
    #[error("bad item id `{0}`: use 1 to 128 of A-Z a-z 0-9 _ . : -")]
    BadItemId(String),
    /// An application event type that is malformed or reserved.
    #[error("bad event type `{0}`: use 1 to 64 of A-Z a-z 0-9 _ . : - and not a built-in type")]
    BadEventType(String),
    /// An idempotency key that is empty, too long or not visible ASCII.
    #[error("bad idempotency key: use 1 to 128 visible ASCII characters")]
    BadIdempotencyKey,
    /// A cursor that does not parse.
    #[error("bad cursor: {0}")]
    BadCursor(String),
    /// Input larger than the limit.
    #[error("payload too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// The size seen, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// More rooms than the limit.
    #[error("too many rooms: {count}, limit {limit}")]
    TooManyRooms {
        /// The number of rooms asked for.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

impl ProtocolError {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadJson(_)
            | ProtocolError::MissingField(_)
            | ProtocolError::InvalidField { .. } => ErrorCode::BadJson,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ProtocolError::UnknownEventType(_) | ProtocolError::UnknownFrameType(_) => {
                ErrorCode::UnknownType
            }
            ProtocolError::BadRoomName(_) => ErrorCode::BadRoomName,
            ProtocolError::BadItemId(_) => ErrorCode::BadItemId,
            ProtocolError::BadEventType(_) => ErrorCode::BadEventType,
            ProtocolError::BadIdempotencyKey => ErrorCode::BadIdempotencyKey,
            ProtocolError::BadCursor(_) => ErrorCode::BadCursor,
            ProtocolError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            ProtocolError::TooManyRooms { .. } => ErrorCode::TooManyRooms,
        }
    }

    /// Turns a serde error from decoding a known shape into a typed error.
    pub(crate) fn from_serde(err: impl fmt::Display) -> ProtocolError {
        let msg = err.to_string();
        // serde_json phrases a missing field as "missing field `name`".
        if let Some(rest) = msg.strip_prefix("missing field `") {
            if let Some(name) = rest.split('`').next() {
                if let Some(known) = KNOWN_FIELDS.iter().find(|f| **f == name) {
                    return ProtocolError::MissingField(known);
                }
            }
        }
        ProtocolError::BadJson(msg)
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "v",
    "type",
    "room",
    "rooms",
    "id",
    "value",
    "version",
    "data",
    "event",
    "token",
    "code",
    "message",
    "ok",
    "retry_ms",
    "reason",
    "members",
    "client_id",
    "key",
    "ref",
];

/// An HTTP error body, `application/problem+json` (RFC 9457), with Tidewire's stable `code`.
///
/// A `version_conflict` problem also carries `current`: the item as the server has it now
/// (absent when it does not exist), which is what an optimistic update rolls back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Problem {
    /// A URI naming the problem type: `https://tidewire.dev/problems/<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The stable error code.
    #[cfg_attr(feature = "ts", ts(type = "ErrorCode"))]
    pub code: ErrorCode,
    /// For `version_conflict`: the item as the server has it now (absent when it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub current: Option<Item>,
    /// For `rate_limited`: seconds until a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional, type = "number"))]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem for `code` with a human-readable `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Problem {
        Problem {
            type_uri: format!("https://tidewire.dev/problems/{}", code.as_str()),
            title: code.as_str().replace('_', " "),
            status: code.http_status(),
            detail: detail.into(),
            code,
            current: None,
            retry_after: None,
        }
    }
}

impl From<&ProtocolError> for Problem {
    fn from(err: &ProtocolError) -> Problem {
        Problem::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut numbers = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(numbers.insert(code.number()), "{code} number repeated");
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert_eq!(ErrorCode::from_number(code.number()), Some(code));
            assert!((4000..5000).contains(&code.number()));
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn ranges() {
        assert!(ErrorCode::SlowConsumer.is_retryable());
        assert!(ErrorCode::RateLimited.is_retryable());
        assert!(!ErrorCode::BadRoomName.is_retryable());
        assert!(!ErrorCode::Forbidden.is_retryable());
    }

    #[test]
    fn problem_shape() {
        let p = Problem::new(ErrorCode::BadRoomName, "nope");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["code"], "bad_room_name");
        assert_eq!(v["status"], 400);
        assert_eq!(v["type"], "https://tidewire.dev/problems/bad_room_name");
        assert!(v.get("current").is_none());
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }
}
