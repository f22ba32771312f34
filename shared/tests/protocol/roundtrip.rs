//! encode → decode is the identity for every wire type.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tidewire_protocol::{
    impl_app_event, ClientFrame, Envelope, ErrorCode, Event, PollResponse, Problem,
    BUILTIN_EVENT_TYPES,
};

use crate::strategies::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelopes_round_trip(env in envelope()) {
        let text = env.encode();
        prop_assert_eq!(&Envelope::decode(&text).unwrap(), &env, "{}", text);
        // Through serde as well (what `PollResponse` and history arrays use).
        let via_serde: Envelope = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&via_serde, &env);
        // And from an already-parsed value (what the SDK does with JavaScript values).
        let value: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&Envelope::decode_from(value).unwrap(), &env);
    }

    #[test]
    fn envelopes_have_the_documented_shape(env in envelope()) {
        let v: Value = serde_json::from_str(&env.encode()).unwrap();
        prop_assert_eq!(&v["v"], &json!(1));
        prop_assert_eq!(v["type"].as_str().unwrap(), env.event.event_type());
        prop_assert_eq!(v["room"].as_str().unwrap(), env.room.as_str());
        prop_assert_eq!(v.get("seq").and_then(Value::as_u64), env.seq);
        prop_assert!(v.get("key").is_some(), "key is always present (null when absent)");
        prop_assert!(v.get("data").is_some());
    }

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let text = frame.encode();
        prop_assert_eq!(&ClientFrame::decode(&text).unwrap(), &frame, "{}", text);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let text = frame.encode();
        let back: tidewire_protocol::ServerFrame = tidewire_protocol::ServerFrame::decode(&text).unwrap();
        prop_assert_eq!(&back, &frame, "{}", text);
    }

    #[test]
    fn poll_responses_round_trip(events in proptest::collection::vec(envelope(), 0..4), cursor in cursor()) {
        let poll = PollResponse { events, cursor };
        let text = serde_json::to_string(&poll).unwrap();
        let back: PollResponse = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, poll);
    }
}

/// Every built-in type is covered by the `event()` strategy and maps to itself.
#[test]
fn every_builtin_type_round_trips() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut seen = std::collections::BTreeSet::new();
    let mut runner = TestRunner::deterministic();
    for _ in 0..2000 {
        let env = envelope().new_tree(&mut runner).unwrap().current();
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        seen.insert(env.event.event_type().into_owned());
    }
    for ty in BUILTIN_EVENT_TYPES {
        assert!(seen.contains(*ty), "no `{ty}` envelope was generated");
    }
    assert!(
        seen.iter()
            .any(|t| !BUILTIN_EVENT_TYPES.contains(&t.as_str())),
        "no application event was generated"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Chat {
    #[serde(rename = "chat.message")]
    Message { text: String, n: u64 },
    #[serde(rename = "chat.cleared")]
    Cleared,
}
impl_app_event!(Chat);

proptest! {
    #[test]
    fn typed_app_events_round_trip(text in "\\PC{0,20}", n in any::<u64>(), seq in 1..u64::MAX, cleared in any::<bool>()) {
        let event = if cleared { Chat::Cleared } else { Chat::Message { text, n } };
        let env = Envelope { room: "chat".into(), seq: Some(seq), id: "e".into(), ts: "t".into(), key: None, event: Event::App(event) };
        let wire = env.encode();
        prop_assert_eq!(&Envelope::<Chat>::decode(&wire).unwrap(), &env);
        // The same bytes decode as a raw application event with the same type.
        let raw = Envelope::<tidewire_protocol::RawAppEvent>::decode(&wire).unwrap();
        prop_assert_eq!(raw.event.event_type(), env.event.event_type());
        prop_assert_eq!(raw.encode(), wire);
    }
}

#[test]
fn typed_app_event_wire_shape() {
    let env = Envelope {
        room: "chat".into(),
        seq: Some(3),
        id: "e3".into(),
        ts: "t".into(),
        key: Some("k".into()),
        event: Event::App(Chat::Message {
            text: "hi".into(),
            n: 1,
        }),
    };
    let v: Value = serde_json::from_str(&env.encode()).unwrap();
    assert_eq!(
        v,
        json!({"v":1,"type":"chat.message","room":"chat","seq":3,"id":"e3","ts":"t","key":"k",
               "data":{"text":"hi","n":1}})
    );
    let cleared = Envelope {
        event: Event::App(Chat::Cleared),
        ..env
    };
    let v: Value = serde_json::from_str(&cleared.encode()).unwrap();
    assert_eq!(v["type"], "chat.cleared");
    assert_eq!(v["data"], Value::Null);
}

#[test]
fn problems_round_trip_for_every_code() {
    for &code in ErrorCode::ALL {
        let p = Problem::new(code, format!("detail of {code}"));
        let text = serde_json::to_string(&p).unwrap();
        let back: Problem = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.status, code.http_status());
    }
}
