//! # tidewire-protocol
//!
//! The one definition of Tidewire's wire contract (protocol v1), shared by the server, the
//! browser SDK and the tests. It holds types, codecs and validation only: no I/O, no async
//! runtime, and it builds for native targets and `wasm32-unknown-unknown`.
//!
//! - [`Envelope`] is the JSON object every event travels in, on every transport.
//! - [`Event`] is the typed payload, generic over an application's own [`AppEvent`] type.
//! - [`ClientFrame`] / [`ServerFrame`] are the WebSocket frames.
//! - [`Cursor`] is the resume position of every room on one connection.
//! - [`ErrorCode`] is the stable error code set shared by HTTP problems and WebSocket frames.
//!
//! ```
//! use tidewire_protocol::{Envelope, Event, Cursor};
//!
//! let json = r#"{"v":1,"type":"item.put","room":"board-1","seq":42,"id":"01J0","ts":"2026-01-01T00:00:00Z",
//!                "key":null,"data":{"id":"slot-3","value":{"free":true},"version":7}}"#;
//! let env: Envelope = Envelope::decode(json).unwrap();
//! assert_eq!(env.seq, Some(42));
//! match &env.event {
//!     Event::ItemPut(item) => assert_eq!(item.version, 7),
//!     _ => unreachable!(),
//! }
//! // Encoding and decoding are exact inverses.
//! assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
//!
//! let cursor: Cursor = "board-1=42,chat=7".parse().unwrap();
//! assert_eq!(cursor.get("chat"), Some(7));
//! assert_eq!(cursor.to_string(), "board-1=42,chat=7");
//! ```

mod cursor;
mod envelope;
mod error;
mod event;
mod frame;
pub mod limits;
mod names;
mod rest;
#[cfg(feature = "ts")]
pub mod ts;

pub use cursor::{Cursor, MAX_CURSOR_PAIR_BYTES};
pub use envelope::Envelope;
pub use error::{ErrorCode, Problem, ProtocolError};
pub use event::{
    AppEvent, BroadcastData, ErrorData, Event, Item, ItemDeleted, Member, PresenceState,
    RawAppEvent, ReconnectData, ResyncData, BUILTIN_EVENT_TYPES,
};
pub use frame::{AckError, ClientFrame, ServerFrame};
pub use names::{validate_event_type, validate_idempotency_key, validate_item_id, validate_room};
pub use rest::{ItemState, PollResponse, PresenceList, Snapshot, TicketResponse};

/// The protocol version this crate speaks: the `v` field of every envelope.
pub const PROTOCOL_VERSION: u64 = 1;

#[doc(hidden)]
pub use event::__private;
