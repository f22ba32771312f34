//! A position older than the retained log gets `resync` on streams and `410 history_trimmed`
//! on the history API.

use std::time::Duration;

use serde_json::json;
use tidewire_protocol::{ErrorCode, Event};
use tidewire_tests::{PollClient, Rest, Server, SseClient, SseRequest, WriteOptions, WsClient};

use crate::{start, T};

/// Writes 20 events to `a` on a server keeping 5, and waits until the history API says
/// position 1 is gone (trimming may run after the write).
async fn trimmed_server() -> (Server, Rest) {
    let server = start(Server::builder().flag("retention-events", 5));
    let rest = server.rest();
    for i in 0..20 {
        rest.put(
            "a",
            &format!("x{}", i % 3),
            &json!(i),
            &WriteOptions::default(),
        )
        .await
        .expect("put")
        .ok();
    }
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let answer = rest.history("a", 1, None).await.expect("history");
        if answer.status == 410 {
            let p = answer.problem();
            assert_eq!(p.code, ErrorCode::HistoryTrimmed);
            assert_eq!(p.status, 410);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history after=1 still answers {} with retention 5 after 20 writes",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, rest)
}

fn assert_resync(env: &tidewire_protocol::Envelope, head: u64) {
    assert_eq!(env.room, "a");
    assert_eq!(env.seq, None, "resync is a control event");
    match &env.event {
        Event::Resync(r) => {
            assert_eq!(r.reason, "history_trimmed");
            assert_eq!(r.seq, head);
        }
        other => panic!("expected resync, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_api_answers_410_when_trimmed() {
    let (_server, rest) = trimmed_server().await;
    let kept = rest.history("a", 15, None).await.expect("history").ok();
    let seqs: Vec<u64> = kept.iter().filter_map(|e| e.seq).collect();
    assert_eq!(seqs, vec![16, 17, 18, 19, 20], "the last 5 are kept");
    // after=0 reads from the start of the retained log, as 0 does in a cursor.
    let from_start = rest.history("a", 0, None).await.expect("history").ok();
    let seqs: Vec<u64> = from_start.iter().filter_map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![16, 17, 18, 19, 20],
        "after=0 starts at the oldest kept event"
    );
    let answer = rest.history("a", 10, Some(3)).await.expect("history");
    assert_eq!(answer.status, 410);
    assert_eq!(answer.problem().code, ErrorCode::HistoryTrimmed);
    let snapshot = rest.snapshot("a").await.expect("snapshot").ok();
    assert_eq!(snapshot.seq, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_from_trimmed_position_gets_resync_then_live() {
    let (server, rest) = trimmed_server().await;
    for req in [
        SseRequest::rooms(&["a"]).since("a=1"),
        SseRequest::rooms(&["a"]).last_event_id("a=1"),
    ] {
        let head = rest.snapshot("a").await.expect("snapshot").ok().seq;
        let mut sse = SseClient::connect(&server.url(), &req)
            .await
            .expect("SSE opens");
        let first = sse.next(T).await.expect("first event");
        assert_resync(&first.envelope, head);
        // A control event: its block carries no `id:`.
        let raw = sse.raw_text();
        let block = raw
            .split("\n\n")
            .find(|b| b.contains("\"resync\""))
            .expect("resync block");
        assert!(
            !block.lines().any(|l| l.starts_with("id:")),
            "the resync block has an id: {block:?}"
        );
        rest.put("a", "live", &json!(1), &WriteOptions::default())
            .await
            .expect("put")
            .ok();
        let live = sse.next_durable(T).await.expect("live event");
        assert_eq!(
            live.envelope.seq,
            Some(head + 1),
            "the stream continues from the head"
        );
        assert_eq!(
            live.id,
            format!("a={}", head + 1),
            "its id is the new cursor"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_subscribe_from_trimmed_position_gets_resync_then_live() {
    let (server, rest) = trimmed_server().await;
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    ws.subscribe(&["a"], Some("a=1"), false)
        .await
        .expect("subscribe");
    let first = ws.next_envelope(T).await.expect("resync");
    assert_resync(&first, 20);
    rest.put("a", "live", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let live = ws.next_durable(T).await.expect("live event");
    assert_eq!(live.seq, Some(21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_from_trimmed_position_gets_resync_and_head_cursor() {
    let (server, rest) = trimmed_server().await;
    let mut poll = PollClient::new(rest.clone(), &["a"]);
    poll.set_cursor("a=1");
    let events = poll.poll(0).await.expect("poll");
    assert_eq!(events.len(), 1, "one resync: {events:?}");
    assert_resync(&events[0], 20);
    assert_eq!(poll.cursor(), Some("a=20"));
    rest.put("a", "live", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let events = poll.poll(5).await.expect("poll");
    let seqs: Vec<Option<u64>> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![Some(21)]);
    drop(server);
}

/// `0` in a cursor means "from the beginning of the retained log": no resync, the kept events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_zero_on_a_trimmed_room_replays_what_is_kept() {
    let (server, rest) = trimmed_server().await;
    let kept = vec![Some(16), Some(17), Some(18), Some(19), Some(20)];

    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]).since("a=0"))
        .await
        .expect("SSE opens");
    let got: Vec<Option<u64>> = sse
        .take(5, T)
        .await
        .expect("five events")
        .into_iter()
        .map(|e| e.envelope.seq)
        .collect();
    assert_eq!(got, kept, "SSE from a=0");

    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    ws.subscribe(&["a"], Some("a=0"), false)
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(ws.next_envelope(T).await.expect("event").seq);
    }
    assert_eq!(got, kept, "WebSocket from a=0");

    let mut poll = PollClient::new(rest, &["a"]);
    poll.set_cursor("a=0");
    let got: Vec<Option<u64>> = poll
        .poll(0)
        .await
        .expect("poll")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, kept, "long-poll from a=0");
}
