//! Drill `probes`: the hostile clients of the security audit, against one real `tidewire`
//! process, while `/healthz` is timed and the server's RSS is read. Each probe prints a line
//! of figures:
//!
//! - `slowloris`: sockets that send a partial request head and go silent, from two child
//!   processes (two source addresses; each process may hold at most 20,000 files), are refused
//!   at the per-address and global caps or cut at the header timeout;
//! - `cursor`: a 16,000-pair `Last-Event-ID` and a 16,000-pair WebSocket `subscribe.since`
//!   are refused with `bad_cursor` at once;
//! - `presence`: 8,000 presence frames into rooms the connection does not follow are refused,
//!   and its pings stay fast;
//! - `broadcast`: 300 broadcasts of 512 KiB to a reader that has stopped reading: the reader
//!   is cut as a slow consumer and the server's memory stays bounded.
//!
//! Small by default (`slowloris` 2 × 1,500 sockets); `TIDEWIRE_DRILLS_FULL=1` opens
//! 2 × 10,000.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidewire_protocol::ClientFrame;
use tidewire_tests::{metric_sum, Server, WsClient};

use crate::{exclusive_cpu, full, start, T};

/// The child process side of `slowloris`: with `TIDEWIRE_PROBE_HOLD=<n>@<server>@<source ip>`
/// it opens `n` sockets from `source ip`, sends each a partial request head, and reports on
/// stdout how many the server refused at once and how many it cut later. Without the
/// variable this test does nothing (it is how the drill starts its child processes).
#[test]
fn hold_sockets_child() {
    let Ok(spec) = std::env::var("TIDEWIRE_PROBE_HOLD") else {
        return;
    };
    let mut parts = spec.split('@');
    let n: usize = parts.next().unwrap().parse().unwrap();
    let server: SocketAddr = parts.next().unwrap().parse().unwrap();
    let source: std::net::IpAddr = parts.next().unwrap().parse().unwrap();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind source");
        if socket
            .connect_timeout(&server.into(), Duration::from_secs(2))
            .is_err()
        {
            refused += 1;
            continue;
        }
        let mut tcp: TcpStream = socket.into();
        if tcp
            .write_all(b"GET /v1/rooms/r/snapshot HTTP/1.1\r\nHo")
            .is_err()
        {
            refused += 1;
            continue;
        }
        open.push(tcp);
    }
    println!("opened {}", open.len());
    let started = Instant::now();
    // Every socket is watched until the server closes it, for at most 30 s.
    let mut closed = 0;
    for tcp in &open {
        tcp.set_nonblocking(true).expect("nonblocking");
    }
    let mut live = open;
    let mut last_close = Duration::ZERO;
    while !live.is_empty() && started.elapsed() < Duration::from_secs(30) {
        live.retain_mut(|tcp| {
            let mut buf = [0u8; 512];
            match tcp.read(&mut buf) {
                // An answer (a 429 at a cap, a 408 at the timeout) comes before the close.
                Ok(n) if n > 0 => true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                _ => {
                    closed += 1;
                    last_close = started.elapsed();
                    false
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "refused {refused} closed {closed} still_open {} last_close_ms {}",
        live.len(),
        last_close.as_millis()
    );
}

/// One ping's round trip, in milliseconds.
async fn ping_ms(ws: &mut WsClient) -> f64 {
    let t = Instant::now();
    ws.ping().await.expect("pong");
    t.elapsed().as_secs_f64() * 1000.0
}

/// `/healthz` timed `samples` times, 100 ms apart: (median, max) in milliseconds.
async fn time_healthz(server: &Server, samples: usize) -> (f64, f64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut ms = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let res = http
            .get(format!("{}/healthz", server.url()))
            .timeout(T)
            .send()
            .await
            .expect("healthz answers");
        assert_eq!(res.status(), 200);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

/// The child's report line that holds `key` (libtest may print the test's name before it).
fn child_line(lines: &[String], key: &str) -> Option<String> {
    let line = lines.iter().find(|l| l.contains(key))?;
    line.find(key).map(|i| line[i..].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_leave_healthz_answering_and_memory_bounded() {
    let _cpu = exclusive_cpu().await;
    let per_child = if full() { 10_000 } else { 1_500 };
    let server = start(
        Server::builder()
            .flag("header-read-timeout-ms", 3_000)
            .flag("max-broadcast-bytes", 600 * 1024)
            .flag("max-queue-bytes", 4 * 1024 * 1024)
            .unlimited_writes(),
    );
    let rss_start = server.rss_kib().expect("rss");

    // slowloris, from two processes.
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|source| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "probes::hold_sockets_child",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(
                    "TIDEWIRE_PROBE_HOLD",
                    format!("{per_child}@{}@{source}", server.addr()),
                )
                .stdout(Stdio::piped())
                .spawn()
                .expect("child")
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (median, max) = time_healthz(&server, 15).await;
    let rss_held = server.rss_kib().expect("rss");
    let mut outputs = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("child exits");
        let lines: Vec<String> = BufReader::new(&out.stdout[..])
            .lines()
            .map_while(Result::ok)
            .collect();
        outputs.push(lines);
    }
    let (median_after, max_after) = time_healthz(&server, 5).await;
    for (i, lines) in outputs.iter().enumerate() {
        let opened = child_line(lines, "opened").unwrap_or_default();
        let fate = child_line(lines, "refused").unwrap_or_default();
        println!("[probes] slowloris process={i} sockets={per_child} {opened} {fate}");
        assert!(
            fate.contains("still_open 0"),
            "every held socket was cut: {fate}"
        );
    }
    println!(
        "[probes] slowloris healthz_median_ms={median:.1} healthz_max_ms={max:.1} after: median={median_after:.1} max={max_after:.1} rss_kib start={rss_start} held={rss_held}"
    );
    assert!(
        median <= 100.0,
        "/healthz answered in {median:.1} ms (median)"
    );

    // cursor: 16,000 pairs.
    let pairs: Vec<String> = (0..16_000).map(|i| format!("r{i}=1")).collect();
    let cursor = pairs.join(",");
    let http = reqwest::Client::new();
    let t = Instant::now();
    let res = http
        .get(format!("{}/v1/sse?rooms=r0", server.url()))
        .header("last-event-id", &cursor)
        .timeout(T)
        .send()
        .await
        .expect("an answer");
    let header_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(res.status().is_client_error(), "{}", res.status());
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    let t = Instant::now();
    ws.send_text(json!({"type":"subscribe","ref":"big","rooms":["r0"],"since":cursor}).to_string())
        .await
        .expect("send");
    let reply = ws.reply("big", T).await;
    let frame_ms = t.elapsed().as_secs_f64() * 1000.0;
    let reply = format!("{reply:?}");
    assert!(
        reply.contains("BadCursor") || reply.contains("bad_cursor"),
        "{reply}"
    );
    let (median, _) = time_healthz(&server, 3).await;
    println!(
        "[probes] cursor pairs=16000 header_status={} header_ms={header_ms:.1} ws_ms={frame_ms:.1} healthz_median_ms={median:.1}",
        res.status().as_u16()
    );

    // presence: 8,000 rooms not followed.
    let mut member = WsClient::connect(&server.ws_url(), Some("probe"))
        .await
        .expect("ws");
    member
        .subscribe(&["home"], None, false)
        .await
        .expect("subscribe");
    let before = ping_ms(&mut member).await;
    let mut refused = 0;
    for i in 0..8_000 {
        let r = format!("p{i}");
        member
            .send(&ClientFrame::Presence {
                r#ref: Some(r.clone()),
                room: format!("room-{i}"),
                meta: json!({"i": i}),
            })
            .await
            .expect("send");
        if format!("{:?}", member.reply(&r, T).await).contains("Err") {
            refused += 1;
        }
    }
    let after = ping_ms(&mut member).await;
    let members: Value = http
        .get(format!("{}/v1/rooms/room-1/presence", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "[probes] presence frames=8000 refused={refused} ping_ms before={before:.2} after={after:.2}"
    );
    assert_eq!(refused, 8_000);
    assert_eq!(members["members"], json!([]));
    assert!(
        after < before.max(1.0) * 20.0,
        "pings stayed fast: {before:.2} → {after:.2} ms"
    );

    // broadcast: 300 × 512 KiB to a stalled reader.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.addr()).await.expect("connect");
    let mut stalled = WsClient::connect_over(&server.ws_url(), Some("stalled"), stream)
        .await
        .expect("ws");
    stalled
        .subscribe(&["wide"], None, false)
        .await
        .expect("subscribe");
    let mut sender = WsClient::connect(&server.ws_url(), Some("sender"))
        .await
        .expect("ws");
    sender
        .subscribe(&["wide"], None, false)
        .await
        .expect("subscribe");
    let pad = "b".repeat(512 * 1024);
    let cuts_before = metric_sum(
        &server.rest().metrics().await.unwrap(),
        "tidewire_slow_consumer_disconnects_total",
    )
    .unwrap_or(0.0);
    let mut peak = 0;
    for i in 0..300 {
        sender
            .send(&ClientFrame::Broadcast {
                r#ref: None,
                room: "wide".into(),
                event: "blob".into(),
                data: json!({"i": i, "pad": pad}),
            })
            .await
            .expect("broadcast");
        if i % 50 == 0 {
            peak = peak.max(server.rss_kib().expect("rss"));
        }
    }
    sender.ping().await.expect("the sender still works");
    peak = peak.max(server.rss_kib().expect("rss"));
    let deadline = Instant::now() + T;
    let mut cuts = cuts_before;
    while cuts <= cuts_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cuts = metric_sum(
            &server.rest().metrics().await.unwrap(),
            "tidewire_slow_consumer_disconnects_total",
        )
        .unwrap_or(0.0);
    }
    let (median, _) = time_healthz(&server, 3).await;
    println!(
        "[probes] broadcast count=300 bytes_each=524288 slow_cuts={} rss_kib start={rss_start} peak={peak} healthz_median_ms={median:.1}",
        cuts - cuts_before
    );
    assert!(cuts > cuts_before, "the stalled reader was cut");
    // 300 × 512 KiB is 150 MiB sent; what the server holds for the stalled reader is bounded
    // by its queue (4 MiB) and socket buffers.
    assert!(
        peak < rss_start + 96 * 1024,
        "RSS stayed bounded: {rss_start} → {peak} KiB"
    );
}
