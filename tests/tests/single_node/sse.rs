//! SSE wire details: the prologue (`retry:` and an `id:`-only event with every room's cursor),
//! heartbeats, headers, no compression.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use tidewire_protocol::Cursor;
use tidewire_tests::{Error, Server, SseClient, SseRequest, WriteOptions};

use crate::{start, T};

/// Pumps the stream (no events are expected) until `done(raw text)` holds or `timeout`.
async fn pump_until(sse: &mut SseClient, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let raw = sse.raw_text();
        if done(&raw) {
            return raw;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "timed out; the stream so far:\n{raw}");
        match sse.next(left.min(Duration::from_millis(100))).await {
            Ok(ev) => panic!("no event expected, got {:?}", ev.envelope),
            Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("stream failed: {e}; so far:\n{raw}"),
        }
    }
}

/// The `id:` of the first blank-line-terminated block, and whether that block had `data:`.
/// Decoded by `eventsource-stream` itself: a probe `data:` line makes the block dispatch.
async fn first_block(raw: &str) -> (Option<String>, bool) {
    let end = raw.find("\n\n").expect("a complete block");
    let block = &raw[..end + 1];
    let had_data = block.lines().any(|l| l.starts_with("data"));
    let probe = format!("{block}data: probe\n\n");
    let mut parsed =
        futures::stream::iter([Ok::<_, std::convert::Infallible>(probe)]).eventsource();
    let ev = parsed.next().await.expect("probe event").expect("parses");
    ((!ev.id.is_empty()).then_some(ev.id), had_data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_starts_with_retry_and_an_id_only_cursor_event() {
    let server = start(Server::builder().flag("sse-retry-ms", 1500));
    let rest = server.rest();
    for i in 0..2 {
        rest.put("a", &format!("x{i}"), &json!(i), &WriteOptions::default())
            .await
            .expect("put")
            .ok();
    }
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a", "b"]))
        .await
        .expect("SSE opens");
    let raw = pump_until(&mut sse, T, |raw| {
        raw.lines().any(|l| l.starts_with("id:")) && raw.contains("\n\n")
    })
    .await;
    let first_line = raw.lines().find(|l| !l.is_empty()).expect("a first line");
    let retry = first_line
        .strip_prefix("retry:")
        .map(|v| v.trim().parse::<u64>());
    assert_eq!(retry, Some(Ok(1500)), "stream starts with retry:\n{raw}");

    // The retry may be its own block; the cursor block is the first one with an id.
    let from_id = raw.find("id:").expect("id line");
    let block_start = raw[..from_id].rfind("\n\n").map_or(0, |i| i + 2);
    let (id, had_data) = first_block(&raw[block_start..]).await;
    assert!(!had_data, "the cursor event is id-only:\n{raw}");
    let id: Cursor = id.expect("an id").parse().expect("the id is a cursor");
    assert_eq!(id.get("a"), Some(2), "room a at its head");
    assert_eq!(id.get("b"), Some(0), "room b (empty) at its head");

    // A live event now carries the cursor of both rooms.
    rest.put("b", "y", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let ev = sse.next_durable(T).await.expect("live event");
    let id: Cursor = ev.id.parse().expect("cursor");
    assert_eq!((id.get("a"), id.get("b")), (Some(2), Some(1)));

    // A client that saw no event resumes from the prologue's id.
    let prologue_id = "a=2,b=1";
    drop(sse);
    for i in 0..3 {
        rest.put("a", &format!("z{i}"), &json!(i), &WriteOptions::default())
            .await
            .expect("put")
            .ok();
    }
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&["a", "b"]).last_event_id(prologue_id),
    )
    .await
    .expect("SSE resumes");
    let seqs: Vec<Option<u64>> = sse
        .take(3, T)
        .await
        .expect("three events")
        .into_iter()
        .map(|e| e.envelope.seq)
        .collect();
    assert_eq!(seqs, vec![Some(3), Some(4), Some(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_heartbeat_comments() {
    let server = start(Server::builder().flag("heartbeat-secs", 1));
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]))
        .await
        .expect("SSE opens");
    let started = std::time::Instant::now();
    let raw = pump_until(&mut sse, Duration::from_secs(6), |raw| {
        raw.lines().filter(|l| l.trim_end() == ": hb").count() >= 2
    })
    .await;
    let elapsed = started.elapsed();
    println!("two heartbeats after {elapsed:?}:\n{raw}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "two heartbeats 1 s apart cannot come in {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_headers_and_never_compressed() {
    let server = start(Server::builder());
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&["a"]).header("Accept-Encoding", "gzip, deflate, br, zstd"),
    )
    .await
    .expect("SSE opens");
    let ct = sse.header("content-type").unwrap_or_default().to_owned();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(
        sse.header("content-encoding"),
        None,
        "SSE must never be compressed"
    );
    let raw = pump_until(&mut sse, T, |raw| raw.contains("\n\n")).await;
    assert!(raw.starts_with("retry:"), "plain text stream: {raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ephemeral_events_carry_no_id() {
    let server = start(Server::builder());
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]).since("a=0"))
        .await
        .expect("SSE opens");
    let mut ws = tidewire_tests::WsClient::connect(&server.ws_url(), Some("bob"))
        .await
        .expect("ws");
    ws.subscribe(&["a"], None, false).await.expect("subscribe");
    ws.broadcast("a", "cursor", json!({"x": 1}))
        .await
        .expect("broadcast");
    let ev = sse
        .next_of_type("broadcast", T)
        .await
        .expect("broadcast over SSE");
    assert_eq!(ev.envelope.seq, None);
    // The last event id stays the prologue's cursor: the broadcast had no `id:` line.
    assert_eq!(ev.id, "a=0");
    let raw = sse.raw_text();
    let block = raw
        .split("\n\n")
        .find(|b| b.contains("\"broadcast\""))
        .expect("broadcast block");
    assert!(
        !block.lines().any(|l| l.starts_with("id:")),
        "ephemeral block has an id: {block:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_wins_over_since_and_missing_rooms_start_now() {
    let server = start(Server::builder());
    let rest = server.rest();
    for room in ["a", "b"] {
        for i in 0..3 {
            rest.put(room, &format!("x{i}"), &json!(i), &WriteOptions::default())
                .await
                .expect("put")
                .ok();
        }
    }
    // The header says a=2, the query a=0: the header wins, so only a=3 is replayed; b is not
    // in the cursor and starts at its head (3).
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&["a", "b"])
            .since("a=0")
            .last_event_id("a=2"),
    )
    .await
    .expect("SSE opens");
    let first = sse.next_durable(T).await.expect("replayed event");
    assert_eq!(
        (first.envelope.room.as_str(), first.envelope.seq),
        ("a", Some(3))
    );
    let id: Cursor = first.id.parse().expect("cursor");
    assert_eq!((id.get("a"), id.get("b")), (Some(3), Some(3)));
    rest.put("b", "live", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let next = sse.next_durable(T).await.expect("live event");
    assert_eq!(
        (next.envelope.room.as_str(), next.envelope.seq),
        ("b", Some(4)),
        "b was not replayed from 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_heartbeat_events_announce_interval_and_retry() {
    let server = start(
        Server::builder()
            .flag("heartbeat-secs", 1)
            .flag("sse-retry-ms", 1700),
    );
    let rest = server.rest();
    rest.put("a", "x", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]).heartbeat_events())
        .await
        .expect("SSE opens");
    let raw = pump_until(&mut sse, T, |raw| {
        raw.contains("\n\n") && raw.contains("id:")
    })
    .await;
    // retry:, then the heartbeat event at once, then the id-only cursor event.
    let expected =
        "retry: 1700\nevent: heartbeat\ndata: {\"heartbeat_ms\":1000,\"retry_ms\":1700}\n\nid: a=1\n\n";
    assert!(raw.starts_with(expected), "prologue:\n{raw}");
    assert_eq!(
        sse.heartbeats(),
        [json!({"heartbeat_ms": 1000, "retry_ms": 1700})]
    );
    // Named heartbeats keep coming while idle, and none moves the cursor or shows as a comment.
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while sse.heartbeats().len() < 3 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no periodic heartbeats:\n{}",
            sse.raw_text()
        );
        match sse.next(left.min(Duration::from_millis(200))).await {
            Ok(ev) => panic!("no event expected, got {:?}", ev.envelope),
            Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("stream failed: {e}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "two periodic heartbeats 1 s apart came in {:?}",
        started.elapsed()
    );
    let raw = sse.raw_text();
    assert!(!raw.contains(": hb"), "no comment heartbeats:\n{raw}");
    for block in raw.split("\n\n").filter(|b| b.contains("event: heartbeat")) {
        assert!(!block.contains("id:"), "a heartbeat with an id: {block:?}");
    }
    // Live events still arrive as unnamed events with their cursor.
    rest.put("a", "y", &json!(2), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let ev = sse.next_durable(T).await.expect("live event");
    assert_eq!((ev.envelope.seq, ev.id.as_str()), (Some(2), "a=2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_default_stream_has_no_heartbeat_events() {
    let server = start(Server::builder().flag("heartbeat-secs", 1));
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]))
        .await
        .expect("SSE opens");
    let raw = pump_until(&mut sse, Duration::from_secs(6), |raw| raw.contains(": hb")).await;
    assert!(
        raw.starts_with("retry: 1000\nid: a=0\n\n"),
        "prologue:\n{raw}"
    );
    assert!(
        !raw.contains("event:"),
        "no named events by default:\n{raw}"
    );
    assert!(sse.heartbeats().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_bad_heartbeat_parameter_is_a_problem() {
    let server = start(Server::builder());
    for bad in ["events", "", "1"] {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/sse?rooms=a&heartbeat={bad}", server.url()))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 400, "heartbeat={bad:?}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("application/problem+json"), "{ct}");
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["code"], "bad_request", "{body}");
    }
    let ok = reqwest::Client::new()
        .get(format!("{}/v1/sse?rooms=a&heartbeat=comment", server.url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        ok.status().as_u16(),
        200,
        "`comment` is the explicit default"
    );
}
