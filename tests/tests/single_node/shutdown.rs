//! Graceful shutdown: on SIGTERM every client gets `reconnect` with a delay spread over the
//! drain window, and the process exits cleanly in time. (What the router answers while it
//! drains is tested in process: `server/tests/live.rs`.)
//!
//! Coming back after the restart (resume from `Last-Event-ID`, nothing lost) is the
//! `restart_storm` drill.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tidewire_protocol::{Envelope, Event};
use tidewire_tests::{Error, Server, SseClient, SseRequest, WsClient};

use crate::start;

const DRAIN_MS: u64 = 2000;
const CLIENTS: usize = 20;

fn reconnect_delay(env: &Envelope, who: &str) -> u64 {
    match &env.event {
        Event::Reconnect(r) => {
            assert_eq!(r.reason, "shutting_down", "{who}");
            assert_eq!(env.room, "", "{who}: connection-wide control event");
            assert_eq!(env.seq, None, "{who}");
            r.retry_ms
        }
        other => panic!("{who}: expected reconnect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_spread_reconnects_and_exits_in_time() {
    let mut server = start(Server::builder().flag("drain-window-ms", DRAIN_MS));
    let mut sse_clients = Vec::new();
    for i in 0..CLIENTS {
        let room = format!("room{}", i % 3);
        let sse = SseClient::connect(&server.url(), &SseRequest::rooms(&[room.as_str()]))
            .await
            .expect("SSE opens");
        sse_clients.push(sse);
    }
    let mut ws_clients = Vec::new();
    for i in 0..CLIENTS {
        let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
        ws.subscribe(&[format!("room{}", i % 3).as_str()], None, false)
            .await
            .expect("subscribe");
        ws_clients.push(ws);
    }

    let sigterm_at = Instant::now();
    server.terminate().expect("SIGTERM");
    let budget = Duration::from_millis(DRAIN_MS + 3000);

    let mut tasks = Vec::new();
    for (i, mut sse) in sse_clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let who = format!("sse {i}");
            let ev = sse
                .next_of_type("reconnect", budget)
                .await
                .unwrap_or_else(|e| panic!("{who}: no reconnect: {e}"));
            let ms = reconnect_delay(&ev.envelope, &who);
            // Then the stream ends.
            let end = loop {
                match sse.next(budget).await {
                    Ok(_) => continue,
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(end, Error::Closed(_) | Error::Http(_)),
                "{who}: stream should end after reconnect, got {end}"
            );
            ms
        }));
    }
    for (i, mut ws) in ws_clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let who = format!("ws {i}");
            let env = ws
                .next_of_type("reconnect", budget)
                .await
                .unwrap_or_else(|e| panic!("{who}: no reconnect: {e}"));
            let ms = reconnect_delay(&env, &who);
            let end = loop {
                match ws.recv(budget).await {
                    Ok(_) => continue,
                    Err(e) => break e,
                }
            };
            match end {
                Error::Closed(Some((code, _))) => assert_eq!(code, 4001, "{who}: close code"),
                other => panic!("{who}: expected close 4001 shutting_down, got {other}"),
            }
            ms
        }));
    }
    let mut delays = Vec::new();
    for t in tasks {
        delays.push(t.await.expect("client task"));
    }
    let status = tokio::task::spawn_blocking(move || {
        let left = budget.saturating_sub(sigterm_at.elapsed());
        let status = server.wait_exit(left);
        (status, server.log())
    })
    .await
    .expect("wait task");
    let exited_after = sigterm_at.elapsed();

    delays.sort_unstable();
    let buckets: BTreeSet<u64> = delays.iter().map(|ms| ms / 250).collect();
    println!(
        "reconnect retry_ms over {} clients: min={} max={} distinct 250ms buckets={}; exit after {exited_after:?}",
        delays.len(),
        delays[0],
        delays[delays.len() - 1],
        buckets.len()
    );
    assert_eq!(delays.len(), 2 * CLIENTS);
    assert!(
        delays.iter().all(|ms| *ms <= DRAIN_MS),
        "retry_ms within the drain window: {delays:?}"
    );
    assert!(
        delays[0] != delays[delays.len() - 1],
        "not all equal: {delays:?}"
    );
    assert!(buckets.len() >= 3, "spread over the window: {delays:?}");
    match status.0 {
        Ok(s) => assert!(s.success(), "exit status {s}\n{}", status.1),
        Err(e) => panic!(
            "the server did not exit within drain + 3 s: {e}\n{}",
            status.1
        ),
    }
}
