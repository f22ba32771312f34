//! Feeds arbitrary text to the cursor parser (`?since=`, `Last-Event-ID`, WebSocket
//! `subscribe.since`). It must never panic; a cursor that parses prints back to its input and
//! parses again to the same value, and every room in it is a valid room name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_protocol::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = text.parse::<Cursor>() {
        let printed = cursor.to_string();
        assert_eq!(printed, text);
        let again: Cursor = printed.parse().expect("a printed cursor parses");
        assert_eq!(again, cursor);
    }
});
