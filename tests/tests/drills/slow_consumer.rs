//! Drill 5, slow consumer under fan-out: N fast SSE subscribers read a room at full speed
//! while a publisher writes at a steady rate. First a baseline phase, then one slow subscriber
//! joins: a raw socket with a 4 KiB receive buffer that reads one 4 KiB chunk every 250 ms (a
//! few events per second at most), so TCP backpressure builds up to the server's
//! per-connection queue.
//!
//! The drill shows, in one run: the server cuts the slow one (the stream ends with a
//! `slow_consumer` error event, the metric counts it) and it resumes from its last id with
//! everything, once; the fast subscribers' delivery latency in the slow phase stays within a
//! factor of the baseline phase of the same run; the server's RSS grows by no more than a
//! small bound while the slow one is connected.
//!
//! The publisher writes two rooms on each tick: `fan` (small events, followed by everyone)
//! and `bulk` (64 KiB events, followed by the slow subscriber only, so its buffers fill in
//! seconds without making the fan-out itself heavy).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use tidewire_protocol::{Envelope, ErrorCode, Event, RawAppEvent};
use tidewire_tests::{
    metric_sum, split_response, Delivery, Error, Server, SseClient, SseRequest, WriteOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{full, report, start};

const FAN: &str = "drill-slow-fan";
const BULK: &str = "drill-slow-bulk";
/// Publisher ticks per second (one `fan` and one `bulk` event per tick).
const RATE: u64 = 10;
/// Bytes of padding of a `bulk` event.
const BULK_BYTES: usize = 64 * 1024;
/// The per-connection queue bound given to the server (`--queue-capacity`).
const QUEUE: usize = 16;
/// The slow subscriber reads at most this much per read …
const SLOW_READ: usize = 4096;
/// … and sleeps this long between reads: at most 16 KiB/s, about one `fan` + `bulk` pair every
/// four seconds, against 640 KiB/s written for it.
const SLOW_PAUSE: Duration = Duration::from_millis(250);
/// The longest the slow phase may last before the drill fails.
const CUT_BUDGET: Duration = Duration::from_secs(60);
/// Allowed RSS growth during the slow phase, beyond the queue bound times the event size.
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// Phases, as written into each `fan` event.
const BASELINE: u8 = 0;
const SLOW: u8 = 1;
const AFTER: u8 = 2;

/// What one fast subscriber saw: its seqs and (phase, latency in µs) per event.
struct Seen {
    seqs: Vec<u64>,
    latencies: Vec<(u8, u64)>,
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Samples the server's VmRSS (KiB) every 100 ms, tagged with the current phase.
fn sample_rss(
    pid: u32,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u8, u64)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        // Bounded: the drill ends within a few minutes; 100 ms samples.
        for _ in 0..6_000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    out.push((phase.load(Ordering::SeqCst), kib));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_resumes_and_does_not_slow_the_others() {
    // Alone: the latency comparison must not see another drill's load in one phase only.
    let _cpu = crate::exclusive_cpu().await;
    let n = if full() { 1_000 } else { 150 };
    let baseline_ticks = RATE * if full() { 6 } else { 3 };
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("queue-capacity", QUEUE)
            .flag("max-connections-per-client", n * 2 + 100)
            .flag("max-connections-per-address", n * 2 + 100),
    );
    let rest = server.rest();
    let url = server.url();
    let t0 = Instant::now();

    // The fast subscribers: read everything as it comes, stop at the `end` event.
    let mut fast = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = SseClient::connect(&url, &SseRequest::rooms(&[FAN]).since(&format!("{FAN}=0")))
            .await
            .unwrap_or_else(|e| panic!("fast subscriber {i} connects: {e}"));
        fast.push(tokio::spawn(async move {
            let mut seen = Seen {
                seqs: Vec::new(),
                latencies: Vec::new(),
            };
            loop {
                let ev = match c.next_durable(Duration::from_secs(30)).await {
                    Ok(ev) => ev,
                    Err(e) => panic!("fast subscriber {i} after {} events: {e}", seen.seqs.len()),
                };
                let now = micros(t0);
                seen.seqs.push(ev.envelope.seq.unwrap_or_default());
                let Event::App(app) = &ev.envelope.event else {
                    continue;
                };
                let data = &app.data;
                if data["end"] == json!(true) {
                    break;
                }
                let phase = data["phase"].as_u64().unwrap_or(9) as u8;
                let sent = data["t"].as_u64().unwrap_or(now);
                seen.latencies.push((phase, now.saturating_sub(sent)));
            }
            seen
        }));
    }

    // The publisher: one `fan` and one `bulk` event per tick, at a steady rate, until told to
    // stop (bounded by the cut budget).
    let phase = Arc::new(AtomicU8::new(BASELINE));
    let stop = Arc::new(AtomicBool::new(false));
    let (baseline_done_tx, baseline_done_rx) = tokio::sync::oneshot::channel();
    let publisher = {
        let (rest, phase, stop) = (rest.clone(), phase.clone(), stop.clone());
        tokio::spawn(async move {
            let pad = "b".repeat(BULK_BYTES);
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut baseline_done = Some(baseline_done_tx);
            let (mut fan, mut bulk) = (0u64, 0u64);
            let max_ticks = baseline_ticks + RATE * (CUT_BUDGET.as_secs() + 10);
            for i in 0..max_ticks {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                tick.tick().await;
                if i == baseline_ticks {
                    if let Some(tx) = baseline_done.take() {
                        let _ = tx.send(());
                    }
                }
                let p = phase.load(Ordering::SeqCst);
                rest.publish(
                    FAN,
                    "test.tick",
                    &json!({"i": i, "phase": p, "t": micros(t0)}),
                    &WriteOptions::default(),
                )
                .await
                .expect("fan publish reaches the server")
                .ok();
                fan += 1;
                rest.publish(
                    BULK,
                    "test.bulk",
                    &json!({"i": i, "pad": pad}),
                    &WriteOptions::default(),
                )
                .await
                .expect("bulk publish reaches the server")
                .ok();
                bulk += 1;
            }
            rest.publish(
                FAN,
                "test.end",
                &json!({"end": true}),
                &WriteOptions::default(),
            )
            .await
            .expect("end publish")
            .ok();
            (fan + 1, bulk)
        })
    };
    let rss = sample_rss(server.pid().expect("running"), phase.clone(), stop.clone());

    baseline_done_rx.await.expect("the baseline phase ran");
    // The slow subscriber: a raw socket with a tiny receive buffer, both rooms from their heads.
    phase.store(SLOW, Ordering::SeqCst);
    let slow_started = Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(SLOW_READ as u32)
        .expect("rcvbuf");
    let addr = server.addr();
    let mut slow = socket
        .connect(addr)
        .await
        .expect("slow subscriber connects");
    slow.write_all(
        format!(
            "GET /v1/sse?rooms={FAN},{BULK} HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send request");
    let cut = Arc::new(AtomicBool::new(false));
    let slow_reader = {
        let cut = cut.clone();
        tokio::spawn(async move {
            let mut raw = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut slow_reads = 0usize;
            // Bounded: the cut budget in slow reads, then a fast drain of at most 30 s.
            let drain_until = loop {
                if cut.load(Ordering::SeqCst) {
                    break Instant::now() + Duration::from_secs(30);
                }
                match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf[..SLOW_READ]))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => return (raw, slow_reads, true),
                    Ok(Ok(k)) => {
                        raw.extend_from_slice(&buf[..k]);
                        slow_reads += 1;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(SLOW_PAUSE).await;
            };
            // Cut: read what the kernel still holds, up to the end of the response.
            let ended = loop {
                let left = drain_until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, slow.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(k)) => {
                        raw.extend_from_slice(&buf[..k]);
                        if split_response(&raw).is_some_and(|(_, _, complete)| complete) {
                            break true;
                        }
                    }
                    Err(_) => break false,
                }
            };
            (raw, slow_reads, ended)
        })
    };

    // Wait for the server to cut it: its slow-consumer counter goes to 1.
    let deadline = Instant::now() + CUT_BUDGET;
    let cut_after = loop {
        let m = rest.metrics().await.unwrap_or_default();
        if metric_sum(&m, "tidewire_slow_consumer_disconnects_total").unwrap_or(0.0) >= 1.0 {
            break slow_started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the server did not cut the slow subscriber within {CUT_BUDGET:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = rest.metrics().await.unwrap_or_default();
    assert!(
        m.lines()
            .any(|l| l.starts_with("tidewire_slow_consumer_disconnects_total{transport=\"sse\"}")),
        "the cut is counted under transport=\"sse\":\n{m}"
    );
    cut.store(true, Ordering::SeqCst);
    phase.store(AFTER, Ordering::SeqCst);
    // A second of writes after the cut (the slow one must get them by resuming), then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let (fan_sent, bulk_sent) = publisher.await.expect("publisher");
    let sent = (fan_sent + bulk_sent) as usize;

    let mut fast_seen = Vec::with_capacity(n);
    for t in fast {
        fast_seen.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("fast subscriber finishes")
                .expect("fast subscriber"),
        );
    }
    let (raw, slow_reads, ended) = slow_reader.await.expect("slow reader");
    stop.store(true, Ordering::SeqCst);
    let rss = rss.await.expect("rss sampler");

    // The slow one: what it read before the cut is a gap-free prefix ending in the error.
    let (head, body, _) = split_response(&raw).expect("slow subscriber's response head");
    assert!(
        head.starts_with("http/1.1 200"),
        "slow subscriber's answer: {head}"
    );
    let mut parsed =
        futures::stream::iter([Ok::<_, std::convert::Infallible>(body.clone())]).eventsource();
    let mut slow_delivery = Delivery::default();
    // It starts at the rooms' heads: the stream's first `id:` (the prologue) says where.
    let start: tidewire_protocol::Cursor = String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .and_then(|c| c.trim().parse().ok())
        .expect("the prologue id");
    let (fan_from, bulk_from) = (
        start.get(FAN).unwrap_or(0) + 1,
        start.get(BULK).unwrap_or(0) + 1,
    );
    slow_delivery.expect(FAN, fan_from..=fan_sent);
    slow_delivery.expect(BULK, bulk_from..=bulk_sent);
    let mut last_id = String::new();
    let mut error = None;
    while let Some(Ok(ev)) = parsed.next().await {
        if !ev.id.is_empty() {
            last_id = ev.id.clone();
        }
        let Ok(env) = Envelope::<RawAppEvent>::decode(&ev.data) else {
            continue; // a truncated last event
        };
        if let Some(seq) = env.seq {
            slow_delivery.received(&env.room, seq);
        }
        if let Event::Error(e) = &env.event {
            error = Some(e.code);
        }
    }
    let before_cut = slow_delivery.counts().delivered;
    println!(
        "[drill slow consumer] slow subscriber: cut after {cut_after:.2?} ({slow_reads} slow reads of <= {SLOW_READ} B), \
         {before_cut} events before the cut, stream ended={ended}, error event {error:?}, last id `{last_id}`"
    );
    assert!(
        ended,
        "the slow subscriber's stream did not end after the cut"
    );
    assert_eq!(
        error,
        Some(ErrorCode::SlowConsumer),
        "the stream ends with the slow_consumer error"
    );
    assert!(
        !last_id.is_empty(),
        "the slow subscriber saw at least the prologue id"
    );

    // It resumes from its last id and ends with everything, once.
    let mut resumed = SseClient::connect(
        &url,
        &SseRequest::rooms(&[FAN, BULK]).last_event_id(&last_id),
    )
    .await
    .expect("the slow subscriber reconnects");
    let (mut fan_at, mut bulk_at) = (0, 0);
    while fan_at < fan_sent || bulk_at < bulk_sent {
        match resumed.next_durable(Duration::from_secs(20)).await {
            Ok(ev) => {
                let seq = ev.envelope.seq.expect("durable");
                if ev.envelope.room == FAN {
                    fan_at = seq;
                } else {
                    bulk_at = seq;
                }
                slow_delivery.received(&ev.envelope.room, seq);
            }
            Err(Error::Timeout { .. }) => break,
            Err(e) => panic!("resumed stream: {e}"),
        }
    }

    // The fast ones: every event once, and latency per phase.
    // One account for all of them, a stream per subscriber (`fan#i`).
    let mut fast_delivery = Delivery::default();
    let (mut base_lat, mut slow_lat) = (Vec::new(), Vec::new());
    for (i, seen) in fast_seen.iter().enumerate() {
        let stream = format!("{FAN}#{i}");
        fast_delivery.expect(&stream, 1..=fan_sent);
        for s in &seen.seqs {
            fast_delivery.received(&stream, *s);
        }
        for (p, l) in &seen.latencies {
            match *p {
                BASELINE => base_lat.push(*l),
                SLOW => slow_lat.push(*l),
                _ => {}
            }
        }
    }
    base_lat.sort_unstable();
    slow_lat.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let (b50, b99) = (percentile(&base_lat, 0.5), percentile(&base_lat, 0.99));
    let (s50, s99) = (percentile(&slow_lat, 0.5), percentile(&slow_lat, 0.99));
    println!(
        "[drill slow consumer] {n} fast subscribers, latency baseline p50={:.1} ms p99={:.1} ms ({} samples); \
         slow phase p50={:.1} ms p99={:.1} ms ({} samples)",
        ms(b50), ms(b99), base_lat.len(), ms(s50), ms(s99), slow_lat.len()
    );

    let max_in = |p: u8| {
        rss.iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
    };
    let rss_base = max_in(BASELINE);
    let rss_slow = max_in(SLOW);
    let growth = rss_slow.saturating_sub(rss_base);
    let bound = RSS_SLACK_KIB + (QUEUE * (BULK_BYTES + 1024) / 1024) as u64;
    println!(
        "[drill slow consumer] server RSS: baseline peak {rss_base} KiB, slow-phase peak {rss_slow} KiB, growth {growth} KiB (bound {bound} KiB)"
    );

    let (s, f) = (slow_delivery.counts(), fast_delivery.counts());
    report(
        "drill slow consumer",
        sent,
        sent,
        s.delivered + f.delivered,
        s.lost + f.lost,
        s.duplicated + f.duplicated,
    );
    slow_delivery.assert_exact("drill slow consumer: slow subscriber, prefix + resume");
    fast_delivery.assert_exact("drill slow consumer: fast subscribers");
    assert!(
        !base_lat.is_empty() && !slow_lat.is_empty(),
        "both phases were measured"
    );
    assert!(
        s99 <= 3 * b99 + 50_000,
        "fast subscribers' p99 in the slow phase {:.1} ms > 3 x baseline {:.1} ms + 50 ms",
        ms(s99),
        ms(b99)
    );
    assert!(
        s50 <= 3 * b50 + 50_000,
        "fast subscribers' p50 in the slow phase {:.1} ms > 3 x baseline {:.1} ms + 50 ms",
        ms(s50),
        ms(b50)
    );
    assert!(
        growth <= bound,
        "server RSS grew by {growth} KiB in the slow phase (bound {bound} KiB)"
    );
}
