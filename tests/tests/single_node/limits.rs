//! Limits: connections per client and write rate.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use tidewire_protocol::ErrorCode;
use tidewire_tests::{Error, Server, ServerBuilder, SseClient, SseRequest, WriteOptions, WsClient};

use crate::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_connection_of_a_client_is_429() {
    let server = start(Server::builder().flag("max-connections-per-client", 3));
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]))
                .await
                .expect("within the limit"),
        );
    }
    match SseClient::connect(&server.url(), &SseRequest::rooms(&["a"])).await {
        Err(Error::Problem(p)) => {
            assert_eq!(p.status, 429);
            assert_eq!(p.code, ErrorCode::TooManyConnections);
        }
        other => panic!("expected 429 too_many_connections, got {other:?}"),
    }
    // A closed connection frees its slot.
    open.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match SseClient::connect(&server.url(), &SseRequest::rooms(&["a"])).await {
            Ok(sse) => {
                open.push(sse);
                break;
            }
            Err(Error::Problem(p)) if p.code == ErrorCode::TooManyConnections => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // REST calls are not long-lived connections and are not refused.
    server.rest().snapshot("a").await.expect("snapshot").ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_burst_over_the_rate_is_429_with_retry_after() {
    let server = start(
        Server::builder()
            .flag("write-rate", 5)
            .flag("write-burst", 5),
    );
    let rest = server.rest();
    let answers = join_all((0..20).map(|i| {
        let rest = rest.clone();
        async move {
            rest.put("r", &format!("x{i}"), &json!(i), &WriteOptions::default())
                .await
                .expect("request completes")
        }
    }))
    .await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    println!("burst of 20: {ok} accepted, {} rate limited", limited.len());
    assert_eq!(ok + limited.len(), 20, "only 200 or 429");
    // 5 from the burst plus what refills at 5/s while the 20 requests are served.
    assert!(
        (5..=10).contains(&ok),
        "a burst of 5 (+ refill) is accepted, got {ok}"
    );
    for a in &limited {
        assert_eq!(a.problem().code, ErrorCode::RateLimited);
        let retry_after: u64 = a
            .header("retry-after")
            .expect("Retry-After on 429")
            .parse()
            .expect("Retry-After in whole seconds");
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    }
    let history = rest.history_all("r", 0).await.expect("history");
    assert_eq!(history.len(), ok, "refused writes append nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_sse_and_websocket_together() {
    let server = start(Server::builder().flag("max-connections-per-client", 3));
    let _sse1 = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]))
        .await
        .expect("sse 1");
    let _sse2 = SseClient::connect(&server.url(), &SseRequest::rooms(&["a"]))
        .await
        .expect("sse 2");
    let mut ws = WsClient::connect(&server.ws_url(), None)
        .await
        .expect("ws 3");
    ws.ping().await.expect("ping");
    match WsClient::connect(&server.ws_url(), None).await {
        Err(Error::WebSocket(e)) => match *e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), 429);
                let body = resp.body().clone().unwrap_or_default();
                let problem: tidewire_protocol::Problem =
                    serde_json::from_slice(&body).expect("a problem body");
                assert_eq!(problem.code, ErrorCode::TooManyConnections);
            }
            other => panic!("expected an HTTP 429 refusal, got {other}"),
        },
        other => panic!("expected the 4th connection refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_connection_limit_applies_to_every_transport() {
    let server = start(Server::builder().flag("max-rooms-per-connection", 2));
    let three = ["a", "b", "c"];
    match SseClient::connect(&server.url(), &SseRequest::rooms(&three)).await {
        Err(Error::Problem(p)) => assert_eq!(p.code, ErrorCode::TooManyRooms),
        other => panic!("SSE with 3 rooms: {other:?}"),
    }
    let answer = server.rest().poll(&three, None, 0).await.expect("poll");
    assert_eq!(answer.status, 400);
    assert_eq!(answer.problem().code, ErrorCode::TooManyRooms);
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    ws.send_text(r#"{"type":"subscribe","ref":"s","rooms":["a","b","c"]}"#)
        .await
        .expect("send");
    match ws.reply("s", crate::T).await {
        Ok(tidewire_protocol::ServerFrame::Error { code, .. }) => {
            assert_eq!(code, ErrorCode::TooManyRooms)
        }
        Ok(tidewire_protocol::ServerFrame::Ack { result: Err(e), .. }) => {
            assert_eq!(e.code, ErrorCode::TooManyRooms)
        }
        other => panic!("WS subscribe with 3 rooms: {other:?}"),
    }
    // Two rooms are fine, and a second subscribe may not push the total over the limit.
    ws.subscribe(&["a", "b"], None, false)
        .await
        .expect("two rooms");
    ws.send_text(r#"{"type":"subscribe","ref":"t","rooms":["c"]}"#)
        .await
        .expect("send");
    match ws.reply("t", crate::T).await {
        Ok(tidewire_protocol::ServerFrame::Error { code, .. }) => {
            assert_eq!(code, ErrorCode::TooManyRooms)
        }
        Ok(tidewire_protocol::ServerFrame::Ack { result: Err(e), .. }) => {
            assert_eq!(e.code, ErrorCode::TooManyRooms)
        }
        other => panic!("a third room on the connection: {other:?}"),
    }
    ws.ping().await.expect("still open");
}

/// Writes over WebSocket share the client's write budget with REST writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_writes_share_the_write_rate() {
    let server = start(
        Server::builder()
            .flag("write-rate", 5)
            .flag("write-burst", 5),
    );
    let rest = server.rest();
    for i in 0..5 {
        rest.put(
            "r",
            &format!("rest{i}"),
            &json!(i),
            &WriteOptions::default(),
        )
        .await
        .expect("put");
    }
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    let mut limited = 0;
    let mut accepted = 0;
    for i in 0..10 {
        match ws
            .put("r", &format!("ws{i}"), json!(i), None, None)
            .await
            .expect("ack")
        {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::RateLimited);
                limited += 1;
            }
        }
    }
    println!("after 5 REST writes: {accepted} WebSocket writes accepted, {limited} rate limited");
    assert!(
        limited >= 5,
        "the REST writes used the budget: {limited} limited"
    );
    ws.ping()
        .await
        .expect("a rate-limited connection stays open");
}

/// Writes per forwarded client: how many of `n` PUTs sent with `X-Forwarded-For: client` were
/// accepted.
async fn accepted_as(server: &Server, client: &str, n: usize) -> usize {
    let http = reqwest::Client::new();
    let mut ok = 0;
    for i in 0..n {
        let answer = http
            .put(format!("{}/v1/rooms/xff/items/{client}-{i}", server.url()))
            .header("x-forwarded-for", client)
            .json(&json!(i))
            .send()
            .await
            .expect("request completes");
        match answer.status().as_u16() {
            200 => ok += 1,
            429 => {}
            other => panic!("expected 200 or 429, got {other}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_count_per_forwarded_client() {
    // A burst of 3, refilled at one write a second: of 5 quick writes, 3 (or 4 when the five
    // take over a second on a loaded machine) are accepted.
    let limited = |b: ServerBuilder| b.flag("write-rate", 1).flag("write-burst", 3);
    let server = start(limited(Server::builder()).flag("trusted-proxies", "127.0.0.0/8"));
    let first = accepted_as(&server, "203.0.113.1", 5).await;
    assert!((3..=4).contains(&first), "client 1's burst: {first}");
    let second = accepted_as(&server, "203.0.113.2", 5).await;
    assert!(
        (3..=4).contains(&second),
        "client 2 has its own budget behind the same proxy: {second}"
    );
    // Without the flag the header is not believed: every request is the loopback peer's.
    let server = start(limited(Server::builder()));
    let first = accepted_as(&server, "203.0.113.1", 5).await;
    assert!((3..=4).contains(&first), "{first}");
    let second = accepted_as(&server, "203.0.113.2", 5).await;
    assert!(
        second <= 1,
        "a forged header buys no new budget: {second} accepted"
    );
}
