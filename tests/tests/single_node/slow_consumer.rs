//! A WebSocket client that stops reading is closed with 4002 `slow_consumer` once its queue
//! overflows, and resumes from its cursor without loss.
//!
//! The volume comes from big `broadcast`s in a second room `flood` (ephemeral, so no database
//! write per megabyte and the test stays fast); the small durable events published meanwhile
//! in `firehose` are what the loss accounting counts.
//!
//! The SSE side (a subscriber that reads too slowly is cut, the others are not held up, the
//! server's memory stays bounded, the slow one resumes from its last id) is the
//! `slow_consumer` drill: `tests/tests/drills/slow_consumer.rs`.

use std::time::Duration;

use serde_json::json;
use tidewire_protocol::{ClientFrame, ErrorCode, Event};
use tidewire_tests::{Delivery, Error, Server, WriteOptions, WsClient};

use crate::{on_own_thread, start};

/// Bytes per broadcast of the flood.
const BROADCAST_BYTES: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_is_closed_with_4002_and_resumes() {
    const DURABLE_WS: u64 = 50;
    const FLOOD_WS: usize = 120;
    let server = start(
        Server::builder()
            .unlimited_writes()
            .flag("queue-capacity", 64)
            .flag("max-broadcast-bytes", 2 * BROADCAST_BYTES),
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
