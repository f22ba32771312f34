//! WebSocket specifics: acks carry the envelope, broadcast skips the sender, presence joins
//! and leaves after the grace period.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;

use serde_json::json;
use tidewire_protocol::{ClientFrame, ErrorCode, Event, ServerFrame};
use tidewire_tests::{Error, Server, SseClient, SseRequest, WriteOptions, WsClient};

use crate::{start, T};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_carry_the_envelope_and_others_see_the_event() {
    let server = start(Server::builder());
    let rest = server.rest();
    let mut writer = WsClient::connect(&server.ws_url(), Some("writer"))
        .await
        .expect("ws");
    let mut reader = WsClient::connect(&server.ws_url(), Some("reader"))
        .await
        .expect("ws");
    let cursor = reader
        .subscribe(&["a"], None, false)
        .await
        .expect("subscribe");
    assert_eq!(cursor, "a=0", "an empty room starts at 0");

    let put = writer
        .put("a", "x", json!({"n": 1}), Some("k-1"), None)
        .await
        .expect("ack")
        .expect("ok");
    assert_eq!(
        (put.room.as_str(), put.seq, put.key.as_deref()),
        ("a", Some(1), Some("k-1"))
    );
    assert!(
        matches!(&put.event, Event::ItemPut(i) if i.id == "x" && i.version == 1 && i.value == json!({"n": 1}))
    );
    let seen = reader.next_durable(T).await.expect("event");
    assert_eq!(seen, put, "subscribers get the acknowledged envelope");
    let history = rest.history("a", 0, None).await.expect("history").ok();
    assert_eq!(history, vec![put.clone()]);

    // A retry over WS with the same key answers the same envelope.
    let again = writer
        .put("a", "x", json!({"n": 1}), Some("k-1"), None)
        .await
        .expect("ack")
        .expect("ok");
    assert_eq!(again, put);
    // The key is the room's, whatever the transport: a write first sent over REST and retried
    // over WebSocket is the same write.
    let over_rest = rest
        .put("a", "y", &json!(7), &WriteOptions::key("k-rest"))
        .await
        .expect("put")
        .ok();
    let retried = writer
        .put("a", "y", json!(7), Some("k-rest"), None)
        .await
        .expect("ack")
        .expect("ok");
    assert_eq!(retried, over_rest);
    assert_eq!(reader.next_durable(T).await.expect("event"), over_rest);

    let published = writer
        .publish("a", "chat.message", json!({"text": "hi"}), Some("k-2"))
        .await
        .expect("ack")
        .expect("ok");
    assert_eq!(published.seq, Some(3));
    assert_eq!(published.event.event_type(), "chat.message");
    assert_eq!(reader.next_durable(T).await.expect("event"), published);

    // A conflicting write: ok=false with the current item.
    let conflict = writer
        .put("a", "x", json!({"n": 2}), None, Some(7))
        .await
        .expect("ack")
        .expect_err("a conflict");
    assert_eq!(conflict.code, ErrorCode::VersionConflict);
    assert_eq!(conflict.current.map(|c| c.version), Some(1));

    // Delete acks too.
    let r = writer.new_ref();
    let reply = writer
        .request(
            &r,
            &ClientFrame::Delete {
                r#ref: Some(r.clone()),
                room: "a".into(),
                id: "x".into(),
                key: None,
                if_match: Some(1),
            },
        )
        .await
        .expect("reply");
    match reply {
        ServerFrame::Ack {
            result: Ok(Some(env)),
            ..
        } => {
            assert!(matches!(&env.event, Event::ItemDeleted(d) if d.version == 2));
            assert_eq!(env.seq, Some(4));
        }
        other => panic!("expected a delete ack, got {}", other.encode()),
    }
    assert_eq!(rest.history_all("a", 0).await.expect("history").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_other_subscribers_not_the_sender() {
    let server = start(Server::builder());
    let rest = server.rest();
    let mut alice = WsClient::connect(&server.ws_url(), Some("alice"))
        .await
        .expect("ws");
    let mut bob = WsClient::connect(&server.ws_url(), Some("bob"))
        .await
        .expect("ws");
    let mut carol = WsClient::connect(&server.ws_url(), Some("carol"))
        .await
        .expect("ws");
    alice
        .subscribe(&["a"], None, false)
        .await
        .expect("subscribe");
    bob.subscribe(&["a"], None, false).await.expect("subscribe");
    carol
        .subscribe(&["other"], None, false)
        .await
        .expect("subscribe");

    alice
        .broadcast("a", "cursor", json!({"x": 1, "y": 2}))
        .await
        .expect("broadcast");
    let got = bob.next_of_type("broadcast", T).await.expect("bob gets it");
    assert_eq!(got.room, "a");
    assert_eq!(got.seq, None, "broadcasts are ephemeral");
    match &got.event {
        Event::Broadcast(b) => {
            assert_eq!(b.event, "cursor");
            assert_eq!(b.data, json!({"x": 1, "y": 2}));
            assert_eq!(b.from.as_deref(), Some("alice"));
        }
        other => panic!("expected broadcast, got {other:?}"),
    }

    // A durable marker after the broadcast: alice and carol see nothing before it.
    let marker = rest
        .publish("a", "test.marker", &json!({}), &WriteOptions::default())
        .await
        .expect("publish")
        .ok();
    rest.publish("other", "test.marker", &json!({}), &WriteOptions::default())
        .await
        .expect("publish")
        .ok();
    let first = alice.next_envelope(T).await.expect("alice's next event");
    assert_eq!(first, marker, "the sender does not get its own broadcast");
    let first = carol.next_envelope(T).await.expect("carol's next event");
    assert_eq!(first.room, "other", "non-subscribers get no broadcast");
    assert!(
        rest.history_all("a", 0).await.expect("history").len() == 1,
        "broadcasts are not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_join_shows_and_leave_comes_after_the_grace() {
    let server = start(Server::builder().flag("presence-grace-ms", 300));
    let rest = server.rest();
    let mut watcher = WsClient::connect(&server.ws_url(), Some("watcher"))
        .await
        .expect("ws");
    watcher
        .subscribe(&["lobby"], None, true)
        .await
        .expect("subscribe");
    let state = watcher
        .next_of_type("presence.state", T)
        .await
        .expect("presence.state first");
    assert!(matches!(&state.event, Event::PresenceState(s) if s.members.is_empty()));
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["lobby"]).presence())
        .await
        .expect("SSE with presence");

    let mut ada = WsClient::connect(&server.ws_url(), Some("ada"))
        .await
        .expect("ws");
    ada.subscribe(&["lobby"], None, false)
        .await
        .expect("subscribe");
    ada.presence("lobby", json!({"name": "Ada"}))
        .await
        .expect("presence");
    let join = watcher
        .next_of_type("presence.join", T)
        .await
        .expect("join");
    match &join.event {
        Event::PresenceJoin(m) => {
            assert_eq!(m.client_id, "ada");
            assert_eq!(m.meta, json!({"name": "Ada"}));
        }
        other => panic!("{other:?}"),
    }
    let sse_join = sse
        .next_of_type("presence.join", T)
        .await
        .expect("join over SSE");
    assert_eq!(sse_join.envelope.event, join.event);
    let list = rest.presence("lobby").await.expect("presence").ok();
    assert_eq!(list.room, "lobby");
    let ada_member = list
        .members
        .iter()
        .find(|m| m.client_id == "ada")
        .expect("ada is listed");
    assert_eq!(ada_member.meta, json!({"name": "Ada"}));

    // Ada leaves: the leave comes after the grace period.
    let closed_at = Instant::now();
    ada.close().await.expect("close");
    let leave = watcher
        .next_of_type("presence.leave", T)
        .await
        .expect("leave");
    let after = closed_at.elapsed();
    assert!(matches!(&leave.event, Event::PresenceLeave(m) if m.client_id == "ada"));
    assert!(
        after >= Duration::from_millis(250),
        "leave after {after:?}, before the 300 ms grace"
    );
    let list = rest.presence("lobby").await.expect("presence").ok();
    assert!(
        list.members.iter().all(|m| m.client_id != "ada"),
        "{list:?}"
    );

    // A quick reconnect with the same client id is not a leave.
    let mut bo = WsClient::connect(&server.ws_url(), Some("bo"))
        .await
        .expect("ws");
    bo.subscribe(&["lobby"], None, false)
        .await
        .expect("subscribe");
    bo.presence("lobby", json!({"name": "Bo"}))
        .await
        .expect("presence");
    watcher
        .next_of_type("presence.join", T)
        .await
        .expect("bo joins");
    drop(bo);
    let mut bo = WsClient::connect(&server.ws_url(), Some("bo"))
        .await
        .expect("ws");
    bo.subscribe(&["lobby"], None, false)
        .await
        .expect("subscribe");
    bo.presence("lobby", json!({"name": "Bo"}))
        .await
        .expect("presence");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watcher.next_envelope(left).await {
            Ok(env) => assert!(
                !matches!(&env.event, Event::PresenceLeave(m) if m.client_id == "bo"),
                "a quick reconnect was seen as a leave"
            ),
            Err(Error::Timeout { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let list = rest.presence("lobby").await.expect("presence").ok();
    assert!(list.members.iter().any(|m| m.client_id == "bo"), "{list:?}");
}

/// A TCP stream whose writes never fail: once the server has closed, the pongs tungstenite
/// owes are dropped instead of ending the read with a broken pipe, so the close frame the
/// server sent before closing can still be read.
struct WritesNeverFail(tokio::net::TcpStream);

impl AsyncRead for WritesNeverFail {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for WritesNeverFail {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.0).poll_write(cx, buf) {
            Poll::Ready(Err(_)) => Poll::Ready(Ok(buf.len())),
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_flush(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            other => other,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_shutdown(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_and_closes_silent_connections_with_4003() {
    let server = start(
        Server::builder()
            .flag("heartbeat-secs", 1)
            .flag("idle-timeout-secs", 3),
    );
    // A live client answers pings (tungstenite does) and stays open past the idle timeout.
    let mut live = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    live.subscribe(&["a"], None, false)
        .await
        .expect("subscribe");
    // A silent client sends one frame, then reads nothing, so it answers no ping.
    let tcp = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let (mut silent, _) =
        tokio_tungstenite::client_async(format!("{}/v1/ws", server.ws_url()), WritesNeverFail(tcp))
            .await
            .expect("handshake");
    silent
        .send(Message::text(r#"{"type":"subscribe","rooms":["a"]}"#))
        .await
        .expect("subscribe");

    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        match live.recv(Duration::from_millis(200)).await {
            Err(Error::Timeout { .. }) => {}
            Ok(frame) => panic!("nothing expected, got {}", frame.encode()),
            Err(e) => panic!("the live client was dropped: {e}"),
        }
    }
    assert!(
        live.pings_seen() >= 3,
        "pings every second: saw {}",
        live.pings_seen()
    );
    live.ping().await.expect("the live client is still open");

    let deadline = tokio::time::Instant::now() + T;
    let close = loop {
        match tokio::time::timeout_at(deadline, silent.next()).await {
            Err(_) => panic!("the silent connection was not closed"),
            Ok(None) => break None,
            Ok(Some(Err(e))) => panic!("expected a close frame, got {e}"),
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
        }
    };
    let code = close.map(|f| u16::from(f.code));
    assert_eq!(code, Some(4003), "idle_timeout close code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_a_room() {
    let server = start(Server::builder());
    let rest = server.rest();
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    ws.subscribe(&["a", "b"], None, false)
        .await
        .expect("subscribe");
    let r = ws.new_ref();
    let reply = ws
        .request(
            &r,
            &ClientFrame::Unsubscribe {
                r#ref: Some(r.clone()),
                rooms: vec!["b".into()],
            },
        )
        .await
        .expect("reply");
    assert!(
        matches!(reply, ServerFrame::Ack { result: Ok(_), .. }),
        "unsubscribe with a ref is acknowledged: {}",
        reply.encode()
    );
    rest.put("b", "x", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let a = rest
        .put("a", "x", &json!(1), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let first = ws.next_envelope(T).await.expect("event");
    assert_eq!(first, a, "nothing of the unsubscribed room arrives");
}
