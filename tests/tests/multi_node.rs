//! Several `tidewire` nodes sharing one PostgreSQL and one Redis: fan-out across nodes, a
//! contiguous `seq` under concurrent writers on every node, resume on another node after a
//! kill, a Redis restart and bus messages dropped on purpose without a lost event, and
//! presence across nodes with expiry when a node dies. Each of these runs twice: on a single
//! Redis, and (`…_on_a_redis_cluster`) on a private 3-master Redis Cluster the test starts
//! (sharded pub/sub; the restart test restarts the shard that owns the room). Then the
//! scale-out ones: a node receives only the rooms its connections follow, and the connection
//! limit and the write rate count across the nodes.
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

/// Which Redis a deployment runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The machine's Redis on 6379.
    Single,
    /// A private 3-master Redis Cluster.
    Cluster,
}

/// One test's database and Redis prefix; both removed on drop (and its cluster shut down).
struct Deployment {
    db_name: String,
    redis: String,
    prefix: String,
    redis_ports: Vec<u16>,
    cluster: Option<PrivateCluster>,
}

impl Deployment {
    fn new(kind: Kind) -> Option<Deployment> {
        match kind {
            Kind::Single => Deployment::on(None),
            Kind::Cluster => {
                let cluster = PrivateCluster::start()?;
                let mut dep = Deployment::on(Some((cluster.spec(), cluster.ports.clone())))?;
                dep.cluster = Some(cluster);
                Some(dep)
            }
        }
    }

    fn on(redis: Option<(String, Vec<u16>)>) -> Option<Deployment> {
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
        let (redis, redis_ports) = redis.unwrap_or((SHARED_REDIS.into(), vec![6379]));
        Some(Deployment {
            db_name,
            redis,
            prefix: format!("tw-test-{id}:"),
            redis_ports,
            cluster: None,
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
        for port in &self.redis_ports {
            sh(&format!(
                "redis-cli -p {port} --scan --pattern '{}*' | xargs -r redis-cli -p {port} del",
                self.prefix
            ));
        }
    }
}

/// A free port (for a cluster node, one whose bus port, +10000, is free too).
fn free_port(cluster: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !cluster || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
}

/// A private `redis-server` on a free port, which a test may restart.
struct PrivateRedis {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        PrivateRedis::with_args(free_port(false), Vec::new())
    }

    fn with_args(port: u16, args: Vec<String>) -> PrivateRedis {
        let mut r = PrivateRedis {
            port,
            args,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
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

/// A private 3-master Redis Cluster (Redis ≥ 7 for sharded pub/sub); a node can be
/// restarted (it keeps its slots through its `nodes-<port>.conf`).
struct PrivateCluster {
    ports: Vec<u16>,
    nodes: Vec<PrivateRedis>,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    fn start() -> Option<PrivateCluster> {
        if !services() {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port(true)).collect();
        let nodes = ports
            .iter()
            .map(|p| {
                let args = [
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{p}.conf"),
                    "--dir".into(),
                    dir.path().display().to_string(),
                ];
                PrivateRedis::with_args(*p, args.to_vec())
            })
            .collect();
        let cluster = PrivateCluster {
            ports,
            nodes,
            _dir: dir,
        };
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        assert!(
            sh(&format!(
                "redis-cli --cluster create {} --cluster-replicas 0 --cluster-yes",
                addrs.join(" ")
            )),
            "redis-cli --cluster create"
        );
        cluster.wait_ok();
        Some(cluster)
    }

    fn wait_ok(&self) {
        assert!(wait_for("the Redis Cluster", || self.ports.iter().all(
            |p| sh(&format!(
                "redis-cli -p {p} cluster info | grep -q 'cluster_state:ok'"
            ))
        )));
    }

    fn spec(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The node that owns `key`'s slot (the others answer `MOVED`).
    fn owner_of(&self, key: &str) -> usize {
        let owners: Vec<usize> = (0..self.ports.len())
            .filter(|&i| {
                let out = Command::new("redis-cli")
                    .args(["-p", &self.ports[i].to_string(), "exists", key])
                    .output()
                    .expect("redis-cli");
                !String::from_utf8_lossy(&out.stdout).contains("MOVED")
            })
            .collect();
        assert_eq!(owners.len(), 1, "exactly one shard owns {key}");
        owners[0]
    }
}

/// Runs the test body `$name(kind)` on a single Redis and on a Redis Cluster, as
/// `$name::on_one_redis` and `$name::on_a_redis_cluster`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_one_redis() {
                super::$name(super::Kind::Single).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_redis_cluster() {
                super::$name(super::Kind::Cluster).await
            }
        }
    };
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

both!(three_nodes_fan_out_and_keep_seq_contiguous_under_concurrent_writers);
async fn three_nodes_fan_out_and_keep_seq_contiguous_under_concurrent_writers(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
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

both!(clients_of_a_killed_node_resume_on_another_with_nothing_lost_or_duplicated);
async fn clients_of_a_killed_node_resume_on_another_with_nothing_lost_or_duplicated(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
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

both!(dropped_bus_messages_lose_no_client_event);
async fn dropped_bus_messages_lose_no_client_event(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
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

both!(a_redis_restart_during_traffic_loses_no_client_event);
async fn a_redis_restart_during_traffic_loses_no_client_event(kind: Kind) {
    // One Redis: a private one, restarted. A cluster: the shard that owns the room, restarted.
    let mut single = (kind == Kind::Single).then(PrivateRedis::start);
    let dep = match &single {
        Some(redis) => Deployment::on(Some((redis.url(), vec![redis.port]))),
        None => Deployment::new(Kind::Cluster),
    };
    let Some(mut dep) = dep else {
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
    let channel = format!("{}bus:{{{room}}}", dep.prefix);
    let mut cluster = dep.cluster.take();
    let shard = cluster.as_ref().map(|c| c.owner_of(&channel));
    match (&mut single, &mut cluster, shard) {
        (Some(redis), _, _) => redis.kill(),
        (None, Some(c), Some(i)) => c.nodes[i].kill(),
        _ => unreachable!(),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (single, cluster) = tokio::task::spawn_blocking(move || {
        match (&mut single, &mut cluster, shard) {
            (Some(redis), _, _) => redis.spawn(),
            (None, Some(c), Some(i)) => {
                c.nodes[i].spawn();
                c.wait_ok();
            }
            _ => unreachable!(),
        }
        (single, cluster)
    })
    .await
    .expect("restart redis");
    let _keep = (single, cluster);
    let seqs = writer.await.expect("writer");
    let mut d_sse = Delivery::default();
    d_sse.expect(room, seqs);
    let mut d_ws = d_sse.clone();
    sse_collect(&mut sse, &mut d_sse, N).await;
    d_sse.assert_exact("SSE on B across a Redis restart");
    ws_collect(&mut ws, &mut d_ws, N).await;
    d_ws.assert_exact("WS on B across a Redis restart");
    // And the bus itself came back: B receives new events from the bus again.
    if kind == Kind::Single {
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
    let received =
        |text: &str| metric_sum(text, "tidewire_bus_messages_received_total").unwrap_or(0.0);
    let before = received(&b.rest().metrics().await.expect("metrics"));
    let deadline = Instant::now() + T;
    loop {
        write_n(&a.rest(), room, 1, Duration::ZERO).await;
        let now = received(&b.rest().metrics().await.expect("metrics"));
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "B's bus never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

both!(presence_is_seen_across_nodes_and_a_killed_node_s_members_expire);
async fn presence_is_seen_across_nodes_and_a_killed_node_s_members_expire(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
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

both!(idempotency_keys_and_if_match_hold_across_nodes);
async fn idempotency_keys_and_if_match_hold_across_nodes(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
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

both!(a_ticket_redeemed_on_one_node_is_refused_on_every_other);
async fn a_ticket_redeemed_on_one_node_is_refused_on_every_other(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
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

/// Polls `node`'s metric `name` until `check` holds (or fails after `T`).
async fn wait_metric(node: &Server, name: &str, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + T;
    loop {
        let text = node.rest().metrics().await.expect("metrics");
        let v = metric_sum(&text, name).unwrap_or(0.0);
        if check(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v} never held:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(node: &Server, name: &str) -> f64 {
    let text = node.rest().metrics().await.expect("metrics");
    metric_sum(&text, name).unwrap_or(0.0)
}

both!(a_node_receives_only_the_rooms_its_connections_follow);
async fn a_node_receives_only_the_rooms_its_connections_follow(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
        return;
    };
    let nodes = [dep.node(&[]), dep.node(&[]), dep.node(&[])];
    // Room x is followed on node A only (two clients); B follows y, C follows z.
    let mut sse_a = SseClient::connect(&nodes[0].url(), &SseRequest::rooms(&["x"]).since("x=0"))
        .await
        .expect("sse on A");
    let mut ws_a = WsClient::connect(&nodes[0].ws_url(), None)
        .await
        .expect("ws on A");
    ws_a.subscribe(&["x"], Some("x=0"), false)
        .await
        .expect("subscribe on A");
    let mut sse_b = SseClient::connect(&nodes[1].url(), &SseRequest::rooms(&["y"]).since("y=0"))
        .await
        .expect("sse on B");
    let mut ws_c = WsClient::connect(&nodes[2].ws_url(), None)
        .await
        .expect("ws on C");
    ws_c.subscribe(&["z"], Some("z=0"), false)
        .await
        .expect("subscribe on C");
    for node in &nodes {
        wait_metric(node, "tidewire_bus_rooms_subscribed", |v| v == 1.0).await;
        assert!(metric(node, "tidewire_bus_subscribe_commands_total").await >= 1.0);
    }

    // x is written through B and C (which do not follow it), y through A.
    const PER: usize = 15;
    let mut tasks = Vec::new();
    for (node, room) in [(1, "x"), (2, "x"), (0, "y")] {
        let rest = nodes[node].rest();
        tasks.push(tokio::spawn(async move {
            write_n(&rest, room, PER, Duration::ZERO).await
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut want = Delivery::default();
    want.expect("x", 1..=2 * PER as u64);
    let mut d = want.clone();
    sse_collect(&mut sse_a, &mut d, 2 * PER).await;
    d.assert_exact("SSE on A: every x event once, in order");
    let mut d = want;
    ws_collect(&mut ws_a, &mut d, 2 * PER).await;
    d.assert_exact("WS on A: every x event once, in order");
    let mut d = Delivery::default();
    d.expect("y", 1..=PER as u64);
    sse_collect(&mut sse_b, &mut d, PER).await;
    d.assert_exact("SSE on B: every y event once, in order");

    // A took x's events off the bus; B only y's; C nothing at all.
    wait_metric(&nodes[0], "tidewire_bus_messages_received_total", |v| {
        v >= 2.0 * PER as f64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&nodes[0], "tidewire_bus_messages_received_total").await,
        2.0 * PER as f64,
        "A receives x only"
    );
    assert_eq!(
        metric(&nodes[1], "tidewire_bus_messages_received_total").await,
        PER as f64,
        "B receives y only, none of x's {} events",
        2 * PER
    );
    assert_eq!(
        metric(&nodes[2], "tidewire_bus_messages_received_total").await,
        0.0,
        "C receives nothing: no one there follows x or y"
    );
    // When B's last follower of y leaves, B unsubscribes.
    drop(sse_b);
    wait_metric(&nodes[1], "tidewire_bus_rooms_subscribed", |v| v == 0.0).await;
    assert!(metric(&nodes[1], "tidewire_bus_unsubscribe_commands_total").await >= 1.0);
    drop(ws_c);
}

/// Opens an SSE stream on `node` and answers the response (held open while kept).
async fn open_sse(http: &reqwest::Client, node: &Server) -> reqwest::Response {
    http.get(format!("{}/v1/sse?rooms=q", node.url()))
        .send()
        .await
        .expect("sse answers")
}

both!(a_connection_limit_of_3_holds_across_3_nodes);
async fn a_connection_limit_of_3_holds_across_3_nodes(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
        return;
    };
    let limit = [("max-connections-per-client", "3")];
    let nodes = [dep.node(&limit), dep.node(&limit), dep.node(&limit)];
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    for node in &nodes {
        let r = open_sse(&http, node).await;
        assert_eq!(r.status(), 200, "one connection per node: three in all");
        held.push(r);
    }
    for node in &nodes {
        let r = open_sse(&http, node).await;
        assert_eq!(r.status(), 429, "a fourth connection, to any node");
        let problem: tidewire_protocol::Problem = r.json().await.expect("problem+json");
        assert_eq!(problem.code, ErrorCode::TooManyConnections);
    }
    // Closing one frees a slot for any node.
    drop(held.remove(0));
    let deadline = Instant::now() + T;
    loop {
        let r = open_sse(&http, &nodes[2]).await;
        if r.status() == 200 {
            held.push(r);
            break;
        }
        assert!(Instant::now() < deadline, "the closed slot never came free");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open_sse(&http, &nodes[1]).await.status(), 429);
}

both!(the_write_rate_counts_across_3_nodes);
async fn the_write_rate_counts_across_3_nodes(kind: Kind) {
    let Some(dep) = Deployment::new(kind) else {
        return;
    };
    let rate = [("write-rate", "1"), ("write-burst", "3")];
    let nodes = [dep.node(&rate), dep.node(&rate), dep.node(&rate)];
    for node in &nodes {
        let ok = node
            .rest()
            .publish("w", "n", &json!({}), &WriteOptions::default())
            .await
            .expect("write");
        assert_eq!(ok.status, 200, "a burst of 3 across the cluster");
    }
    for node in &nodes {
        let refused = node
            .rest()
            .publish("w", "n", &json!({}), &WriteOptions::default())
            .await
            .expect("write");
        assert_eq!(refused.status, 429, "the fourth write, on any node");
        assert_eq!(refused.problem().code, ErrorCode::RateLimited);
        assert!(refused.header("retry-after").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_connections_stop_counting_after_the_ttl() {
    let Some(dep) = Deployment::new(Kind::Single) else {
        return;
    };
    let flags = [
        ("max-connections-per-client", "1"),
        ("cluster-limits-ttl-ms", "1500"),
    ];
    let (mut a, b) = (dep.node(&flags), dep.node(&flags));
    let http = reqwest::Client::new();
    let held = open_sse(&http, &a).await;
    assert_eq!(held.status(), 200);
    assert_eq!(
        open_sse(&http, &b).await.status(),
        429,
        "A's connection counts on B"
    );
    let killed = Instant::now();
    a.kill_hard();
    drop(held);
    let deadline = Instant::now() + T;
    let _again = loop {
        let r = open_sse(&http, &b).await;
        if r.status() == 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node's slot never ran out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = killed.elapsed();
    println!("the slot ran out {waited:?} after node A died");
    assert!(
        waited >= Duration::from_millis(500),
        "not before the TTL: {waited:?}"
    );
}
