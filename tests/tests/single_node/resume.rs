//! Resume is exact on every transport: after a disconnect a client that presents its last
//! position gets every durable event after it, once, in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;
use tidewire_protocol::{Cursor, Envelope};
use tidewire_tests::{
    Delivery, Error, PollClient, Rest, Server, SseClient, SseRequest, WriteOptions, WsClient,
};

use crate::{rng, start, T};

const ROOMS: [&str; 2] = ["r0", "r1"];
const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    SseHeader,
    SseSince,
    Ws,
    Poll,
}

/// Writes `n` events to `room` (alternating puts and app events) and returns their seqs.
async fn write_n(rest: &Rest, room: &str, n: usize, tag: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let key = format!("{tag}-{room}-{i}");
        let answer = if i % 2 == 0 {
            rest.put(
                room,
                &format!("item-{i}"),
                &json!({"i": i}),
                &WriteOptions::key(key),
            )
            .await
        } else {
            rest.publish(room, "test.tick", &json!({"i": i}), &WriteOptions::key(key))
                .await
        };
        let env = answer.expect("write reaches the server").ok();
        seqs.push(env.seq.expect("durable events carry a seq"));
    }
    seqs
}

/// Opens a live stream of `ROOMS` on `transport` from `cursor` and reads `n` durable events.
/// Poll clients poll until they have `n`.
async fn read_from(server: &Server, transport: Transport, cursor: &str, n: usize) -> Vec<Envelope> {
    let mut out = Vec::new();
    match transport {
        Transport::SseHeader | Transport::SseSince => {
            let req = SseRequest::rooms(&ROOMS);
            let req = if transport == Transport::SseHeader {
                req.last_event_id(cursor)
            } else {
                req.since(cursor)
            };
            let mut sse = SseClient::connect(&server.url(), &req)
                .await
                .expect("SSE opens");
            for _ in 0..n {
                out.push(sse.next_durable(T).await.expect("durable event").envelope);
            }
        }
        Transport::Ws => {
            let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
            let start = ws
                .subscribe(&ROOMS, Some(cursor), false)
                .await
                .expect("subscribe");
            assert_same_cursor(&start, cursor, "subscribe ack cursor");
            assert_eq!(
                ws.queued(),
                0,
                "events of a room come after its subscribe ack"
            );
            for _ in 0..n {
                out.push(ws.next_durable(T).await.expect("durable event"));
            }
        }
        Transport::Poll => {
            let mut poll = PollClient::new(server.rest(), &ROOMS);
            poll.set_cursor(cursor);
            for _ in 0..20 {
                out.extend(poll.poll(1).await.expect("poll"));
                if out.len() >= n {
                    break;
                }
            }
        }
    }
    out
}

fn assert_same_cursor(got: &str, want: &str, what: &str) {
    let got: Cursor = got
        .parse()
        .unwrap_or_else(|e| panic!("{what} `{got}`: {e}"));
    let want: Cursor = want.parse().expect("test cursor");
    for (room, seq) in want.iter() {
        assert_eq!(got.get(room), Some(seq), "{what}: `{got}` vs `{want}`");
    }
}

/// A client reads 5 events, disconnects, 7 writes happen, it resumes and gets exactly those
/// 7 in order, and the next live event follows them.
async fn exact_after_gap(transport: Transport) {
    let server = start(Server::builder());
    let rest = server.rest();
    write_n(&rest, "r0", 3, "a").await;
    write_n(&rest, "r1", 2, "a").await;

    let first = read_from(&server, transport, "r0=0,r1=0", 5).await;
    let seqs: Vec<(String, u64)> = first
        .iter()
        .map(|e| (e.room.clone(), e.seq.unwrap()))
        .collect();
    let mut delivered = Delivery::default();
    delivered.expect("r0", 1..=3);
    delivered.expect("r1", 1..=2);
    for (room, seq) in &seqs {
        delivered.received(room, *seq);
    }
    delivered.assert_exact(&format!("{transport:?} initial read"));

    // Disconnected: 7 writes.
    let r0 = write_n(&rest, "r0", 4, "b").await;
    let r1 = write_n(&rest, "r1", 3, "b").await;
    assert_eq!(r0, vec![4, 5, 6, 7]);
    assert_eq!(r1, vec![3, 4, 5]);

    let resumed = read_from(&server, transport, "r0=3,r1=2", 7).await;
    let mut gap = Delivery::default();
    gap.expect("r0", r0.iter().copied());
    gap.expect("r1", r1.iter().copied());
    for env in &resumed {
        gap.received(&env.room, env.seq.unwrap());
    }
    println!(
        "[{transport:?} gap] sent=7 acknowledged=7 delivered={}",
        resumed.len()
    );
    gap.assert_exact(&format!("{transport:?} resume after 7 writes"));

    // The stream continues live right after the gap: the next event is the next write.
    if transport != Transport::Poll {
        let mut live = match transport {
            Transport::Ws => None,
            _ => Some(
                SseClient::connect(&server.url(), &SseRequest::rooms(&ROOMS).since("r0=7,r1=5"))
                    .await
                    .expect("SSE opens"),
            ),
        };
        let mut ws = match transport {
            Transport::Ws => {
                let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
                ws.subscribe(&ROOMS, Some("r0=7,r1=5"), false)
                    .await
                    .expect("subscribe");
                Some(ws)
            }
            _ => None,
        };
        let next = write_n(&rest, "r0", 1, "c").await;
        let env = match (&mut live, &mut ws) {
            (Some(sse), _) => sse.next_durable(T).await.expect("live event").envelope,
            (_, Some(ws)) => ws.next_durable(T).await.expect("live event"),
            _ => unreachable!(),
        };
        assert_eq!((env.room.as_str(), env.seq), ("r0", Some(next[0])));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_resume_is_exact() {
    exact_after_gap(Transport::SseHeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_since_resume_is_exact() {
    exact_after_gap(Transport::SseSince).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_subscribe_since_resume_is_exact() {
    exact_after_gap(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_since_resume_is_exact() {
    exact_after_gap(Transport::Poll).await;
}

/// Concurrent writers; every acknowledged envelope is recorded.
struct Writers {
    acked: Arc<Mutex<Vec<Envelope>>>,
    failures: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

fn spawn_writers(rest: &Rest, seed: u64) -> Writers {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let rest = rest.clone();
        let acked = Arc::clone(&acked);
        let failures = Arc::clone(&failures);
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64 + 1));
            for i in 0..WRITES_PER_WRITER {
                let room = ROOMS[rng.random_range(0..ROOMS.len())];
                let key = format!("w{w}-{i}");
                let answer = if rng.random_bool(0.7) {
                    let id = format!("w{w}-item-{}", i % 5);
                    rest.put(room, &id, &json!({"w": w, "i": i}), &WriteOptions::key(key))
                        .await
                } else {
                    rest.publish(
                        room,
                        "test.tick",
                        &json!({"w": w, "i": i}),
                        &WriteOptions::key(key),
                    )
                    .await
                };
                match answer {
                    Ok(a) => match a.body {
                        Ok(env) => acked.lock().unwrap().push(env),
                        Err(p) => failures.lock().unwrap().push(format!("{} {p:?}", a.status)),
                    },
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                let pause = rng.random_range(0..4);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    let all_done = Arc::clone(&done);
    let joins = std::mem::take(&mut handles);
    handles.push(tokio::spawn(async move {
        for h in joins {
            h.await.expect("writer task");
        }
        all_done.store(true, Ordering::SeqCst);
    }));
    Writers {
        acked,
        failures,
        done,
        handles,
    }
}

/// The client's view: its position per room and everything it received.
#[derive(Default)]
struct Reader {
    positions: BTreeMap<String, u64>,
    received: Vec<(String, u64)>,
    reconnects: usize,
}

impl Reader {
    fn cursor(&self) -> String {
        let mut c = Cursor::new();
        for room in ROOMS {
            c.set(room, self.positions.get(room).copied().unwrap_or(0));
        }
        c.to_string()
    }

    fn take(&mut self, env: &Envelope) {
        let seq = env.seq.expect("durable");
        self.received.push((env.room.clone(), seq));
        self.positions.insert(env.room.clone(), seq);
    }

    fn unique(&self) -> usize {
        let set: std::collections::BTreeSet<_> = self.received.iter().collect();
        set.len()
    }
}

/// 4 writers x 50 writes over 2 rooms while a client disconnects at random points and resumes;
/// nothing is lost or duplicated.
async fn random_disconnects(transport: Transport) {
    let label = format!("{transport:?} random disconnects");
    let mut rng = rng(&label);
    let seed: u64 = rng.random();
    let server = start(Server::builder().unlimited_writes());
    let writers = spawn_writers(&server.rest(), seed);
    let mut reader = Reader::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "[{label}] did not converge: received {} of {} acknowledged",
            reader.unique(),
            writers.acked.lock().unwrap().len()
        );
        let finished = writers.done.load(Ordering::SeqCst);
        let total = writers.acked.lock().unwrap().len();
        if finished && reader.unique() >= total {
            break;
        }
        reader.reconnects += 1;
        let budget = rng.random_range(1..=25usize);
        let cursor = reader.cursor();
        match transport {
            Transport::SseHeader | Transport::SseSince => {
                let req = SseRequest::rooms(&ROOMS);
                let req = if transport == Transport::SseHeader {
                    req.last_event_id(&cursor)
                } else {
                    req.since(&cursor)
                };
                let mut sse = SseClient::connect(&server.url(), &req)
                    .await
                    .expect("SSE opens");
                for _ in 0..budget {
                    match sse.next_durable(Duration::from_millis(300)).await {
                        Ok(ev) => {
                            // The id is the cursor of every room after this event.
                            let id: Cursor = ev.id.parse().unwrap_or_else(|e| {
                                panic!("[{label}] SSE id `{}` is no cursor: {e}", ev.id)
                            });
                            reader.take(&ev.envelope);
                            for room in ROOMS {
                                assert_eq!(
                                    id.get(room),
                                    Some(reader.positions.get(room).copied().unwrap_or(0)),
                                    "[{label}] id `{}` after {} seq {:?}",
                                    ev.id,
                                    ev.envelope.room,
                                    ev.envelope.seq
                                );
                            }
                        }
                        Err(Error::Timeout { .. }) => break,
                        Err(e) => panic!("[{label}] SSE: {e}"),
                    }
                }
            }
            Transport::Ws => {
                let mut ws = WsClient::connect(&server.ws_url(), None).await.expect("ws");
                let start = ws
                    .subscribe(&ROOMS, Some(&cursor), false)
                    .await
                    .expect("subscribe");
                assert_same_cursor(&start, &cursor, "subscribe ack cursor");
                for _ in 0..budget {
                    match ws.next_durable(Duration::from_millis(300)).await {
                        Ok(env) => reader.take(&env),
                        Err(Error::Timeout { .. }) => break,
                        Err(e) => panic!("[{label}] WS: {e}"),
                    }
                }
                if rng.random_bool(0.5) {
                    let _ = ws.close().await;
                }
            }
            Transport::Poll => {
                let mut poll = PollClient::new(server.rest(), &ROOMS);
                poll.set_cursor(&cursor);
                // Sometimes the answer is lost on the way (the request is abandoned, or the
                // answer dropped): the next poll from the same cursor must bring it again.
                let abandon = rng.random_bool(0.25);
                let drop_answer = rng.random_bool(0.2);
                let wait = Duration::from_millis(rng.random_range(1..40));
                let answer = if abandon {
                    tokio::time::timeout(wait, poll.poll(1)).await.ok()
                } else {
                    Some(poll.poll(1).await)
                };
                if let Some(answer) = answer {
                    let events = answer.unwrap_or_else(|e| panic!("[{label}] poll: {e}"));
                    if !drop_answer {
                        for env in &events {
                            reader.take(env);
                        }
                        if let Some(c) = poll.cursor() {
                            assert_same_cursor(c, &reader.cursor(), "poll answer cursor");
                        }
                    }
                }
            }
        }
        let pause = rng.random_range(0..10);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    for h in writers.handles {
        h.await.expect("writers");
    }
    let failures = writers.failures.lock().unwrap().clone();
    let acked = writers.acked.lock().unwrap().clone();
    let mut delivery = Delivery::default();
    let mut by_room: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for env in &acked {
        by_room
            .entry(env.room.clone())
            .or_default()
            .push(env.seq.expect("acked durable"));
    }
    for (room, seqs) in &mut by_room {
        seqs.sort_unstable();
        let contiguous: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, &contiguous,
            "[{label}] acknowledged seqs of {room} are 1..=n"
        );
        delivery.expect(room, seqs.iter().copied());
    }
    for (room, seq) in &reader.received {
        delivery.received(room, *seq);
    }
    let c = delivery.counts();
    println!(
        "[{label}] sent={} acknowledged={} delivered={} lost={} duplicated={} reconnects={}",
        WRITERS * WRITES_PER_WRITER,
        acked.len(),
        c.delivered,
        c.lost,
        c.duplicated,
        reader.reconnects
    );
    assert!(failures.is_empty(), "[{label}] writes failed: {failures:?}");
    delivery.assert_exact(&label);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_last_event_id_random_disconnects_lose_nothing() {
    random_disconnects(Transport::SseHeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_since_random_disconnects_lose_nothing() {
    random_disconnects(Transport::SseSince).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_random_disconnects_lose_nothing() {
    random_disconnects(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_random_disconnects_lose_nothing() {
    random_disconnects(Transport::Poll).await;
}

/// One SSE connection over two rooms: each `id:` is the cursor of both rooms, and resuming
/// from it continues both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_id_cursor_covers_every_room() {
    let server = start(Server::builder());
    let rest = server.rest();
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&ROOMS).since("r0=0,r1=0"))
        .await
        .expect("SSE opens");
    write_n(&rest, "r0", 2, "a").await;
    write_n(&rest, "r1", 1, "a").await;
    write_n(&rest, "r0", 1, "b").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let ev = sse.next_durable(T).await.expect("event");
        let id: Cursor = ev.id.parse().expect("id is a cursor");
        ids.push((id.get("r0"), id.get("r1")));
    }
    // The stream opened with the default reconnection delay.
    let raw = sse.raw_text();
    let retry = raw
        .lines()
        .find(|l| !l.is_empty())
        .and_then(|l| l.strip_prefix("retry:"))
        .map(|v| v.trim().parse::<u64>());
    assert_eq!(retry, Some(Ok(1000)), "the default `retry:`\n{raw}");
    assert_eq!(
        ids,
        vec![
            (Some(1), Some(0)),
            (Some(2), Some(0)),
            (Some(2), Some(1)),
            (Some(3), Some(1)),
        ]
    );
    drop(sse);
    write_n(&rest, "r1", 1, "c").await;
    write_n(&rest, "r0", 1, "c").await;
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&ROOMS).last_event_id("r0=3,r1=1"),
    )
    .await
    .expect("SSE opens");
    let mut got = Vec::new();
    for _ in 0..2 {
        let env = sse.next_durable(T).await.expect("event").envelope;
        got.push((env.room, env.seq));
    }
    // Replay order across rooms is free; within a room it is by seq.
    got.sort();
    assert_eq!(
        got,
        vec![("r0".to_owned(), Some(4)), ("r1".to_owned(), Some(2))]
    );
}
