//! Drill 6, restart storm: many SSE clients across a graceful restart (SIGTERM, then a new
//! process on the same port and SQLite file). Every client gets `reconnect` with a delay spread
//! over the drain window; the drill prints the per-second histogram of the reconnect delays
//! and of the successful reconnections, and every client resumes from its `Last-Event-ID` and
//! ends with every event of its room exactly once.

use std::time::{Duration, Instant};

use serde_json::json;
use tidewire_protocol::Event;
use tidewire_tests::{Delivery, Error, Server, SseClient, SseRequest, WriteOptions};

use crate::{full, report, start};

const ROOMS: usize = 10;
const PER_ROOM: u64 = 5;
const DRAIN_MS: u64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_spreads_reconnects_and_loses_nothing() {
    let _cpu = crate::shared_cpu().await;
    let clients = if full() { 5_000 } else { 500 };
    let mut server = start(
        Server::builder()
            .unlimited_writes()
            .flag("drain-window-ms", DRAIN_MS)
            .flag("max-connections-per-client", clients * 2 + 100)
            .flag("max-connections-per-address", clients * 2 + 100),
    );
    let rest = server.rest();
    let url = server.url();
    let room = |i: usize| format!("drill-storm-{}", i % ROOMS);

    let mut sse = Vec::with_capacity(clients);
    for i in 0..clients {
        let r = room(i);
        let c = SseClient::connect(
            &url,
            &SseRequest::rooms(&[r.as_str()]).since(&format!("{r}=0")),
        )
        .await
        .unwrap_or_else(|e| panic!("client {i} connects: {e}"));
        sse.push(c);
    }
    let mut sent = 0usize;
    for r in 0..ROOMS {
        for n in 0..PER_ROOM {
            sent += 1;
            rest.put(
                &room(r),
                "x",
                &json!(n),
                &WriteOptions::key(format!("a{r}-{n}")),
            )
            .await
            .expect("write before the restart")
            .ok();
        }
    }

    let sigterm_at = Instant::now();
    server.terminate().expect("SIGTERM");
    let budget = Duration::from_secs(30);
    let mut tasks = Vec::new();
    for (i, mut c) in sse.into_iter().enumerate() {
        let (r, url) = (room(i), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut last_id = None;
            // Before the restart: the events so far, then `reconnect`.
            let retry_ms = loop {
                let ev = c
                    .next(budget)
                    .await
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                match &ev.envelope.event {
                    Event::Reconnect(d) => break d.retry_ms,
                    _ if ev.envelope.seq.is_some() => {
                        seqs.push(ev.envelope.seq.unwrap_or_default());
                        last_id = Some(ev.id);
                    }
                    _ => {}
                }
            };
            drop(c);
            tokio::time::sleep(Duration::from_millis(retry_ms)).await;
            let scheduled = sigterm_at.elapsed();
            // Reconnect (the new process may not listen yet: retry every 100 ms, bounded).
            let mut req = SseRequest::rooms(&[r.as_str()]);
            req = match &last_id {
                Some(id) => req.last_event_id(id),
                None => req.since(&format!("{r}=0")),
            };
            let mut c = None;
            for _ in 0..300 {
                match SseClient::connect(&url, &req).await {
                    Ok(s) if s.status() == 200 => {
                        c = Some(s);
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let mut c = c.unwrap_or_else(|| panic!("client {i} never reconnected"));
            let connected = sigterm_at.elapsed();
            while (seqs.len() as u64) < 2 * PER_ROOM {
                match c.next_durable(budget).await {
                    Ok(ev) => seqs.push(ev.envelope.seq.unwrap_or_default()),
                    Err(Error::Timeout { .. }) => break,
                    Err(e) => panic!("client {i} after the restart: {e}"),
                }
            }
            (r, seqs, retry_ms, scheduled, connected)
        }));
    }

    tokio::task::block_in_place(|| {
        server
            .wait_exit(Duration::from_millis(DRAIN_MS + 10_000))
            .expect("the server drains and exits");
        server.restart().expect("restart on the same port and file");
    });
    let restarted_at = sigterm_at.elapsed();
    for r in 0..ROOMS {
        for n in PER_ROOM..2 * PER_ROOM {
            sent += 1;
            rest.put(
                &room(r),
                "x",
                &json!(n),
                &WriteOptions::key(format!("a{r}-{n}")),
            )
            .await
            .expect("write after the restart")
            .ok();
        }
    }

    let mut delivery = Delivery::default();
    let mut delays = vec![0usize; 16];
    let mut reconnects = vec![0usize; 16];
    let mut max_retry = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (r, seqs, retry_ms, _scheduled, connected) = t.await.expect("client task");
        let client_room = format!("{r}#{i}");
        delivery.expect(&client_room, 1..=2 * PER_ROOM);
        for s in seqs {
            delivery.received(&client_room, s);
        }
        max_retry = max_retry.max(retry_ms);
        delays[((retry_ms / 1000) as usize).min(15)] += 1;
        reconnects[(connected.as_secs() as usize).min(15)] += 1;
    }
    println!("[drill restart storm] {clients} clients; new process listening {restarted_at:?} after SIGTERM");
    println!(
        "[drill restart storm] reconnect delay (retry_ms) per second of the drain window: {:?}",
        trim(&delays)
    );
    println!(
        "[drill restart storm] successful reconnections per second after SIGTERM: {:?}",
        trim(&reconnects)
    );
    let c = delivery.counts();
    report(
        "drill restart storm",
        sent,
        sent,
        c.delivered,
        c.lost,
        c.duplicated,
    );
    assert!(
        max_retry <= DRAIN_MS,
        "reconnect delays stay within the drain window"
    );
    let busiest = delays.iter().copied().max().unwrap_or(0);
    assert!(
        busiest < clients,
        "reconnect delays are spread over the window, not all in one second: {delays:?}"
    );
    delivery.assert_exact("drill restart storm");
}

fn trim(h: &[usize]) -> &[usize] {
    let end = h.iter().rposition(|n| *n > 0).map_or(0, |i| i + 1);
    &h[..end]
}
