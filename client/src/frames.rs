//! URLs and WebSocket frames the client sends: the SSE and WebSocket URLs, and the `subscribe`,
//! `auth`, `presence`, `broadcast`, `put`, `delete` and `publish` frames. Pure functions over the
//! protocol's types, tested natively; the connection and the room handles call them.
//!
//! ```
//! use tidewire_client::frames;
//! assert_eq!(
//!     frames::ws_url("https://example.test", "c 1"),
//!     "wss://example.test/v1/ws?client_id=c%201"
//! );
//! let frame = frames::subscribe(&[("board".to_owned(), 4)]);
//! assert!(frame.contains(r#""since":"board=4""#));
//! ```

use serde_json::Value;
use tidewire_protocol::{ClientFrame, Cursor, RawAppEvent};

use crate::room::WriteOp;

/// Percent-encodes `text` the way JavaScript's `encodeURIComponent` does: every UTF-8 byte
/// except `A-Z a-z 0-9 - _ . ! ~ * ' ( )` becomes `%XX` (upper-case hex).
pub fn encode_uri_component(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    out
}

/// The resume cursor of rooms given as `(name, last applied seq)`.
pub fn cursor(rooms: &[(String, u64)]) -> Cursor {
    let mut c = Cursor::new();
    for (name, seq) in rooms {
        c.set(name, *seq);
    }
    c
}

/// The SSE URL for `rooms` (`(name, last applied seq)`) on the server at `base`, with the
/// presence and heartbeat-event flags, and the single-use `ticket` when auth is on.
pub fn sse_url(
    base: &str,
    rooms: &[(String, u64)],
    client_id: &str,
    ticket: Option<&str>,
) -> String {
    let names: Vec<&str> = rooms.iter().map(|(n, _)| n.as_str()).collect();
    let url = format!(
        "{base}/v1/sse?rooms={}&since={}&presence=1&heartbeat=event&client_id={}",
        encode_uri_component(&names.join(",")),
        encode_uri_component(&cursor(rooms).to_string()),
        encode_uri_component(client_id)
    );
    match ticket {
        Some(ticket) => format!("{url}&ticket={}", encode_uri_component(ticket)),
        None => url,
    }
}

/// The WebSocket URL of the server at `base` (`http(s)://` becomes `ws(s)://`).
pub fn ws_url(base: &str, client_id: &str) -> String {
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.trim_start_matches("http://"))
    };
    format!("{base}/v1/ws?client_id={}", encode_uri_component(client_id))
}

/// `subscribe` to `rooms` (`(name, last applied seq)`) from their cursor, with presence.
pub fn subscribe(rooms: &[(String, u64)]) -> String {
    ClientFrame::Subscribe {
        r#ref: Some("sub".to_owned()),
        rooms: rooms.iter().map(|(n, _)| n.clone()).collect(),
        since: Some(cursor(rooms).to_string()),
        presence: true,
    }
    .encode()
}

/// `auth` with a (fresh) token; the first frame on a socket when auth is on.
pub fn auth(token: String) -> String {
    ClientFrame::Auth {
        r#ref: Some("auth".to_owned()),
        token,
    }
    .encode()
}

/// `presence`: join (or update) the room's presence set with `meta`.
pub fn presence(room: &str, meta: Value) -> String {
    ClientFrame::Presence {
        r#ref: None,
        room: room.to_owned(),
        meta,
    }
    .encode()
}

/// `broadcast`: an ephemeral message to the others in the room.
pub fn broadcast(room: &str, event: &str, data: Value) -> String {
    ClientFrame::Broadcast {
        r#ref: None,
        room: room.to_owned(),
        event: event.to_owned(),
        data,
    }
    .encode()
}

/// A write as a frame (`put` or `delete`) whose `ack` carries `ref`.
pub fn write(
    r#ref: &str,
    room: &str,
    id: &str,
    op: &WriteOp,
    key: &str,
    if_match: Option<u64>,
) -> String {
    match op {
        WriteOp::Put(value) => ClientFrame::Put {
            r#ref: Some(r#ref.to_owned()),
            room: room.to_owned(),
            id: id.to_owned(),
            value: value.clone(),
            key: Some(key.to_owned()),
            if_match,
        },
        WriteOp::Delete => ClientFrame::Delete {
            r#ref: Some(r#ref.to_owned()),
            room: room.to_owned(),
            id: id.to_owned(),
            key: Some(key.to_owned()),
            if_match,
        },
    }
    .encode()
}

/// `publish`: an application event for the room's log, whose `ack` carries `ref`.
pub fn publish(r#ref: &str, room: &str, event_type: &str, data: Value, key: &str) -> String {
    ClientFrame::Publish {
        r#ref: Some(r#ref.to_owned()),
        room: room.to_owned(),
        event: RawAppEvent {
            event_type: event_type.to_owned(),
            data,
        },
        key: Some(key.to_owned()),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(frame: &str) -> Value {
        serde_json::from_str(frame).unwrap()
    }

    #[test]
    fn encodes_like_encode_uri_component() {
        assert_eq!(encode_uri_component("a-Z_0.!~*'()"), "a-Z_0.!~*'()");
        assert_eq!(encode_uri_component("a,b=1"), "a%2Cb%3D1");
        assert_eq!(encode_uri_component("x y/?&#+"), "x%20y%2F%3F%26%23%2B");
        assert_eq!(encode_uri_component("é€"), "%C3%A9%E2%82%AC");
        assert_eq!(encode_uri_component(""), "");
    }

    #[test]
    fn sse_url_carries_rooms_cursor_flags_and_ticket() {
        let rooms = [("a".to_owned(), 3), ("b-2".to_owned(), 0)];
        let url = sse_url("http://h:1", &rooms, "c1", None);
        assert_eq!(
            url,
            "http://h:1/v1/sse?rooms=a%2Cb-2&since=a%3D3%2Cb-2%3D0&presence=1&heartbeat=event&client_id=c1"
        );
        let with = sse_url("http://h:1", &rooms, "c1", Some("t/1"));
        assert_eq!(with, format!("{url}&ticket=t%2F1"));
    }

    #[test]
    fn ws_url_switches_the_scheme() {
        assert_eq!(ws_url("http://h:1", "c"), "ws://h:1/v1/ws?client_id=c");
        assert_eq!(ws_url("https://h", "c"), "wss://h/v1/ws?client_id=c");
    }

    #[test]
    fn subscribe_lists_rooms_and_their_cursor() {
        let f = parsed(&subscribe(&[("a".to_owned(), 3), ("b".to_owned(), 0)]));
        assert_eq!(f["type"], "subscribe");
        assert_eq!(f["ref"], "sub");
        assert_eq!(f["rooms"], json!(["a", "b"]));
        assert_eq!(f["since"], "a=3,b=0");
        assert_eq!(f["presence"], true);
    }

    #[test]
    fn auth_presence_and_broadcast_frames() {
        assert_eq!(
            parsed(&auth("tok".into())),
            json!({"type": "auth", "ref": "auth", "token": "tok"})
        );
        let p = parsed(&presence("a", json!({"name": "Ada"})));
        assert_eq!(p["type"], "presence");
        assert_eq!(p["room"], "a");
        assert_eq!(p["meta"], json!({"name": "Ada"}));
        let b = parsed(&broadcast("a", "cursor", json!({"x": 1})));
        assert_eq!(b["type"], "broadcast");
        assert_eq!(b["event"], "cursor");
        assert_eq!(b["data"], json!({"x": 1}));
    }

    #[test]
    fn write_frames_carry_ref_key_and_if_match() {
        let put = parsed(&write(
            "w1",
            "a",
            "x",
            &WriteOp::Put(json!(5)),
            "k",
            Some(2),
        ));
        assert_eq!(put["type"], "put");
        assert_eq!(put["ref"], "w1");
        assert_eq!(put["id"], "x");
        assert_eq!(put["value"], 5);
        assert_eq!(put["key"], "k");
        assert_eq!(put["if_match"], 2);
        let del = parsed(&write("w2", "a", "x", &WriteOp::Delete, "k2", None));
        assert_eq!(del["type"], "delete");
        assert_eq!(del["key"], "k2");
        assert!(del.get("value").is_none());
    }

    #[test]
    fn publish_frame_carries_ref_key_and_the_event() {
        let p = parsed(&publish("w3", "a", "chat.msg", json!({"t": 1}), "k3"));
        assert_eq!(
            p,
            json!({"type": "publish", "ref": "w3", "room": "a",
                   "event": {"type": "chat.msg", "data": {"t": 1}}, "key": "k3"})
        );
        assert!(ClientFrame::decode(&publish("r", "a", "x.y", json!(null), "k")).is_ok());
    }
}
