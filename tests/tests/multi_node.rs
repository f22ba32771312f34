//! Several `tidewire` nodes sharing one PostgreSQL and one Redis: fan-out across nodes, a
//! contiguous `seq` under concurrent writers on every node, resume on another node after a
//! kill, a Redis restart and bus messages dropped on purpose without a lost event, and
//! presence across nodes with expiry when a node dies.
//!
//! Every test makes its own database (`tidewire_test_<ulid>`, dropped at the end) and its own
//! Redis key prefix (deleted at the end). The services are started when they are down (as
//! root); when they still do not answer the tests FAIL, unless `TIDEWIRE_SKIP_SERVICES=1`,
//! when they print `SKIPPED: …` and return.
//!
//! ```text
//! CARGO_TARGET_DIR=target-multi cargo test -p tidewire-tests --test multi_node
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tidewire_protocol::{Cursor, Envelope, ErrorCode};
use tidewire_tests::{
    metric_sum, Delivery, Rest, Server, SseClient, SseRequest, WriteOptions, WsClient,
};

const T: Duration = Duration::from_secs(10);
const PG_ADMIN: &str = "postgres://root@127.0.0.1:5432/postgres";
const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_for(what: &str, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{what} still not reachable");
    false
}

/// PostgreSQL and Redis answer, or were started; `false` (after a loud `SKIPPED:` line) only
/// with `TIDEWIRE_SKIP_SERVICES=1`.
fn services() -> bool {
    let pg = || sh("pg_isready -q -h 127.0.0.1 -p 5432");
    let redis = || sh("redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG");
    if !pg() {
        sh("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start");
    }
    if !redis() {
        sh("mkdir -p /var/lib/redis /var/log/redis; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log");
    }
    let ok = wait_for("PostgreSQL", pg) && wait_for("Redis", redis);
    if !ok {
        if std::env::var("TIDEWIRE_SKIP_SERVICES").as_deref() == Ok("1") {
            eprintln!("SKIPPED: PostgreSQL ({PG_ADMIN}) or Redis ({SHARED_REDIS}) not reachable");
            return false;
        }
        panic!("PostgreSQL ({PG_ADMIN}) or Redis ({SHARED_REDIS}) not reachable and could not be started; set TIDEWIRE_SKIP_SERVICES=1 to skip");
    }
    true
}

/// One test's database and Redis prefix; both removed on drop.
struct Deployment {
    db_name: String,
    redis: String,
    prefix: String,
    redis_port: u16,
}

impl Deployment {
    fn new(redis: Option<(String, u16)>) -> Option<Deployment> {
        if !services() {
            return None;
        }
        let id = format!("{:016x}", rand::random::<u64>());
        let db_name = format!("tidewire_test_{id}");
        assert!(
            sh(&format!(
                "psql -h 127.0.0.1 -U root -d postgres -qc 'CREATE DATABASE {db_name}'"
            )),
            "create database {db_name}"
        );
        let (redis, redis_port) = redis.unwrap_or((SHARED_REDIS.into(), 6379));
        Some(Deployment {
            db_name,
            redis,
            prefix: format!("tw-test-{id}:"),
            redis_port,
        })
    }

    fn database(&self) -> String {
        format!("postgres://root@127.0.0.1:5432/{}", self.db_name)
    }

    fn node(&self, extra: &[(&str, &str)]) -> Server {
        let mut b = Server::builder()
            .flag("database", self.database())
            .flag("redis", &self.redis)
            .flag("redis-prefix", &self.prefix)
            .unlimited_writes();
        for (k, v) in extra {
            b = b.flag(k, v);
        }
        match b.start() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        sh(&format!(
            "psql -h 127.0.0.1 -U root -d postgres -qc 'DROP DATABASE IF EXISTS {} WITH (FORCE)'",
            self.db_name
        ));
        sh(&format!(
            "redis-cli -p {} --scan --pattern '{}*' | xargs -r redis-cli -p {} del",
            self.redis_port, self.prefix, self.redis_port
        ));
    }
}

/// A private `redis-server` on a free port, which a test may restart.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut r = PrivateRedis { port, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let port = self.port;
        assert!(wait_for("the private Redis", || sh(&format!(
            "redis-cli -p {port} ping | grep -q PONG"
        ))));
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes `n` events to `room` through `rest`, answering their seqs.
async fn write_n(rest: &Rest, room: &str, n: usize, pause: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let env = rest
            .publish(room, "n", &json!({ "i": i }), &WriteOptions::default())
            .await
            .expect("write")
            .ok();
        seqs.push(env.seq.expect("durable"));
        if started.elapsed() > Duration::from_millis(500) {
            println!("write {i} to {room} took {:?}", started.elapsed());
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    seqs
}

/// Reads durable events from an SSE stream into `d` until `count` arrived.
async fn sse_collect(sse: &mut SseClient, d: &mut Delivery, count: usize) -> Option<String> {
    let mut last = None;
    for _ in 0..count {
        let ev = sse.next_durable(T).await.expect("sse event");
        d.received(&ev.envelope.room, ev.envelope.seq.unwrap_or_default());
        last = Some(ev.id);
    }
    last
}

async fn ws_collect(ws: &mut WsClient, d: &mut Delivery, count: usize) {
    for _ in 0..count {
        let env: Envelope = ws.next_durable(T).await.expect("ws event");
        d.received(&env.room, env.seq.unwrap_or_default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fan_out_and_keep_seq_contiguous_under_concurrent_writers() {
    let Some(dep) = Deployment::new(None) else {
        return;
    };
    let nodes = [dep.node(&[]), dep.node(&[]), dep.node(&[])];
    let rooms = ["m0", "m1"];
    let mut sse_b = SseClient::connect(
        &nodes[1].url(),
        &SseRequest::rooms(&rooms).since("m0=0,m1=0"),
    )
    .await
    .expect("sse on B");
    let mut ws_c = WsClient::connect(&nodes[2].ws_url(), None)
        .await
        .expect("ws on C");
    ws_c.subscribe(&rooms, Some("m0=0,m1=0"), false)
        .await
        .expect("subscribe on C");

    // Writers on all three nodes, both rooms, at once.
    const PER: usize = 20;
    let mut tasks = Vec::new();
    for node in &nodes {
        for room in rooms {
            let rest = node.rest();
            tasks.push(tokio::spawn(async move {
                (room, write_n(&rest, room, PER, Duration::ZERO).await)
            }));
        }
    }
    let mut answered: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for t in tasks {
        let (room, seqs) = t.await.expect("writer");
        answered.entry(room).or_default().extend(seqs);
    }
    let mut expected = Delivery::default();
    for (room, seqs) in &mut answered {
        seqs.sort_unstable();
        let want: Vec<u64> = (1..=(3 * PER) as u64).collect();
        assert_eq!(seqs, &want, "room {room}: contiguous, no duplicates");
        expected.expect(room, want);
    }
    let total = 2 * 3 * PER;
    let mut d_sse = expected.clone();
    sse_collect(&mut sse_b, &mut d_sse, total).await;
    d_sse.assert_exact("SSE on node B");
    let mut d_ws = expected;
    ws_collect(&mut ws_c, &mut d_ws, total).await;
    d_ws.assert_exact("WS on node C");
    // The log itself, read from node A.
    let log = nodes[0].rest().history_all("m0", 0).await.expect("history");
    let seqs: Vec<u64> = log.iter().filter_map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=(3 * PER) as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_with_nothing_lost_or_duplicated() {
    let Some(dep) = Deployment::new(None) else {
        return;
    };
    let mut a = dep.node(&[]);
    let b = dep.node(&[]);
    let room = "k";
    let mut sse = SseClient::connect(&a.url(), &SseRequest::rooms(&[room]).since("k=0"))
        .await
        .expect("sse on A");
    let mut ws = WsClient::connect(&a.ws_url(), None).await.expect("ws on A");
    ws.subscribe(&[room], Some("k=0"), false)
        .await
        .expect("subscribe");

    const N: usize = 60;
    let rest_b = b.rest();
    let writer =
        tokio::spawn(async move { write_n(&rest_b, room, N, Duration::from_millis(15)).await });

    let mut d_sse = Delivery::default();
    let mut d_ws = Delivery::default();
    let last_id = sse_collect(&mut sse, &mut d_sse, 15).await.expect("an id");
    let mut ws_pos = 0;
    for _ in 0..15 {
        let env = ws.next_durable(T).await.expect("ws event");
        ws_pos = env.seq.unwrap_or_default();
        d_ws.received(room, ws_pos);
    }
    a.kill_hard();
    drop(sse);
    drop(ws);

    // Reconnect to B: SSE with Last-Event-ID, WS with `since`.
    let mut sse = SseClient::connect(
        &b.url(),
        &SseRequest::rooms(&[room]).last_event_id(&last_id),
    )
    .await
    .expect("sse on B");
    let mut ws = WsClient::connect(&b.ws_url(), None).await.expect("ws on B");
    let mut cursor = Cursor::new();
    cursor.set(room, ws_pos);
    ws.subscribe(&[room], Some(&cursor.to_string()), false)
        .await
        .expect("resubscribe");
    let seqs = writer.await.expect("writer");
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    d_sse.expect(room, seqs.clone());
    d_ws.expect(room, seqs);
    sse_collect(&mut sse, &mut d_sse, N - 15).await;
    d_sse.assert_exact("SSE moved from A to B");
    ws_collect(&mut ws, &mut d_ws, N - ws_pos as usize).await;
    d_ws.assert_exact("WS moved from A to B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_bus_messages_lose_no_client_event() {
    let Some(dep) = Deployment::new(None) else {
        return;
    };
    // Node A drops every third durable message it should publish, including the last one.
    let a = dep.node(&[("bus-drop-every", "3")]);
    let b = dep.node(&[]);
    let room = "d";
    let mut sse = SseClient::connect(&b.url(), &SseRequest::rooms(&[room]).since("d=0"))
        .await
        .expect("sse on B");
    let mut ws = WsClient::connect(&b.ws_url(), None).await.expect("ws on B");
    ws.subscribe(&[room], Some("d=0"), false)
        .await
        .expect("subscribe");
    const N: usize = 30;
    let seqs = write_n(&a.rest(), room, N, Duration::from_millis(5)).await;
    let mut d_sse = Delivery::default();
    d_sse.expect(room, seqs.clone());
    let mut d_ws = d_sse.clone();
    sse_collect(&mut sse, &mut d_sse, N).await;
    d_sse.assert_exact("SSE on B, a third of the bus dropped");
    ws_collect(&mut ws, &mut d_ws, N).await;
    d_ws.assert_exact("WS on B, a third of the bus dropped");
    // The drops really happened, and B filled them from the store.
    let metrics = b.rest().metrics().await.expect("metrics");
    let filled = metric_sum(&metrics, "tidewire_bus_gaps_filled_total").unwrap_or(0.0);
    assert!(filled >= 1.0, "B filled no gap:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_during_traffic_loses_no_client_event() {
    let mut redis = PrivateRedis::start();
    let Some(dep) = Deployment::new(Some((redis.url(), redis.port))) else {
        return;
    };
    let a = dep.node(&[]);
    let b = dep.node(&[]);
    let room = "rr";
    let mut sse = SseClient::connect(&b.url(), &SseRequest::rooms(&[room]).since("rr=0"))
        .await
        .expect("sse on B");
    let mut ws = WsClient::connect(&b.ws_url(), None).await.expect("ws on B");
    ws.subscribe(&[room], Some("rr=0"), false)
        .await
        .expect("subscribe");
    const N: usize = 60;
    let rest_a = a.rest();
    let writer =
        tokio::spawn(async move { write_n(&rest_a, room, N, Duration::from_millis(25)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _redis = tokio::task::spawn_blocking(move || {
        redis.spawn();
        redis
    })
    .await
    .expect("restart redis");
    let seqs = writer.await.expect("writer");
    let mut d_sse = Delivery::default();
    d_sse.expect(room, seqs);
    let mut d_ws = d_sse.clone();
    sse_collect(&mut sse, &mut d_sse, N).await;
    d_sse.assert_exact("SSE on B across a Redis restart");
    ws_collect(&mut ws, &mut d_ws, N).await;
    d_ws.assert_exact("WS on B across a Redis restart");
    // And the bus itself came back: node B subscribed again after the restart.
    let deadline = Instant::now() + T;
    while b.log().matches("subscribed to the Redis bus").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "B never resubscribed:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_seen_across_nodes_and_a_killed_node_s_members_expire() {
    let Some(dep) = Deployment::new(None) else {
        return;
    };
    let quick = [
        ("idle-timeout-secs", "2"),
        ("heartbeat-secs", "1"),
        ("presence-grace-ms", "300"),
    ];
    let mut a = dep.node(&quick);
    let b = dep.node(&quick);
    let room = "p";
    let mut watcher = WsClient::connect(&b.ws_url(), Some("watcher"))
        .await
        .expect("ws on B");
    watcher
        .subscribe(&[room], None, true)
        .await
        .expect("subscribe");
    let mut ada = WsClient::connect(&a.ws_url(), Some("ada"))
        .await
        .expect("ws on A");
    ada.subscribe(&[room], None, false)
        .await
        .expect("subscribe");
    ada.presence(room, json!({"name": "Ada"}))
        .await
        .expect("join");

    let join = watcher
        .next_of_type("presence.join", T)
        .await
        .expect("B's client sees the join on A");
    assert!(join.encode().contains("\"ada\""), "{}", join.encode());
    let list = b.rest().presence(room).await.expect("presence").ok();
    let text = serde_json::to_string(&list).expect("json");
    assert!(text.contains("\"ada\""), "node B lists ada: {text}");

    let killed = Instant::now();
    a.kill_hard();
    drop(ada);
    let leave = watcher
        .next_of_type("presence.leave", T)
        .await
        .expect("ada leaves after the TTL");
    assert!(leave.encode().contains("\"ada\""), "{}", leave.encode());
    println!("ada left {:?} after node A died", killed.elapsed());
    let list = b.rest().presence(room).await.expect("presence").ok();
    let text = serde_json::to_string(&list).expect("json");
    assert!(!text.contains("\"ada\""), "ada is gone: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_if_match_hold_across_nodes() {
    let Some(dep) = Deployment::new(None) else {
        return;
    };
    let (a, b) = (dep.node(&[]), dep.node(&[]));
    let room = "i";
    // One request with one key, retried against both nodes at once: one event.
    let key = WriteOptions::key("k-1");
    let (ra, rb) = (a.rest(), b.rest());
    let v1 = json!({"v": 1});
    let (x, y) = tokio::join!(ra.put(room, "x", &v1, &key), rb.put(room, "x", &v1, &key));
    let (x, y) = (x.expect("put on A").ok(), y.expect("put on B").ok());
    assert_eq!(x.id, y.id, "the same event answered twice");
    assert_eq!(x.seq, Some(1));
    // The same key with another body is refused on the other node.
    let reused = rb
        .put(room, "x", &json!({"v": 2}), &key)
        .await
        .expect("put on B");
    assert_eq!(reused.problem().code, ErrorCode::IdempotencyKeyReused);
    // If-Match: version 1 written via A; a stale If-Match on B conflicts.
    let ok = rb
        .put(
            room,
            "x",
            &json!({"v": 3}),
            &WriteOptions::default().if_match("1"),
        )
        .await
        .expect("put on B")
        .ok();
    assert_eq!(ok.seq, Some(2));
    let stale = ra
        .put(
            room,
            "x",
            &json!({"v": 4}),
            &WriteOptions::default().if_match("1"),
        )
        .await
        .expect("put on A");
    assert_eq!(stale.problem().code, ErrorCode::VersionConflict);
    let log = a.rest().history_all(room, 0).await.expect("history");
    assert_eq!(log.len(), 2, "one keyed event, one conditional event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_redeemed_on_one_node_is_refused_on_every_other() {
    let Some(dep) = Deployment::new(None) else {
        return;
    };
    const SECRET: &str = "multi-node-ticket-secret";
    let (a, b) = (
        dep.node(&[("jwt-secret", SECRET)]),
        dep.node(&[("jwt-secret", SECRET)]),
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ada", "exp": exp, "read": ["t*"], "write": []}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signing works");
    let http = reqwest::Client::new();
    let issued: serde_json::Value = http
        .post(format!("{}/v1/tickets", a.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("ticket from A")
        .json()
        .await
        .expect("ticket JSON");
    let ticket = issued["ticket"].as_str().expect("a ticket").to_owned();
    let open = |node: &Server| {
        let url = format!("{}/v1/sse?rooms=t1&ticket={ticket}", node.url());
        let http = http.clone();
        async move { http.get(url).send().await.expect("sse answers") }
    };
    // Redeemed on B (not the node that issued it) ...
    let first = open(&b).await;
    assert_eq!(first.status(), 200, "the first use, on another node");
    // ... it is used up on A and on B alike.
    for node in [&a, &b] {
        let again = open(node).await;
        assert_eq!(again.status(), 401, "a second use is refused");
        let problem: tidewire_protocol::Problem = again.json().await.expect("problem+json");
        assert_eq!(problem.code, ErrorCode::Unauthorized);
    }
    drop(first);
}
