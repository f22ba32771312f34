//! Drill 1, crash mid-write: `kill -9` the server while 20 writers write (16 over HTTP, 4 over
//! WebSocket), restart it on the same SQLite file and port. Every write that got a 2xx or a
//! WebSocket ack is in the log exactly once; every subscriber resumes and ends with the same
//! state as the snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tidewire_protocol::{Envelope, Event};
use tidewire_tests::{
    Delivery, Error, Rest, Server, SseClient, SseRequest, WriteOptions, WsClient,
};

use crate::{full, report, rng, start, T};

const ROOMS: [&str; 4] = [
    "drill-crash-a",
    "drill-crash-b",
    "drill-crash-c",
    "drill-crash-d",
];
const HTTP_WRITERS: usize = 16;
const WS_WRITERS: usize = 4;
const SUBSCRIBERS: usize = 3;

/// A subscriber's view: what it received and the state it built from it.
#[derive(Default)]
struct View {
    delivery: Delivery,
    state: BTreeMap<String, BTreeMap<String, (Value, u64)>>,
    last_id: Option<String>,
}

impl View {
    fn apply(&mut self, env: &Envelope) {
        let Some(seq) = env.seq else { return };
        self.delivery.received(&env.room, seq);
        let room = self.state.entry(env.room.clone()).or_default();
        match &env.event {
            Event::ItemPut(item) => {
                room.insert(item.id.clone(), (item.value.clone(), item.version));
            }
            Event::ItemDeleted(d) => {
                room.remove(&d.id);
            }
            _ => {}
        }
    }
}

type Acked = Arc<Mutex<BTreeMap<String, Envelope>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_write_keeps_every_acknowledged_write_once() {
    let _cpu = crate::shared_cpu().await;
    let mut rng = rng("drill crash");
    let mut server = start(Server::builder().unlimited_writes());
    let rest = server.rest();
    let from_start = ROOMS.map(|r| format!("{r}=0")).join(",");

    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let sse = SseClient::connect(&server.url(), &SseRequest::rooms(&ROOMS).since(&from_start))
            .await
            .expect("SSE opens");
        subs.push(sse);
    }

    let acked: Acked = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..HTTP_WRITERS + WS_WRITERS {
        let rest = Rest::new(rest.base());
        let ws_url = server.ws_url();
        let (acked, sent, stop) = (Arc::clone(&acked), Arc::clone(&sent), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut ws = if w >= HTTP_WRITERS {
                Some(WsClient::connect(&ws_url, None).await.expect("ws writer"))
            } else {
                None
            };
            for i in 0..1_000_000usize {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let room = ROOMS[(w + i) % ROOMS.len()];
                let id = format!("w{w}-{}", i % 3);
                let key = format!("w{w}-{i}");
                let value = json!({"w": w, "i": i});
                sent.fetch_add(1, Ordering::SeqCst);
                let env = if let Some(ws) = ws.as_mut() {
                    match ws.put(room, &id, value, Some(&key), None).await {
                        Ok(Ok(env)) => Some(env),
                        _ => None,
                    }
                } else if i % 7 == 6 {
                    match rest.delete(room, &id, &WriteOptions::key(&key)).await {
                        Ok(a) if a.status == 200 => Some(a.ok()),
                        // Deleting an item that is not there is a refusal, not a crash.
                        Ok(a) if a.status == 404 => continue,
                        _ => None,
                    }
                } else {
                    match rest.put(room, &id, &value, &WriteOptions::key(&key)).await {
                        Ok(a) if a.status == 200 => Some(a.ok()),
                        _ => None,
                    }
                };
                match env {
                    Some(env) => {
                        acked.lock().unwrap().insert(key, env);
                    }
                    // Cut off by the crash: not acknowledged.
                    None => return,
                }
            }
        }));
    }

    let crash_after = if full() {
        rng.random_range(2_000..4_000usize)
    } else {
        rng.random_range(150..400usize)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
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
    let sent = sent.load(Ordering::SeqCst);
    println!(
        "[drill crash] killed after {} acknowledged of {sent} sent",
        acked.len()
    );

    // What each subscriber read before the crash.
    let mut views: Vec<View> = Vec::new();
    for mut sse in subs {
        let mut view = View::default();
        loop {
            match sse.next_durable(Duration::from_millis(300)).await {
                Ok(ev) => {
                    view.apply(&ev.envelope);
                    view.last_id = Some(ev.id);
                }
                Err(Error::Timeout { .. } | Error::Closed(_) | Error::Http(_) | Error::Sse(_)) => {
                    break
                }
                Err(e) => panic!("SSE before the crash: {e}"),
            }
        }
        views.push(view);
    }

    tokio::task::block_in_place(|| server.restart()).expect("restart on the same file and port");

    // The log holds every acknowledged write exactly once, as acknowledged, seqs 1..=n.
    let mut by_key: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
    let mut heads = BTreeMap::new();
    for room in ROOMS {
        let history = rest.history_all(room, 0).await.expect("history");
        let seqs: Vec<u64> = history.iter().filter_map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{room}: contiguous seqs"
        );
        heads.insert(room, seqs.len() as u64);
        for env in history {
            if let Some(key) = env.key.clone() {
                by_key.entry(key).or_default().push(env);
            }
        }
    }
    let mut lost = 0;
    let mut twice = 0;
    for (key, env) in &acked {
        match by_key.get(key).map(Vec::as_slice).unwrap_or(&[]) {
            [] => lost += 1,
            [one] => assert_eq!(one, env, "write {key} is in the log as acknowledged"),
            _ => twice += 1,
        }
    }
    let in_log: u64 = heads.values().sum();
    report(
        "drill crash: log",
        sent,
        acked.len(),
        in_log as usize,
        lost,
        twice,
    );
    assert_eq!(lost, 0, "acknowledged writes missing from the log");
    assert_eq!(twice, 0, "acknowledged writes in the log twice");

    // Every subscriber resumes from its last id and ends with the snapshot's state.
    let mut snapshots = BTreeMap::new();
    for room in ROOMS {
        let snap = rest.snapshot(room).await.expect("snapshot").ok();
        assert_eq!(snap.seq, heads[room], "{room}: snapshot at the head");
        snapshots.insert(room, snap);
    }
    for (n, mut view) in views.into_iter().enumerate() {
        let mut req = SseRequest::rooms(&ROOMS);
        req = match &view.last_id {
            Some(id) => req.last_event_id(id),
            None => req.since(&from_start),
        };
        let mut sse = SseClient::connect(&server.url(), &req)
            .await
            .expect("resume");
        let before = view.delivery.counts().delivered;
        while (view.delivery.counts().delivered as u64) < in_log {
            let ev = sse.next_durable(T).await.expect("resumed event");
            view.apply(&ev.envelope);
        }
        for room in ROOMS {
            view.delivery.expect(room, 1..=heads[room]);
            let want: BTreeMap<String, (Value, u64)> = snapshots[room]
                .items
                .iter()
                .map(|(id, s)| (id.clone(), (s.value.clone(), s.version)))
                .collect();
            let got = view.state.get(room).cloned().unwrap_or_default();
            assert_eq!(
                got, want,
                "subscriber {n}, {room}: state equals the snapshot"
            );
        }
        let c = view.delivery.counts();
        println!(
            "[drill crash: subscriber {n}] before crash={before} after resume={}",
            c.delivered - before
        );
        report(
            &format!("drill crash: subscriber {n}"),
            sent,
            acked.len(),
            c.delivered,
            c.lost,
            c.duplicated,
        );
        view.delivery
            .assert_exact(&format!("drill crash: subscriber {n}"));
    }
}
