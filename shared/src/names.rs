//! Validation of the names that appear on the wire: rooms, item ids, application event types
//! and idempotency keys.
//!
//! ```
//! use tidewire_protocol::{validate_room, ErrorCode};
//! assert!(validate_room("board-1").is_ok());
//! assert_eq!(validate_room("a b").unwrap_err().code(), ErrorCode::BadRoomName);
//! ```

use crate::event::is_reserved_event_type;
use crate::limits::{
    MAX_EVENT_TYPE_LEN, MAX_IDEMPOTENCY_KEY_LEN, MAX_ITEM_ID_LEN, MAX_ROOM_NAME_LEN,
};
use crate::ProtocolError;

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(is_name_byte)
}

/// Checks a room name: `[A-Za-z0-9_.:-]{1,128}`.
pub fn validate_room(name: &str) -> Result<(), ProtocolError> {
    if valid_name(name, MAX_ROOM_NAME_LEN) {
        Ok(())
    } else {
        Err(ProtocolError::BadRoomName(truncate(name)))
    }
}

/// Checks an item id: `[A-Za-z0-9_.:-]{1,128}` (safe in URL paths without escaping).
pub fn validate_item_id(id: &str) -> Result<(), ProtocolError> {
    if valid_name(id, MAX_ITEM_ID_LEN) {
        Ok(())
    } else {
        Err(ProtocolError::BadItemId(truncate(id)))
    }
}

/// Checks an application event type: `[A-Za-z0-9_.:-]{1,64}` and not one of the built-in
/// types (nor in the reserved `item.` and `presence.` families).
pub fn validate_event_type(ty: &str) -> Result<(), ProtocolError> {
    if valid_name(ty, MAX_EVENT_TYPE_LEN) && !is_reserved_event_type(ty) {
        Ok(())
    } else {
        Err(ProtocolError::BadEventType(truncate(ty)))
    }
}

/// Checks an idempotency key: 1 to 128 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), ProtocolError> {
    if !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
    {
        Ok(())
    } else {
        Err(ProtocolError::BadIdempotencyKey)
    }
}

/// Shortens a rejected name for an error message, so a huge input does not make a huge error.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms() {
        for ok in ["a", "board-1", "A.b:c_d-e", &"x".repeat(128)] {
            assert!(validate_room(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a=b", "a,b", "é", "a/b", &"x".repeat(129)] {
            assert!(validate_room(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_types() {
        assert!(validate_event_type("chat.message").is_ok());
        for bad in [
            "item.put",
            "item.anything",
            "presence.join",
            "broadcast",
            "resync",
            "error",
            "",
        ] {
            assert!(validate_event_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(validate_idempotency_key("k-1").is_ok());
        assert!(validate_idempotency_key("").is_err());
        assert!(validate_idempotency_key("a b").is_err());
        assert!(validate_idempotency_key(&"k".repeat(129)).is_err());
    }

    #[test]
    fn long_names_are_truncated_in_errors() {
        let err = validate_room(&"é".repeat(500)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
