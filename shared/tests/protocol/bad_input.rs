//! Bad input becomes the right typed error and never a panic.

use proptest::prelude::*;
use serde_json::{json, Value};
use tidewire_protocol::limits::MAX_ROOMS_PER_CONNECTION;
use tidewire_protocol::{
    ClientFrame, Cursor, Envelope, ErrorCode, ProtocolError, RawAppEvent, ServerFrame,
};

type Env = Envelope<RawAppEvent>;
type Server = ServerFrame<RawAppEvent>;

/// A valid durable envelope as a JSON object, to break one field at a time.
fn good_envelope() -> Value {
    json!({"v":1,"type":"item.put","room":"board-1","seq":42,"id":"e","ts":"t","key":null,
           "data":{"id":"slot-3","value":{"free":true},"version":7}})
}

fn with(mut v: Value, field: &str, value: Value) -> String {
    v[field] = value;
    v.to_string()
}

fn without(mut v: Value, field: &str) -> String {
    v.as_object_mut().unwrap().remove(field);
    v.to_string()
}

#[track_caller]
fn envelope_err(text: &str) -> ProtocolError {
    match Env::decode(text) {
        Ok(e) => panic!("decoded {text} into {e:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn frame_err(text: &str) -> ProtocolError {
    match ClientFrame::decode(text) {
        Ok(f) => panic!("decoded {text} into {f:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_good_envelope_decodes() {
    Env::decode(&good_envelope().to_string()).unwrap();
}

/// A name, the input, the expected code, and a check of the error's variant.
type Case = (&'static str, String, ErrorCode, fn(&ProtocolError) -> bool);

#[test]
fn bad_envelopes() {
    use ErrorCode::*;
    use ProtocolError as E;
    let g = good_envelope;
    let cases: Vec<Case> = vec![
        ("unknown v", with(g(), "v", json!(2)), UnsupportedVersion, |e| matches!(e, E::UnsupportedVersion(v) if v == "2")),
        ("v as string", with(g(), "v", json!("1")), UnsupportedVersion, |e| matches!(e, E::UnsupportedVersion(_))),
        ("v as float", with(g(), "v", json!(1.5)), UnsupportedVersion, |e| matches!(e, E::UnsupportedVersion(_))),
        ("v null", with(g(), "v", Value::Null), BadJson, |e| matches!(e, E::MissingField("v"))),
        ("v missing", without(g(), "v"), BadJson, |e| matches!(e, E::MissingField("v"))),
        ("type missing", without(g(), "type"), BadJson, |e| matches!(e, E::MissingField("type"))),
        ("type not a string", with(g(), "type", json!(5)), BadJson, |e| matches!(e, E::BadJson(_))),
        ("reserved item. type", with(g(), "type", json!("item.moved")), UnknownType, |e| matches!(e, E::UnknownEventType(t) if t == "item.moved")),
        ("reserved presence. type", with(g(), "type", json!("presence.dance")), UnknownType, |e| matches!(e, E::UnknownEventType(_))),
        ("reserved tidewire. type", with(g(), "type", json!("tidewire.x")), UnknownType, |e| matches!(e, E::UnknownEventType(_))),
        ("ack is not an event", with(g(), "type", json!("ack")), UnknownType, |e| matches!(e, E::UnknownEventType(_))),
        ("room missing", without(g(), "room"), BadJson, |e| matches!(e, E::MissingField("room"))),
        ("room empty", with(g(), "room", json!("")), BadRoomName, |e| matches!(e, E::BadRoomName(_))),
        ("room with space", with(g(), "room", json!("a b")), BadRoomName, |e| matches!(e, E::BadRoomName(_))),
        ("room with =", with(g(), "room", json!("a=1")), BadRoomName, |e| matches!(e, E::BadRoomName(_))),
        ("room too long", with(g(), "room", json!("r".repeat(129))), BadRoomName, |e| matches!(e, E::BadRoomName(_))),
        ("room not a string", with(g(), "room", json!(1)), BadJson, |e| matches!(e, E::BadJson(_))),
        ("durable without seq", without(g(), "seq"), BadJson, |e| matches!(e, E::MissingField("seq"))),
        ("seq zero", with(g(), "seq", json!(0)), BadJson, |e| matches!(e, E::InvalidField { field: "seq", .. })),
        ("seq negative", with(g(), "seq", json!(-1)), BadJson, |e| matches!(e, E::BadJson(_))),
        ("seq as string", with(g(), "seq", json!("42")), BadJson, |e| matches!(e, E::BadJson(_))),
        ("seq too big", r#"{"v":1,"type":"item.put","room":"r","seq":18446744073709551616,"data":{"id":"a","value":1,"version":1}}"#.into(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("key not a string", with(g(), "key", json!(7)), BadJson, |e| matches!(e, E::BadJson(_))),
        ("data missing", without(g(), "data"), BadJson, |e| matches!(e, E::InvalidField { field: "data", .. })),
        ("item without version", with(g(), "data", json!({"id":"a","value":1})), BadJson, |e| matches!(e, E::InvalidField { field: "data", .. })),
        ("version as string", with(g(), "data", json!({"id":"a","value":1,"version":"7"})), BadJson, |e| matches!(e, E::InvalidField { field: "data", .. })),
        ("resync without seq in data", with(with_v(g(), "type", json!("resync")), "data", json!({"reason":"x"})), BadJson, |e| matches!(e, E::InvalidField { field: "data", .. })),
        ("error with unknown code", with(with_v(g(), "type", json!("error")), "data", json!({"code":"nope","message":""})), BadJson, |e| matches!(e, E::InvalidField { field: "data", .. })),
        ("not JSON", "{\"v\":1,".into(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("empty input", String::new(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("array", r#"[1,"item.put","r",1,"e","t",null,{"id":"a","value":1,"version":1}]"#.into(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("number", "1".into(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("string", "\"item.put\"".into(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("null", "null".into(), BadJson, |e| matches!(e, E::BadJson(_))),
        ("trailing garbage", format!("{} x", g()), BadJson, |e| matches!(e, E::BadJson(_))),
        ("too deep", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)), BadJson, |e| matches!(e, E::BadJson(_))),
    ];
    for (name, text, code, is_right) in cases {
        let err = envelope_err(&text);
        assert_eq!(err.code(), code, "{name}: {err}");
        assert!(is_right(&err), "{name}: wrong error {err:?}");
        // The same through a parsed value, when the text is JSON.
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            let err2 = Env::decode_from(value).unwrap_err();
            assert_eq!(err2.code(), code, "{name} (from value): {err2}");
        }
    }
}

fn with_v(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

#[test]
fn oversize_input() {
    let text = good_envelope().to_string();
    let err = Env::decode_limited(&text, 10).unwrap_err();
    assert!(matches!(err, ProtocolError::TooLarge { size, limit: 10 } if size == text.len()));
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);

    let big = format!(
        r#"{{"type":"ping","ref":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    assert_eq!(frame_err(&big).code(), ErrorCode::PayloadTooLarge);
    assert_eq!(
        Env::decode(&big).unwrap_err().code(),
        ErrorCode::PayloadTooLarge
    );
    assert_eq!(
        Server::decode(&big).unwrap_err().code(),
        ErrorCode::PayloadTooLarge
    );
    let small = ClientFrame::decode_limited(r#"{"type":"ping"}"#, 5, 64).unwrap_err();
    assert_eq!(small.code(), ErrorCode::PayloadTooLarge);
}

#[test]
fn bad_client_frames() {
    use ErrorCode::*;
    let many_rooms: Vec<String> = (0..=MAX_ROOMS_PER_CONNECTION)
        .map(|i| format!("r{i}"))
        .collect();
    let exactly_max: Vec<String> = (0..MAX_ROOMS_PER_CONNECTION)
        .map(|i| format!("r{i}"))
        .collect();
    assert!(
        ClientFrame::decode(&json!({"type":"subscribe","rooms":exactly_max}).to_string()).is_ok()
    );
    let cases: Vec<(&str, Value, ErrorCode)> = vec![
        ("unknown type", json!({"type":"teleport"}), UnknownType),
        ("type missing", json!({"rooms":["a"]}), BadJson),
        ("type not a string", json!({"type":1}), BadJson),
        (
            "type wrong case",
            json!({"type":"Subscribe","rooms":["a"]}),
            UnknownType,
        ),
        (
            "subscribe without rooms",
            json!({"type":"subscribe"}),
            BadJson,
        ),
        (
            "rooms not a list",
            json!({"type":"subscribe","rooms":"a"}),
            BadJson,
        ),
        (
            "room not a string",
            json!({"type":"subscribe","rooms":[1]}),
            BadJson,
        ),
        (
            "bad room in subscribe",
            json!({"type":"subscribe","rooms":["ok","a b"]}),
            BadRoomName,
        ),
        (
            "bad room in unsubscribe",
            json!({"type":"unsubscribe","rooms":[""]}),
            BadRoomName,
        ),
        (
            "too many rooms",
            json!({"type":"subscribe","rooms":many_rooms}),
            TooManyRooms,
        ),
        (
            "bad cursor number",
            json!({"type":"subscribe","rooms":["a"],"since":"a=x"}),
            BadCursor,
        ),
        (
            "bad cursor room",
            json!({"type":"subscribe","rooms":["a"],"since":"a b=1"}),
            BadCursor,
        ),
        (
            "cursor room twice",
            json!({"type":"subscribe","rooms":["a"],"since":"a=1,a=2"}),
            BadCursor,
        ),
        (
            "cursor not a string",
            json!({"type":"subscribe","rooms":["a"],"since":4}),
            BadJson,
        ),
        (
            "presence flag not a bool",
            json!({"type":"subscribe","rooms":["a"],"presence":"yes"}),
            BadJson,
        ),
        ("ref not a string", json!({"type":"ping","ref":1}), BadJson),
        (
            "put without value",
            json!({"type":"put","room":"a","id":"x"}),
            BadJson,
        ),
        (
            "put without id",
            json!({"type":"put","room":"a","value":1}),
            BadJson,
        ),
        (
            "put bad room",
            json!({"type":"put","room":"a/b","id":"x","value":1}),
            BadRoomName,
        ),
        (
            "put bad id",
            json!({"type":"put","room":"a","id":"x y","value":1}),
            BadItemId,
        ),
        (
            "put bad key",
            json!({"type":"put","room":"a","id":"x","value":1,"key":"a b"}),
            BadIdempotencyKey,
        ),
        (
            "put empty key",
            json!({"type":"put","room":"a","id":"x","value":1,"key":""}),
            BadIdempotencyKey,
        ),
        (
            "if_match as string",
            json!({"type":"put","room":"a","id":"x","value":1,"if_match":"3"}),
            BadJson,
        ),
        (
            "if_match negative",
            json!({"type":"delete","room":"a","id":"x","if_match":-1}),
            BadJson,
        ),
        (
            "delete bad id",
            json!({"type":"delete","room":"a","id":""}),
            BadItemId,
        ),
        (
            "publish reserved type",
            json!({"type":"publish","room":"a","event":{"type":"item.put","data":{}}}),
            BadEventType,
        ),
        (
            "publish built-in type",
            json!({"type":"publish","room":"a","event":{"type":"broadcast"}}),
            BadEventType,
        ),
        (
            "publish ack type",
            json!({"type":"publish","room":"a","event":{"type":"ack"}}),
            BadEventType,
        ),
        (
            "publish tidewire. type",
            json!({"type":"publish","room":"a","event":{"type":"tidewire.x"}}),
            BadEventType,
        ),
        (
            "publish type too long",
            json!({"type":"publish","room":"a","event":{"type":"e".repeat(65)}}),
            BadEventType,
        ),
        (
            "publish without event",
            json!({"type":"publish","room":"a"}),
            BadJson,
        ),
        (
            "publish event not an object",
            json!({"type":"publish","room":"a","event":"chat"}),
            BadJson,
        ),
        (
            "broadcast without event name",
            json!({"type":"broadcast","room":"a","data":1}),
            BadJson,
        ),
        (
            "presence bad room",
            json!({"type":"presence","room":"é"}),
            BadRoomName,
        ),
        ("auth without token", json!({"type":"auth"}), BadJson),
        ("array", json!([{"type":"ping"}]), BadJson),
        ("number", json!(1), BadJson),
        ("null", Value::Null, BadJson),
        ("string", json!("ping"), BadJson),
    ];
    for (name, value, code) in cases {
        let err = frame_err(&value.to_string());
        assert_eq!(err.code(), code, "{name}: {err}");
    }
    for text in ["", "{", "{\"type\":\"ping\"} {}", "\u{0}", "ping"] {
        assert_eq!(frame_err(text).code(), BadJson, "{text:?}");
    }
    // Missing fields name the field.
    assert_eq!(
        frame_err(r#"{"type":"auth"}"#),
        ProtocolError::MissingField("token")
    );
    // Unknown frame types are echoed, shortened.
    let long = format!(r#"{{"type":"{}"}}"#, "t".repeat(10_000));
    match frame_err(&long) {
        ProtocolError::UnknownFrameType(t) => assert!(t.len() <= 64),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_server_frames() {
    use ErrorCode::*;
    let cases: Vec<(&str, Value, ErrorCode, ProtocolError)> = vec![
        (
            "ack without ok",
            json!({"type":"ack","ref":"1"}),
            BadJson,
            ProtocolError::MissingField("ok"),
        ),
        (
            "failed ack without error",
            json!({"type":"ack","ok":false}),
            BadJson,
            ProtocolError::MissingField("error"),
        ),
        (
            "error without code",
            json!({"type":"error","message":"m"}),
            BadJson,
            ProtocolError::MissingField("code"),
        ),
    ];
    for (name, value, code, expected) in cases {
        let err = Server::decode(&value.to_string()).unwrap_err();
        assert_eq!(err.code(), code, "{name}");
        assert_eq!(err, expected, "{name}");
    }
    for (name, value, code) in [
        (
            "error with unknown code",
            json!({"type":"error","code":"nope"}),
            BadJson,
        ),
        (
            "ack with bad event",
            json!({"type":"ack","ok":true,"event":{"v":2}}),
            UnsupportedVersion,
        ),
        (
            "ack ok not a bool",
            json!({"type":"ack","ok":"yes"}),
            BadJson,
        ),
        (
            "unknown envelope type",
            json!({"v":1,"type":"item.moved","room":"a"}),
            UnknownType,
        ),
        ("no type, no v", json!({"room":"a"}), BadJson),
        ("array", json!([]), BadJson),
    ] {
        let err = Server::decode(&value.to_string()).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
    }
}

#[test]
fn bad_cursors_in_every_position() {
    for bad in [
        "a", "a=", "=1", "a=1,", ",a=1", "a=-1", "a=01", "a=1,a=2", "a b=1", "a=1;b=2",
    ] {
        assert_eq!(
            bad.parse::<Cursor>().unwrap_err().code(),
            ErrorCode::BadCursor,
            "{bad}"
        );
    }
}

/// Field names from every wire type, to build JSON objects that get past the first checks.
const FIELDS: &[&str] = &[
    "v",
    "type",
    "room",
    "rooms",
    "seq",
    "id",
    "ts",
    "key",
    "data",
    "value",
    "version",
    "ref",
    "since",
    "presence",
    "if_match",
    "event",
    "meta",
    "token",
    "ok",
    "error",
    "code",
    "message",
    "cursor",
    "title",
    "current",
    "members",
    "client_id",
    "reason",
    "retry_ms",
];
const TYPES: &[&str] = &[
    "item.put",
    "item.deleted",
    "broadcast",
    "presence.join",
    "presence.leave",
    "presence.state",
    "resync",
    "reconnect",
    "error",
    "ack",
    "pong",
    "subscribe",
    "unsubscribe",
    "put",
    "delete",
    "publish",
    "presence",
    "ping",
    "auth",
    "chat.message",
    "",
];

fn near_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..3).prop_map(Value::from),
        proptest::sample::select(TYPES).prop_map(Value::from),
        "[A-Za-z0-9=,. -]{0,8}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map(proptest::sample::select(FIELDS), inner, 0..6)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
        ]
    });
    proptest::collection::btree_map(proptest::sample::select(FIELDS), value, 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn decode_everything(text: &str) {
    let _ = Env::decode(text);
    let _ = ClientFrame::decode(text);
    let _ = Server::decode(text);
    let _ = text.parse::<Cursor>();
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let _ = Env::decode_from(value.clone());
        let _ = Server::decode_value(value);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,200}") {
        decode_everything(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        decode_everything(&String::from_utf8_lossy(&bytes));
    }

    /// Objects built from the protocol's own field names and types reach deep into the
    /// decoders; whatever they decode to must encode and decode again to the same thing.
    #[test]
    fn protocol_shaped_objects_never_panic(v in near_json()) {
        let text = v.to_string();
        decode_everything(&text);
        if let Ok(env) = Env::decode(&text) {
            prop_assert_eq!(Env::decode(&env.encode()).unwrap(), env);
        }
        if let Ok(frame) = ClientFrame::decode(&text) {
            prop_assert_eq!(ClientFrame::decode(&frame.encode()).unwrap(), frame);
        }
        if let Ok(frame) = Server::decode(&text) {
            prop_assert_eq!(Server::decode(&frame.encode()).unwrap(), frame);
        }
    }
}
