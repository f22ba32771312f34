//! The `/admin` dashboard over real sockets: off (404) without `--admin-token`, 401
//! problem+json without or with a wrong token, every rotated token accepted, the page and its
//! assets served by the binary, the stats history's shape and figures that move under load,
//! the live stream, and the `_tidewire.*` rooms closed to clients.
//!
//! The figures come from process-wide counters, so the tests here run one at a time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tidewire_server::{Config, Server};

const TOKENS: &str = "old-admin-token,new-admin-token";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(admin_token: &str) -> (String, Server) {
    start_with(admin_token, |_| {}).await
}

async fn start_with(admin_token: &str, f: impl FnOnce(&mut Config)) -> (String, Server) {
    let mut config = Config {
        database: "sqlite::memory:".into(),
        admin_token: admin_token
            .split(',')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        ..Config::default()
    };
    f(&mut config);
    let server = Server::new(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), server)
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "a problem body"
    );
    res.json().await.unwrap()
}

#[tokio::test]
async fn admin_is_not_found_without_a_token() {
    let _serial = SERIAL.lock().await;
    let (base, _server) = start("").await;
    for path in [
        "/admin",
        "/admin/",
        "/admin/admin.js",
        "/admin/stats",
        "/admin/stream",
    ] {
        let p = problem(get(&format!("{base}{path}"), None).await, 404).await;
        assert_eq!(p["code"], "not_found", "{path}: {p}");
        // A token changes nothing when none is configured.
        let res = get(&format!("{base}{path}"), Some("anything")).await;
        assert_eq!(res.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_every_rotated_token_accepted() {
    let _serial = SERIAL.lock().await;
    let (base, _server) = start(TOKENS).await;
    let stats = format!("{base}/admin/stats");
    let p = problem(get(&stats, None).await, 401).await;
    assert_eq!(p["code"], "unauthorized", "{p}");
    for wrong in [
        "wrong",
        "old-admin-token,new-admin-token",
        "new-admin-toke",
        "",
    ] {
        let p = problem(get(&stats, Some(wrong)).await, 401).await;
        assert_eq!(p["code"], "unauthorized", "{wrong}: {p}");
    }
    assert_eq!(
        get(&format!("{base}/admin/stream"), Some("wrong"))
            .await
            .status(),
        401
    );
    for good in ["old-admin-token", "new-admin-token"] {
        let res = get(&stats, Some(good)).await;
        assert_eq!(res.status(), 200, "{good}");
    }
    // The page itself asks for the token; a wrong one sent along is refused.
    let page = get(&format!("{base}/admin"), None).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers().contains_key("content-security-policy"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/admin.js") && html.contains("id=\"login\""));
    problem(get(&format!("{base}/admin"), Some("wrong")).await, 401).await;
    let js = get(&format!("{base}/admin/admin.js"), None).await;
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        get(&format!("{base}/admin/admin.css"), None).await.status(),
        200
    );
    assert_eq!(
        get(&format!("{base}/admin/nothing"), None).await.status(),
        404
    );
}

/// Two nodes on one Redis bus: node B's `/admin/stats` lists itself first and node A, whose
/// snapshots (with the writes made on A) arrived through the `_tidewire.admin` room over
/// Redis. Both nodes run in this process and share its counters, so the figures of the two
/// are not told apart here; the bus path is what is checked.
#[cfg(feature = "redis")]
#[tokio::test]
async fn several_nodes_show_up_through_the_bus() {
    let _serial = SERIAL.lock().await;
    let prefix = format!("tidewire-admin-test:{}:", ulid::Ulid::generate());
    let redis = |c: &mut Config| {
        c.redis = Some("redis://127.0.0.1:6379".into());
        c.redis_prefix = prefix.clone();
    };
    let (a, _sa) = start_with(TOKENS, redis).await;
    let (b, _sb) = start_with(TOKENS, redis).await;
    let node_of = |base: String| async move {
        let v: Value = get(&format!("{base}/admin/stats"), Some("new-admin-token"))
            .await
            .json()
            .await
            .unwrap();
        v["node"].as_str().unwrap().to_owned()
    };
    let (na, nb) = (node_of(a.clone()).await, node_of(b.clone()).await);
    assert_ne!(na, nb);
    let client = reqwest::Client::new();
    for i in 0..20 {
        let res = client
            .post(format!("{a}/v1/rooms/multi/events"))
            .json(&json!({"type": "tick", "data": {"n": i}}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }
    // B sees A's busy second and its own idle ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = get(&format!("{b}/admin/stats"), Some("new-admin-token"))
            .await
            .json()
            .await
            .unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        let of = |n: &str| nodes.iter().find(|x| x["node"] == n).cloned();
        if let (Some(from_a), Some(own)) = (of(&na), of(&nb)) {
            assert_eq!(own["local"], true);
            assert_eq!(from_a["local"], false);
            assert_eq!(nodes[0]["node"], nb, "the answering node first");
            let a_in: f64 = from_a["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["events_in_per_s"].as_f64().unwrap())
                .sum();
            if a_in > 0.0 {
                let lag = from_a["samples"][0]["bus_lag_ms"].as_i64().unwrap();
                assert!((0..2000).contains(&lag), "Redis bus lag {lag} ms");
                break;
            }
        }
        assert!(Instant::now() < deadline, "both nodes on B: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `/admin/stats` until `want` holds for a sample of this node (at most 10 s).
async fn wait_sample(base: &str, want: impl Fn(&Value) -> bool) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = get(&format!("{base}/admin/stats"), Some("new-admin-token"))
            .await
            .json()
            .await
            .unwrap();
        let local = body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["local"] == true)
            .cloned();
        if let Some(found) = local.as_ref().and_then(|n| {
            n["samples"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| want(s))
                .cloned()
        }) {
            return (body, found);
        }
        assert!(Instant::now() < deadline, "no such sample: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn stats_have_their_shape_and_move_under_load() {
    let _serial = SERIAL.lock().await;
    let (base, _server) = start(TOKENS).await;
    // An idle first sample.
    let (body, first) = wait_sample(&base, |_| true).await;
    assert_eq!(body["interval_ms"], 1000);
    let node = body["node"].as_str().unwrap().to_owned();
    assert_eq!(body["nodes"][0]["node"], node);
    assert_eq!(first["node"], node);
    for key in [
        "ts",
        "uptime_s",
        "events_in_per_s",
        "events_in_total",
        "events_out_total",
        "slow_cuts",
        "slow_cuts_total",
        "writes",
        "gaps_filled",
        "gaps_filled_total",
        "duplicates",
        "rooms",
        "bus_lag_ms",
    ] {
        assert!(first[key].is_number(), "{key} in {first}");
    }
    for key in ["connections", "events_out_per_s"] {
        for t in ["sse", "ws", "poll"] {
            assert!(first[key][t].is_number(), "{key}.{t} in {first}");
        }
    }
    assert!(first["top_rooms"].is_array());
    assert!(first.get("write_p99_ms").is_some());
    assert!(
        first["outbox_lag_ms"].is_null(),
        "no outbox on this node: {first}"
    );
    let lag = first["bus_lag_ms"].as_i64().unwrap();
    assert!((0..1000).contains(&lag), "in-process bus lag {lag} ms");

    // Load: one SSE subscriber in `hot`, events written into it for about two seconds.
    let sse = reqwest::Client::new()
        .get(format!("{base}/v1/sse?rooms=hot"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse_body = sse.bytes_stream();
    let reader = tokio::spawn(async move {
        let mut bytes = 0usize;
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), sse_body.next()).await
        {
            bytes += chunk.len();
        }
        bytes
    });
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_millis(2200);
    let mut written = 0;
    while Instant::now() < until && written < 150 {
        let res = client
            .post(format!("{base}/v1/rooms/hot/events"))
            .json(&json!({"type": "tick", "data": {"n": written}}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        written += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let (_, busy) = wait_sample(&base, |s| {
        s["events_in_per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["events_out_per_s"]["sse"].as_f64().unwrap_or(0.0) > 0.0
            && s["write_p99_ms"].is_number()
            && s["connections"]["sse"].as_i64().unwrap_or(0) >= 1
    })
    .await;
    assert!(busy["writes"].as_u64().unwrap() > 0, "{busy}");
    let p50 = busy["write_p50_ms"].as_f64().unwrap();
    let p99 = busy["write_p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{busy}");
    assert!(busy["events_in_total"].as_u64().unwrap() >= 1);
    let top = busy["top_rooms"].as_array().unwrap();
    assert!(
        top.iter()
            .any(|r| r["room"] == "hot" && r["subscribers"].as_u64() >= Some(1)),
        "{busy}"
    );
    assert!(
        top.iter().all(|r| r["room"] != "_tidewire.admin"),
        "the server's own room is not listed: {busy}"
    );
    reader.abort();
}

#[tokio::test]
async fn the_stream_carries_each_sample_as_it_arrives() {
    let _serial = SERIAL.lock().await;
    let (base, _server) = start(TOKENS).await;
    let res = get(&format!("{base}/admin/stream"), Some("old-admin-token")).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let sample = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let chunk = body.next().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(block) = text.split("\n\n").find(|b| b.contains("event: stats")) {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                return serde_json::from_str::<Value>(data).unwrap();
            }
        }
    })
    .await
    .expect("a sample within 5 s");
    assert!(sample["node"].is_string() && sample["connections"].is_object());
}

#[tokio::test]
async fn clients_cannot_reach_the_servers_own_rooms() {
    let _serial = SERIAL.lock().await;
    let (base, _server) = start(TOKENS).await;
    let res = get(&format!("{base}/v1/sse?rooms=_tidewire.admin"), None).await;
    let p = problem(res, 403).await;
    assert_eq!(p["code"], "forbidden", "{p}");
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/rooms/_tidewire.admin/events"))
        .json(&json!({"type": "stats", "data": {}}))
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    // Even the admin token is no client credential.
    let res = get(
        &format!("{base}/v1/rooms/_tidewire.admin/snapshot"),
        Some("new-admin-token"),
    )
    .await;
    assert!(res.status().is_client_error(), "{}", res.status());
}
