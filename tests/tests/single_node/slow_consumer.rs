//! A client that never reads is disconnected; the server's memory stays bounded, other
//! clients keep receiving, and the slow client resumes from its last id without loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use tidewire_protocol::{Envelope, ErrorCode, Event, RawAppEvent};
use tidewire_tests::{metric_sum, Delivery, Error, Server, SseClient, SseRequest, WriteOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::start;

const EVENTS: u64 = 20_000;
const WRITERS: u64 = 8;
const RSS_BUDGET_KIB: u64 = 64 * 1024;

/// Removes HTTP/1.1 chunked framing; stops at the first incomplete chunk.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return out;
        };
        if size == 0 || body.len() < eol + 2 + size {
            out.extend_from_slice(
                &body[(eol + 2).min(body.len())..(eol + 2 + size).min(body.len())],
            );
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_memory_stays_bounded_and_it_resumes() {
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("queue-capacity", 256),
    );
    let rest = server.rest();
    let addr = server.addr();

    // A healthy client reads everything as it comes.
    let mut healthy = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&["firehose"]).since("firehose=0"),
    )
    .await
    .expect("SSE opens");
    let healthy_task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < EVENTS {
            match healthy.next_durable(Duration::from_secs(30)).await {
                Ok(ev) => seqs.push(ev.envelope.seq.expect("durable")),
                Err(e) => {
                    println!("healthy client stopped after {} events: {e}", seqs.len());
                    break;
                }
            }
        }
        seqs
    });

    // The slow client: a raw socket with a tiny receive buffer that sends the request and
    // then reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = socket.connect(addr).await.expect("connect");
    slow.write_all(
        format!(
            "GET /v1/sse?rooms=firehose&since=firehose%3D0 HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send request");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let baseline = server.rss_kib().expect("rss");
    let max_rss = Arc::new(AtomicU64::new(baseline));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let rest = rest.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let pad = "x".repeat(1000);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= EVENTS {
                        return;
                    }
                    rest.publish(
                        "firehose",
                        "test.bulk",
                        &json!({"i": i, "pad": pad}),
                        &WriteOptions::default(),
                    )
                    .await
                    .expect("publish reaches the server")
                    .ok();
                }
            })
        })
        .collect();
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
    for w in writers {
        w.await.expect("writer");
    }
    let publish_time = started.elapsed();

    // The slow socket must now end: read what the kernel buffered, then EOF.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true, // reset by the server also ends it
            Err(_) => break false,
        }
    };
    pid_rss.abort();
    let healthy_seqs = tokio::time::timeout(Duration::from_secs(60), healthy_task)
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
        "published {EVENTS} events in {publish_time:?}; slow socket got {} bytes, closed={closed}; \
         rss baseline={baseline} KiB peak={peak} KiB (+{} KiB); slow_consumer metric sum={slow_metric} ({:?})",
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
    others.expect("firehose", 1..=EVENTS);
    for seq in &healthy_seqs {
        others.received("firehose", *seq);
    }
    others.assert_exact("healthy client during the slow one");

    // What the slow client did get is a gap-free prefix; then it resumes from its last id.
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response headers");
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "slow client's answer: {head}"
    );
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&raw[head_end + 4..])
    } else {
        raw[head_end + 4..].to_vec()
    };
    let mut parsed = futures::stream::iter([Ok::<_, std::convert::Infallible>(body)]).eventsource();
    let mut slow_delivery = Delivery::default();
    slow_delivery.expect("firehose", 1..=EVENTS);
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
        &SseRequest::rooms(&["firehose"]).last_event_id(&last_id),
    )
    .await
    .expect("the slow client reconnects");
    loop {
        match resumed.next_durable(Duration::from_secs(10)).await {
            Ok(ev) => {
                let seq = ev.envelope.seq.expect("durable");
                slow_delivery.received("firehose", seq);
                if seq == EVENTS {
                    break;
                }
            }
            Err(Error::Timeout { .. }) => break,
            Err(e) => panic!("resumed stream: {e}"),
        }
    }
    slow_delivery.assert_exact("slow client: prefix + resume");
}
