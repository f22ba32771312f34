//! proptest strategies for every wire type.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;
use tidewire_protocol::{
    validate_event_type, AckError, BroadcastData, ClientFrame, Cursor, Envelope, ErrorCode,
    ErrorData, Event, Item, ItemDeleted, Member, PresenceState, RawAppEvent, ReconnectData,
    ResyncData, ServerFrame,
};

pub fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,40}"
}

pub fn item_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,40}"
}

/// Any text, including quotes, escapes and non-ASCII.
pub fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}|[\"\\\\/\\n\\t\\u{0}]{0,4}"
}

pub fn idempotency_key() -> impl Strategy<Value = String> {
    "[!-~]{1,40}"
}

pub fn app_type() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,64}".prop_filter("not reserved", |t| validate_event_type(t).is_ok())
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL)
}

/// Any JSON value: nested arrays and objects, integers over the whole i64/u64 range, floats.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub fn item() -> impl Strategy<Value = Item> {
    (item_id(), json(), 1..u64::MAX).prop_map(|(id, value, version)| Item { id, value, version })
}

pub fn member() -> impl Strategy<Value = Member> {
    (text(), option::of(text()), json()).prop_map(|(client_id, user, meta)| Member {
        client_id,
        user,
        meta,
    })
}

pub fn cursor() -> impl Strategy<Value = String> {
    btree_map(room(), any::<u64>(), 0..5).prop_map(|m| {
        let mut c = Cursor::new();
        for (r, s) in &m {
            c.set(r, *s);
        }
        c.to_string()
    })
}

/// One event of every kind, with the application events in their raw form.
pub fn event() -> impl Strategy<Value = Event<RawAppEvent>> {
    prop_oneof![
        item().prop_map(Event::ItemPut),
        (item_id(), any::<u64>())
            .prop_map(|(id, version)| Event::ItemDeleted(ItemDeleted { id, version })),
        (app_type(), json())
            .prop_map(|(event_type, data)| Event::App(RawAppEvent { event_type, data })),
        (text(), json(), option::of(text()), option::of(text())).prop_map(
            |(event, data, from, user)| Event::Broadcast(BroadcastData {
                event,
                data,
                from,
                user
            })
        ),
        member().prop_map(Event::PresenceJoin),
        member().prop_map(Event::PresenceLeave),
        vec(member(), 0..4).prop_map(|members| Event::PresenceState(PresenceState { members })),
        (text(), any::<u64>()).prop_map(|(reason, seq)| Event::Resync(ResyncData { reason, seq })),
        (any::<u64>(), text())
            .prop_map(|(retry_ms, reason)| Event::Reconnect(ReconnectData { retry_ms, reason })),
        (error_code(), text())
            .prop_map(|(code, message)| Event::Error(ErrorData { code, message })),
    ]
}

/// A valid envelope: durable events carry a `seq` ≥ 1; connection-wide control events may
/// have an empty room.
pub fn envelope() -> impl Strategy<Value = Envelope> {
    (
        event(),
        room(),
        any::<bool>(),
        1..u64::MAX,
        any::<bool>(),
        text(),
        text(),
        option::of(idempotency_key()),
    )
        .prop_map(|(event, room, empty_room, seq, with_seq, id, ts, key)| {
            let connection_wide = matches!(event, Event::Reconnect(_) | Event::Error(_));
            let durable = event.is_durable();
            Envelope {
                room: if connection_wide && empty_room {
                    String::new()
                } else {
                    room
                },
                seq: (durable || with_seq).then_some(seq),
                id,
                ts,
                key,
                event,
            }
        })
}

fn reference() -> impl Strategy<Value = Option<String>> {
    option::of(text())
}

pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            reference(),
            vec(room(), 0..8),
            option::of(cursor()),
            any::<bool>()
        )
            .prop_map(|(r#ref, rooms, since, presence)| ClientFrame::Subscribe {
                r#ref,
                rooms,
                since,
                presence
            }),
        (reference(), vec(room(), 0..8))
            .prop_map(|(r#ref, rooms)| ClientFrame::Unsubscribe { r#ref, rooms }),
        (
            reference(),
            room(),
            item_id(),
            json(),
            option::of(idempotency_key()),
            option::of(any::<u64>())
        )
            .prop_map(|(r#ref, room, id, value, key, if_match)| ClientFrame::Put {
                r#ref,
                room,
                id,
                value,
                key,
                if_match
            }),
        (
            reference(),
            room(),
            item_id(),
            option::of(idempotency_key()),
            option::of(any::<u64>())
        )
            .prop_map(|(r#ref, room, id, key, if_match)| ClientFrame::Delete {
                r#ref,
                room,
                id,
                key,
                if_match
            }),
        (
            reference(),
            room(),
            app_type(),
            json(),
            option::of(idempotency_key())
        )
            .prop_map(
                |(r#ref, room, event_type, data, key)| ClientFrame::Publish {
                    r#ref,
                    room,
                    event: RawAppEvent { event_type, data },
                    key,
                }
            ),
        (reference(), room(), text(), json()).prop_map(|(r#ref, room, event, data)| {
            ClientFrame::Broadcast {
                r#ref,
                room,
                event,
                data,
            }
        }),
        (reference(), room(), json()).prop_map(|(r#ref, room, meta)| ClientFrame::Presence {
            r#ref,
            room,
            meta
        }),
        reference().prop_map(|r#ref| ClientFrame::Ping { r#ref }),
        (reference(), text()).prop_map(|(r#ref, token)| ClientFrame::Auth { r#ref, token }),
    ]
}

pub fn ack_error() -> impl Strategy<Value = AckError> {
    (error_code(), text(), option::of(item())).prop_map(|(code, title, current)| AckError {
        code,
        title,
        current,
    })
}

pub fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let result = prop_oneof![
        Just(Ok(None)),
        envelope().prop_map(|e| Ok(Some(e))),
        ack_error().prop_map(Err),
    ];
    prop_oneof![
        envelope().prop_map(ServerFrame::Event),
        (reference(), result, option::of(cursor())).prop_map(|(r#ref, result, cursor)| {
            ServerFrame::Ack {
                r#ref,
                result,
                cursor,
            }
        }),
        reference().prop_map(|r#ref| ServerFrame::Pong { r#ref }),
        (reference(), error_code(), text()).prop_map(|(r#ref, code, message)| ServerFrame::Error {
            r#ref,
            code,
            message
        }),
    ]
}
