//! Feeds arbitrary text to the cursor parser (`?since=`, `Last-Event-ID`, WebSocket
//! `subscribe.since`). It must never panic; a cursor that parses prints back to its input and
//! parses again to the same value, and every room in it is a valid room name. The first byte
//! also picks a room limit for `Cursor::parse_limited`, which must agree with unbounded
//! parsing: the same cursor when it has at most that many rooms and fits the length bound, a
//! `bad_cursor` error otherwise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_protocol::{validate_room, Cursor, ErrorCode};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let limit = usize::from(first % 70);
    let unbounded = text.parse::<Cursor>();
    if let Ok(cursor) = &unbounded {
        let printed = cursor.to_string();
        assert_eq!(printed, text);
        let again: Cursor = printed.parse().expect("a printed cursor parses");
        assert_eq!(&again, cursor);
        for (room, _) in cursor.iter() {
            assert!(validate_room(room).is_ok(), "{room}");
        }
    }
    match Cursor::parse_limited(text, limit) {
        Ok(limited) => {
            assert!(limited.len() <= limit);
            assert!(text.len() <= Cursor::max_len(limit));
            assert_eq!(Some(&limited), unbounded.as_ref().ok());
        }
        Err(err) => {
            assert_eq!(err.code(), ErrorCode::BadCursor);
            if let Ok(cursor) = &unbounded {
                assert!(cursor.len() > limit || text.len() > Cursor::max_len(limit));
            }
        }
    }
});
