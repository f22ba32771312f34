//! TypeScript declarations of the JavaScript API (feature `ts`), generated from the Rust types
//! the way `tidewire-protocol` generates `types/protocol.d.ts`.
//!
//! [`declarations`] assembles `client/types/client.d.ts`: the options object
//! (`ClientOptions`, from the one [`Options`](crate::Options) table), the event types the
//! callbacks receive (from [`RoomUpdate`], [`Rollback`], [`PresenceUpdate`],
//! [`BroadcastMessage`], [`ViewItem`] and [`LocalCause`] through `ts-rs`), the name unions
//! (from [`TransportKind::ALL`] and [`ConnState::NAMES`]) and a few shapes whose JSON comes
//! from serde code `ts-rs` cannot follow (flattened state, envelopes, errors), declared here
//! as data and tested against real output. `js.rs` embeds the file in the package's `.d.ts`
//! (`typescript_custom_section`); `client/scripts/package.mjs` also ships it as
//! `types/client.d.ts`. A test fails when the checked-in copy is stale; regenerate it with
//!
//! ```text
//! TIDEWIRE_UPDATE_TS=1 cargo test -p tidewire-client --features ts --lib
//! ```
//!
//! ```
//! let dts = tidewire_client::ts::declarations();
//! assert!(dts.contains("export type ClientOptions = {"));
//! assert!(dts.contains("export type TransportName = 'auto' | 'sse' | 'ws' | 'longpoll' | 'poll';"));
//! ```

use std::fmt::Write;

use ts_rs::{Config, TS};

use crate::options::JsOptions;
use crate::room::ViewItem;
use crate::state::{ConnState, TransportKind};
use crate::types::{BroadcastMessage, ErrorInfo, LocalCause, PresenceUpdate, Rollback, RoomUpdate};

/// Where the checked-in declarations live, relative to the workspace root.
pub const DECLARATIONS_PATH: &str = "client/types/client.d.ts";

/// The command that regenerates [`DECLARATIONS_PATH`].
pub const REGENERATE: &str =
    "TIDEWIRE_UPDATE_TS=1 cargo test -p tidewire-client --features ts --lib";

/// An object type declared by hand (its JSON is written by serde code `ts-rs` cannot follow):
/// `(field, optional, TypeScript type)` per field. Tests hold it against real output.
pub struct ObjectDecl {
    /// The TypeScript name.
    pub name: &'static str,
    /// The JSDoc text.
    pub doc: &'static str,
    /// The fields.
    pub fields: Vec<(&'static str, bool, String)>,
}

/// `'a' | 'b'` of some names.
fn union<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The transport names of state objects and `client.transport()`.
fn transport_union() -> String {
    union(TransportKind::ALL.map(TransportKind::as_str))
}

/// A state object (`StateChange`: the flattened [`ConnState`] and the transport).
pub fn connection_state() -> ObjectDecl {
    ObjectDecl {
        name: "ConnectionState",
        doc: "A connection state change. `attempt` and `delayMs` are set for `reconnecting`.",
        fields: vec![
            ("state", false, "StateName".into()),
            ("attempt", true, "number".into()),
            ("delayMs", true, "number".into()),
            ("transport", false, format!("{} | null", transport_union())),
        ],
    }
}

/// A presence member (`tidewire_protocol::Member`; `meta` is any JSON).
pub fn presence_member() -> ObjectDecl {
    ObjectDecl {
        name: "PresenceMember",
        doc: "A member of a room's presence set.",
        fields: vec![
            ("client_id", false, "string".into()),
            ("user", true, "string".into()),
            ("meta", false, "any".into()),
        ],
    }
}

/// A server event as the callbacks and promises give it (`tidewire_protocol::Envelope`),
/// loosely typed: `types/protocol.d.ts` has the exact `Envelope` union.
pub fn tidewire_event() -> ObjectDecl {
    ObjectDecl {
        name: "TidewireEvent",
        doc: "A server event envelope (see `types/protocol.d.ts` for the typed payloads).",
        fields: vec![
            ("v", false, "1".into()),
            ("type", false, "string".into()),
            ("room", false, "string".into()),
            ("seq", true, "number".into()),
            ("id", false, "string".into()),
            ("ts", false, "string".into()),
            ("key", false, "string | null".into()),
            ("data", false, "any".into()),
        ],
    }
}

/// The options of a write (read by `js.rs`).
pub fn write_options() -> ObjectDecl {
    ObjectDecl {
        name: "WriteOptions",
        doc: "Options of a write; `ifMatch` overrides the version the client knows (0: only if absent).",
        fields: vec![("ifMatch", true, "number".into())],
    }
}

/// The options of `room.expect` (read by `js.rs`).
pub fn expect_options() -> ObjectDecl {
    ObjectDecl {
        name: "ExpectOptions",
        doc: "Options of `room.expect`; `timeoutMs` (default 10000, at most 600000): how long to wait for the confirming event before rolling back with code `timeout`.",
        fields: vec![("timeoutMs", true, "number".into())],
    }
}

/// The change of `room.expect` (read by `js.rs`).
const EXPECTED_CHANGE: &str = "/**
 * The change `room.expect` shows (pending) until the event with its key confirms it: a put or a delete.
 */
export type ExpectedChange = { id: string; value: any } | { id: string; deleted: true };
";

/// The `Error`s this package throws and rejects with (`js::to_js_error`).
const TIDEWIRE_ERROR: &str = "/**
 * Errors thrown or rejected by this package.
 */
export interface TidewireError extends Error {
  /** A protocol error code (`version_conflict`, `bad_room_name`, …), `network`, `closed`, or for `room.expect` `timeout`, `failed`, `too_many_expected`. */
  code: string;
  status?: number;
  current?: { id: string; value: any; version: number };
}";

fn jsdoc(out: &mut String, text: &str) {
    let _ = writeln!(out, "/**\n * {text}\n */");
}

fn render_object(out: &mut String, decl: &ObjectDecl) {
    jsdoc(out, decl.doc);
    let _ = write!(out, "export type {} = {{", decl.name);
    for (i, (field, optional, ty)) in decl.fields.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        let q = if *optional { "?" } else { "" };
        let _ = write!(out, "{sep}{field}{q}: {ty}");
    }
    out.push_str(" };\n\n");
}

/// A type with a `ts-rs` derive, exported, laid out one field per line (see [`layout`]).
fn derived<T: TS + ?Sized>(out: &mut String, cfg: &Config) {
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    out.push_str("export ");
    out.push_str(&layout(&T::decl(cfg)));
    out.push('\n');
}

/// Lays out a `ts-rs` declaration the way `wasm-bindgen` re-indents the package's `.d.ts`
/// (a line ending in `{` opens a level, a line starting with `}` closes one): every brace
/// pair that spans lines gets its own line ends, then lines are indented by two spaces per
/// level (doc comment lines one space more).
pub fn layout(decl: &str) -> String {
    let chars: Vec<char> = decl.chars().collect();
    let mut open = Vec::new();
    let mut break_after = Vec::new();
    let mut break_before = Vec::new();
    let mut in_comment = false;
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        match c {
            '/' if !in_comment && next == Some('*') => in_comment = true,
            '*' if in_comment && next == Some('/') => in_comment = false,
            '{' if !in_comment => open.push(i),
            '}' if !in_comment => {
                if let Some(o) = open.pop() {
                    if chars[o..i].contains(&'\n') {
                        break_after.push(o);
                        break_before.push(i);
                    }
                }
            }
            _ => {}
        }
    }
    let mut broken = String::with_capacity(decl.len() + 64);
    for (i, &c) in chars.iter().enumerate() {
        if break_before.contains(&i) {
            broken.truncate(broken.trim_end().len());
            broken.push('\n');
        }
        broken.push(c);
        if break_after.contains(&i) {
            broken.push('\n');
        }
    }
    let mut out = String::with_capacity(broken.len());
    let mut depth = 0usize;
    for line in broken.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with('}') {
            depth = depth.saturating_sub(1);
        }
        out.push_str(&"  ".repeat(depth));
        if line.starts_with('*') {
            out.push(' ');
        }
        out.push_str(line);
        out.push('\n');
        if line.ends_with('{') {
            depth += 1;
        }
    }
    out
}

/// The whole declarations file.
pub fn declarations() -> String {
    let cfg = tidewire_protocol::ts::config();
    let mut out = String::with_capacity(8 * 1024);
    let _ = writeln!(
        out,
        "// Tidewire browser SDK: TypeScript declarations of the JavaScript API's objects.\n\
         // Generated from the Rust crate tidewire-client (client/src/ts.rs); do not edit.\n\
         // Regenerate: {REGENERATE}\n"
    );

    jsdoc(
        &mut out,
        "Transport names; `auto` (the default) picks SSE, WebSocket for presence/broadcast, and falls back to long-poll then polling.",
    );
    let names = ["auto"]
        .into_iter()
        .chain(TransportKind::ALL.map(TransportKind::as_str));
    let _ = writeln!(out, "export type TransportName = {};\n", union(names));

    derived::<JsOptions>(&mut out, &cfg);

    jsdoc(&mut out, "The connection states.");
    let _ = writeln!(
        out,
        "export type StateName = {};\n",
        union(ConnState::NAMES)
    );
    render_object(&mut out, &connection_state());

    derived::<ViewItem>(&mut out, &cfg);
    render_object(&mut out, &tidewire_event());
    jsdoc(
        &mut out,
        "What caused a room update: a server event, or a local change.",
    );
    out.push_str("export type RoomUpdateCause = TidewireEvent | LocalCause;\n\n");
    derived::<LocalCause>(&mut out, &cfg);
    derived::<RoomUpdate>(&mut out, &cfg);
    derived::<ErrorInfo>(&mut out, &cfg);
    derived::<Rollback>(&mut out, &cfg);

    render_object(&mut out, &presence_member());
    derived::<PresenceUpdate>(&mut out, &cfg);
    derived::<BroadcastMessage>(&mut out, &cfg);

    render_object(&mut out, &write_options());
    render_object(&mut out, &expect_options());
    out.push_str(EXPECTED_CHANGE);
    out.push('\n');
    out.push_str(TIDEWIRE_ERROR);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StateChange;
    use crate::Error;
    use serde_json::{json, Value};
    use std::path::PathBuf;
    use tidewire_protocol::{Envelope, Member};

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
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == generated,
            "{DECLARATIONS_PATH} is stale (the Rust types of the JS API changed). Regenerate it with\n\n    {REGENERATE}\n\nand commit the result."
        );
    }

    /// Every name `js.rs` and the README promise is declared once.
    #[test]
    fn every_api_type_is_declared_once() {
        let dts = declarations();
        assert!(!dts.contains("bigint"), "u64 must be declared as number");
        for name in [
            "TransportName",
            "ClientOptions",
            "StateName",
            "ConnectionState",
            "RoomItem",
            "TidewireEvent",
            "RoomUpdateCause",
            "LocalCause",
            "ErrorInfo",
            "RoomUpdate",
            "RollbackInfo",
            "PresenceMember",
            "PresenceUpdate",
            "BroadcastMessage",
            "WriteOptions",
            "ExpectOptions",
            "ExpectedChange",
        ] {
            assert_eq!(
                dts.matches(&format!("export type {name} =")).count(),
                1,
                "{name} declared once"
            );
        }
        assert_eq!(dts.matches("export interface TidewireError ").count(), 1);
        let js = include_str!("js.rs");
        for word in js
            .split("typescript_type = \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .flat_map(|t| t.split(|c: char| !c.is_ascii_alphanumeric()))
            .filter(|w| w.starts_with(|c: char| c.is_ascii_uppercase()))
        {
            let known = dts.contains(&format!("export type {word} "))
                || dts.contains(&format!("export interface {word} "))
                || ["Promise"].contains(&word);
            assert!(known, "js.rs uses `{word}`, which is not declared");
        }
    }

    /// Every option of the Rust table is in `ClientOptions`, camelCase, optional but `url`.
    #[test]
    fn client_options_list_every_option() {
        let decl = <JsOptions as TS>::decl(&tidewire_protocol::ts::config());
        for field in [
            "url: string",
            "transport?: TransportName",
            "backoff?: {",
            "baseMs?: number",
            "capMs?: number",
            "stableMs?: number",
            "openTimeoutMs?: number",
            "heartbeatSlackMs?: number",
            "wsPingMs?: number",
            "climbMs?: number",
            "reorderMs?: number",
            "pollIntervalMs?: number",
            "longPollWaitSecs?: number",
            "writeRetries?: number",
            "clientId?: string",
            "random?: () => number",
            "getToken?: () => string | Promise<string>",
        ] {
            assert!(decl.contains(field), "`{field}` missing from {decl}");
        }
    }

    #[test]
    fn layout_puts_multi_line_braces_on_their_own_lines() {
        let decl = "type X = { \"type\": \"a\", \n/**\n * Doc with { a brace.\n */\nn: number, } | { \"type\": \"b\", \nm: { a: number, }, \nk: string, };";
        assert_eq!(
            layout(decl),
            "type X = {\n  \"type\": \"a\",\n  /**\n   * Doc with { a brace.\n   */\n  n: number,\n} | {\n  \"type\": \"b\",\n  m: { a: number, },\n  k: string,\n};\n"
        );
    }

    /// Every line ending in `{` is closed by a line starting with `}`, as `wasm-bindgen`
    /// re-indents the package's `.d.ts` by them.
    #[test]
    fn braces_balance_line_by_line() {
        let mut depth = 0i32;
        for line in declarations().lines().map(str::trim) {
            if line.starts_with('*') || line.starts_with("/*") || line.starts_with("//") {
                continue;
            }
            if line.starts_with('}') {
                depth -= 1;
            }
            assert!(depth >= 0, "unbalanced at `{line}`");
            if line.ends_with('{') {
                depth += 1;
            }
            let opens = line.matches('{').count() as i32;
            let closes = line.matches('}').count() as i32;
            let counted = i32::from(line.ends_with('{')) - i32::from(line.starts_with('}'));
            assert_eq!(opens - closes, counted, "a brace in the middle of `{line}`");
        }
        assert_eq!(depth, 0);
    }

    /// Every key the value has is declared, and every required field is present.
    fn fits(decl: &ObjectDecl, value: &Value) -> bool {
        let obj = value.as_object().unwrap();
        obj.keys()
            .all(|k| decl.fields.iter().any(|(f, _, _)| f == k))
            && decl
                .fields
                .iter()
                .all(|(f, optional, _)| *optional || obj.contains_key(*f))
    }

    #[test]
    fn hand_declared_shapes_match_the_serializers() {
        let states = [
            ConnState::Connecting,
            ConnState::Open,
            ConnState::Reconnecting {
                attempt: 2,
                delay_ms: 400,
            },
            ConnState::Degraded,
            ConnState::Offline,
            ConnState::Closed,
        ];
        for state in states {
            for transport in [None, Some(TransportKind::LongPoll)] {
                let v = serde_json::to_value(StateChange {
                    state: state.clone(),
                    transport,
                })
                .unwrap();
                assert!(fits(&connection_state(), &v), "{v}");
            }
        }
        for user in [None, Some("u1".to_owned())] {
            let m = Member {
                client_id: "c".into(),
                user,
                meta: json!({"name": "Ada"}),
            };
            let v = serde_json::to_value(&m).unwrap();
            assert!(fits(&presence_member(), &v), "{v}");
        }
        for text in [
            r#"{"v":1,"type":"item.put","room":"r","seq":1,"id":"e","ts":"t","key":"k","data":{"id":"a","value":1,"version":1}}"#,
            r#"{"v":1,"type":"chat.message","room":"r","seq":2,"id":"e","ts":"t","key":null,"data":{"text":"hi"}}"#,
        ] {
            let env: Envelope = Envelope::decode(text).unwrap();
            let v = serde_json::to_value(&env).unwrap();
            assert!(fits(&tidewire_event(), &v), "{v}");
        }
        let info = crate::ErrorInfo::from(&Error::Closed);
        assert_eq!(
            serde_json::to_value(info).unwrap(),
            json!({"code": "closed", "message": "the client is closed"})
        );
    }
}
