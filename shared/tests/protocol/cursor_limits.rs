//! A `subscribe` frame's `since` cursor is bounded by the frame's room limit, refused quickly
//! when it is long, and parsed once: the decoder hands the parsed cursor to the server.

use std::time::{Duration, Instant};

use serde_json::json;
use tidewire_protocol::{ClientFrame, ErrorCode};

fn pairs(n: usize) -> String {
    (0..n)
        .map(|i| format!("room-{i}={i}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn subscribe(since: &str) -> String {
    json!({"type": "subscribe", "ref": "s1", "rooms": ["room-0"], "since": since}).to_string()
}

#[test]
fn the_decoder_answers_the_since_cursor_it_parsed() {
    let (frame, since) =
        ClientFrame::decode_limited_with_cursor(&subscribe(&pairs(3)), 1 << 20, 64).unwrap();
    assert_eq!(frame.reference(), Some("s1"));
    let since = since.expect("subscribe with since");
    assert_eq!(since.to_string(), pairs(3));
    let (_, none) =
        ClientFrame::decode_limited_with_cursor(r#"{"type":"subscribe","rooms":["a"]}"#, 1024, 64)
            .unwrap();
    assert!(none.is_none());
    let (_, none) =
        ClientFrame::decode_limited_with_cursor(r#"{"type":"ping"}"#, 1024, 64).unwrap();
    assert!(none.is_none());
}

#[test]
fn since_may_name_at_most_the_frame_room_limit() {
    let ok = ClientFrame::decode_limited(&subscribe(&pairs(4)), 1 << 20, 4);
    assert!(ok.is_ok(), "{ok:?}");
    let err = ClientFrame::decode_limited(&subscribe(&pairs(5)), 1 << 20, 4).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadCursor);
    assert_eq!(err.to_string(), "bad cursor: more than 4 rooms (the limit)");
}

#[test]
fn a_16000_pair_since_is_refused_quickly() {
    let text = subscribe(&pairs(16_000));
    assert!(text.len() < 1 << 20, "fits one frame");
    let started = Instant::now();
    let err = ClientFrame::decode_limited(&text, 1 << 20, 64).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadCursor);
    assert!(err.to_string().contains("longer than 9600 bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
