//! Drill: the app's PostgreSQL feeds Tidewire through the outbox while Tidewire crashes.
//! Eight app writers run 2,000 transactions (one or two rooms each, 10 % rolled back) that
//! call `tidewire.publish`, `put_item` and `delete_item` beside their own tables; Tidewire is
//! killed with `kill -9` and restarted, killed again and left down for a while (the app keeps
//! committing), then started. An SSE and a WebSocket subscriber follow every room across the
//! restarts. Counted and asserted: every committed call is in its room's log exactly once, in
//! the app's commit order (a per-room counter the app takes in the same transaction, after
//! the call); no rolled-back call ever appears; both subscribers received exactly the log;
//! each room's snapshot is the app's table.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::PgPool;
use tidewire_protocol::{Envelope, Event};
use tidewire_tests::{Database, Error, Server, SseClient, SseRequest, WsClient};

use crate::{report, rng, start};

const ROOMS: [&str; 10] = [
    "ob-0", "ob-1", "ob-2", "ob-3", "ob-4", "ob-5", "ob-6", "ob-7", "ob-8", "ob-9",
];
const WRITERS: usize = 8;
const TRANSACTIONS: usize = 2_000;

/// What a subscriber received, per room, and what was wrong with it.
#[derive(Default)]
struct Seen {
    rooms: BTreeMap<String, Vec<Envelope>>,
    duplicated: usize,
    gaps: usize,
}

impl Seen {
    fn since(&self) -> String {
        ROOMS
            .iter()
            .map(|r| format!("{r}={}", self.last(r)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn last(&self, room: &str) -> u64 {
        self.rooms
            .get(room)
            .and_then(|v| v.last())
            .and_then(|e| e.seq)
            .unwrap_or(0)
    }

    fn push(&mut self, env: Envelope) {
        let (Some(seq), last) = (env.seq, self.last(&env.room)) else {
            return;
        };
        if seq <= last {
            self.duplicated += 1;
            return;
        }
        if seq != last + 1 {
            self.gaps += 1;
        }
        self.rooms.entry(env.room.clone()).or_default().push(env);
    }
}

/// Follows every room over SSE or WebSocket, reconnecting from where it was until `stop`.
async fn follow(ws: bool, server: (String, String), seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let (url, ws_url) = server;
    let pause = Duration::from_millis(100);
    while !stop.load(Ordering::SeqCst) {
        let since = seen.lock().unwrap().since();
        if ws {
            let Ok(mut client) = WsClient::connect(&ws_url, None).await else {
                tokio::time::sleep(pause).await;
                continue;
            };
            if client.subscribe(&ROOMS, Some(&since), false).await.is_err() {
                continue;
            }
            while !stop.load(Ordering::SeqCst) {
                match client.next_durable(Duration::from_millis(300)).await {
                    Ok(env) => seen.lock().unwrap().push(env),
                    Err(Error::Timeout { .. }) => {}
                    Err(_) => break,
                }
            }
        } else {
            let req = SseRequest::rooms(&ROOMS).since(&since);
            let Ok(mut sse) = SseClient::connect(&url, &req).await else {
                tokio::time::sleep(pause).await;
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                match sse.next_durable(Duration::from_millis(300)).await {
                    Ok(ev) => seen.lock().unwrap().push(ev.envelope),
                    Err(Error::Timeout { .. }) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// A call's token, as its envelope carries it (the key, or the data's `token`).
fn token(env: &Envelope) -> String {
    if let Some(k) = env.key.as_deref().filter(|k| !k.starts_with("outbox:")) {
        return k.to_owned();
    }
    let data = match &env.event {
        Event::App(a) => &a.data,
        Event::ItemPut(i) => &i.value,
        other => panic!("a delete always carries its key: {other:?}"),
    };
    data["token"].as_str().unwrap_or("?").to_owned()
}

/// One app transaction over `rooms` (sorted): per room one call, the app's own change made
/// before it and the room's counter taken after it. Answers the tokens of its calls, and
/// whether it committed.
async fn transaction(pool: &PgPool, rng: &mut StdRng, w: usize, i: usize) -> (Vec<String>, bool) {
    let mut rooms: Vec<usize> = vec![rng.random_range(0..ROOMS.len())];
    if rng.random_bool(0.4) {
        let other = rng.random_range(0..ROOMS.len());
        if other != rooms[0] {
            rooms.push(other);
        }
    }
    rooms.sort_unstable();
    let rollback = rng.random_bool(0.1);
    let mut tokens = Vec::new();
    let mut tx = pool.begin().await.expect("begin");
    for r in rooms {
        let room = ROOMS[r];
        let token = format!("w{w}-{i}-{r}");
        let key = rng.random_bool(0.5).then(|| token.clone());
        let kind = rng.random_range(0..10);
        let mut deleted = None;
        if kind >= 8 {
            deleted = sqlx::query_scalar::<_, String>(
                "DELETE FROM items WHERE room = $1 AND id = (
                     SELECT id FROM items WHERE room = $1 ORDER BY random() LIMIT 1)
                 RETURNING id",
            )
            .bind(room)
            .fetch_optional(&mut *tx)
            .await
            .expect("app delete");
        }
        let call = if let Some(id) = deleted {
            sqlx::query("SELECT tidewire.delete_item($1, $2, $3)")
                .bind(room)
                .bind(id)
                .bind(&token)
        } else if kind >= 4 {
            let id = format!("i{}", rng.random_range(0..8));
            sqlx::query(
                "INSERT INTO items (room, id, value) VALUES ($1, $2, jsonb_build_object('token', $3::text))
                 ON CONFLICT (room, id) DO UPDATE SET value = excluded.value",
            )
            .bind(room)
            .bind(&id)
            .bind(&token)
            .execute(&mut *tx)
            .await
            .expect("app put");
            sqlx::query(
                "SELECT tidewire.put_item($1, $2, jsonb_build_object('token', $3::text), $4)",
            )
            .bind(room)
            .bind(id)
            .bind(&token)
            .bind(key)
        } else {
            sqlx::query(
                "SELECT tidewire.publish($1, 'tick', jsonb_build_object('token', $2::text), $3)",
            )
            .bind(room)
            .bind(&token)
            .bind(key)
        };
        call.execute(&mut *tx).await.expect("tidewire call");
        sqlx::query(
            "WITH c AS (UPDATE counters SET n = n + 1 WHERE room = $1 RETURNING n)
             INSERT INTO commits (room, n, token) SELECT $1, n, $2 FROM c",
        )
        .bind(room)
        .bind(&token)
        .execute(&mut *tx)
        .await
        .expect("counter");
        tokens.push(token);
    }
    if rollback {
        tx.rollback().await.expect("rollback");
    } else {
        tx.commit().await.expect("commit");
    }
    (tokens, !rollback)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_crash_delivers_every_committed_call_once_in_commit_order() {
    let _cpu = crate::shared_cpu().await;
    let Some(app) = Database::create("tw_ob_drill").await else {
        return;
    };
    let mut seeds = rng("drill outbox crash");
    let pool = app.pool().await;
    let mut server = start(
        Server::builder()
            .flag("outbox", app.url())
            .flag("outbox-poll-ms", 200)
            .unlimited_writes(),
    );
    sqlx::raw_sql(
        "CREATE TABLE items (room text, id text, value jsonb NOT NULL, PRIMARY KEY (room, id));
         CREATE TABLE counters (room text PRIMARY KEY, n int NOT NULL);
         CREATE TABLE commits (room text, n int, token text NOT NULL, PRIMARY KEY (room, n));",
    )
    .execute(&pool)
    .await
    .unwrap();
    for room in ROOMS {
        sqlx::query("INSERT INTO counters VALUES ($1, 0)")
            .bind(room)
            .execute(&pool)
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (sse_seen, ws_seen) = (Arc::<Mutex<Seen>>::default(), Arc::<Mutex<Seen>>::default());
    let urls = (server.url(), server.ws_url());
    let subscribers = [
        tokio::spawn(follow(false, urls.clone(), sse_seen.clone(), stop.clone())),
        tokio::spawn(follow(true, urls, ws_seen.clone(), stop.clone())),
    ];

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        let mut rng = StdRng::seed_from_u64(seeds.random());
        writers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..TRANSACTIONS / WRITERS {
                out.push(transaction(&pool, &mut rng, w, i).await);
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..25))).await;
            }
            out
        }));
    }
    // Crash, restart; crash, stay down while the app commits, start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| server.restart()).expect("restart after kill -9");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| server.kill_hard());
    let down_while: i64 = sqlx::query_scalar("SELECT count(*) FROM tidewire.outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pending_at_start: i64 = sqlx::query_scalar("SELECT count(*) FROM tidewire.outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        pending_at_start > down_while,
        "the app committed while Tidewire was down ({down_while} → {pending_at_start} rows)"
    );
    tokio::task::block_in_place(|| server.restart()).expect("start after the outage");

    let mut committed: HashSet<String> = HashSet::new();
    let mut rolled_back: HashSet<String> = HashSet::new();
    for w in writers {
        for (tokens, ok) in w.await.expect("writer") {
            if ok { &mut committed } else { &mut rolled_back }.extend(tokens);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tidewire.outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} rows still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The log of each room is exactly the app's committed calls, in commit order.
    let rest = server.rest();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (room, token) in
        sqlx::query_as::<_, (String, String)>("SELECT room, token FROM commits ORDER BY room, n")
            .fetch_all(&pool)
            .await
            .unwrap()
    {
        order.entry(room).or_default().push(token);
    }
    let mut logs: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
    let (mut delivered, mut lost, mut twice) = (0, 0, 0);
    for room in ROOMS {
        let log = rest.history_all(room, 0).await.expect("history");
        let tokens: Vec<String> = log.iter().map(token).collect();
        let mut once = HashSet::new();
        for t in &tokens {
            assert!(
                !rolled_back.contains(t),
                "{room}: rolled-back call {t} delivered"
            );
            if !once.insert(t.clone()) {
                twice += 1;
            }
        }
        let want = order.remove(room).unwrap_or_default();
        lost += want.iter().filter(|t| !once.contains(*t)).count();
        delivered += tokens.len();
        assert_eq!(tokens, want, "{room}: the log is the app's commit order");
        // The snapshot is the app's table.
        let snap = rest.snapshot(room).await.expect("snapshot").ok();
        let items: BTreeMap<String, Value> = snap
            .items
            .iter()
            .map(|(id, i)| (id.clone(), i.value.clone()))
            .collect();
        let table: BTreeMap<String, Value> = sqlx::query_as::<_, (String, String)>(
            "SELECT id, value::text FROM items WHERE room = $1",
        )
        .bind(room)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, v)| (id, serde_json::from_str(&v).unwrap()))
        .collect();
        assert_eq!(items, table, "{room}: the snapshot is the app's table");
        logs.insert(room.to_owned(), log);
    }
    assert_eq!(delivered, committed.len(), "every committed call, once");
    report(
        "drill outbox crash",
        committed.len() + rolled_back.len(),
        committed.len(),
        delivered,
        lost,
        twice,
    );
    println!(
        "[drill outbox crash] rolled back={} rows committed while down={}",
        rolled_back.len(),
        pending_at_start - down_while
    );

    // Both subscribers, across the crashes, received exactly the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (name, seen) in [("sse", &sse_seen), ("ws", &ws_seen)] {
        loop {
            let done = {
                let s = seen.lock().unwrap();
                ROOMS.iter().all(|r| s.last(r) == logs[*r].len() as u64)
            };
            if done {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} subscriber is behind"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = seen.lock().unwrap();
        assert_eq!((s.duplicated, s.gaps), (0, 0), "{name}: duplicates, gaps");
        for room in ROOMS {
            let got: Vec<String> = s
                .rooms
                .get(room)
                .map(|v| v.iter().map(token).collect())
                .unwrap_or_default();
            let want: Vec<String> = logs[room].iter().map(token).collect();
            assert_eq!(got, want, "{name} {room}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    for s in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
}
