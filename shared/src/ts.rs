//! TypeScript declarations generated from the Rust types (feature `ts`).
//!
//! [`declarations`] assembles one `.d.ts` file: the types with a `ts-rs` derive, plus the ones
//! whose JSON comes from hand-written serde code (the [`Envelope`](crate::Envelope) union,
//! built from [`BUILTIN_EVENT_TYPES`](crate::BUILTIN_EVENT_TYPES), and [`ServerFrame`](crate::ServerFrame)), and the
//! [`ErrorCode`] union from [`ErrorCode::ALL`]. 64-bit integers are declared as `number`: every
//! `seq` and `version` stays below 2^53. The checked-in copy is `client/types/protocol.d.ts`;
//! a test fails when it is stale. Regenerate it with
//!
//! ```text
//! TIDEWIRE_UPDATE_TS=1 cargo test -p tidewire-protocol --features ts
//! ```
//!
//! ```
//! let dts = tidewire_protocol::ts::declarations();
//! assert!(dts.contains("export type Envelope<A extends AppEventShape = RawAppEvent> ="));
//! assert!(dts.contains(r#"{ type: "item.put", data: Item }"#));
//! ```

use std::fmt::Write;

use ts_rs::{Config, TS};

use crate::event::{
    BroadcastData, ErrorData, Item, ItemDeleted, Member, PresenceState, RawAppEvent, ReconnectData,
    ResyncData,
};
use crate::frame::{AckError, ClientFrame};
use crate::rest::{ItemState, PresenceList, Snapshot, TicketResponse};
use crate::{ErrorCode, Problem, PROTOCOL_VERSION};

/// Where the checked-in declarations live, relative to the workspace root.
pub const DECLARATIONS_PATH: &str = "client/types/protocol.d.ts";

/// The command that regenerates [`DECLARATIONS_PATH`].
pub const REGENERATE: &str = "TIDEWIRE_UPDATE_TS=1 cargo test -p tidewire-protocol --features ts";

/// The configuration every declaration is rendered with: `u64` is a `number`.
pub fn config() -> Config {
    Config::new().with_large_int("number")
}

type Render = fn(&Config) -> String;

/// The data type of each built-in event, in the order of
/// [`BUILTIN_EVENT_TYPES`](crate::BUILTIN_EVENT_TYPES).
pub const BUILTIN_EVENT_DATA: &[(&str, Render)] = &[
    ("item.put", <Item as TS>::name),
    ("item.deleted", <ItemDeleted as TS>::name),
    ("broadcast", <BroadcastData as TS>::name),
    ("presence.join", <Member as TS>::name),
    ("presence.leave", <Member as TS>::name),
    ("presence.state", <PresenceState as TS>::name),
    ("resync", <ResyncData as TS>::name),
    ("reconnect", <ReconnectData as TS>::name),
    ("error", <ErrorData as TS>::name),
];

/// A declared object type whose JSON is written by hand-written serde code. The fields are
/// data, so a test can hold the declaration against real encoder output.
pub struct ObjectDecl {
    /// The TypeScript name, with its type parameters.
    pub name: &'static str,
    /// The JSDoc text.
    pub doc: &'static str,
    /// The variants: each a list of `(field, optional, TypeScript type)`.
    pub variants: &'static [&'static [(&'static str, bool, &'static str)]],
}

/// The header of every envelope; the `type`/`data` pair is [`BUILTIN_EVENT_DATA`] or an
/// application event.
pub const ENVELOPE_HEADER: ObjectDecl = ObjectDecl {
    name: "EnvelopeHeader",
    doc: "The fields every envelope carries besides `type` and `data`. `seq` is present on durable events (item.put, item.deleted, application events) only; `room` is empty only on connection-wide `reconnect` / `error`; `key` is the Idempotency-Key of the write that produced the event, or null.",
    variants: &[&[
        ("v", false, "ProtocolVersion"),
        ("room", false, "string"),
        ("seq", true, "number"),
        ("id", false, "string"),
        ("ts", false, "string"),
        ("key", false, "string | null"),
    ]],
};

/// WebSocket replies from the server (besides envelopes).
pub const SERVER_REPLIES: &[ObjectDecl] = &[
    ObjectDecl {
        name: "AckFrame<A extends AppEventShape = RawAppEvent>",
        doc: "The outcome of the client frame with this `ref`: for writes the appended event, for `subscribe` the cursor it starts from, or the error.",
        variants: &[
            &[
                ("type", false, "\"ack\""),
                ("ref", true, "string"),
                ("ok", false, "true"),
                ("event", true, "Envelope<A>"),
                ("cursor", true, "string"),
            ],
            &[
                ("type", false, "\"ack\""),
                ("ref", true, "string"),
                ("ok", false, "false"),
                ("error", false, "AckError"),
                ("cursor", true, "string"),
            ],
        ],
    },
    ObjectDecl {
        name: "PongFrame",
        doc: "The reply to `ping`.",
        variants: &[&[("type", false, "\"pong\""), ("ref", true, "string")]],
    },
    ObjectDecl {
        name: "ErrorFrame",
        doc: "A frame could not be handled; the connection stays open unless a close follows.",
        variants: &[&[
            ("type", false, "\"error\""),
            ("ref", true, "string"),
            ("code", false, "ErrorCode"),
            ("message", false, "string"),
        ]],
    },
];

/// `GET /v1/poll`.
pub const POLL_RESPONSE: ObjectDecl = ObjectDecl {
    name: "PollResponse<A extends AppEventShape = RawAppEvent>",
    doc: "`GET /v1/poll`: events after the cursor and the cursor to poll from next.",
    variants: &[&[
        ("events", false, "Array<Envelope<A>>"),
        ("cursor", false, "Cursor"),
    ]],
};

fn jsdoc(out: &mut String, text: &str) {
    let _ = writeln!(out, "/**\n * {text}\n */");
}

fn render_object(out: &mut String, decl: &ObjectDecl) {
    jsdoc(out, decl.doc);
    let _ = write!(out, "export type {} =", decl.name);
    for variant in decl.variants {
        if decl.variants.len() > 1 {
            out.push_str("\n  |");
        }
        out.push_str(" {");
        for (i, (field, optional, ty)) in variant.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let q = if *optional { "?" } else { "" };
            let _ = write!(out, "{sep}{field}{q}: {ty}");
        }
        out.push_str(" }");
    }
    out.push_str(";\n\n");
}

fn derived<T: TS + ?Sized>(out: &mut String, cfg: &Config) {
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    // ts-rs writes field docs at the start of a line with trailing spaces; indent them.
    let decl = T::decl(cfg);
    for (i, line) in decl.lines().enumerate() {
        let line = line.trim_end();
        if i == 0 {
            out.push_str("export ");
        } else if line.starts_with('*') {
            out.push_str("   ");
        } else {
            out.push_str("  ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

/// The whole declarations file.
pub fn declarations() -> String {
    let cfg = config();
    let mut out = String::with_capacity(16 * 1024);
    let _ = writeln!(
        out,
        "// Tidewire protocol v{PROTOCOL_VERSION}: TypeScript declarations of every wire type.\n\
         // Generated from the Rust crate tidewire-protocol (shared/src/ts.rs); do not edit.\n\
         // Regenerate: {REGENERATE}\n"
    );

    jsdoc(&mut out, "Any JSON value.");
    out.push_str("export ");
    out.push_str(&<serde_json::Value as TS>::decl(&cfg));
    out.push_str("\n\n");

    jsdoc(
        &mut out,
        "The protocol version: the `v` field of every envelope.",
    );
    let _ = writeln!(out, "export type ProtocolVersion = {PROTOCOL_VERSION};\n");

    jsdoc(
        &mut out,
        "A stable error code: 4000-4499 retryable, 4500-4999 terminal (see `ErrorCodeNumber`).",
    );
    out.push_str("export type ErrorCode =");
    for code in ErrorCode::ALL {
        let _ = write!(out, "\n  | \"{}\"", code.as_str());
    }
    out.push_str(";\n\n");

    jsdoc(
        &mut out,
        "The number of each error code; also the WebSocket close code.",
    );
    out.push_str("export type ErrorCodeNumber = {");
    for code in ErrorCode::ALL {
        let _ = write!(out, "\n  {}: {};", code.as_str(), code.number());
    }
    out.push_str("\n};\n\n");

    jsdoc(
        &mut out,
        "Resume positions: `room=seq` pairs joined by commas, e.g. `board-1=42,chat=7`.",
    );
    out.push_str("export type Cursor = string;\n\n");

    // Event payloads, frames and REST bodies with a ts-rs derive.
    derived::<Item>(&mut out, &cfg);
    derived::<ItemDeleted>(&mut out, &cfg);
    derived::<BroadcastData>(&mut out, &cfg);
    derived::<Member>(&mut out, &cfg);
    derived::<PresenceState>(&mut out, &cfg);
    derived::<ResyncData>(&mut out, &cfg);
    derived::<ReconnectData>(&mut out, &cfg);
    derived::<ErrorData>(&mut out, &cfg);
    derived::<RawAppEvent>(&mut out, &cfg);

    // The envelope: header & (built-in type/data pairs | the application's events).
    render_object(&mut out, &ENVELOPE_HEADER);
    jsdoc(&mut out, "The `type` and `data` of each built-in event.");
    out.push_str("export type BuiltinEvent =");
    for (ty, data) in BUILTIN_EVENT_DATA {
        let _ = write!(out, "\n  | {{ type: \"{ty}\", data: {} }}", data(&cfg));
    }
    out.push_str(";\n\n");
    jsdoc(&mut out, "The built-in event types.");
    out.push_str("export type BuiltinEventType = BuiltinEvent[\"type\"];\n\n");
    jsdoc(
        &mut out,
        "The shape of an application event: any non-reserved `type` and its `data`. An application can declare its own union, e.g. `{ type: \"chat.message\", data: { text: string } }`, and use it as `Envelope<MyEvents>`.",
    );
    out.push_str("export type AppEventShape = { type: string, data?: unknown };\n\n");
    jsdoc(
        &mut out,
        "Every event, on every transport: the header and one built-in event or an application event `A`.",
    );
    out.push_str(
        "export type Envelope<A extends AppEventShape = RawAppEvent> = EnvelopeHeader & (BuiltinEvent | A);\n\n",
    );

    // WebSocket frames.
    derived::<ClientFrame>(&mut out, &cfg);
    derived::<AckError>(&mut out, &cfg);
    for reply in SERVER_REPLIES {
        render_object(&mut out, reply);
    }
    jsdoc(
        &mut out,
        "A WebSocket frame from server to client: an envelope (as on SSE) or a reply.",
    );
    out.push_str(
        "export type ServerFrame<A extends AppEventShape = RawAppEvent> = Envelope<A> | AckFrame<A> | PongFrame | ErrorFrame;\n\n",
    );

    // REST bodies.
    derived::<Problem>(&mut out, &cfg);
    derived::<ItemState>(&mut out, &cfg);
    derived::<Snapshot>(&mut out, &cfg);
    render_object(&mut out, &POLL_RESPONSE);
    derived::<PresenceList>(&mut out, &cfg);
    derived::<TicketResponse>(&mut out, &cfg);

    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Event, ServerFrame, BUILTIN_EVENT_TYPES};
    use serde_json::{json, Value};
    use std::path::PathBuf;

    fn checked_in() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DECLARATIONS_PATH)
    }

    /// The checked-in file equals the generated one (or is rewritten with TIDEWIRE_UPDATE_TS=1).
    #[test]
    fn checked_in_declarations_are_current() {
        let generated = declarations();
        let path = checked_in();
        if std::env::var_os("TIDEWIRE_UPDATE_TS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == generated,
            "{DECLARATIONS_PATH} is stale (the Rust wire types changed). Regenerate it with\n\n    {REGENERATE}\n\nand commit the result."
        );
    }

    #[test]
    fn builtin_table_matches_the_rust_table() {
        let ours: Vec<&str> = BUILTIN_EVENT_DATA.iter().map(|(t, _)| *t).collect();
        assert_eq!(ours, BUILTIN_EVENT_TYPES);
    }

    #[test]
    fn no_bigint_and_every_type_declared() {
        let dts = declarations();
        assert!(!dts.contains("bigint"), "u64 must be declared as number");
        for name in [
            "JsonValue",
            "ErrorCode",
            "Item",
            "ItemDeleted",
            "BroadcastData",
            "Member",
            "PresenceState",
            "ResyncData",
            "ReconnectData",
            "ErrorData",
            "RawAppEvent",
            "EnvelopeHeader",
            "BuiltinEvent",
            "ClientFrame",
            "AckError",
            "AckFrame",
            "PongFrame",
            "ErrorFrame",
            "ServerFrame",
            "Problem",
            "ItemState",
            "Snapshot",
            "PollResponse",
            "PresenceList",
            "TicketResponse",
        ] {
            let count = dts.matches(&format!("export type {name} =")).count()
                + dts.matches(&format!("export type {name}<")).count();
            assert_eq!(count, 1, "{name} declared once");
        }
        // Every referenced type name is declared (a coarse check that the file is closed).
        for word in dts
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| w.starts_with(|c: char| c.is_ascii_uppercase()))
        {
            let known = dts.contains(&format!("export type {word}"))
                || ["A", "Array", "Record"].contains(&word)
                || is_in_comment(&dts, word);
            assert!(known, "`{word}` is used but not declared");
        }
    }

    fn is_in_comment(dts: &str, word: &str) -> bool {
        dts.lines()
            .filter(|l| l.contains(word))
            .all(|l| l.trim_start().starts_with('*') || l.trim_start().starts_with("//"))
    }

    /// The hand-declared shapes agree with what the encoders write: every key the encoder
    /// writes is declared, and every required field is written.
    fn fits(decl: &ObjectDecl, value: &Value) -> bool {
        let obj = value.as_object().unwrap();
        decl.variants.iter().any(|fields| {
            obj.keys().all(|k| fields.iter().any(|(f, _, _)| f == k))
                && fields
                    .iter()
                    .all(|(f, optional, _)| *optional || obj.contains_key(*f))
        })
    }

    #[test]
    fn hand_declared_shapes_match_the_encoders() {
        let env = Envelope {
            room: "a".into(),
            seq: Some(1),
            id: "e".into(),
            ts: "t".into(),
            key: None,
            event: Event::ItemDeleted(crate::ItemDeleted {
                id: "x".into(),
                version: 2,
            }),
        };
        let header = |v: &Value| {
            let mut v = v.clone();
            let obj = v.as_object_mut().unwrap();
            obj.remove("type");
            obj.remove("data");
            v
        };
        assert!(fits(&ENVELOPE_HEADER, &header(&json!(env))));
        let ephemeral: Envelope = Envelope::ephemeral(
            "",
            "e",
            "t",
            Event::Reconnect(crate::ReconnectData {
                retry_ms: 5,
                reason: "shutting_down".into(),
            }),
        );
        assert!(fits(&ENVELOPE_HEADER, &header(&json!(ephemeral))));

        let frames: Vec<(usize, ServerFrame)> = vec![
            (
                0,
                ServerFrame::Ack {
                    r#ref: Some("1".into()),
                    result: Ok(Some(env.clone())),
                    cursor: None,
                },
            ),
            (
                0,
                ServerFrame::Ack {
                    r#ref: None,
                    result: Ok(None),
                    cursor: Some("a=1".into()),
                },
            ),
            (
                0,
                ServerFrame::Ack {
                    r#ref: Some("2".into()),
                    result: Err(AckError {
                        code: ErrorCode::VersionConflict,
                        title: "t".into(),
                        current: None,
                    }),
                    cursor: None,
                },
            ),
            (1, ServerFrame::Pong { r#ref: None }),
            (
                2,
                ServerFrame::Error {
                    r#ref: Some("3".into()),
                    code: ErrorCode::UnknownType,
                    message: "m".into(),
                },
            ),
        ];
        for (i, frame) in frames {
            let v: Value = serde_json::from_str(&frame.encode()).unwrap();
            assert!(
                fits(&SERVER_REPLIES[i], &v),
                "{v} vs {}",
                SERVER_REPLIES[i].name
            );
        }
        let poll: crate::PollResponse = crate::PollResponse {
            events: vec![env],
            cursor: "a=1".into(),
        };
        assert!(fits(&POLL_RESPONSE, &json!(poll)));
    }
}
