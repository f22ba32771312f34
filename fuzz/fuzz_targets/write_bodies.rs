//! Feeds arbitrary bytes to the decoding of the HTTP write bodies, as the server does it:
//! `PUT /v1/rooms/{room}/items/{id}` takes any JSON value, `POST /v1/rooms/{room}/events`
//! takes `{"type", "data"}` whose type must be a valid event type. The first bytes also serve
//! as a room name, an item id and an idempotency key for the name validators. Nothing may
//! panic, and an accepted event body encodes and decodes back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_protocol::{
    validate_event_type, validate_idempotency_key, validate_item_id, validate_room, RawAppEvent,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        // Floats may print differently, so only "encodes and decodes again" is required.
        let bytes = serde_json::to_vec(&value).expect("a value encodes");
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("and decodes");
    }
    if let Ok(event) = serde_json::from_slice::<RawAppEvent>(data) {
        if validate_event_type(&event.event_type).is_ok() {
            let bytes = serde_json::to_vec(&event).expect("an event encodes");
            let again: RawAppEvent = serde_json::from_slice(&bytes).expect("and decodes");
            assert_eq!(again, event);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let name = &text[..text.floor_char_boundary(200)];
        let _ = validate_room(name);
        let _ = validate_item_id(name);
        let _ = validate_idempotency_key(name);
    }
});
