//! Bad input gets its documented status and code (problem+json over HTTP, an `error` frame
//! over WebSocket) and the server keeps serving.

use reqwest::Method;
use serde_json::json;
use tidewire_protocol::{ErrorCode, ServerFrame};
use tidewire_tests::{Error, Rest, Server, WriteOptions, WsClient};

use crate::{start, T};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    code: ErrorCode,
}

fn case(name: &'static str, method: Method, path: impl Into<String>, code: ErrorCode) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        code,
    }
}

impl Case {
    fn json(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.headers
            .push(("content-type", "application/json".into()));
        self.body = Some(body.into());
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }
}

async fn healthy(rest: &Rest, after: &str) {
    let answer = rest
        .put(
            "healthy",
            "probe",
            &json!({"after": after}),
            &WriteOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("server stopped serving after `{after}`: {e}"));
    assert_eq!(answer.status, 200, "healthy write after `{after}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_typed_problems() {
    let server = start(
        Server::builder()
            .flag("max-body-bytes", 65_536)
            .flag("max-item-bytes", 4_096),
    );
    let rest = server.rest();
    let long = "x".repeat(129);
    let many_rooms: Vec<String> = (0..65).map(|i| format!("room{i}")).collect();
    let many_rooms = many_rooms.join(",");
    use ErrorCode::*;
    let cases = vec![
        case(
            "malformed JSON",
            Method::PUT,
            "/v1/rooms/r/items/x",
            BadJson,
        )
        .json("{\"a\":"),
        case("empty body", Method::PUT, "/v1/rooms/r/items/x", BadJson).json(""),
        case(
            "event not JSON",
            Method::POST,
            "/v1/rooms/r/events",
            BadJson,
        )
        .json("type=x"),
        case(
            "event type not a string",
            Method::POST,
            "/v1/rooms/r/events",
            BadJson,
        )
        .json(r#"{"type": 5, "data": {}}"#),
        case(
            "event without type",
            Method::POST,
            "/v1/rooms/r/events",
            BadJson,
        )
        .json(r#"{"data": {}}"#),
        case(
            "event body an array",
            Method::POST,
            "/v1/rooms/r/events",
            BadJson,
        )
        .json("[1]"),
        case(
            "body over max-body-bytes",
            Method::PUT,
            "/v1/rooms/r/items/x",
            PayloadTooLarge,
        )
        .json(format!("\"{}\"", "y".repeat(70_000))),
        case(
            "item over max-item-bytes",
            Method::PUT,
            "/v1/rooms/r/items/x",
            PayloadTooLarge,
        )
        .json(format!("\"{}\"", "y".repeat(5_000))),
        case(
            "room with a space",
            Method::PUT,
            "/v1/rooms/a%20b/items/x",
            BadRoomName,
        )
        .json("1"),
        case(
            "room non-ASCII",
            Method::GET,
            "/v1/rooms/%C3%A9/snapshot",
            BadRoomName,
        ),
        case(
            "room too long",
            Method::GET,
            format!("/v1/rooms/{long}/snapshot"),
            BadRoomName,
        ),
        case(
            "room with =",
            Method::POST,
            "/v1/rooms/a=b/events",
            BadRoomName,
        )
        .json(r#"{"type":"chat.message","data":1}"#),
        case(
            "item id with a space",
            Method::PUT,
            "/v1/rooms/r/items/a%20b",
            BadItemId,
        )
        .json("1"),
        case(
            "item id too long",
            Method::DELETE,
            format!("/v1/rooms/r/items/{long}"),
            BadItemId,
        ),
        case(
            "empty idempotency key",
            Method::PUT,
            "/v1/rooms/r/items/x",
            BadIdempotencyKey,
        )
        .json("1")
        .header("idempotency-key", ""),
        case(
            "idempotency key with a space",
            Method::PUT,
            "/v1/rooms/r/items/x",
            BadIdempotencyKey,
        )
        .json("1")
        .header("idempotency-key", "a b"),
        case(
            "idempotency key too long",
            Method::POST,
            "/v1/rooms/r/events",
            BadIdempotencyKey,
        )
        .json(r#"{"type":"chat.message","data":1}"#)
        .header("idempotency-key", "k".repeat(129)),
        case(
            "If-Match not a version",
            Method::PUT,
            "/v1/rooms/r/items/x",
            BadRequest,
        )
        .json("1")
        .header("if-match", "abc"),
        case(
            "If-Match negative",
            Method::DELETE,
            "/v1/rooms/r/items/x",
            BadRequest,
        )
        .header("if-match", "\"-1\""),
        case(
            "built-in event type",
            Method::POST,
            "/v1/rooms/r/events",
            BadEventType,
        )
        .json(r#"{"type":"item.put","data":{}}"#),
        case(
            "reserved event family",
            Method::POST,
            "/v1/rooms/r/events",
            BadEventType,
        )
        .json(r#"{"type":"tidewire.x","data":{}}"#),
        case(
            "event type ack",
            Method::POST,
            "/v1/rooms/r/events",
            BadEventType,
        )
        .json(r#"{"type":"ack","data":{}}"#),
        case(
            "event type with a space",
            Method::POST,
            "/v1/rooms/r/events",
            BadEventType,
        )
        .json(r#"{"type":"chat message","data":{}}"#),
        case(
            "event type too long",
            Method::POST,
            "/v1/rooms/r/events",
            BadEventType,
        )
        .json(format!(r#"{{"type":"{}","data":{{}}}}"#, "t".repeat(65))),
        case(
            "SSE: 65 rooms",
            Method::GET,
            format!("/v1/sse?rooms={many_rooms}"),
            TooManyRooms,
        ),
        case(
            "poll: 65 rooms",
            Method::GET,
            format!("/v1/poll?rooms={many_rooms}&wait=0"),
            TooManyRooms,
        ),
        case(
            "SSE: bad room",
            Method::GET,
            "/v1/sse?rooms=a,b%20c",
            BadRoomName,
        ),
        case(
            "poll: bad room",
            Method::GET,
            "/v1/poll?rooms=a%2Fb&wait=0",
            BadRoomName,
        ),
        case(
            "SSE: bad since",
            Method::GET,
            "/v1/sse?rooms=a&since=a%3Dx",
            BadCursor,
        ),
        case(
            "SSE: leading zero",
            Method::GET,
            "/v1/sse?rooms=a&since=a%3D01",
            BadCursor,
        ),
        case(
            "SSE: room twice",
            Method::GET,
            "/v1/sse?rooms=a&since=a%3D1%2Ca%3D2",
            BadCursor,
        ),
        case(
            "SSE: bad Last-Event-ID",
            Method::GET,
            "/v1/sse?rooms=a",
            BadCursor,
        )
        .header("last-event-id", "garbage"),
        case(
            "poll: bad since",
            Method::GET,
            "/v1/poll?rooms=a&since=a%3D-1&wait=0",
            BadCursor,
        ),
        case(
            "poll: wait over 60",
            Method::GET,
            "/v1/poll?rooms=a&wait=61",
            BadRequest,
        ),
        case(
            "poll: wait not a number",
            Method::GET,
            "/v1/poll?rooms=a&wait=soon",
            BadRequest,
        ),
        case(
            "history: after negative",
            Method::GET,
            "/v1/rooms/r/events?after=-1",
            BadRequest,
        ),
        case(
            "history: after not a number",
            Method::GET,
            "/v1/rooms/r/events?after=abc",
            BadRequest,
        ),
        case(
            "history: after beyond u64",
            Method::GET,
            "/v1/rooms/r/events?after=99999999999999999999999",
            BadRequest,
        ),
        case(
            "history: limit not a number",
            Method::GET,
            "/v1/rooms/r/events?limit=lots",
            BadRequest,
        ),
        case(
            "method not allowed",
            Method::PATCH,
            "/v1/rooms/r/items/x",
            MethodNotAllowed,
        )
        .json("1"),
    ];

    let mut failures = Vec::new();
    for c in cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = rest
            .raw(c.method.clone(), &c.path, &headers, c.body.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: request failed: {e}", c.name));
        let got = answer.problem();
        let ok = answer.status == c.code.http_status()
            && got.as_ref().is_some_and(|p| {
                p.code == c.code
                    && p.status == answer.status
                    && p.type_uri == format!("https://tidewire.dev/problems/{}", c.code)
            });
        if !ok {
            failures.push(format!(
                "{}: expected {} {}, got {} {} {}",
                c.name,
                c.code.http_status(),
                c.code,
                answer.status,
                answer.header("content-type").unwrap_or("-"),
                answer.text().chars().take(300).collect::<String>()
            ));
        }
        healthy(&rest, c.name).await;
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sends `text` and expects an `error` frame with `code`; then the connection still answers
/// a ping.
async fn expect_error_frame(
    ws: &mut WsClient,
    name: &str,
    text: &str,
    code: ErrorCode,
) -> Result<(), String> {
    ws.send_text(text)
        .await
        .map_err(|e| format!("{name}: send: {e}"))?;
    let frame = ws.recv(T).await;
    let outcome = match &frame {
        Ok(ServerFrame::Error { code: got, .. }) if *got == code => Ok(()),
        other => Err(format!("{name}: expected error {code}, got {other:?}")),
    };
    ws.ping()
        .await
        .map_err(|e| format!("{name}: connection unusable afterwards: {e}"))?;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ws_frames_get_error_frames_and_the_connection_stays_open() {
    let server = start(Server::builder());
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    let many: Vec<String> = (0..65).map(|i| format!("\"room{i}\"")).collect();
    let many = format!(r#"{{"type":"subscribe","rooms":[{}]}}"#, many.join(","));
    use ErrorCode::*;
    let cases: Vec<(&str, String, ErrorCode)> = vec![
        ("not JSON", "hello".into(), BadJson),
        ("JSON array", "[1,2]".into(), BadJson),
        ("JSON string", "\"ping\"".into(), BadJson),
        ("no type", r#"{"ref":"x"}"#.into(), BadJson),
        ("type not a string", r#"{"type":7}"#.into(), BadJson),
        ("unknown type", r#"{"type":"teleport"}"#.into(), UnknownType),
        (
            "subscribe without rooms",
            r#"{"type":"subscribe"}"#.into(),
            BadJson,
        ),
        (
            "rooms not a list",
            r#"{"type":"subscribe","rooms":"a"}"#.into(),
            BadJson,
        ),
        (
            "room not a string",
            r#"{"type":"subscribe","rooms":[1]}"#.into(),
            BadJson,
        ),
        (
            "bad room",
            r#"{"type":"subscribe","rooms":["a b"]}"#.into(),
            BadRoomName,
        ),
        ("too many rooms", many, TooManyRooms),
        (
            "bad since",
            r#"{"type":"subscribe","rooms":["a"],"since":"a=x"}"#.into(),
            BadCursor,
        ),
        (
            "put without value",
            r#"{"type":"put","room":"a","id":"x"}"#.into(),
            BadJson,
        ),
        (
            "put bad item id",
            r#"{"type":"put","room":"a","id":"a/b","value":1}"#.into(),
            BadItemId,
        ),
        (
            "put bad room",
            r#"{"type":"put","room":"","id":"x","value":1}"#.into(),
            BadRoomName,
        ),
        (
            "put if_match a string",
            r#"{"type":"put","room":"a","id":"x","value":1,"if_match":"3"}"#.into(),
            BadJson,
        ),
        (
            "put empty key",
            r#"{"type":"put","room":"a","id":"x","value":1,"key":""}"#.into(),
            BadIdempotencyKey,
        ),
        (
            "delete without id",
            r#"{"type":"delete","room":"a"}"#.into(),
            BadJson,
        ),
        (
            "publish built-in type",
            r#"{"type":"publish","room":"a","event":{"type":"item.put","data":{}}}"#.into(),
            BadEventType,
        ),
        (
            "publish event not an object",
            r#"{"type":"publish","room":"a","event":"chat"}"#.into(),
            BadJson,
        ),
        (
            "broadcast bad room",
            r#"{"type":"broadcast","room":"a,b","event":"cursor","data":1}"#.into(),
            BadRoomName,
        ),
        (
            "presence without room",
            r#"{"type":"presence","meta":{}}"#.into(),
            BadJson,
        ),
        (
            "unsubscribe bad room",
            r#"{"type":"unsubscribe","rooms":["é"]}"#.into(),
            BadRoomName,
        ),
        ("auth without token", r#"{"type":"auth"}"#.into(), BadJson),
    ];
    let mut failures = Vec::new();
    for (name, text, code) in &cases {
        if let Err(e) = expect_error_frame(&mut ws, name, text, *code).await {
            failures.push(e);
        }
    }
    // The `ref` of a frame of unknown type is echoed.
    ws.send_text(r#"{"type":"teleport","ref":"t-1"}"#)
        .await
        .expect("send");
    match ws.reply("t-1", T).await {
        Ok(ServerFrame::Error { code, .. }) => assert_eq!(code, UnknownType),
        other => failures.push(format!(
            "unknown type with ref: expected an error echoing ref, got {other:?}"
        )),
    }
    // A binary frame is not a JSON text frame either.
    ws.send_binary(vec![0xff, 0x00]).await.expect("send");
    match ws.recv(T).await {
        Ok(ServerFrame::Error { code, .. }) if code == BadJson || code == BadRequest => {}
        other => failures.push(format!(
            "binary frame: expected an error frame, got {other:?}"
        )),
    }
    ws.ping().await.expect("still open after everything");
    // And the connection still works for real traffic.
    ws.subscribe(&["a"], None, false).await.expect("subscribe");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ws_frame_closes_with_1009() {
    let server = start(Server::builder().flag("max-body-bytes", 65_536));
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    ws.ping().await.expect("ping");
    let big = format!(
        r#"{{"type":"put","room":"a","id":"x","value":"{}"}}"#,
        "y".repeat(200_000)
    );
    // The server may close while the frame is still being written.
    let _ = ws.send_text(big).await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.recv(left).await {
            Err(Error::Closed(Some((code, _)))) => {
                assert_eq!(code, 1009, "close code for an oversized frame");
                break;
            }
            Err(Error::Closed(None)) => panic!("closed without a close frame (expected 1009)"),
            Err(Error::Timeout { .. }) => panic!("no close after an oversized frame"),
            Err(e) => panic!("expected close 1009, got {e}"),
            Ok(frame) => println!("frame before close: {}", frame.encode()),
        }
    }
    // Others are unaffected.
    let mut other = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    other.ping().await.expect("ping");
}
