//! The small endpoints: health, metrics, snapshot and presence of an empty room.

use reqwest::Method;
use serde_json::json;
use tidewire_tests::{Server, WriteOptions};

use crate::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_empty_rooms() {
    let server = start(Server::builder());
    let rest = server.rest();
    let health = rest
        .raw(Method::GET, "/healthz", &[], None)
        .await
        .expect("healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.text().trim(), "ok");

    let snapshot = rest.snapshot("nobody-here").await.expect("snapshot").ok();
    assert_eq!(snapshot.room, "nobody-here");
    assert_eq!(snapshot.seq, 0);
    assert!(snapshot.items.is_empty());
    let presence = rest.presence("nobody-here").await.expect("presence").ok();
    assert!(presence.members.is_empty());
    let history = rest
        .history("nobody-here", 0, None)
        .await
        .expect("history")
        .ok();
    assert!(history.is_empty());

    rest.put("r", "x", &json!({"n": 1}), &WriteOptions::default())
        .await
        .expect("put")
        .ok();
    let snapshot = rest.snapshot("r").await.expect("snapshot").ok();
    assert_eq!(snapshot.seq, 1);
    assert_eq!(snapshot.items["x"].value, json!({"n": 1}));
    assert_eq!(snapshot.items["x"].version, 1);
    assert!(!snapshot.items["x"].updated_at.is_empty());

    let metrics = rest.metrics().await.expect("metrics");
    let samples = metrics
        .lines()
        .filter(|l| l.starts_with("tidewire_"))
        .count();
    println!(
        "{samples} tidewire_ samples; e.g. {:?}",
        metrics.lines().find(|l| l.starts_with("tidewire_"))
    );
    assert!(
        samples > 0,
        "Prometheus text with tidewire_ metrics:\n{metrics}"
    );
}

/// Browsers send a preflight before a write with `Idempotency-Key` / `If-Match`; it must be
/// allowed, for any origin by default and only for the configured one with `--cors-origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_the_write_headers() {
    let preflight = |origin: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "content-type,idempotency-key,if-match",
            ),
        ]
    };
    let open = start(Server::builder());
    let answer = open
        .rest()
        .raw(
            Method::OPTIONS,
            "/v1/rooms/r/items/x",
            &preflight("http://app.test"),
            None,
        )
        .await
        .expect("preflight");
    assert!(answer.status < 300, "preflight answered {}", answer.status);
    let allow_origin = answer.header("access-control-allow-origin").unwrap_or("");
    assert!(
        allow_origin == "*" || allow_origin == "http://app.test",
        "allow-origin `{allow_origin}`"
    );
    let allow_headers = answer
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in ["content-type", "idempotency-key", "if-match"] {
        assert!(
            allow_headers == "*" || allow_headers.contains(h),
            "allow-headers `{allow_headers}` lacks {h}"
        );
    }

    let closed = start(Server::builder().flag("cors-origin", "http://app.test"));
    let ok = closed
        .rest()
        .raw(
            Method::OPTIONS,
            "/v1/rooms/r/items/x",
            &preflight("http://app.test"),
            None,
        )
        .await
        .expect("preflight");
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("http://app.test")
    );
    let other = closed
        .rest()
        .raw(
            Method::OPTIONS,
            "/v1/rooms/r/items/x",
            &preflight("http://evil.test"),
            None,
        )
        .await
        .expect("preflight");
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "another origin is not allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_the_configured_one() {
    // `ss` shows a listening socket's backlog in its Send-Q column.
    let backlog_of = |server: &Server| {
        let port = server.addr().port();
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("`ss` (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no listener on {port}: {text}"));
        line.split_whitespace()
            .nth(2)
            .and_then(|q| q.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no Send-Q in `{line}`"))
    };
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let default = start(Server::builder());
    assert_eq!(
        backlog_of(&default),
        4096.min(somaxconn),
        "the default backlog"
    );
    let small = start(Server::builder().flag("listen-backlog", 100));
    assert_eq!(backlog_of(&small), 100);
}

/// Logs piped to a file carry no colour codes; `--log-format json` writes one JSON object
/// per line; `--log` sets the level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_plain_when_piped_and_json_on_request() {
    let plain = start(Server::builder().flag("log", "debug"));
    plain.rest().snapshot("logged").await.expect("snapshot");
    let text = plain.log();
    assert!(text.contains("listening"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI escapes in a pipe: {text:?}"
    );
    assert!(text.contains("DEBUG"), "--log debug: {text}");

    let json = start(Server::builder().flag("log-format", "json"));
    json.rest().snapshot("logged").await.expect("snapshot");
    let lines: Vec<String> = json.log().lines().map(str::to_owned).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("listening")));
}

/// A server that has done nothing yet already lists every series it exports (at zero, with
/// `# HELP` and `# TYPE`), and latencies are histograms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_lists_every_metric_from_the_first_scrape() {
    let server = start(Server::builder());
    let page = server.rest().metrics().await.expect("metrics");
    for s in tidewire_server::metrics::SERIES {
        assert!(
            page.contains(&format!("# HELP {} ", s.name)),
            "{}:\n{page}",
            s.name
        );
        let (label, values) = s.labels;
        for v in values {
            let sample = format!("{}{{{label}=\"{v}\"}} 0", s.name);
            assert!(page.contains(&sample), "{sample}:\n{page}");
        }
    }
    assert!(page.contains("# TYPE tidewire_write_latency_seconds histogram"));
    assert!(!page.contains("quantile="), "no summaries:\n{page}");
}
