//! Crash and restart: every acknowledged write survives `kill -9` exactly once, and clients
//! resume from where they were.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tidewire_protocol::{Cursor, Envelope};
use tidewire_tests::{
    Delivery, Error, Rest, Server, SseClient, SseRequest, WriteOptions, WsClient,
};

use crate::{rng, start, T};

const ROOMS: [&str; 2] = ["crash-a", "crash-b"];
const WRITERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_every_acknowledged_write_exactly_once() {
    let mut rng = rng("restart");
    let mut server = start(Server::builder().unlimited_writes());
    let rest = server.rest();

    // A client follows both rooms from the start.
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&ROOMS).since("crash-a=0,crash-b=0"),
    )
    .await
    .expect("SSE opens");
    // And one over WebSocket.
    let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
    ws.subscribe(&ROOMS, Some("crash-a=0,crash-b=0"), false)
        .await
        .expect("subscribe");

    let acked: Arc<Mutex<BTreeMap<String, Envelope>>> = Arc::default();
    let unacked: Arc<Mutex<Vec<(String, String, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let rest = Rest::new(rest.base());
        let acked = Arc::clone(&acked);
        let unacked = Arc::clone(&unacked);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let room = ROOMS[i % 2].to_owned();
                let key = format!("w{w}-{i}");
                match rest
                    .put(
                        &room,
                        &format!("w{w}"),
                        &json!({"i": i}),
                        &WriteOptions::key(&key),
                    )
                    .await
                {
                    Ok(a) if a.status == 200 => {
                        acked.lock().unwrap().insert(key, a.ok());
                    }
                    // Refused or cut off by the crash: not acknowledged, retried later.
                    _ => {
                        unacked.lock().unwrap().push((room, key, i));
                        return;
                    }
                }
            }
        }));
    }

    // Crash at a random moment once some writes are acknowledged.
    let crash_after = rng.random_range(50..150usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < crash_after {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes are too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| server.kill_hard());
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().unwrap().clone();
    let unacked = unacked.lock().unwrap().clone();
    println!(
        "crashed after {} acknowledged writes ({} in flight)",
        acked.len(),
        unacked.len()
    );

    // The client had read some of it.
    let mut delivery = Delivery::default();
    let mut last_id = String::from("crash-a=0,crash-b=0");
    loop {
        match sse.next_durable(Duration::from_millis(500)).await {
            Ok(ev) => {
                delivery.received(&ev.envelope.room, ev.envelope.seq.expect("durable"));
                last_id = ev.id;
            }
            Err(Error::Timeout { .. } | Error::Closed(_) | Error::Http(_) | Error::Sse(_)) => break,
            Err(e) => panic!("SSE before the crash: {e}"),
        }
    }
    drop(sse);
    let mut ws_delivery = Delivery::default();
    let mut ws_cursor = Cursor::new();
    for room in ROOMS {
        ws_cursor.set(room, 0);
    }
    loop {
        match ws.next_durable(Duration::from_millis(500)).await {
            Ok(env) => {
                let seq = env.seq.expect("durable");
                ws_delivery.received(&env.room, seq);
                ws_cursor.set(&env.room, seq);
            }
            Err(Error::Timeout { .. } | Error::Closed(_) | Error::WebSocket(_)) => break,
            Err(e) => panic!("WS before the crash: {e}"),
        }
    }
    drop(ws);

    tokio::task::block_in_place(|| server.restart()).expect("restart on the same file and port");

    // Every acknowledged write is in the history exactly once, as acknowledged.
    let mut by_key: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
    let mut heads = BTreeMap::new();
    for room in ROOMS {
        let history = rest
            .history_all(room, 0)
            .await
            .expect("history after restart");
        let seqs: Vec<u64> = history.iter().filter_map(|e| e.seq).collect();
        let contiguous: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, contiguous, "{room}: seqs are 1..=n after the restart");
        heads.insert(room, seqs.len() as u64);
        for env in history {
            if let Some(key) = env.key.clone() {
                by_key.entry(key).or_default().push(env);
            }
        }
    }
    for (key, env) in &acked {
        let found = by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            found.len(),
            1,
            "acknowledged write {key} appears {} times",
            found.len()
        );
        assert_eq!(&found[0], env, "write {key} is in the log as acknowledged");
    }
    assert!(
        by_key.values().all(|v| v.len() == 1),
        "no key appears twice"
    );

    // Retrying the unacknowledged writes with their keys appends each at most once.
    for (room, key, i) in &unacked {
        let w = key.split('-').next().unwrap_or("w");
        let answer = rest
            .put(room, w, &json!({"i": i}), &WriteOptions::key(key))
            .await
            .expect("retry after restart");
        assert_eq!(answer.status, 200, "retry of {key}");
    }
    for room in ROOMS {
        let history = rest.history_all(room, 0).await.expect("history");
        let mut keys: Vec<_> = history.iter().filter_map(|e| e.key.clone()).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "{room}: a retried key was appended twice");
        heads.insert(room, history.len() as u64);
    }

    // The client resumes from its last id and ends with everything, once.
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&ROOMS).last_event_id(&last_id),
    )
    .await
    .expect("SSE resumes after the restart");
    let total: u64 = heads.values().sum();
    while (delivery.counts().delivered as u64) < total {
        let ev = sse.next_durable(T).await.expect("resumed event");
        delivery.received(&ev.envelope.room, ev.envelope.seq.expect("durable"));
    }
    for room in ROOMS {
        delivery.expect(room, 1..=heads[room]);
    }
    let c = delivery.counts();
    println!(
        "[restart] acknowledged={} retried={} delivered={} lost={} duplicated={}",
        acked.len(),
        unacked.len(),
        c.delivered,
        c.lost,
        c.duplicated
    );
    delivery.assert_exact("restart: SSE");

    // The WebSocket client resumes from its positions too.
    let mut ws = WsClient::connect(&server.ws_url(), None)
        .await
        .expect("ws after restart");
    ws.subscribe(&ROOMS, Some(&ws_cursor.to_string()), false)
        .await
        .expect("subscribe after restart");
    while (ws_delivery.counts().delivered as u64) < total {
        let env = ws.next_durable(T).await.expect("resumed event");
        ws_delivery.received(&env.room, env.seq.expect("durable"));
    }
    for room in ROOMS {
        ws_delivery.expect(room, 1..=heads[room]);
    }
    ws_delivery.assert_exact("restart: WebSocket");
}
