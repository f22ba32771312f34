//! Typed application events for Rust users: the client carries envelopes with
//! [`RawAppEvent`]s; [`typed`] turns one into an envelope of the application's own event type
//! (any [`AppEvent`], e.g. a serde enum with [`impl_app_event!`](tidewire_protocol::impl_app_event)).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tidewire_client::typed::typed;
//! use tidewire_protocol::{impl_app_event, Envelope, Event};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum Chat {
//!     #[serde(rename = "chat.message")]
//!     Message { text: String },
//! }
//! impl_app_event!(Chat);
//!
//! let raw: Envelope = Envelope::decode(r#"{"v":1,"type":"chat.message","room":"r","seq":1,
//!     "id":"e1","ts":"t","key":null,"data":{"text":"hi"}}"#).unwrap();
//! let env = typed::<Chat>(&raw).unwrap();
//! assert_eq!(env.event, Event::App(Chat::Message { text: "hi".into() }));
//! ```

use tidewire_protocol::{AppEvent, Envelope, Event, ProtocolError, RawAppEvent};

/// Re-types an envelope's event: built-in events are copied, the application event is decoded
/// by `A` (an unknown type is [`ProtocolError::UnknownEventType`]).
pub fn typed<A: AppEvent>(env: &Envelope<RawAppEvent>) -> Result<Envelope<A>, ProtocolError> {
    let event = match &env.event {
        Event::App(raw) => Event::App(A::from_parts(&raw.event_type, raw.data.clone())?),
        Event::ItemPut(x) => Event::ItemPut(x.clone()),
        Event::ItemDeleted(x) => Event::ItemDeleted(x.clone()),
        Event::Broadcast(x) => Event::Broadcast(x.clone()),
        Event::PresenceJoin(x) => Event::PresenceJoin(x.clone()),
        Event::PresenceLeave(x) => Event::PresenceLeave(x.clone()),
        Event::PresenceState(x) => Event::PresenceState(x.clone()),
        Event::Resync(x) => Event::Resync(x.clone()),
        Event::Reconnect(x) => Event::Reconnect(x.clone()),
        Event::Error(x) => Event::Error(x.clone()),
        other => {
            return Err(ProtocolError::UnknownEventType(
                other.event_type().into_owned(),
            ))
        }
    };
    Ok(Envelope {
        room: env.room.clone(),
        seq: env.seq,
        id: env.id.clone(),
        ts: env.ts.clone(),
        key: env.key.clone(),
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use tidewire_protocol::{impl_app_event, ErrorCode};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Game {
        #[serde(rename = "game.move")]
        Move { x: i32 },
    }
    impl_app_event!(Game);

    fn decode(text: &str) -> Envelope {
        Envelope::decode(text).unwrap()
    }

    #[test]
    fn builtin_events_are_copied() {
        let raw = decode(
            r#"{"v":1,"type":"item.put","room":"r","seq":2,"id":"e","ts":"t","key":"k","data":{"id":"a","value":1,"version":3}}"#,
        );
        let t = typed::<Game>(&raw).unwrap();
        assert_eq!((t.seq, t.key.as_deref()), (Some(2), Some("k")));
        assert!(matches!(t.event, Event::ItemPut(ref i) if i.version == 3));
    }

    #[test]
    fn unknown_app_type_is_a_typed_error() {
        let raw = decode(
            r#"{"v":1,"type":"chat.message","room":"r","seq":1,"id":"e","ts":"t","key":null,"data":{}}"#,
        );
        let err = typed::<Game>(&raw).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownType);
        let ok = decode(
            r#"{"v":1,"type":"game.move","room":"r","seq":1,"id":"e","ts":"t","key":null,"data":{"x":4}}"#,
        );
        assert_eq!(
            typed::<Game>(&ok).unwrap().event,
            Event::App(Game::Move { x: 4 })
        );
    }
}
