//! What an outside audit found and what now holds (issue: hardening), each over real sockets
//! against a server in this process: presence and broadcasts bounded and rate limited, the
//! cookie taken only by the SSE stream, WebSocket origins, a write-only token's conflicts,
//! stable token errors, static dotfiles, `/metrics` on its own listener, long-polls told to
//! reconnect on drain, replay/resync/events-out counters, and the router nested under a
//! prefix. `docs/security.md` lists each limit with the test that shows it.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidewire_server::auth::{Auth, Claims};
use tidewire_server::{Config, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "hardening-secret";

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

async fn start(f: impl FnOnce(&mut Config)) -> (String, Server) {
    let mut config = Config {
        database: "sqlite::memory:".into(),
        ..Config::default()
    };
    f(&mut config);
    let server = Server::new(config).await.unwrap();
    (serve(server.router()).await, server)
}

/// `GET url`, its body as JSON.
async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

fn token(sub: &str, read: &[&str], write: &[&str]) -> String {
    Auth::new(SECRET)
        .mint(&Claims::new(sub, 600, read, write))
        .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(addr: &str, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?{query}"))
        .await
        .unwrap();
    ws
}

/// Sends `frame` and answers the next frame that is not an event envelope.
async fn call(ws: &mut Ws, frame: Value) -> Value {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap();
        if let Message::Text(text) = msg.unwrap() {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v.get("v").is_none() {
                return v;
            }
        }
    }
}

async fn subscribe(ws: &mut Ws, room: &str) {
    let ack = call(ws, json!({"type":"subscribe","ref":"s","rooms":[room]})).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test]
async fn presence_only_in_subscribed_rooms_with_bounded_meta() {
    let (addr, _s) = start(|c| c.max_presence_meta_bytes = 100).await;
    let mut ws = ws(&addr, "client_id=p1").await;
    let ack = call(
        &mut ws,
        json!({"type":"presence","ref":"1","room":"elsewhere","meta":{}}),
    )
    .await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(ack["error"]["code"], "bad_request", "{ack}");
    subscribe(&mut ws, "here").await;
    let big = json!({"type":"presence","ref":"2","room":"here","meta":{"pad":"x".repeat(200)}});
    let ack = call(&mut ws, big).await;
    assert_eq!(ack["error"]["code"], "payload_too_large", "{ack}");
    let ok = call(
        &mut ws,
        json!({"type":"presence","ref":"3","room":"here","meta":{"n":1}}),
    )
    .await;
    assert_eq!(ok["ok"], true, "{ok}");
    let members = get_json(format!("http://{addr}/v1/rooms/here/presence")).await;
    assert_eq!(members["members"][0]["client_id"], "p1");
}

#[tokio::test]
async fn presence_and_broadcast_frames_count_against_the_write_rate() {
    let (addr, _s) = start(|c| {
        c.write_rate = 1;
        c.write_burst = 3;
    })
    .await;
    let mut ws = ws(&addr, "").await;
    subscribe(&mut ws, "r").await;
    let mut limited = 0;
    for i in 0..10 {
        let frame = if i % 2 == 0 {
            json!({"type":"presence","ref":format!("p{i}"),"room":"r","meta":{"i":i}})
        } else {
            json!({"type":"broadcast","ref":format!("b{i}"),"room":"r","event":"cursor","data":{"i":i}})
        };
        let ack = call(&mut ws, frame).await;
        if ack["error"]["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "a burst of 3 at 1/s lets few of 10 frames through: {limited} limited"
    );
}

#[tokio::test]
async fn broadcasts_have_a_size_limit() {
    let (addr, _s) = start(|c| c.max_broadcast_bytes = 50).await;
    let mut ws = ws(&addr, "").await;
    subscribe(&mut ws, "r").await;
    let big = json!({"type":"broadcast","ref":"1","room":"r","event":"e","data":"y".repeat(100)});
    assert_eq!(
        call(&mut ws, big).await["error"]["code"],
        "payload_too_large"
    );
    let small = json!({"type":"broadcast","ref":"2","room":"r","event":"e","data":"ok"});
    assert_eq!(call(&mut ws, small).await["ok"], true);
}

#[tokio::test]
async fn a_stalled_reader_is_cut_by_queued_bytes_not_only_by_count() {
    // 300 events of 20 KB to a reader that never reads (a 4 KiB receive buffer): far below
    // the count bound (1,024), far above what the sockets' buffers and the 64 KiB byte bound
    // hold, so only the byte bound can cut it.
    let (addr, _s) = start(|c| {
        c.max_queue_bytes = 65_536;
        c.write_burst = 1000;
    })
    .await;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let target: SocketAddr = addr.parse().unwrap();
    socket.connect(&target.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut stalled, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), tcp)
        .await
        .unwrap();
    subscribe(&mut stalled, "big").await;
    let http = reqwest::Client::new();
    let pad = "z".repeat(20_000);
    let slow_cuts = || async {
        let metrics = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        counter(
            &metrics,
            "tidewire_slow_consumer_disconnects_total{transport=\"ws\"}",
        )
    };
    let before = slow_cuts().await;
    for i in 0..300 {
        let r = http
            .post(format!("http://{addr}/v1/rooms/big/events"))
            .json(&json!({"type":"blob","data":{"i":i,"pad":pad}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let deadline = tokio::time::Instant::now() + T;
    while slow_cuts().await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader was never cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_cookie_is_taken_only_by_the_sse_stream() {
    let (addr, _s) = start(|c| c.jwt_secret = Some(SECRET.into())).await;
    let cookie = format!("tidewire_token={}", token("u", &["*"], &["*"]));
    let http = reqwest::Client::new();
    // A cross-site form post carries the cookie: it is not a credential for writes.
    let post = http
        .post(format!("http://{addr}/v1/rooms/r/events"))
        .header("cookie", &cookie)
        .header("content-type", "text/plain")
        .body(r#"{"type":"csrf","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401);
    // The stream takes it.
    let sse = http
        .get(format!("http://{addr}/v1/sse?rooms=r"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // A WebSocket with only the cookie must authenticate with its first frame: it gets no
    // access from the cookie.
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text(
        json!({"type":"subscribe","ref":"1","rooms":["r"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let end = tokio::time::timeout(T, ws.next()).await.unwrap();
    let closed = match &end {
        Some(Ok(Message::Close(Some(f)))) => u16::from(f.code) == 4513,
        Some(Ok(Message::Text(t))) => t.contains("unauthorized"),
        _ => true,
    };
    assert!(closed, "the cookie opened nothing: {end:?}");
}

#[tokio::test]
async fn websocket_origins_outside_the_allow_list_are_refused() {
    let (addr, _s) = start(|c| c.allowed_origin = vec!["https://app.example".into()]).await;
    let upgrade = |origin: Option<&str>| {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    match upgrade(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("a foreign origin was let in: {:?}", other.map(|_| ())),
    }
    assert!(upgrade(Some("https://app.example")).await.is_ok());
    assert!(
        upgrade(None).await.is_ok(),
        "non-browser clients send no Origin"
    );
}

#[tokio::test]
async fn a_write_only_token_learns_nothing_from_a_conflict() {
    let (addr, _s) = start(|c| c.jwt_secret = Some(SECRET.into())).await;
    let http = reqwest::Client::new();
    let put = |t: String, if_match: &str| {
        http.put(format!("http://{addr}/v1/rooms/secret/items/x"))
            .bearer_auth(t)
            .header("if-match", if_match)
            .json(&json!({"hidden": 42}))
            .send()
    };
    let both = token("a", &["secret"], &["secret"]);
    assert!(put(both.clone(), "0").await.unwrap().status().is_success());
    let reader: Value = put(both, "7").await.unwrap().json().await.unwrap();
    assert_eq!(reader["code"], "version_conflict");
    assert_eq!(
        reader["current"]["value"]["hidden"], 42,
        "a reader sees the current item"
    );
    let writer: Value = put(token("w", &[], &["secret"]), "7")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(writer["code"], "version_conflict");
    assert!(writer.get("current").is_none(), "{writer}");
}

/// Opens a WebSocket as client `tab1`, authenticates with `token` in the first frame (as the
/// SDK does without a ticket), subscribes to `r` and answers the socket and the ack of joining
/// its presence.
async fn join_as(addr: &str, token: String) -> (Ws, Value) {
    let mut ws = ws(addr, "client_id=tab1").await;
    let authed = call(&mut ws, json!({"type":"auth","ref":"a","token":token})).await;
    assert_eq!(authed["ok"], true, "{authed}");
    subscribe(&mut ws, "r").await;
    let ack = call(
        &mut ws,
        json!({"type":"presence","ref":"p","room":"r","meta":{"me":"alice"}}),
    )
    .await;
    (ws, ack)
}

#[tokio::test]
async fn another_user_cannot_take_over_a_presence_member() {
    let (addr, _s) = start(|c| c.jwt_secret = Some(SECRET.into())).await;
    let t1 = token("alice", &["r"], &["r"]);
    let t2 = token("mallory", &["r"], &["r"]);
    let (_alice, joined) = join_as(&addr, t1).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let (_mallory, taken) = join_as(&addr, t2).await;
    assert_eq!(taken["error"]["code"], "forbidden", "{taken}");
}

#[tokio::test]
async fn token_errors_say_nothing_of_the_library() {
    let (addr, _s) = start(|c| c.jwt_secret = Some(SECRET.into())).await;
    for bad in ["not-a-jwt", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        let res: Value = reqwest::Client::new()
            .get(format!("http://{addr}/v1/rooms/r/snapshot"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(res["code"], "unauthorized");
        let detail = res["detail"].as_str().unwrap();
        for leak in ["Base64", "Invalid", "Json", "json", "algorithm"] {
            assert!(!detail.contains(leak), "{bad}: {detail}");
        }
    }
}

#[tokio::test]
async fn dotfiles_are_not_served_and_metrics_can_move_off_the_public_port() {
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join(".env"), "SECRET=1").unwrap();
    std::fs::write(www.path().join("index.html"), "<p>hi</p>").unwrap();
    let dir = www.path().to_path_buf();
    let (addr, server) = start(|c| {
        c.www_dir = dir;
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let get = |p: &str| reqwest::get(format!("http://{addr}{p}"));
    assert_eq!(get("/index.html").await.unwrap().status(), 200);
    assert_eq!(get("/.env").await.unwrap().status(), 404);
    assert_eq!(get("/pkg/.wasm-optimized").await.unwrap().status(), 404);
    assert_eq!(get("/metrics").await.unwrap().status(), 404);
    let metrics_addr = serve(server.metrics_router()).await;
    let page = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test]
async fn a_waiting_long_poll_is_told_to_reconnect_when_the_server_drains() {
    let (addr, server) = start(|c| c.drain_window_ms = 3000).await;
    let poll = tokio::spawn(get_json(format!("http://{addr}/v1/poll?rooms=q&wait=20")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.begin_shutdown();
    let answer = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    let event = &answer["events"][0];
    assert_eq!(event["type"], "reconnect", "{answer}");
    let retry = event["data"]["retry_ms"].as_u64().unwrap();
    assert!(retry <= 3000, "{retry}");
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn replay_resync_and_events_out_are_counted() {
    let (addr, _s) = start(|c| c.retention_events = 3).await;
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    for i in 0..5 {
        http.post(format!("http://{addr}/v1/rooms/m/events"))
            .json(&json!({"type":"n","data":i}))
            .send()
            .await
            .unwrap();
    }
    let before = scrape().await;
    // A cursor inside the retained log replays; one past the head resyncs; both over poll.
    let replayed = get_json(format!("http://{addr}/v1/poll?rooms=m&since=m=3&wait=0")).await;
    assert_eq!(replayed["events"].as_array().unwrap().len(), 2);
    let resynced = get_json(format!("http://{addr}/v1/poll?rooms=m&since=m=99&wait=0")).await;
    assert_eq!(resynced["events"][0]["type"], "resync");
    let after = scrape().await;
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert!(delta("tidewire_replays_total") >= 1.0, "{after}");
    assert!(delta("tidewire_resyncs_total") >= 1.0, "{after}");
    assert!(
        delta("tidewire_events_out_total{transport=\"poll\"}") >= 3.0,
        "{after}"
    );
}

/// A server on SQLite in memory, and an app of its own (`/`) with Tidewire's router nested
/// under `/realtime`.
async fn app_with_tidewire_under_realtime() -> (Server, axum::Router) {
    let server = Server::new(Config {
        database: "sqlite::memory:".into(),
        ..Config::default()
    })
    .await
    .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the app" }))
        .nest("/realtime", server.router());
    (server, app)
}

#[tokio::test]
async fn the_router_nested_under_a_prefix_serves_every_transport() {
    let (_server, app) = app_with_tidewire_under_realtime().await;
    let addr = serve(app).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "the app"
    );
    let sse = http
        .get(format!("http://{addr}/realtime/v1/sse?rooms=n"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut body = sse.bytes_stream();
    let put = http
        .put(format!("http://{addr}/realtime/v1/rooms/n/items/a"))
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let mut seen = String::new();
    while !seen.contains("item.put") {
        let chunk = tokio::time::timeout(T, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let mut ws = ws(&format!("{addr}/realtime"), "").await;
    assert_eq!(
        call(&mut ws, json!({"type":"ping","ref":"1"})).await["type"],
        "pong"
    );
    let poll = get_json(format!(
        "http://{addr}/realtime/v1/poll?rooms=n&since=n=0&wait=0"
    ))
    .await;
    assert_eq!(poll["events"][0]["type"], "item.put");
}

#[tokio::test]
async fn a_broadcast_names_its_sender_s_subject_whatever_client_id_it_claims() {
    let (addr, _s) = start(|c| c.jwt_secret = Some(SECRET.into())).await;
    let authed = |sub: &'static str, client_id: &'static str| {
        let addr = addr.clone();
        async move {
            let mut ws = ws(&addr, &format!("client_id={client_id}")).await;
            let t = token(sub, &["r"], &["r"]);
            let ack = call(&mut ws, json!({"type":"auth","ref":"a","token":t})).await;
            assert_eq!(ack["ok"], true, "{ack}");
            subscribe(&mut ws, "r").await;
            ws
        }
    };
    let mut bob = authed("bob", "bob-tab").await;
    // Mallory claims Bob's client id: `from` says what she chose, `user` who she is.
    let mut mallory = authed("mallory", "bob-tab").await;
    let sent = call(
        &mut mallory,
        json!({"type":"broadcast","ref":"b","room":"r","event":"cursor","data":{"x":1}}),
    )
    .await;
    assert_eq!(sent["ok"], true, "{sent}");
    let got = loop {
        let msg = tokio::time::timeout(T, bob.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "broadcast" {
                break v;
            }
        }
    };
    assert_eq!(got["data"]["from"], "bob-tab");
    assert_eq!(got["data"]["user"], "mallory", "{got}");
}

#[tokio::test]
async fn an_embedder_serving_its_app_with_the_accept_loop_gets_the_sse_responder() {
    let (server, app) = app_with_tidewire_under_realtime().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut options = tidewire_server::serve::Options::from_config(server.config());
    options.stream_paths = vec!["/realtime/v1/sse".into()];
    let stats = options.stats.clone();
    tokio::spawn(tidewire_server::serve::serve(
        listener,
        app,
        options,
        std::future::pending(),
    ));
    let res = reqwest::get(format!("http://{addr}/realtime/v1/sse?rooms=e"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let app_page = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(app_page.text().await.unwrap(), "the app");
    assert_eq!(
        stats.streamed.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the nested stream went to the SSE responder"
    );
}
