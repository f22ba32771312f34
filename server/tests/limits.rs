//! The limits that keep one client from taking the server down, over real sockets against
//! `serve::serve` with the whole router: the header-read and keep-alive timeouts, the caps on
//! connections per address and in all (with `/healthz` answering at the cap), hostile cursors,
//! and tokens with a huge `exp`.
//!
//! Run: `cargo test -p tidewire-server --test limits`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidewire_server::auth::{Auth, Claims};
use tidewire_server::serve::{self, Options, Stats};
use tidewire_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "limits-test-secret";

struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    _stop: oneshot::Sender<()>,
    _server: Server,
}

/// A server on 127.0.0.1:0 served by `serve::serve` with the binary's options from `config`,
/// then `options` applied.
async fn start(config: impl FnOnce(&mut Config), options: impl FnOnce(&mut Options)) -> Running {
    let mut c = Config {
        database: "sqlite::memory:".into(),
        ..Config::default()
    };
    config(&mut c);
    let mut o = Options::from_config(&c);
    options(&mut o);
    let stats = Arc::new(Stats::default());
    o.stats = stats.clone();
    let server = Server::new(c).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve::serve(listener, server.router(), o, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        _stop: stop,
        _server: server,
    }
}

fn timeouts(header_ms: u64, idle_ms: u64) -> impl FnOnce(&mut Options) {
    move |o| {
        o.header_read_timeout = Duration::from_millis(header_ms);
        o.keep_alive_timeout = Duration::from_millis(idle_ms);
    }
}

/// Reads until the server closes the connection (or fails after `limit`); everything read and
/// how long it took.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit
            .checked_sub(started.elapsed())
            .unwrap_or_else(|| panic!("still open after {limit:?}; read {out:?}"));
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {limit:?}; read {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body: (status, body).
async fn read_response(tcp: &mut TcpStream) -> (u16, String) {
    try_read_response(tcp).await.unwrap()
}

/// [`read_response`], failing when the connection breaks (or nothing comes within 10 s).
async fn try_read_response(tcp: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Ok((status, body));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, tcp.read(&mut chunk)).await??;
        if n == 0 {
            let seen = String::from_utf8_lossy(&buf).to_string();
            return Err(std::io::Error::other(format!(
                "closed mid-response: {seen:?}"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `GET path` on a fresh connection that closes after the answer: (status, body, time taken).
async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, Duration) {
    try_get(addr, path, headers).await.unwrap()
}

/// [`get`], failing when the connection breaks.
async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String, Duration)> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let (status, body) = try_read_response(&mut tcp).await?;
    Ok((status, body, started.elapsed()))
}

/// `GET path` until it answers 200 (a released connection is given back asynchronously).
async fn ok_eventually(addr: SocketAddr, path: &str) {
    for _ in 0..100 {
        if let Ok(Ok((200, _, _))) =
            tokio::time::timeout(Duration::from_secs(1), try_get(addr, path, "")).await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never answered 200");
}

/// Connections that sent nothing, each accepted by the server before the next is opened
/// (the accept loop takes them in order; a round trip on one more proves they are in).
async fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    held
}

fn pairs(n: usize) -> String {
    (0..n)
        .map(|i| format!("room-{i}=1"))
        .collect::<Vec<_>>()
        .join(",")
}

fn problem_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["code"].as_str().unwrap_or_default().to_owned()
}

// --- timeouts ---------------------------------------------------------------------------

#[tokio::test]
async fn a_silent_socket_is_cut_after_the_header_timeout() {
    let s = start(|_| {}, timeouts(300, 10_000)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let (_, took) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(s.stats.timed_out_first_bytes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn one_byte_then_silence_is_cut_after_the_header_timeout() {
    let s = start(|_| {}, timeouts(300, 10_000)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"G").await.unwrap();
    let (_, took) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(s.stats.timed_out_header.load(Ordering::SeqCst), 1);
}

/// Writes `head` one byte every 50 ms (at most 5 s) until the connection fails.
fn trickle(mut tx: tokio::net::tcp::OwnedWriteHalf, head: &'static [u8]) {
    tokio::spawn(async move {
        for b in head.iter().cycle().take(100) {
            if tx.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[tokio::test]
async fn a_trickling_head_is_cut_after_the_header_timeout() {
    let s = start(|_| {}, timeouts(400, 10_000)).await;
    // Both a stream path (left to hyper while its head is partial) and any other path.
    for head in [
        &b"GET /v1/sse?rooms=a HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let (mut rx, tx) = tcp.into_split();
        let started = Instant::now();
        trickle(tx, head);
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(3), rx.read(&mut buf))
            .await
            .expect("cut within 3 s (the trickle lasts 5 s)")
            .unwrap_or(0);
        assert_eq!(n, 0, "no answer to a head that never ended");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(350), "{took:?}");
    }
    assert_eq!(s.stats.timed_out_header.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = start(|_| {}, timeouts(5_000, 400)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    tcp.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.0, 200);
    // Within the timeout the connection is still kept alive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.0, 200);
    let (rest, took) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    assert!(rest.is_empty());
    assert!(took >= Duration::from_millis(350), "{took:?}");
    assert_eq!(s.stats.timed_out_idle.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_next_head_on_a_kept_alive_connection_has_the_header_timeout() {
    let s = start(|_| {}, timeouts(300, 10_000)).await;
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    tx.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = rx.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    trickle(
        tx,
        b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
    let n = tokio::time::timeout(Duration::from_secs(3), rx.read(&mut buf))
        .await
        .expect("cut by the header timeout, long before the 10 s keep-alive")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(s.stats.timed_out_header.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_in_flight_and_websockets_outlive_both_timeouts() {
    let s = start(|_| {}, timeouts(300, 300)).await;
    // A long-poll waits 1 s, longer than either timeout.
    let (status, body, took) = get(s.addr, "/v1/poll?rooms=a&wait=1", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // A WebSocket is no longer hyper's after the upgrade: its own idle timeout applies.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    ws.send(Message::text(r#"{"type":"ping","ref":"p"}"#))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "pong", "{reply}");
    assert_eq!(s.stats.timed_out_idle.load(Ordering::SeqCst), 0);
    assert_eq!(s.stats.timed_out_header.load(Ordering::SeqCst), 0);
}

// --- caps -------------------------------------------------------------------------------

#[tokio::test]
async fn the_per_address_cap_refuses_the_connection_over_it() {
    let s = start(
        |c| c.max_connections_per_address = 3,
        timeouts(10_000, 10_000),
    )
    .await;
    let mut held = hold(s.addr, 3).await;
    let mut over = TcpStream::connect(s.addr).await.unwrap();
    let (answer, took) = read_until_closed(&mut over, Duration::from_secs(2)).await;
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer}"
    );
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(problem_code(body), "too_many_connections");
    assert!(body.contains("limit 3"), "{body}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(s.stats.refused_per_address.load(Ordering::SeqCst), 1);
    // A client that sent its request before it was refused reads the answer too.
    let (status, body, _) = get(s.addr, "/healthz", "").await;
    assert_eq!(
        (status, problem_code(&body)),
        (429, "too_many_connections".into())
    );
    assert_eq!(s.stats.refused_per_address.load(Ordering::SeqCst), 2);
    // The three held connections are served.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut held[0]).await.0, 200);
    // One closes: its place is given back.
    drop(held.pop());
    ok_eventually(s.addr, "/healthz").await;
    drop(held);
    let (_, metrics, _) = get(s.addr, "/metrics", "").await;
    assert!(
        metrics.contains("tidewire_connections_refused_total{reason=\"per_address\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn websockets_and_streams_keep_their_place_under_the_cap() {
    let s = start(
        |c| c.max_connections_per_address = 3,
        timeouts(10_000, 10_000),
    )
    .await;
    // Two WebSockets (hyper hands the socket over on the upgrade) and one SSE stream (the
    // streaming responder's task takes the socket).
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr))
            .await
            .unwrap();
        sockets.push(ws);
    }
    let mut sse = TcpStream::connect(s.addr).await.unwrap();
    sse.write_all(b"GET /v1/sse?rooms=a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sse.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // All three still count: the next connection is refused.
    let mut over = TcpStream::connect(s.addr).await.unwrap();
    let (answer, _) = read_until_closed(&mut over, Duration::from_secs(2)).await;
    assert!(answer.starts_with(b"HTTP/1.1 429"), "{answer:?}");
    // Closing the stream and a WebSocket gives their places back.
    drop(sse);
    sockets.pop().unwrap().close(None).await.unwrap();
    ok_eventually(s.addr, "/healthz").await;
    assert_eq!(s.stats.refused_per_address.load(Ordering::SeqCst), 1);
    drop(sockets);
}

#[tokio::test]
async fn at_the_global_cap_healthz_still_answers() {
    let s = start(
        |c| c.max_connections = 3,
        |o| {
            o.healthz_reserve = 2;
            o.header_read_timeout = Duration::from_secs(10);
        },
    )
    .await;
    let held = hold(s.addr, 3).await;
    let (status, body, took) = get(s.addr, "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (status, body, _) = get(s.addr, "/v1/rooms/a/snapshot", "").await;
    assert_eq!(status, 429);
    assert_eq!(problem_code(&body), "too_many_connections");
    assert_eq!(s.stats.refused_global.load(Ordering::SeqCst), 1);
    // A reserve full of sockets that send nothing does not keep a probe out: the oldest is
    // closed to make room, and /healthz answers.
    let mut reserve = hold(s.addr, 2).await;
    let (status, body, took) = get(s.addr, "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (rest, took) = read_until_closed(&mut reserve[0], Duration::from_secs(2)).await;
    assert!(rest.is_empty() && took < Duration::from_secs(1), "{took:?}");
    assert_eq!(s.stats.refused_global.load(Ordering::SeqCst), 2);
    // A silent socket in the reserve waits at most a second, even with a longer header timeout.
    let mut silent = hold(s.addr, 1).await;
    let (_, took) = read_until_closed(&mut silent[0], Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // Once they close, everything is served again.
    drop((held, reserve, silent));
    ok_eventually(s.addr, "/v1/rooms/a/snapshot").await;
}

// --- hostile cursors --------------------------------------------------------------------

#[tokio::test]
async fn a_16000_pair_last_event_id_is_refused_quickly_while_healthz_answers() {
    let s = start(|_| {}, |_| {}).await;
    let header = format!("Last-Event-ID: {}\r\n", pairs(16_000));
    assert!(header.len() > 150_000);
    let addr = s.addr;
    let attacks: Vec<_> = (0..4)
        .map(|_| {
            let header = header.clone();
            tokio::spawn(async move { get(addr, "/v1/sse?rooms=a", &header).await })
        })
        .collect();
    let (status, body, took) = get(s.addr, "/healthz", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
    for attack in attacks {
        let (status, body, took) = attack.await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(problem_code(&body), "bad_cursor");
        assert!(body.contains("longer than 9600 bytes"), "{body}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Under the length bound but over the room limit: the limit is named.
    let (status, body, _) = get(
        s.addr,
        "/v1/sse?rooms=a",
        &format!("Last-Event-ID: {}\r\n", pairs(65)),
    )
    .await;
    assert_eq!((status, problem_code(&body)), (400, "bad_cursor".into()));
    assert!(body.contains("more than 64 rooms"), "{body}");
    // The same bounds hold for ?since= on the SSE and long-poll endpoints.
    for path in ["/v1/sse?rooms=a&since=", "/v1/poll?rooms=a&wait=0&since="] {
        let (status, body, _) = get(s.addr, &format!("{path}{}", pairs(65)), "").await;
        assert_eq!(
            (status, problem_code(&body)),
            (400, "bad_cursor".into()),
            "{path}"
        );
        let (status, body, _) = get(s.addr, &format!("{path}{}", pairs(1_000)), "").await;
        assert_eq!(
            (status, problem_code(&body)),
            (400, "bad_cursor".into()),
            "{path}"
        );
        assert!(body.contains("longer than"), "{body}");
    }
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn a_16000_pair_websocket_since_gets_an_error_frame_quickly() {
    let s = start(|_| {}, |_| {}).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr))
        .await
        .unwrap();
    let frame =
        json!({"type": "subscribe", "ref": "s1", "rooms": ["room-0"], "since": pairs(16_000)});
    let started = Instant::now();
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "bad_cursor", "{reply}");
    assert_eq!(reply["ref"], "s1", "{reply}");
    let (status, _, took) = get(s.addr, "/healthz", "").await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The connection is still usable, and a cursor within the limit subscribes.
    let frame = json!({"type": "subscribe", "ref": "s2", "rooms": ["room-0"], "since": pairs(3)});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["ref"], "s2", "{reply}");
}

// --- tokens -----------------------------------------------------------------------------

fn token(exp: u64) -> String {
    Auth::new(SECRET)
        .mint(&Claims {
            sub: "ada".into(),
            exp,
            read: vec!["*".into()],
            write: vec![],
        })
        .unwrap()
}

#[tokio::test]
async fn a_token_with_a_huge_exp_opens_sse_and_websocket() {
    let s = start(|c| c.jwt_secret = Some(SECRET.into()), |_| {}).await;
    for exp in [u64::MAX, i64::MAX as u64] {
        let bearer = format!("Bearer {}", token(exp));
        // SSE (the streaming responder takes it: a fresh connection, a whole head).
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let head =
            format!("GET /v1/sse?rooms=a HTTP/1.1\r\nHost: t\r\nAuthorization: {bearer}\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("retry:") {
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("the stream starts")
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
        // WebSocket with the token on the upgrade.
        let mut request = format!("ws://{}/v1/ws", s.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws.send(Message::text(
            r#"{"type":"subscribe","ref":"s","rooms":["a"]}"#,
        ))
        .await
        .unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "ack", "{reply}");
        ws.send(Message::text(r#"{"type":"ping","ref":"p"}"#))
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "pong");
    }
    let (status, _, _) = get(s.addr, "/healthz", "").await;
    assert_eq!(status, 200, "the server is still up");
}
