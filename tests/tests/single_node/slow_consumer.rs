//! A client that never reads is disconnected; the server's memory stays bounded, other
//! clients keep receiving, and the slow client resumes from its last id without loss.
//!
//! The volume comes from big `broadcast`s in a second room `flood` (ephemeral, so no database
//! write per megabyte and the test stays fast); the small durable events published meanwhile
//! in `firehose` are what the loss accounting counts. The slow client follows both rooms, the
//! healthy one follows `firehose` only: it must not be held up by the slow one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use tidewire_protocol::{ClientFrame, Envelope, ErrorCode, Event, RawAppEvent};
use tidewire_tests::{
    metric_sum, split_response, Delivery, Error, Server, SseClient, SseRequest, WriteOptions,
    WsClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{on_own_thread, start};

/// Durable events published during the flood (small).
const DURABLE: u64 = 200;
/// Broadcasts in the flood (override with `TIDEWIRE_E2E_SLOW_BROADCASTS`).
fn broadcasts() -> usize {
    std::env::var("TIDEWIRE_E2E_SLOW_BROADCASTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(320)
}
/// Bytes per broadcast: 320 x 256 KB = 80 MB, more than the memory budget.
const BROADCAST_BYTES: usize = 256 * 1024;
const RSS_BUDGET_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_memory_stays_bounded_and_it_resumes() {
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("queue-capacity", 64),
    );
    let rest = server.rest();
    let addr = server.addr();

    // A healthy client reads everything as it comes (on its own thread and runtime).
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let url = server.url();
    let healthy_task = on_own_thread(move || async move {
        let mut healthy =
            SseClient::connect(&url, &SseRequest::rooms(&["firehose"]).since("firehose=0"))
                .await
                .expect("SSE opens");
        let _ = ready_tx.send(());
        let mut seqs = Vec::new();
        let mut others = Vec::new();
        while (seqs.len() as u64) < DURABLE {
            match healthy.next(Duration::from_secs(30)).await {
                Ok(ev) => match ev.envelope.seq {
                    Some(seq) => seqs.push(seq),
                    None => others.push(ev.envelope.event.event_type().into_owned()),
                },
                Err(e) => {
                    println!("healthy client stopped after {} events: {e}", seqs.len());
                    break;
                }
            }
        }
        (seqs, others)
    });
    ready_rx.await.expect("the healthy client connects");

    // The slow client: a raw socket with a tiny receive buffer that sends the request and
    // then reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = socket.connect(addr).await.expect("connect");
    slow.write_all(
        format!(
            "GET /v1/sse?rooms=firehose,flood&since=firehose%3D0 HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send request");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let baseline = server.rss_kib().expect("rss");
    let max_rss = Arc::new(AtomicU64::new(baseline));
    let started = Instant::now();
    let writer = {
        let rest = rest.clone();
        tokio::spawn(async move {
            for i in 0..DURABLE {
                rest.publish(
                    "firehose",
                    "test.tick",
                    &json!({"i": i, "pad": "x".repeat(1000)}),
                    &WriteOptions::default(),
                )
                .await
                .expect("publish reaches the server")
                .ok();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let ws_url = server.ws_url();
    let flood = on_own_thread(move || async move {
        let mut ws = WsClient::connect(&ws_url, Some("flood")).await.expect("ws");
        let pad = "y".repeat(BROADCAST_BYTES);
        for i in 0..broadcasts() {
            ws.send(&ClientFrame::Broadcast {
                r#ref: None,
                room: "flood".into(),
                event: "flood".into(),
                data: json!({"i": i, "pad": pad}),
            })
            .await
            .expect("broadcast sent");
        }
        ws.ping().await.expect("the flood connection still works");
    });
    let pid_rss = {
        let max_rss = Arc::clone(&max_rss);
        let pid = server.pid().expect("running");
        tokio::spawn(async move {
            loop {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        max_rss.fetch_max(kib, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    writer.await.expect("writer");
    flood.await.expect("the flood ran");
    let publish_time = started.elapsed();

    // The slow socket must now end: read what the kernel buffered, then EOF.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Ended: EOF, a reset, or the terminating chunk of the response.
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => {
                raw.extend_from_slice(&buf[..n]);
                if split_response(&raw).is_some_and(|(_, _, complete)| complete) {
                    break true;
                }
            }
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    pid_rss.abort();
    let (healthy_seqs, healthy_others) =
        tokio::time::timeout(Duration::from_secs(60), healthy_task)
            .await
            .expect("healthy client finishes")
            .expect("healthy task");
    let metrics = rest.metrics().await.unwrap_or_default();
    let slow_metric: f64 = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("slow_consumer"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let peak = max_rss.load(Ordering::SeqCst);
    println!(
        "published {DURABLE} events and {} broadcasts of {BROADCAST_BYTES} bytes in {publish_time:?} \
         (healthy client's other events: {healthy_others:?}); slow socket got {} bytes, closed={closed}; \
         rss baseline={baseline} KiB peak={peak} KiB (+{} KiB); slow_consumer metric sum={slow_metric} ({:?})",
        broadcasts(),
        raw.len(),
        peak.saturating_sub(baseline),
        metric_sum(&metrics, "tidewire_slow_consumer_disconnects_total"),
    );

    assert!(
        closed,
        "the server kept a client that reads nothing connected"
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_BUDGET_KIB,
        "server RSS grew by {} KiB (> {RSS_BUDGET_KIB})",
        peak - baseline
    );

    // Others kept receiving.
    let mut others = Delivery::default();
    others.expect("firehose", 1..=DURABLE);
    for seq in &healthy_seqs {
        others.received("firehose", *seq);
    }
    others.assert_exact("healthy client during the slow one");

    // What the slow client did get is a gap-free prefix; then it resumes from its last id.
    let (head, body, _) = split_response(&raw).expect("response headers");
    assert!(
        head.starts_with("http/1.1 200"),
        "slow client's answer: {head}"
    );
    let mut parsed = futures::stream::iter([Ok::<_, std::convert::Infallible>(body)]).eventsource();
    let mut slow_delivery = Delivery::default();
    slow_delivery.expect("firehose", 1..=DURABLE);
    let mut last_id = String::new();
    let mut got_error = None;
    while let Some(Ok(ev)) = parsed.next().await {
        if !ev.id.is_empty() {
            last_id = ev.id.clone();
        }
        let Ok(env) = Envelope::<RawAppEvent>::decode(&ev.data) else {
            continue; // a truncated last event
        };
        if let Some(seq) = env.seq {
            slow_delivery.received("firehose", seq);
        }
        if let Event::Error(e) = &env.event {
            got_error = Some(e.code);
        }
    }
    let before_cut = slow_delivery.counts().delivered;
    println!(
        "slow client read {before_cut} events before the cut, last id `{last_id}`, error event {got_error:?}"
    );
    if let Some(code) = got_error {
        assert_eq!(code, ErrorCode::SlowConsumer);
    }
    assert!(
        !last_id.is_empty(),
        "the slow client saw at least the prologue id"
    );
    let mut resumed = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&["firehose", "flood"]).last_event_id(&last_id),
    )
    .await
    .expect("the slow client reconnects");
    loop {
        match resumed.next_durable(Duration::from_secs(10)).await {
            Ok(ev) => {
                let seq = ev.envelope.seq.expect("durable");
                slow_delivery.received("firehose", seq);
                if seq == DURABLE {
                    break;
                }
            }
            Err(Error::Timeout { .. }) => break,
            Err(e) => panic!("resumed stream: {e}"),
        }
    }
    slow_delivery.assert_exact("slow client: prefix + resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_is_closed_with_4002_and_resumes() {
    const DURABLE_WS: u64 = 50;
    const FLOOD_WS: usize = 120;
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("queue-capacity", 64),
    );
    let rest = server.rest();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.addr()).await.expect("connect");
    let mut slow = WsClient::connect_over(&server.ws_url(), Some("slow"), stream)
        .await
        .expect("ws");
    slow.subscribe(&["firehose", "flood"], Some("firehose=0,flood=0"), false)
        .await
        .expect("subscribe");
    // From here on the slow client reads nothing until the flood is over.

    let ws_url = server.ws_url();
    let flood = on_own_thread(move || async move {
        let mut ws = WsClient::connect(&ws_url, Some("flood")).await.expect("ws");
        let pad = "y".repeat(BROADCAST_BYTES);
        for i in 0..FLOOD_WS {
            ws.send(&ClientFrame::Broadcast {
                r#ref: None,
                room: "flood".into(),
                event: "flood".into(),
                data: json!({"i": i, "pad": pad}),
            })
            .await
            .expect("broadcast sent");
        }
        ws.ping().await.expect("the flood connection still works");
    });
    // Half the durable events during the flood, half after it (when the slow client has been
    // cut off, so only a resume brings them).
    let publish = |i: u64| {
        let rest = rest.clone();
        async move {
            rest.publish(
                "firehose",
                "test.tick",
                &json!({"i": i}),
                &WriteOptions::default(),
            )
            .await
            .expect("publish")
            .ok()
        }
    };
    for i in 0..DURABLE_WS / 2 {
        publish(i).await;
    }
    flood.await.expect("the flood ran");
    for i in DURABLE_WS / 2..DURABLE_WS {
        publish(i).await;
    }

    let mut delivery = Delivery::default();
    delivery.expect("firehose", 1..=DURABLE_WS);
    let mut cursor = tidewire_protocol::Cursor::new();
    cursor.set("firehose", 0);
    cursor.set("flood", 0);
    let mut error_frame = None;
    let close = loop {
        match slow.recv(Duration::from_secs(15)).await {
            Ok(tidewire_protocol::ServerFrame::Event(env)) => {
                if let Some(seq) = env.seq {
                    delivery.received(&env.room, seq);
                    cursor.set(&env.room, seq);
                }
                if let Event::Error(e) = &env.event {
                    error_frame = Some(e.code);
                }
            }
            Ok(tidewire_protocol::ServerFrame::Error { code, .. }) => error_frame = Some(code),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    println!(
        "slow WebSocket: {} durable events before the cut, error {error_frame:?}, end: {close}",
        delivery.counts().delivered
    );
    match close {
        Error::Closed(Some((code, _))) => assert_eq!(code, 4002, "close code slow_consumer"),
        other => panic!("expected close 4002 slow_consumer, got {other}"),
    }
    if let Some(code) = error_frame {
        assert_eq!(code, ErrorCode::SlowConsumer);
    }

    let mut again = WsClient::connect(&server.ws_url(), Some("slow"))
        .await
        .expect("reconnect");
    again
        .subscribe(&["firehose", "flood"], Some(&cursor.to_string()), false)
        .await
        .expect("resubscribe");
    while delivery.counts().delivered < DURABLE_WS as usize {
        let env = again.next_durable(crate::T).await.expect("resumed event");
        delivery.received(&env.room, env.seq.expect("durable"));
    }
    delivery.assert_exact("slow WebSocket: prefix + resume");
}
