//! The app's own PostgreSQL feeding rooms (`--outbox`), through the binary: `watch_table` on
//! a real table seen by a subscriber, several nodes sharing one outbox (one of them killed),
//! and a node whose outbox database is away. The SQL functions' refusals and the consumer's
//! dead letters are unit tests (`server/src/outbox/tests.rs`); the crash drill is
//! `drills/outbox_crash.rs`.
//!
//! ```text
//! cargo test -p tidewire-tests --test outbox
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;
use tidewire_protocol::{Envelope, Event};
use tidewire_tests::{metric_sum, Database, Server, SseClient, SseRequest, WriteOptions};

const T: Duration = Duration::from_secs(15);

fn node(database: Option<&str>, outbox: &str) -> Server {
    let mut b = Server::builder()
        .flag("outbox", outbox)
        .flag("outbox-poll-ms", 200)
        .unlimited_writes();
    if let Some(db) = database {
        b = b.flag("database", db);
    }
    match b.start() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tidewire.outbox")
        .fetch_one(pool)
        .await
        .expect("count the outbox")
}

/// Waits until the consumer has taken every row.
async fn drained(pool: &PgPool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while pending(pool).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox still holds {} rows",
            pending(pool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe(env: &Envelope) -> String {
    match &env.event {
        Event::ItemPut(i) => format!("{} put {}", env.room, i.id),
        Event::ItemDeleted(d) => format!("{} deleted {}", env.room, d.id),
        other => format!("{} {other:?}", env.room),
    }
}

/// Inserts, updates (one moving a row to another room, one changing its id), deletes, a
/// multi-row statement and a rolled-back transaction: the subscriber sees exactly the
/// committed changes, in order, and each room's snapshot is the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_table_mirrors_a_table_into_rooms_and_never_a_rollback() {
    let Some(app) = Database::create("tw_ob").await else {
        return;
    };
    let server = node(None, app.url());
    let pool = app.pool().await;
    let run = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    run(
        "CREATE TABLE cards (id int PRIMARY KEY, board int NOT NULL, title text);
         INSERT INTO cards VALUES (1, 1, 'before the watch');
         SELECT tidewire.watch_table('cards', $$'board-' || NEW.board$$, 'id');",
    )
    .await;
    let mut sse = SseClient::connect(
        &server.url(),
        &SseRequest::rooms(&["board-1", "board-2"]).since("board-1=0,board-2=0"),
    )
    .await
    .expect("SSE");
    run("INSERT INTO cards VALUES (2, 1, 'a')").await;
    run("INSERT INTO cards VALUES (3, 1, 'b'), (4, 2, 'c')").await;
    run("UPDATE cards SET title = 'a2' WHERE id = 2").await;
    run("UPDATE cards SET title = title").await; // changes nothing: sends nothing
    run("UPDATE cards SET board = 2 WHERE id = 3").await;
    run("UPDATE cards SET id = 40 WHERE id = 4").await;
    run("DELETE FROM cards WHERE id = 2").await;
    run("BEGIN;
         INSERT INTO cards VALUES (99, 1, 'never');
         UPDATE cards SET title = 'never' WHERE id = 1;
         DELETE FROM cards WHERE id = 40;
         ROLLBACK;")
    .await;
    let want = [
        "board-1 put 1",
        "board-1 put 2",
        "board-1 put 3",
        "board-2 put 4",
        "board-1 put 2",
        "board-1 deleted 3",
        "board-2 put 3",
        "board-2 deleted 4",
        "board-2 put 40",
        "board-1 deleted 2",
    ];
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let ev = sse.next_durable(T).await.expect("an event");
        assert!(
            !ev.envelope.encode().contains("never"),
            "a rolled-back change was delivered: {}",
            ev.envelope.encode()
        );
        got.push(describe(&ev.envelope));
    }
    // Per room, in the table's commit order (rooms may interleave differently).
    for room in ["board-1", "board-2"] {
        let of = |list: &[String]| -> Vec<String> {
            list.iter()
                .filter(|d| d.starts_with(room))
                .cloned()
                .collect()
        };
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(of(&got), of(&want), "{room}");
    }
    match sse.next_durable(Duration::from_millis(600)).await {
        Err(tidewire_tests::Error::Timeout { .. }) => {}
        other => panic!("nothing more was committed: {other:?}"),
    }
    drained(&pool, T).await;
    // Each room's snapshot is the table's rows of that board, as to_jsonb gives them.
    let table: Vec<(i32, i32, String)> =
        sqlx::query_as("SELECT id, board, to_jsonb(c)::text FROM cards c")
            .fetch_all(&pool)
            .await
            .expect("the table");
    for board in [1, 2] {
        let room = format!("board-{board}");
        let snap = server.rest().snapshot(&room).await.expect("snapshot").ok();
        let items: BTreeMap<String, Value> = snap
            .items
            .iter()
            .map(|(id, i)| (id.clone(), i.value.clone()))
            .collect();
        let want: BTreeMap<String, Value> = table
            .iter()
            .filter(|(_, b, _)| *b == board)
            .map(|(id, _, v)| (id.to_string(), serde_json::from_str(v).unwrap()))
            .collect();
        assert_eq!(items, want, "{room} is the table");
    }
    let metrics = server.rest().metrics().await.expect("metrics");
    assert_eq!(
        metric_sum(&metrics, "tidewire_outbox_ingested_total"),
        Some(want.len() as f64)
    );
    assert!(metric_sum(&metrics, "tidewire_outbox_wakeups_total").unwrap_or(0.0) >= 1.0);
    // unwatch_table: the table's changes no longer reach the room.
    run("SELECT tidewire.unwatch_table('cards'); INSERT INTO cards VALUES (5, 1, 'x')").await;
    assert_eq!(pending(&pool).await, 0);
}

/// A node whose outbox database does not answer still serves clients from its own store and
/// says so on `/healthz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_outbox_degrades_health_but_not_service() {
    let server = node(None, "postgres://postgres@127.0.0.1:1/nowhere");
    let health = server
        .rest()
        .raw(reqwest::Method::GET, "/healthz", &[], None)
        .await
        .expect("healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "degraded: outbox database unreachable");
    let put = server
        .rest()
        .put("r", "a", &json!(1), &WriteOptions::default())
        .await
        .expect("put");
    assert_eq!(put.status, 200, "the node still serves writes");
}

/// Three nodes on one outbox (and one shared store): each row is appended once, every room
/// in the app's commit order, though a node is killed while rows flow; the nodes share the
/// partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_outbox_and_a_killed_node_loses_nothing() {
    let (Some(app), Some(store)) = (
        Database::create("tw_ob").await,
        Database::create("tw_ob_store").await,
    ) else {
        return;
    };
    let mut nodes: Vec<Server> = (0..3).map(|_| node(Some(store.url()), app.url())).collect();
    let pool = app.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE commits (room text NOT NULL, n int NOT NULL, token text NOT NULL,
                               PRIMARY KEY (room, n));
         CREATE TABLE counters (room text PRIMARY KEY, n int NOT NULL);
         INSERT INTO counters SELECT 'room-' || g, 0 FROM generate_series(0, 39) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Each partition is held by exactly one node, and all three nodes hold some.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (held, holders) = partition_locks(&pool).await;
        if (held, holders) == (16, 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not shared: {held} partitions held by {holders} nodes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut writers = Vec::new();
    for w in 0..6 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = 0;
            for i in 0..120 {
                let room = format!("room-{}", (w * 7 + i * 3) % 40);
                let token = format!("w{w}-{i}");
                commit_one(&pool, &room, &token).await;
                committed += 1;
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            committed
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "the kill comes while rows flow"
    );
    tokio::task::block_in_place(|| nodes[0].kill_hard());
    // Its session ended: the others hold its partitions within a couple of poll intervals.
    let killed = tokio::time::Instant::now();
    loop {
        let (held, holders) = partition_locks(&pool).await;
        if (held, holders) == (16, 2) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "partitions not taken over: {held} held by {holders} nodes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "partitions taken over {:?} after the kill",
        killed.elapsed()
    );
    let mut committed = 0;
    for w in writers {
        committed += w.await.unwrap();
    }
    drained(&pool, Duration::from_secs(20)).await;
    assert_eq!(committed, 720);

    let survivor = nodes[1].rest();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (room, token) in
        sqlx::query_as::<_, (String, String)>("SELECT room, token FROM commits ORDER BY room, n")
            .fetch_all(&pool)
            .await
            .unwrap()
    {
        order.entry(room).or_default().push(token);
    }
    let mut seen = HashSet::new();
    for (room, tokens) in &order {
        let history = survivor.history_all(room, 0).await.expect("history");
        let delivered: Vec<String> = history
            .iter()
            .map(|e| match &e.event {
                Event::App(a) => a.data["token"].as_str().unwrap_or_default().to_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        for t in &delivered {
            assert!(seen.insert(t.clone()), "{t} appended twice");
        }
        assert_eq!(&delivered, tokens, "{room}: the app's commit order");
    }
    assert_eq!(seen.len(), 720);
    let mut busy = 0;
    for n in &nodes[1..] {
        let m = n.rest().metrics().await.expect("metrics");
        if metric_sum(&m, "tidewire_outbox_ingested_total").unwrap_or(0.0) > 0.0 {
            busy += 1;
        }
    }
    assert_eq!(busy, 2, "both surviving nodes consumed");
    drop(nodes);
}

/// Partition locks held in the app's database, and by how many sessions.
async fn partition_locks(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND classid::bigint = 1953980019
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("pg_locks")
}

/// One app transaction: publish, then take the room's next number; the number order is the
/// room's commit order (the publish holds the room until commit).
async fn commit_one(pool: &PgPool, room: &str, token: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT tidewire.publish($1, 'tick', jsonb_build_object('token', $2::text))")
        .bind(room)
        .bind(token)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "WITH c AS (UPDATE counters SET n = n + 1 WHERE room = $1 RETURNING n)
         INSERT INTO commits (room, n, token) SELECT $1, n, $2 FROM c",
    )
    .bind(room)
    .bind(token)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// A row that was valid when committed but is over a limit lowered since is a dead letter
/// with its reason; the room's later rows flow on, and the SQL functions now check the new
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_a_lowered_limit_is_a_dead_letter_and_the_room_flows_on() {
    let Some(app) = Database::create("tw_ob").await else {
        return;
    };
    // The first server installs the SQL with the default limits, then goes away.
    let mut first = node(None, app.url());
    first.kill_hard();
    let pool = app.pool().await;
    sqlx::raw_sql(
        "SELECT tidewire.put_item('r', 'before', '1');
         SELECT tidewire.put_item('r', 'big', to_jsonb(repeat('x', 2000)));
         SELECT tidewire.put_item('r', 'after', '2');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let server = match Server::builder()
        .flag("outbox", app.url())
        .flag("outbox-poll-ms", 200)
        .flag("max-item-bytes", 1000)
        .start()
    {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    drained(&pool, T).await;
    let snap = server.rest().snapshot("r").await.expect("snapshot").ok();
    let ids: Vec<&String> = snap.items.keys().collect();
    assert_eq!(ids, ["after", "before"]);
    let (id, reason): (String, String) =
        sqlx::query_as("SELECT item_id, reason FROM tidewire.dead_letters")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(id, "big");
    assert!(reason.contains("payload too large"), "{reason}");
    let metrics = server.rest().metrics().await.expect("metrics");
    assert_eq!(
        metric_sum(&metrics, "tidewire_outbox_dead_letters_total"),
        Some(1.0)
    );
    let err = sqlx::raw_sql("SELECT tidewire.put_item('r', 'big', to_jsonb(repeat('x', 2000)))")
        .execute(&pool)
        .await
        .expect_err("the SQL checks the lowered limit");
    assert!(err.to_string().contains("limit 1000"), "{err}");
}

/// The outbox database drops every connection of the node, several times, while the app
/// commits (notifications sent meanwhile are lost): the node reconnects, re-takes its
/// partitions, and the poll finds every row; the room gets them all, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_outbox_connections_lose_no_row() {
    let Some(app) = Database::create("tw_ob").await else {
        return;
    };
    let server = node(None, app.url());
    let pool = app.pool().await;
    let mut sse = SseClient::connect(&server.url(), &SseRequest::rooms(&["r"]).since("r=0"))
        .await
        .expect("SSE");
    for round in 0..5 {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND application_name NOT LIKE 'psql%'",
        )
        .execute(&pool)
        .await
        .expect("terminate");
        for i in 0..10 {
            // The pool's own connections may be among the terminated: retry once.
            let call = "SELECT tidewire.publish('r', 'tick', jsonb_build_object('n', $1::int))";
            let n = round * 10 + i;
            if sqlx::query(call).bind(n).execute(&pool).await.is_err() {
                sqlx::query(call)
                    .bind(n)
                    .execute(&pool)
                    .await
                    .expect("publish");
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut got = Vec::new();
    for _ in 0..50 {
        let ev = sse.next_durable(T).await.expect("an event");
        match &ev.envelope.event {
            Event::App(a) => got.push(a.data["n"].as_i64().unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got,
        (0..50).collect::<Vec<i64>>(),
        "every row, once, in order"
    );
    drained(&pool, T).await;
}
