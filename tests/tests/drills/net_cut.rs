//! Drill 2, network cut without a close: a WebSocket client talks to the server through a
//! test proxy that goes silent without closing (half-open). The server's idle timeout reaps
//! the dead connection (its `tidewire_connections{transport="ws"}` gauge drops), the client
//! notices within its heartbeat bound (no ping and no frame for 3 heartbeats), reconnects
//! through the restored proxy and resumes from its cursor without loss or duplicates.

use std::time::{Duration, Instant};

use serde_json::json;
use tidewire_protocol::Cursor;
use tidewire_tests::proxy::Proxy;
use tidewire_tests::{Delivery, Error, Server, SseClient, SseRequest, WriteOptions, WsClient};

use crate::{report, start, T};

const ROOM: &str = "drill-cut";
const HEARTBEAT_SECS: u64 = 1;
const IDLE_SECS: u64 = 3;
/// The client calls a connection dead after this long without a ping or a frame.
const CLIENT_BOUND: Duration = Duration::from_secs(3 * HEARTBEAT_SECS);

async fn ws_gauge(server: &Server) -> f64 {
    gauge(server, "ws").await
}

async fn gauge(server: &Server, transport: &str) -> f64 {
    let text = server.rest().metrics().await.expect("metrics");
    let label = format!("transport=\"{transport}\"");
    text.lines()
        .filter(|l| l.starts_with("tidewire_connections{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_is_reaped_and_the_client_resumes() {
    let _cpu = crate::shared_cpu().await;
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("heartbeat-secs", HEARTBEAT_SECS)
            .flag("idle-timeout-secs", IDLE_SECS),
    );
    let rest = server.rest();
    let proxy = Proxy::start(server.addr()).await.expect("proxy");
    let via = format!("ws://{}", proxy.addr());

    let mut ws = WsClient::connect(&via, None).await.expect("ws via proxy");
    ws.subscribe(&[ROOM], Some(&format!("{ROOM}=0")), false)
        .await
        .expect("subscribe");
    let mut delivery = Delivery::default();
    let mut cursor = Cursor::new();
    cursor.set(ROOM, 0);
    let mut sent = 0usize;
    let mut acked = 0u64;
    for i in 0..20 {
        sent += 1;
        rest.put(
            ROOM,
            &format!("i{}", i % 3),
            &json!(i),
            &WriteOptions::key(format!("a{i}")),
        )
        .await
        .expect("write")
        .ok();
        acked += 1;
    }
    for _ in 0..20 {
        let env = ws.next_durable(T).await.expect("event before the cut");
        let seq = env.seq.expect("durable");
        delivery.received(ROOM, seq);
        cursor.set(ROOM, seq);
    }
    assert!(ws_gauge(&server).await >= 1.0, "the connection is counted");

    // Cut: nothing flows, nothing closes. Writes go on meanwhile.
    proxy.cut();
    let cut_at = Instant::now();
    for i in 20..40 {
        sent += 1;
        rest.put(
            ROOM,
            &format!("i{}", i % 3),
            &json!(i),
            &WriteOptions::key(format!("a{i}")),
        )
        .await
        .expect("write during the cut")
        .ok();
        acked += 1;
    }

    // The client notices: no ping and no frame within its bound.
    let mut last_sign = Instant::now();
    let mut pings = ws.pings_seen();
    let noticed = loop {
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "the client never noticed the cut"
        );
        match ws.recv(Duration::from_millis(250)).await {
            Ok(_) => last_sign = Instant::now(),
            Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("a half-open connection must not error or close: {e}"),
        }
        if ws.pings_seen() != pings {
            pings = ws.pings_seen();
            last_sign = Instant::now();
        }
        if last_sign.elapsed() >= CLIENT_BOUND {
            break cut_at.elapsed();
        }
    };
    println!("[drill net cut] client noticed the dead connection after {noticed:?}");
    assert!(
        noticed <= CLIENT_BOUND + Duration::from_secs(2),
        "noticed within the bound"
    );

    // The server reaps it: the ws gauge drops to 0 within its idle timeout (+ slack).
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECS + 10);
    loop {
        if ws_gauge(&server).await == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never reaped the half-open connection"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reaped = cut_at.elapsed();
    println!("[drill net cut] server reaped the connection after {reaped:?}");
    drop(ws);

    // Restore; reconnect through the proxy and resume from the cursor.
    proxy.restore();
    let mut ws = WsClient::connect(&via, None)
        .await
        .expect("reconnect via proxy");
    ws.subscribe(&[ROOM], Some(&cursor.to_string()), false)
        .await
        .expect("resume");
    for _ in 20..40 {
        let env = ws.next_durable(T).await.expect("event after resume");
        delivery.received(ROOM, env.seq.expect("durable"));
    }
    // Nothing more (no duplicates trailing).
    assert!(
        matches!(
            ws.next_durable(Duration::from_millis(500)).await,
            Err(Error::Timeout { .. })
        ),
        "no extra event after the resume"
    );
    delivery.expect(ROOM, 1..=acked);
    let c = delivery.counts();
    report(
        "drill net cut",
        sent,
        acked as usize,
        c.delivered,
        c.lost,
        c.duplicated,
    );
    delivery.assert_exact("drill net cut");
}

/// The same cut under an SSE stream, which sends nothing client-to-server: the server cannot
/// tell a dead client by silence, so the kernel does it (`TCP_USER_TIMEOUT` = the idle
/// timeout): once the frozen path stops taking bytes for that long, the connection is dropped
/// and its session ends. Without it the stream would hold its socket for as long as the peer's
/// kernel keeps answering window probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_sse_stream_is_reaped_by_the_kernel_timeout() {
    let _cpu = crate::shared_cpu().await;
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("heartbeat-secs", HEARTBEAT_SECS)
            .flag("idle-timeout-secs", IDLE_SECS),
    );
    let rest = server.rest();
    let proxy = Proxy::start(server.addr()).await.expect("proxy");
    let room = "drill-cut-sse";
    let mut sse = SseClient::connect(
        &format!("http://{}", proxy.addr()),
        &SseRequest::rooms(&[room]).since(&format!("{room}=0")),
    )
    .await
    .expect("sse via proxy");
    rest.put(room, "first", &json!(0), &WriteOptions::default())
        .await
        .expect("write")
        .ok();
    sse.next_durable(T).await.expect("an event before the cut");
    assert_eq!(gauge(&server, "sse").await, 1.0, "the stream is counted");

    // Cut, then write enough to fill every buffer on the way (~8 MiB in 200 KiB items), so the
    // server's socket has unacknowledged bytes it cannot send.
    proxy.cut();
    let cut_at = Instant::now();
    let big = json!("x".repeat(200 * 1024));
    for i in 0..40 {
        rest.put(
            room,
            &format!("big{}", i % 4),
            &big,
            &WriteOptions::default(),
        )
        .await
        .expect("write during the cut")
        .ok();
    }
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECS + 20);
    while gauge(&server, "sse").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the server still holds the half-open SSE stream {:?} after the cut",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "[drill net cut sse] server dropped the half-open stream after {:?} (user timeout {IDLE_SECS} s)",
        cut_at.elapsed()
    );
    drop(sse);
}
