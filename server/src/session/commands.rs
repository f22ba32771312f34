//! What a client's frames do: one decoded [`ClientFrame`] in, the server frames to write
//! back out. The WebSocket transport only reads a message, hands its text here and writes
//! what comes back; writes go through the one [`Policy`](crate::policy::Policy).
//!
//! ```text
//! → {"type":"subscribe","ref":"1","rooms":["a"],"since":"a=4"}
//! ← {"type":"ack","ref":"1","ok":true,"cursor":"a=4"}      (Reply::frames)
//! ← {"v":1,"type":"item.put","room":"a","seq":5,…}          (Reply::catch_up, page by page)
//! → {"type":"put","ref":"2","room":"a","id":"x","value":1}
//! ← {"type":"ack","ref":"2","ok":true,"event":{…}}
//! ```
//!
//! ```no_run
//! # async fn f(mut session: tidewire_server::session::Session) -> tidewire_server::Result<()> {
//! use tidewire_server::session::commands;
//! let reply = commands::handle(&mut session, r#"{"type":"ping","ref":"1"}"#).await?;
//! assert_eq!(reply.frames.len(), 1); // the pong
//! # Ok(()) }
//! ```

use serde_json::Value;
use tidewire_protocol::{ClientFrame, Cursor, Envelope, ProtocolError, RawAppEvent, ServerFrame};

use super::{CatchUp, Session};
use crate::identity::ClientIdentity;
use crate::store::{WriteOp, WriteRequest};
use crate::{Error, Result};

/// What to write after a frame: `frames` first, then the pages of `catch_up` (a
/// subscription's replay), flushing after each.
#[derive(Debug, Default)]
pub struct Reply {
    /// Frames to write now.
    pub frames: Vec<ServerFrame>,
    /// A subscription's catch-up, to drain with [`CatchUp::next`] after `frames`.
    pub catch_up: Option<CatchUp>,
}

impl Reply {
    fn one(frame: ServerFrame) -> Reply {
        Reply {
            frames: vec![frame],
            catch_up: None,
        }
    }

    fn none() -> Reply {
        Reply::default()
    }
}

/// The `ref` of a frame that could not be decoded, when it has one.
fn reference_of(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text)
        .ok()?
        .get("ref")?
        .as_str()
        .map(str::to_owned)
}

/// Handles the text of one client frame. A frame the client got wrong is answered with an
/// error frame or a failed ack; `Err` is a failure of the server (the transport closes).
pub async fn handle(session: &mut Session, text: &str) -> Result<Reply> {
    session.touch().await;
    let settings = session.sessions.settings();
    // The `since` of a subscribe is parsed (and bounded) once, by the decoder.
    let (frame, parsed_since) = match ClientFrame::decode_limited_with_cursor(
        text,
        settings.max_frame_bytes,
        settings.max_rooms_per_connection,
    ) {
        Ok(decoded) => decoded,
        Err(err) => {
            return Ok(Reply::one(ServerFrame::Error {
                r#ref: reference_of(text),
                code: err.code(),
                message: err.to_string(),
            }))
        }
    };
    let r#ref = frame.reference().map(str::to_owned);
    let ack = |result: std::result::Result<Option<Envelope>, Error>| ServerFrame::Ack {
        r#ref: r#ref.clone(),
        result: result.map_err(|e| e.ack_error()),
        cursor: None,
    };
    // Frames whose success is silent unless they carry a `ref`.
    let quiet = |result: Result<()>| match (&result, &r#ref) {
        (Ok(()), None) => Reply::none(),
        _ => Reply::one(ack(result.map(|()| None))),
    };
    Ok(match frame {
        ClientFrame::Subscribe {
            rooms, presence, ..
        } => {
            let since = parsed_since.unwrap_or_default();
            match session.catch_up(&rooms, &since, presence).await {
                Err(err) => Reply::one(ack(Err(err))),
                Ok(catch_up) => {
                    let mut started = Cursor::new();
                    for room in &rooms {
                        if let Some(seq) = session.cursor.get(room) {
                            started.set(room, seq);
                        }
                    }
                    Reply {
                        frames: vec![ServerFrame::Ack {
                            r#ref: r#ref.clone(),
                            result: Ok(None),
                            cursor: Some(started.to_string()),
                        }],
                        catch_up: Some(catch_up),
                    }
                }
            }
        }
        ClientFrame::Unsubscribe { rooms, .. } => {
            session.unfollow(&rooms).await;
            quiet(Ok(()))
        }
        ClientFrame::Put {
            room,
            id,
            value,
            key,
            if_match,
            ..
        } => Reply::one(ack(write(
            session,
            room,
            WriteOp::Put { id, value },
            key,
            if_match,
        )
        .await)),
        ClientFrame::Delete {
            room,
            id,
            key,
            if_match,
            ..
        } => Reply::one(ack(write(
            session,
            room,
            WriteOp::Delete { id },
            key,
            if_match,
        )
        .await)),
        ClientFrame::Publish {
            room, event, key, ..
        } => {
            let op = WriteOp::Publish(RawAppEvent {
                event_type: event.event_type,
                data: event.data,
            });
            Reply::one(ack(write(session, room, op, key, None).await))
        }
        ClientFrame::Broadcast {
            room, event, data, ..
        } => {
            let result = session
                .policy()
                .broadcast(
                    &session.identity,
                    &room,
                    &session.id,
                    &session.client_id,
                    event,
                    data,
                )
                .await;
            quiet(result)
        }
        ClientFrame::Presence { room, meta, .. } => quiet(session.join_presence(&room, meta).await),
        ClientFrame::Ping { .. } => Reply::one(ServerFrame::Pong { r#ref }),
        ClientFrame::Auth { token, .. } => {
            let result = match session.sessions.auth().cloned() {
                // Open access: the frame is accepted and changes nothing.
                None => Ok(None),
                Some(auth) => match auth.verify(&token) {
                    Ok(grant) => session
                        .reauthenticate(ClientIdentity::authenticated(grant))
                        .await
                        .map(|()| None),
                    Err(err) => Err(err),
                },
            };
            Reply::one(ack(result))
        }
        _ => {
            let err = ProtocolError::UnknownFrameType("unsupported".into());
            Reply::one(ServerFrame::Error {
                r#ref,
                code: err.code(),
                message: err.to_string(),
            })
        }
    })
}

async fn write(
    session: &Session,
    room: String,
    op: WriteOp,
    key: Option<String>,
    if_match: Option<u64>,
) -> Result<Option<Envelope>> {
    let req = WriteRequest {
        room,
        op,
        key,
        if_match,
    };
    let written = session.policy().write(&session.identity, req).await?;
    Ok(Some(written.envelope))
}
