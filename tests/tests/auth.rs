//! End-to-end tests of auth, permissions and per-subject limits (`--jwt-secret`).
//!
//! Every test starts its own server with a JWT secret and mints HS256 tokens with the
//! `jsonwebtoken` crate, as an application backend would:
//!
//! ```text
//! cargo build -p tidewire-server --bin tidewire
//! cargo test -p tidewire-tests --test auth
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};
use tidewire_protocol::{ClientFrame, ErrorCode, ServerFrame};
use tidewire_tests::{Error, RawAnswer, Rest, Server, SseClient, SseRequest, WsClient};

const SECRET: &str = "test-secret-for-auth";
const WAIT: Duration = Duration::from_secs(5);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A token for `sub` expiring `ttl` seconds from now, signed with `secret`.
fn token_with(secret: &str, sub: &str, ttl: i64, read: &[&str], write: &[&str]) -> String {
    let claims = json!({"sub": sub, "exp": now() + ttl, "read": read, "write": write});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing works")
}

fn token(sub: &str, ttl: i64, read: &[&str], write: &[&str]) -> String {
    token_with(SECRET, sub, ttl, read, write)
}

fn server() -> Server {
    Server::builder()
        .flag("jwt-secret", SECRET)
        .start()
        .expect("server starts")
}

fn bearer(token: &Option<String>) -> Vec<(&'static str, String)> {
    token
        .iter()
        .map(|t| ("Authorization", format!("Bearer {t}")))
        .collect()
}

async fn raw(rest: &Rest, method: Method, path: &str, token: &Option<String>) -> RawAnswer {
    let h = bearer(token);
    let headers: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = (method == Method::PUT).then(|| b"{\"x\":1}".to_vec());
    rest.raw(method, path, &headers, body)
        .await
        .expect("request answers")
}

/// `(status, code)` of an answer; code is "" on success.
fn outcome(a: &RawAnswer) -> (u16, String) {
    let code = a
        .problem()
        .map(|p| p.code.as_str().to_owned())
        .unwrap_or_default();
    (a.status, code)
}

/// Opens `/v1/sse?{query}`: `(status, code)`, the stream dropped at once when it opened.
async fn sse_outcome(server: &Server, query: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{}/v1/sse?{query}", server.url()))
        .await
        .expect("sse answers");
    match SseClient::from_response(resp).await {
        Ok(_) => (200, String::new()),
        Err(Error::Problem(p)) => (p.status, p.code.as_str().to_owned()),
        Err(e) => panic!("sse: {e}"),
    }
}

/// A ticket for `token`, or the failed answer's `(status, code)`.
async fn ticket(rest: &Rest, token: &Option<String>) -> Result<String, (u16, String)> {
    let a = raw(rest, Method::POST, "/v1/tickets", token).await;
    if a.status != 200 {
        return Err(outcome(&a));
    }
    let v: Value = serde_json::from_slice(&a.body).expect("ticket JSON");
    assert_eq!(v["expires_in"], 30);
    Ok(v["ticket"].as_str().expect("ticket string").to_owned())
}

fn close_code(err: &Error) -> Option<u16> {
    match err {
        Error::Closed(Some((code, _))) => Some(*code),
        _ => None,
    }
}

/// Reads frames until the socket closes, answering its close code (None on timeout).
async fn closed_with(ws: &mut WsClient, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.recv(left).await {
            Ok(_) => continue,
            Err(e) => return close_code(&e),
        }
    }
    None
}

fn subscribe_frame(r: &str, room: &str) -> ClientFrame {
    ClientFrame::Subscribe {
        r#ref: Some(r.into()),
        rooms: vec![room.into()],
        since: None,
        presence: false,
    }
}

fn put_frame(r: &str, room: &str) -> ClientFrame {
    ClientFrame::Put {
        r#ref: Some(r.into()),
        room: room.into(),
        id: "x".into(),
        value: json!(1),
        key: None,
        if_match: None,
    }
}

fn ack_code(frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Ack { result: Ok(_), .. } => String::new(),
        ServerFrame::Ack { result: Err(e), .. } => e.code.as_str().to_owned(),
        ServerFrame::Error { code, .. } => code.as_str().to_owned(),
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// After auth, a subscribe to board-1 and a put to board-1: their ack codes.
async fn ws_read_write(ws: &mut WsClient) -> (String, String) {
    let sub = ws
        .request("s", &subscribe_frame("s", "board-1"))
        .await
        .expect("subscribe ack");
    let put = ws
        .request("p", &put_frame("p", "board-1"))
        .await
        .expect("put ack");
    (ack_code(&sub), ack_code(&put))
}

#[tokio::test]
async fn every_transport_checks_every_kind_of_token() {
    // Request spans are logged at debug level: they must not carry the ticket.
    let server = Server::builder()
        .flag("jwt-secret", SECRET)
        .env("RUST_LOG", "debug")
        .start()
        .expect("server starts");
    let rest = server.rest();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("expired", Some(token("a", -10, &["*"], &["*"]))),
        (
            "bad signature",
            Some(token_with("other", "a", 60, &["*"], &["*"])),
        ),
        ("wrong room", Some(token("a", 60, &["chat-*"], &["chat-*"]))),
        ("read-only", Some(token("a", 60, &["board-*"], &[]))),
        (
            "read-write",
            Some(token("a", 60, &["board-*"], &["board-*"])),
        ),
    ];
    let unauth = (401, "unauthorized".to_string());
    let expired = (401, "token_expired".to_string());
    let forbidden = (403, "forbidden".to_string());
    let ok = (200, String::new());
    // (REST read, REST write, SSE via ticket, long-poll), by case.
    let expected = [
        [&unauth, &unauth, &unauth, &unauth],
        [&expired, &expired, &expired, &expired],
        [&unauth, &unauth, &unauth, &unauth],
        [&forbidden, &forbidden, &forbidden, &forbidden],
        [&ok, &forbidden, &ok, &ok],
        [&ok, &ok, &ok, &ok],
    ];
    for ((name, tok), want) in cases.iter().zip(expected) {
        for path in [
            "/v1/rooms/board-1/snapshot",
            "/v1/rooms/board-1/events",
            "/v1/rooms/board-1/presence",
        ] {
            let got = outcome(&raw(&rest, Method::GET, path, tok).await);
            assert_eq!(&got, want[0], "REST read {path} with token {name}");
        }
        let got = outcome(&raw(&rest, Method::PUT, "/v1/rooms/board-1/items/x", tok).await);
        assert_eq!(&got, want[1], "REST write with token {name}");
        let got = outcome(&raw(&rest, Method::DELETE, "/v1/rooms/board-1/items/y", tok).await);
        let want_delete = if want[1].0 == 200 {
            (404, "not_found".to_string())
        } else {
            want[1].clone()
        };
        assert_eq!(got, want_delete, "REST delete with token {name}");
        // SSE: the ticket endpoint refuses bad tokens; the stream refuses wrong rooms.
        let sse = match ticket(&rest, tok).await {
            Err(refused) => refused,
            Ok(t) => {
                let got = sse_outcome(&server, &format!("rooms=board-1&ticket={t}")).await;
                // The ticket was used: a second use is refused.
                let again = sse_outcome(&server, &format!("rooms=board-1&ticket={t}")).await;
                assert_eq!(again, unauth, "a ticket is single-use");
                got
            }
        };
        assert_eq!(&sse, want[2], "SSE via ticket with token {name}");
        let got = outcome(&raw(&rest, Method::GET, "/v1/poll?rooms=board-1&wait=0", tok).await);
        assert_eq!(&got, want[3], "long-poll with token {name}");

        // WebSocket, first-frame auth.
        let mut ws = WsClient::connect(&server.url(), None).await.expect("ws");
        match tok {
            None => {
                ws.send(&subscribe_frame("s", "board-1"))
                    .await
                    .expect("send");
                assert_eq!(
                    closed_with(&mut ws, WAIT).await,
                    Some(4513),
                    "ws without auth"
                );
            }
            Some(t) => {
                let auth = ClientFrame::Auth {
                    r#ref: Some("a".into()),
                    token: t.clone(),
                };
                let ack = ws.request("a", &auth).await.expect("auth ack");
                let code = ack_code(&ack);
                match *name {
                    "expired" => {
                        assert_eq!(code, "token_expired");
                        assert_eq!(closed_with(&mut ws, WAIT).await, Some(4007));
                    }
                    "bad signature" => {
                        assert_eq!(code, "unauthorized");
                        assert_eq!(closed_with(&mut ws, WAIT).await, Some(4513));
                    }
                    _ => {
                        assert_eq!(code, "", "auth frame with token {name}");
                        let (sub, put) = ws_read_write(&mut ws).await;
                        let want_sub = if want[2].0 == 200 { "" } else { "forbidden" };
                        let want_put = if want[1].0 == 200 { "" } else { "forbidden" };
                        assert_eq!(
                            (sub.as_str(), put.as_str()),
                            (want_sub, want_put),
                            "ws first-frame auth with token {name}"
                        );
                    }
                }
            }
        }
        // WebSocket via ticket.
        if let Ok(t) = ticket(&rest, tok).await {
            let mut ws = WsClient::connect_query(&server.url(), &format!("ticket={t}"))
                .await
                .expect("ws with ticket");
            let (sub, put) = ws_read_write(&mut ws).await;
            let want_sub = if want[2].0 == 200 { "" } else { "forbidden" };
            let want_put = if want[1].0 == 200 { "" } else { "forbidden" };
            assert_eq!(
                (sub.as_str(), put.as_str()),
                (want_sub, want_put),
                "ws via ticket with token {name}"
            );
            // The ticket was used by the upgrade.
            let again = WsClient::connect_query(&server.url(), &format!("ticket={t}")).await;
            assert!(again.is_err(), "a used ticket does not open a WebSocket");
        }
    }
    // A bad ticket is refused, and the query string carrying tickets is never logged.
    assert_eq!(
        sse_outcome(&server, "rooms=board-1&ticket=nope").await,
        unauth
    );
    let log = server.log();
    assert!(
        log.contains("/v1/sse"),
        "request spans are logged at debug level"
    );
    assert!(!log.contains("ticket="), "tickets are not logged");
}

#[tokio::test]
async fn cookie_authenticates_event_source() {
    let server = server();
    let t = token("a", 60, &["board-*"], &[]);
    let req = SseRequest::rooms(&["board-1"]).header("Cookie", &format!("tidewire_token={t}"));
    let sse = SseClient::connect(&server.url(), &req).await;
    assert!(sse.is_ok(), "{:?}", sse.err());
    let req = SseRequest::rooms(&["chat"]).header("Cookie", &format!("tidewire_token={t}"));
    match SseClient::connect(&server.url(), &req).await {
        Err(Error::Problem(p)) => assert_eq!(p.code, ErrorCode::Forbidden),
        other => panic!("expected forbidden, got {other:?}"),
    }
}

/// Writes `n` events to `room`, one every `gap`, from a writer with a long-lived token.
fn writer(
    server: &Server,
    room: &'static str,
    n: u64,
    gap: Duration,
) -> tokio::task::JoinHandle<()> {
    let rest = server.rest();
    let t = token("writer", 600, &["*"], &["*"]);
    tokio::spawn(async move {
        let auth = format!("Bearer {t}");
        for i in 0..n {
            let a = rest
                .raw(
                    Method::POST,
                    &format!("/v1/rooms/{room}/events"),
                    &[("Authorization", auth.as_str())],
                    Some(json!({"type": "tick", "data": i}).to_string().into_bytes()),
                )
                .await
                .expect("write answers");
            assert_eq!(a.status, 200, "{}", a.text());
            tokio::time::sleep(gap).await;
        }
    })
}

#[tokio::test]
async fn sse_closes_at_expiry_and_resumes_with_a_fresh_ticket_losing_nothing() {
    let server = Server::builder()
        .flag("jwt-secret", SECRET)
        .unlimited_writes()
        .start()
        .expect("server starts");
    let rest = server.rest();
    const N: u64 = 40;
    let w = writer(&server, "live", N, Duration::from_millis(100));
    let mut seen = Vec::new();
    let mut last_id: Option<String> = None;
    let mut expiries = 0;
    // Each connection uses a token that lives 2 s; the "client" fetches a new one and resumes.
    for _ in 0..20 {
        let t = Some(token("reader", 2, &["live"], &[]));
        let tk = ticket(&rest, &t).await.expect("ticket");
        let http = reqwest::Client::new();
        let mut query = format!(
            "{}/v1/sse?rooms=live&ticket={tk}",
            server.url().trim_end_matches('/')
        );
        if last_id.is_none() {
            query.push_str("&since=live=0");
        }
        let mut b = http.get(&query);
        if let Some(id) = &last_id {
            b = b.header("Last-Event-ID", id);
        }
        let mut sse = SseClient::from_response(b.send().await.expect("sse"))
            .await
            .expect("sse opens");
        loop {
            match sse.next(Duration::from_secs(4)).await {
                Ok(ev) => {
                    if let Some(seq) = ev.envelope.seq {
                        seen.push(seq);
                    }
                    if ev.envelope.event.event_type() == "error" {
                        let data = serde_json::to_value(&ev.envelope).expect("json");
                        assert_eq!(data["data"]["code"], "token_expired");
                        expiries += 1;
                    }
                    if !ev.id.is_empty() {
                        last_id = Some(ev.id.clone());
                    }
                }
                Err(Error::Closed(_)) => break,
                Err(Error::Timeout { .. }) => break,
                Err(e) => panic!("sse: {e}"),
            }
        }
        if seen.len() as u64 >= N {
            break;
        }
    }
    w.await.expect("writer");
    assert!(
        expiries >= 1,
        "the stream ended with token_expired at least once"
    );
    let want: Vec<u64> = (1..=N).collect();
    assert_eq!(
        seen, want,
        "every event exactly once, in order, across token expiries"
    );
}

#[tokio::test]
async fn ws_refresh_keeps_the_socket_and_without_refresh_it_closes_4007() {
    let server = Server::builder()
        .flag("jwt-secret", SECRET)
        .unlimited_writes()
        .start()
        .expect("server starts");
    const N: u64 = 30;
    let mut ws = WsClient::connect(&server.url(), None).await.expect("ws");
    let auth = |r: &str, ttl: i64| ClientFrame::Auth {
        r#ref: Some(r.into()),
        token: token("reader", ttl, &["live"], &[]),
    };
    assert_eq!(
        ack_code(&ws.request("a0", &auth("a0", 2)).await.expect("ack")),
        ""
    );
    ws.subscribe(&["live"], Some("live=0"), false)
        .await
        .expect("subscribe");
    let w = writer(&server, "live", N, Duration::from_millis(100));
    let mut seen = Vec::new();
    let started = tokio::time::Instant::now();
    let mut refreshed = 0;
    // Refresh every second with a 2 s token while the writer runs (about 3 s).
    while (seen.len() as u64) < N && started.elapsed() < Duration::from_secs(15) {
        if started.elapsed() > Duration::from_millis(800 * (refreshed + 1)) {
            refreshed += 1;
            let r = format!("a{refreshed}");
            ws.send(&auth(&r, 2)).await.expect("send auth");
        }
        match ws.recv(Duration::from_millis(200)).await {
            Ok(ServerFrame::Event(env)) => seen.extend(env.seq),
            Ok(ServerFrame::Ack { result, .. }) => assert!(result.is_ok(), "{result:?}"),
            Ok(_) => {}
            Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("the socket must stay open while refreshed: {e}"),
        }
    }
    w.await.expect("writer");
    assert_eq!(
        seen,
        (1..=N).collect::<Vec<_>>(),
        "no event lost or repeated"
    );
    assert!(
        refreshed >= 2,
        "the token was refreshed while the socket was open"
    );
    // A refresh for another subject is refused and changes nothing.
    let other = ClientFrame::Auth {
        r#ref: Some("x".into()),
        token: token("mallory", 60, &["*"], &["*"]),
    };
    assert_eq!(
        ack_code(&ws.request("x", &other).await.expect("ack")),
        "forbidden"
    );
    // No more refresh: closed with 4007 within the token's life (2 s) plus slack.
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4007)
    );
}

#[tokio::test]
async fn two_subjects_never_see_each_others_rooms() {
    let server = Server::builder()
        .flag("jwt-secret", SECRET)
        .unlimited_writes()
        .start()
        .expect("server starts");
    let rest = server.rest();
    let alice = token("alice", 60, &["a-*"], &["a-*"]);
    let bob = token("bob", 60, &["b-*"], &["b-*"]);
    let mut streams = Vec::new();
    for (t, own, other) in [(&alice, "a-1", "b-1"), (&bob, "b-1", "a-1")] {
        let tok = Some(t.clone());
        // Refused: the other's room, alone or mixed in, on every transport.
        for rooms in [other.to_string(), format!("{own},{other}")] {
            let tk = ticket(&rest, &tok).await.expect("ticket");
            let a = sse_outcome(&server, &format!("rooms={rooms}&ticket={tk}")).await;
            assert_eq!(a.1, "forbidden", "sse {rooms}");
            let a = raw(
                &rest,
                Method::GET,
                &format!("/v1/poll?rooms={rooms}&wait=0"),
                &tok,
            )
            .await;
            assert_eq!(outcome(&a).1, "forbidden", "poll {rooms}");
        }
        for path in ["snapshot", "events", "presence"] {
            let a = raw(
                &rest,
                Method::GET,
                &format!("/v1/rooms/{other}/{path}"),
                &tok,
            )
            .await;
            assert_eq!(outcome(&a).1, "forbidden", "{path} of {other}");
        }
        let tk = ticket(&rest, &tok).await.expect("ticket");
        let sse = SseClient::from_response(
            reqwest::get(format!(
                "{}/v1/sse?rooms={own}&presence=1&ticket={tk}",
                server.url()
            ))
            .await
            .expect("sse"),
        )
        .await
        .expect("own room streams");
        let tk = ticket(&rest, &tok).await.expect("ticket");
        let mut ws = WsClient::connect_query(&server.url(), &format!("ticket={tk}"))
            .await
            .expect("ws");
        // A pattern is no room name; the other's room is refused; the own room works.
        for bad in ["b-*", "a-*", "*"] {
            let ack = ws
                .request("p", &subscribe_frame("p", bad))
                .await
                .expect("ack");
            assert_eq!(ack_code(&ack), "bad_room_name");
        }
        let ack = ws
            .request("o", &subscribe_frame("o", other))
            .await
            .expect("ack");
        assert_eq!(ack_code(&ack), "forbidden");
        let ack = ws
            .request(
                "m",
                &ClientFrame::Subscribe {
                    r#ref: Some("m".into()),
                    rooms: vec![own.into(), other.into()],
                    since: None,
                    presence: true,
                },
            )
            .await
            .expect("ack");
        assert_eq!(
            ack_code(&ack),
            "forbidden",
            "a mixed subscribe follows nothing"
        );
        ws.subscribe(&[own], Some(&format!("{own}=0")), true)
            .await
            .expect("own room");
        // Writes, broadcasts and presence into the other's room are refused.
        let put = ws.request("w", &put_frame("w", other)).await.expect("ack");
        assert_eq!(ack_code(&put), "forbidden");
        ws.send(&ClientFrame::Broadcast {
            r#ref: Some("b".into()),
            room: other.into(),
            event: "cursor".into(),
            data: json!(1),
        })
        .await
        .expect("send");
        assert_eq!(
            ack_code(&ws.reply("b", WAIT).await.expect("ack")),
            "forbidden"
        );
        ws.send(&ClientFrame::Presence {
            r#ref: Some("pr".into()),
            room: other.into(),
            meta: json!({}),
        })
        .await
        .expect("send");
        assert_eq!(
            ack_code(&ws.reply("pr", WAIT).await.expect("ack")),
            "forbidden"
        );
        // Own presence, broadcasts and writes work.
        ws.presence(own, json!({"n": own})).await.expect("presence");
        ws.broadcast(own, "cursor", json!(own))
            .await
            .expect("broadcast");
        streams.push((own, sse, ws));
    }
    // Traffic into both rooms from a writer allowed everywhere.
    let w = writer(&server, "a-1", 5, Duration::from_millis(20));
    let w2 = writer(&server, "b-1", 5, Duration::from_millis(20));
    w.await.expect("writer");
    w2.await.expect("writer");
    for (own, mut sse, mut ws) in streams {
        let prefix = &own[..2];
        let mut rooms = BTreeSet::new();
        let mut durable = 0;
        while let Ok(ev) = sse.next(Duration::from_millis(700)).await {
            rooms.insert(ev.envelope.room.clone());
            durable += usize::from(ev.envelope.seq.is_some());
        }
        while let Ok(frame) = ws.recv(Duration::from_millis(300)).await {
            if let ServerFrame::Event(env) = frame {
                rooms.insert(env.room.clone());
            }
        }
        assert_eq!(durable, 5, "{own}: its own events arrive");
        assert!(
            rooms.iter().all(|r| r.starts_with(prefix)),
            "{own} received frames of rooms {rooms:?}"
        );
        let raw = sse.raw_text();
        let foreign = if prefix == "a-" { "b-1" } else { "a-1" };
        assert!(!raw.contains(foreign), "{own}: no byte of {foreign} on SSE");
    }
}

#[tokio::test]
async fn limits_are_per_subject() {
    let server = Server::builder()
        .flag("jwt-secret", SECRET)
        .flag("max-connections-per-client", 2)
        .flag("write-rate", 1)
        .flag("write-burst", 2)
        .start()
        .expect("server starts");
    let rest = server.rest();
    let alice = Some(token("alice", 60, &["*"], &["*"]));
    let bob = Some(token("bob", 60, &["*"], &["*"]));
    let open = |t: Option<String>| {
        let rest = rest.clone();
        let url = server.url();
        async move {
            let tk = ticket(&rest, &t).await.expect("ticket");
            let resp = reqwest::get(format!("{url}/v1/sse?rooms=r&ticket={tk}"))
                .await
                .expect("sse");
            SseClient::from_response(resp).await
        }
    };
    let _a1 = open(alice.clone()).await.expect("first");
    let _a2 = open(alice.clone()).await.expect("second");
    match open(alice.clone()).await {
        Err(Error::Problem(p)) => {
            assert_eq!((p.status, p.code), (429, ErrorCode::TooManyConnections));
        }
        other => panic!("the third connection must be refused, got {other:?}"),
    }
    // The WebSocket counts too; another subject from the same address is unaffected.
    let tk = ticket(&rest, &alice).await.expect("ticket");
    assert!(
        WsClient::connect_query(&server.url(), &format!("ticket={tk}"))
            .await
            .is_err()
    );
    let _b1 = open(bob.clone()).await.expect("bob is unaffected");
    // Writes: a burst of 2, then 429 with Retry-After; bob still writes.
    for i in 0..2 {
        let a = raw(
            &rest,
            Method::PUT,
            &format!("/v1/rooms/r/items/x{i}"),
            &alice,
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let a = raw(&rest, Method::PUT, "/v1/rooms/r/items/x9", &alice).await;
    assert_eq!(outcome(&a), (429, "rate_limited".to_string()));
    assert!(a
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    let b = raw(&rest, Method::PUT, "/v1/rooms/r/items/b", &bob).await;
    assert_eq!(b.status, 200, "bob's writes are unaffected");
}

#[tokio::test]
async fn rooms_per_connection_and_open_mode() {
    let server = Server::builder()
        .flag("jwt-secret", SECRET)
        .flag("max-rooms-per-connection", 2)
        .start()
        .expect("server starts");
    let rest = server.rest();
    let t = Some(token("a", 60, &["*"], &[]));
    let a = raw(&rest, Method::GET, "/v1/poll?rooms=a,b,c&wait=0", &t).await;
    assert_eq!(outcome(&a), (400, "too_many_rooms".to_string()));
    // Without a secret the server stays open.
    let open = Server::start().expect("server starts");
    let a = raw(&open.rest(), Method::GET, "/v1/rooms/x/snapshot", &None).await;
    assert_eq!(a.status, 200);
    let a = raw(&open.rest(), Method::POST, "/v1/tickets", &None).await;
    assert_eq!(a.status, 404);
}
