//! Transports over real sockets (server on 127.0.0.1:0 in this process): WebSocket frames,
//! acks and close codes, long-poll, presence, per-client connection limits, and what the
//! router does while the library's shutdown drains.
//!
//! SSE resume, slow consumers and the binary's shutdown are tested against the binary (see
//! `tests/README.md`): `tests/tests/single_node/{resume,resync,sse,shutdown,slow_consumer}.rs`
//! and the `slow_consumer` drill.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidewire_server::{Config, Server};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

async fn start(f: impl FnOnce(&mut Config)) -> (String, Server) {
    let mut config = Config {
        database: "sqlite::memory:".into(),
        ..Config::default()
    };
    f(&mut config);
    let server = Server::new(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("127.0.0.1:{}", addr.port()), server)
}

async fn publish(http: &reqwest::Client, addr: &str, room: &str, i: u64) -> Value {
    http.post(format!("http://{addr}/v1/rooms/{room}/events"))
        .json(&json!({"type": "test.n", "data": {"i": i}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An SSE reader that parses events: (id, data) pairs; comments skipped.
struct Sse {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

#[derive(Debug, Default, Clone)]
struct SseEvent {
    id: Option<String>,
    data: Option<Value>,
    retry: Option<u64>,
}

impl Sse {
    async fn open(url: String, last_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        assert!(res.headers().get("content-encoding").is_none());
        Sse {
            stream: res.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event (None when the stream ended).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data = Some(serde_json::from_str(v).unwrap());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        ev.retry = Some(v.parse().unwrap());
                    }
                }
                if ev.id.is_none() && ev.data.is_none() && ev.retry.is_none() {
                    continue; // a heartbeat comment
                }
                return Some(ev);
            }
            match tokio::time::timeout(T, self.stream.next())
                .await
                .expect("sse timed out")
            {
                Some(Ok(chunk)) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    async fn next_data(&mut self) -> Option<(Option<String>, Value)> {
        loop {
            let ev = self.next().await?;
            if let Some(d) = ev.data {
                return Some((ev.id, d));
            }
        }
    }
}

#[tokio::test]
async fn too_many_connections_is_429() {
    let (addr, _server) = start(|c| c.max_connections_per_client = 1).await;
    let _first = Sse::open(format!("http://{addr}/v1/sse?rooms=a"), None).await;
    let res = reqwest::get(format!("http://{addr}/v1/sse?rooms=a"))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "too_many_connections");
}

async fn ws(
    addr: &str,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws{query}"))
        .await
        .unwrap();
    ws
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("ws timed out")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Close(f))) => return json!({"closed": f.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => continue,
            other => return json!({"ended": format!("{other:?}")}),
        }
    }
}

#[tokio::test]
async fn websocket_subscribe_write_ack_and_errors() {
    let (addr, _server) = start(|_| {}).await;
    let http = reqwest::Client::new();
    for i in 1..=3 {
        publish(&http, &addr, "w", i).await;
    }
    let mut a = ws(&addr, "?client_id=ada").await;
    send(
        &mut a,
        json!({"type":"subscribe","ref":"1","rooms":["w","x"],"since":"w=1"}),
    )
    .await;
    let ack = recv(&mut a).await;
    assert_eq!(
        ack,
        json!({"type":"ack","ref":"1","ok":true,"cursor":"w=1,x=0"})
    );
    assert_eq!(recv(&mut a).await["seq"], 2);
    assert_eq!(recv(&mut a).await["seq"], 3);

    send(
        &mut a,
        json!({"type":"put","ref":"2","room":"x","id":"i","value":{"n":1},"key":"k"}),
    )
    .await;
    let mut got_ack = false;
    let mut got_event = false;
    for _ in 0..2 {
        let m = recv(&mut a).await;
        if m["type"] == "ack" {
            assert_eq!(m["ref"], "2");
            assert_eq!(m["ok"], true);
            assert_eq!(m["event"]["data"]["version"], 1);
            got_ack = true;
        } else {
            assert_eq!(
                (m["type"].as_str(), m["seq"].as_u64()),
                (Some("item.put"), Some(1))
            );
            got_event = true;
        }
    }
    assert!(got_ack && got_event);

    send(
        &mut a,
        json!({"type":"put","ref":"3","room":"x","id":"i","value":2,"if_match":7}),
    )
    .await;
    let nack = recv(&mut a).await;
    assert_eq!(nack["ok"], false);
    assert_eq!(nack["error"]["code"], "version_conflict");
    assert_eq!(nack["error"]["current"]["version"], 1);

    // Bad frames get an error frame and the connection stays up.
    a.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(recv(&mut a).await["code"], "bad_json");
    send(&mut a, json!({"type":"teleport","ref":"9"})).await;
    let e = recv(&mut a).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("unknown_type"), Some("9"))
    );
    send(
        &mut a,
        json!({"type":"put","room":"bad room","id":"i","value":1}),
    )
    .await;
    assert_eq!(recv(&mut a).await["code"], "bad_room_name");
    send(&mut a, json!({"type":"ping","ref":"p"})).await;
    assert_eq!(recv(&mut a).await, json!({"type":"pong","ref":"p"}));

    send(&mut a, json!({"type":"publish","ref":"4","room":"x","event":{"type":"chat.message","data":{"t":"hi"}}})).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(recv(&mut a).await);
    }
    assert!(seen
        .iter()
        .any(|m| m["type"] == "ack" && m["event"]["seq"] == 2));
    assert!(seen
        .iter()
        .any(|m| m["type"] == "chat.message" && m["seq"] == 2));

    // Too many rooms: a failed ack, still connected.
    let rooms: Vec<String> = (0..70).map(|i| format!("r{i}")).collect();
    send(&mut a, json!({"type":"subscribe","ref":"5","rooms":rooms})).await;
    assert_eq!(recv(&mut a).await["code"], "too_many_rooms");
    send(&mut a, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut a).await["type"], "pong");
}

#[tokio::test]
async fn websocket_broadcast_and_presence() {
    let (addr, _server) = start(|c| c.presence_grace_ms = 100).await;
    let mut a = ws(&addr, "?client_id=ada").await;
    let mut b = ws(&addr, "?client_id=bob").await;
    send(
        &mut b,
        json!({"type":"subscribe","ref":"1","rooms":["p"],"presence":true}),
    )
    .await;
    assert_eq!(recv(&mut b).await["type"], "ack");
    let state = recv(&mut b).await;
    assert_eq!(state["type"], "presence.state");
    assert_eq!(state["data"]["members"], json!([]));
    send(&mut a, json!({"type":"subscribe","ref":"1","rooms":["p"]})).await;
    assert_eq!(recv(&mut a).await["type"], "ack");

    send(
        &mut a,
        json!({"type":"presence","ref":"2","room":"p","meta":{"name":"Ada"}}),
    )
    .await;
    assert_eq!(recv(&mut a).await["ok"], true);
    let join = recv(&mut b).await;
    assert_eq!(join["type"], "presence.join");
    assert_eq!(join["data"]["client_id"], "ada");
    assert_eq!(join["data"]["meta"]["name"], "Ada");
    let list: Value = reqwest::get(format!("http://{addr}/v1/rooms/p/presence"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["members"][0]["client_id"], "ada");

    send(
        &mut a,
        json!({"type":"broadcast","room":"p","event":"cursor","data":{"x":1}}),
    )
    .await;
    let bc = recv(&mut b).await;
    assert_eq!(bc["type"], "broadcast");
    assert_eq!(
        bc["data"],
        json!({"event":"cursor","data":{"x":1},"from":"ada"})
    );
    assert!(bc.get("seq").is_none());
    // Not echoed to the sender.
    send(&mut a, json!({"type":"ping","ref":"x"})).await;
    assert_eq!(recv(&mut a).await["type"], "pong");

    a.close(None).await.unwrap();
    let leave = recv(&mut b).await;
    assert_eq!(leave["type"], "presence.leave");
    assert_eq!(leave["data"]["client_id"], "ada");
}

#[tokio::test]
async fn websocket_idle_timeout_closes_4003() {
    let (addr, _server) = start(|c| {
        c.heartbeat_secs = 1;
        c.idle_timeout_secs = 1;
    })
    .await;
    // A raw client that never answers pings: tungstenite answers them only while read,
    // so stop reading after the upgrade.
    let mut a = ws(&addr, "").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut closed = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(3), a.next()).await {
        if let Message::Close(f) = m {
            closed = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(closed, Some(4003));
}

#[tokio::test]
async fn long_poll_answers_at_once_or_waits() {
    let (addr, _server) = start(|c| c.retention_events = 3).await;
    let http = reqwest::Client::new();
    publish(&http, &addr, "q", 1).await;
    let res: Value = http
        .get(format!("http://{addr}/v1/poll?rooms=q&since=q=0&wait=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["events"][0]["seq"], 1);
    assert_eq!(res["cursor"], "q=1");

    let started = std::time::Instant::now();
    let waiting = {
        let (http, addr) = (http.clone(), addr.clone());
        tokio::spawn(async move {
            http.get(format!("http://{addr}/v1/poll?rooms=q&since=q=1&wait=10"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&http, &addr, "q", 2).await;
    let res = waiting.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(res["events"][0]["seq"], 2);
    assert_eq!(res["cursor"], "q=2");

    let res: Value = http
        .get(format!("http://{addr}/v1/poll?rooms=q&since=q=2&wait=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res, json!({"events": [], "cursor": "q=2"}));

    for i in 3..=8 {
        publish(&http, &addr, "q", i).await;
    }
    let res: Value = http
        .get(format!("http://{addr}/v1/poll?rooms=q&since=q=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["events"][0]["type"], "resync");
    assert_eq!(res["cursor"], "q=8");
}

/// The library's `Server::begin_shutdown` (what the binary does on SIGTERM): every client is
/// told to reconnect, and while draining the router refuses new work with 503. The binary's
/// side (many clients, delays spread over the window, process exit) is
/// `tests/tests/single_node/shutdown.rs`.
#[tokio::test]
async fn shutdown_tells_every_client_to_reconnect() {
    let (addr, server) = start(|c| c.drain_window_ms = 2000).await;
    let mut sse = Sse::open(format!("http://{addr}/v1/sse?rooms=z"), None).await;
    let mut w = ws(&addr, "").await;
    send(&mut w, json!({"type":"subscribe","ref":"1","rooms":["z"]})).await;
    assert_eq!(recv(&mut w).await["type"], "ack");
    server.begin_shutdown();
    let (_, env) = sse.next_data().await.unwrap();
    assert_eq!(env["type"], "reconnect");
    assert_eq!(env["room"], "");
    assert_eq!(env["data"]["reason"], "shutting_down");
    assert!(env["data"]["retry_ms"].as_u64().unwrap() <= 2000);
    assert!(sse.next().await.is_none(), "then the stream ends");
    assert_eq!(recv(&mut w).await["type"], "reconnect");
    assert_eq!(recv(&mut w).await, json!({"closed": 4001}));
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let res = reqwest::get(format!("http://{addr}/v1/sse?rooms=z"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn sse_presence_events_with_presence_flag() {
    let (addr, _server) = start(|c| c.presence_grace_ms = 100).await;
    let mut sse = Sse::open(format!("http://{addr}/v1/sse?rooms=pp&presence=1"), None).await;
    sse.next().await.unwrap(); // retry + starting id
    let (_, state) = sse.next_data().await.unwrap();
    assert_eq!(state["type"], "presence.state");
    let mut a = ws(&addr, "?client_id=cy").await;
    // Presence is joined in a room the connection follows.
    send(&mut a, json!({"type":"subscribe","ref":"0","rooms":["pp"]})).await;
    assert_eq!(recv(&mut a).await["ok"], true);
    send(
        &mut a,
        json!({"type":"presence","ref":"1","room":"pp","meta":{"c":"red"}}),
    )
    .await;
    assert_eq!(recv(&mut a).await["ok"], true);
    let (id, join) = sse.next_data().await.unwrap();
    assert_eq!(id, None, "ephemeral events carry no id");
    assert_eq!(join["type"], "presence.join");
    assert_eq!(join["data"]["client_id"], "cy");
}

#[tokio::test]
async fn websocket_oversized_frame_closes_1009() {
    let (addr, _server) = start(|c| c.max_body_bytes = 1024).await;
    let mut a = ws(&addr, "").await;
    let big = json!({"type":"broadcast","room":"r","event":"x","data":"y".repeat(4000)});
    send(&mut a, big).await;
    assert_eq!(recv(&mut a).await, json!({"closed": 1009}));
}

#[tokio::test]
async fn websocket_frames_sent_together_are_all_answered_while_events_stream() {
    let (addr, _server) = start(|_| {}).await;
    let mut a = ws(&addr, "").await;
    send(
        &mut a,
        json!({"type":"subscribe","ref":"s","rooms":["stream"]}),
    )
    .await;
    assert_eq!(recv(&mut a).await["type"], "ack");
    let publisher = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 1..=200 {
                publish(&http, &addr, "stream", i).await;
            }
        })
    };
    // Twenty pings in one write (several frames in one read), and a frame larger than the
    // read buffer, while the events arrive.
    for i in 0..20 {
        a.feed(Message::Text(
            json!({"type":"ping","ref":format!("p{i}")})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    }
    a.flush().await.unwrap();
    send(
        &mut a,
        json!({"type":"broadcast","ref":"big","room":"stream","event":"b","data":"y".repeat(20_000)}),
    )
    .await;
    let (mut pongs, mut seqs, mut big_acked) = (Vec::new(), Vec::new(), false);
    while pongs.len() < 20 || seqs.len() < 200 || !big_acked {
        let m = recv(&mut a).await;
        match m["type"].as_str() {
            Some("pong") => pongs.push(m["ref"].as_str().unwrap().to_owned()),
            Some("ack") => {
                assert_eq!(
                    (m["ref"].as_str(), m["ok"].as_bool()),
                    (Some("big"), Some(true))
                );
                big_acked = true;
            }
            Some("test.n") => seqs.push(m["seq"].as_u64().unwrap()),
            _ => panic!("unexpected {m}"),
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    assert_eq!(pongs, expected, "every ping answered, in order");
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<u64>>(),
        "no gap, no duplicate"
    );
    publisher.await.unwrap();
}
