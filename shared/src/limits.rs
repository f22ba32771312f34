//! Default limits of protocol v1. Servers may configure other values; these are the defaults a
//! client can rely on when it knows nothing else.
//!
//! ```
//! assert_eq!(tidewire_protocol::limits::MAX_ROOMS_PER_CONNECTION, 64);
//! ```

/// Longest room name, in bytes (room names are ASCII).
pub const MAX_ROOM_NAME_LEN: usize = 128;
/// Longest item id, in bytes (item ids are ASCII).
pub const MAX_ITEM_ID_LEN: usize = 128;
/// Longest application event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 64;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Default largest request body (and WebSocket frame), in bytes: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default number of rooms one connection may follow.
pub const MAX_ROOMS_PER_CONNECTION: usize = 64;
