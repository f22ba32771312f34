//! Drill 2, network cut without a close: a WebSocket client talks to the server through a
//! test proxy that goes silent without closing (half-open). The server's idle timeout reaps
//! the dead connection (its `tidewire_connections{transport="ws"}` gauge drops), the client
//! notices within its heartbeat bound (no ping and no frame for 3 heartbeats), reconnects
//! through the restored proxy and resumes from its cursor without loss or duplicates.

use std::time::{Duration, Instant};

use serde_json::json;
use tidewire_protocol::Cursor;
use tidewire_tests::proxy::Proxy;
use tidewire_tests::{Delivery, Error, Server, WriteOptions, WsClient};

use crate::{report, start, T};

const ROOM: &str = "drill-cut";
const HEARTBEAT_SECS: u64 = 1;
const IDLE_SECS: u64 = 3;
/// The client calls a connection dead after this long without a ping or a frame.
const CLIENT_BOUND: Duration = Duration::from_secs(3 * HEARTBEAT_SECS);

async fn ws_gauge(server: &Server) -> f64 {
    let text = server.rest().metrics().await.expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("tidewire_connections{") && l.contains("transport=\"ws\""))
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
