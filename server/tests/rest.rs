//! REST endpoints in process (`tower::ServiceExt::oneshot`): problem codes for bad input,
//! idempotency, If-Match, history, CORS and static files.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tidewire_server::{Config, Server};
use tower::ServiceExt;

async fn app_with(f: impl FnOnce(&mut Config)) -> Router {
    let mut config = Config {
        database: "sqlite::memory:".into(),
        ..Config::default()
    };
    f(&mut config);
    Server::new(config).await.unwrap().router()
}

async fn app() -> Router {
    app_with(|_| {}).await
}

struct Res {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Res {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Res {
        status,
        headers,
        body,
    }
}

fn assert_problem(res: &Res, status: u16, code: &str) {
    assert_eq!(res.status.as_u16(), status, "{:?}", res.body);
    assert_eq!(res.body["code"], code, "{:?}", res.body);
    assert_eq!(res.body["status"], status);
    assert_eq!(
        res.headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{code}"
    );
}

#[tokio::test]
async fn bad_inputs_get_stable_problem_codes() {
    let app = app_with(|c| c.max_body_bytes = 4096).await;
    let put = |uri: &'static str,
               headers: &'static [(&'static str, &'static str)],
               body: &'static str| {
        let app = app.clone();
        async move { call(&app, Method::PUT, uri, headers, body).await }
    };
    assert_problem(
        &put("/v1/rooms/bad%20room/items/x", &[], "1").await,
        400,
        "bad_room_name",
    );
    assert_problem(
        &put("/v1/rooms/r/items/bad%2Fid", &[], "1").await,
        400,
        "bad_item_id",
    );
    assert_problem(
        &put("/v1/rooms/r/items/x", &[], "{not json").await,
        400,
        "bad_json",
    );
    assert_problem(
        &put("/v1/rooms/r/items/x", &[("if-match", "abc")], "1").await,
        400,
        "bad_request",
    );
    assert_problem(
        &put(
            "/v1/rooms/r/items/x",
            &[("idempotency-key", "has space")],
            "1",
        )
        .await,
        400,
        "bad_idempotency_key",
    );
    let big = format!("\"{}\"", "x".repeat(10_000));
    assert_problem(
        &call(&app, Method::PUT, "/v1/rooms/r/items/x", &[], &big).await,
        413,
        "payload_too_large",
    );
    assert_problem(
        &call(
            &app,
            Method::POST,
            "/v1/rooms/r/events",
            &[],
            r#"{"type":"item.put","data":1}"#,
        )
        .await,
        400,
        "bad_event_type",
    );
    assert_problem(
        &call(
            &app,
            Method::POST,
            "/v1/rooms/r/events",
            &[],
            r#"{"data":1}"#,
        )
        .await,
        400,
        "bad_json",
    );
    assert_problem(
        &call(&app, Method::DELETE, "/v1/rooms/r/items/never", &[], "").await,
        404,
        "not_found",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/rooms/r/events?after=x", &[], "").await,
        400,
        "bad_request",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/rooms/r/events?limit=5000", &[], "").await,
        400,
        "bad_request",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/nothing-here", &[], "").await,
        404,
        "not_found",
    );
    assert_problem(
        &call(&app, Method::PATCH, "/v1/rooms/r/snapshot", &[], "").await,
        405,
        "method_not_allowed",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/sse", &[], "").await,
        400,
        "bad_request",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/sse?rooms=a&since=a%3D01", &[], "").await,
        400,
        "bad_cursor",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/poll?rooms=a&wait=99", &[], "").await,
        400,
        "bad_request",
    );
    assert_problem(
        &call(&app, Method::GET, "/v1/ws", &[], "").await,
        400,
        "bad_request",
    );
    let many: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
    let uri = format!("/v1/sse?rooms={}", many.join(","));
    assert_problem(
        &call(&app, Method::GET, &uri, &[], "").await,
        400,
        "too_many_rooms",
    );
}

#[tokio::test]
async fn item_size_limit_is_separate_from_body_limit() {
    let app = app_with(|c| c.max_item_bytes = 100).await;
    let big = format!("\"{}\"", "x".repeat(200));
    let res = call(&app, Method::PUT, "/v1/rooms/r/items/x", &[], &big).await;
    assert_problem(&res, 413, "payload_too_large");
}

#[tokio::test]
async fn writes_answer_their_envelope_and_keys_replay() {
    let app = app().await;
    let h = [("idempotency-key", "k-1")];
    let first = call(&app, Method::PUT, "/v1/rooms/r/items/x", &h, r#"{"n":1}"#).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers[header::ETAG], "\"1\"");
    assert_eq!(first.body["seq"], 1);
    assert_eq!(first.body["key"], "k-1");
    assert_eq!(
        first.body["data"],
        json!({"id":"x","value":{"n":1},"version":1})
    );
    assert!(first.headers.get("idempotency-replayed").is_none());

    let again = call(&app, Method::PUT, "/v1/rooms/r/items/x", &h, r#"{"n":1}"#).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body, "the same envelope");
    assert_eq!(again.headers["idempotency-replayed"], "true");

    let reused = call(&app, Method::PUT, "/v1/rooms/r/items/x", &h, r#"{"n":2}"#).await;
    assert_problem(&reused, 422, "idempotency_key_reused");
    let reused = call(&app, Method::DELETE, "/v1/rooms/r/items/x", &h, "").await;
    assert_problem(&reused, 422, "idempotency_key_reused");

    let snap = call(&app, Method::GET, "/v1/rooms/r/snapshot", &[], "").await;
    assert_eq!(snap.body["seq"], 1, "nothing appended twice");
    assert_eq!(snap.body["items"]["x"]["version"], 1);
}

#[tokio::test]
async fn if_match_conflicts_carry_the_current_item() {
    let app = app().await;
    call(&app, Method::PUT, "/v1/rooms/r/items/x", &[], "1").await;
    for good in ["\"1\"", "1", "W/\"1\""] {
        let res = call(
            &app,
            Method::PUT,
            "/v1/rooms/r/items/y",
            &[("if-match", "0")],
            "1",
        )
        .await;
        let _ = res;
        let probe = call(
            &app,
            Method::PUT,
            "/v1/rooms/r/items/x",
            &[("if-match", good)],
            "1",
        )
        .await;
        // Only the first matches; afterwards the version moved on.
        if probe.status == StatusCode::OK {
            assert_eq!(probe.body["data"]["version"], 2);
        } else {
            assert_problem(&probe, 409, "version_conflict");
        }
    }
    let res = call(
        &app,
        Method::PUT,
        "/v1/rooms/r/items/x",
        &[("if-match", "\"1\"")],
        "5",
    )
    .await;
    assert_problem(&res, 409, "version_conflict");
    assert_eq!(res.body["current"]["version"], 2);
    assert_eq!(res.body["current"]["id"], "x");
    let res = call(
        &app,
        Method::PUT,
        "/v1/rooms/r/items/new",
        &[("if-match", "3")],
        "5",
    )
    .await;
    assert_problem(&res, 409, "version_conflict");
    assert!(res.body.get("current").is_none());
    let del = call(
        &app,
        Method::DELETE,
        "/v1/rooms/r/items/x",
        &[("if-match", "2")],
        "",
    )
    .await;
    assert_eq!(del.status, StatusCode::OK);
    assert_eq!(del.body["type"], "item.deleted");
    assert_eq!(del.headers[header::ETAG], "\"3\"");
}

#[tokio::test]
async fn history_reads_after_and_reports_trimming() {
    let app = app_with(|c| c.retention_events = 3).await;
    for i in 0..6 {
        let body = format!(r#"{{"type":"chat.message","data":{{"i":{i}}}}}"#);
        let res = call(&app, Method::POST, "/v1/rooms/h/events", &[], &body).await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.body["type"], "chat.message");
    }
    let res = call(&app, Method::GET, "/v1/rooms/h/events?after=4", &[], "").await;
    assert_eq!(res.body.as_array().unwrap().len(), 2);
    assert_eq!(res.body[0]["seq"], 5);
    let res = call(
        &app,
        Method::GET,
        "/v1/rooms/h/events?after=3&limit=1",
        &[],
        "",
    )
    .await;
    assert_eq!(res.body.as_array().unwrap().len(), 1);
    let res = call(&app, Method::GET, "/v1/rooms/h/events?after=1", &[], "").await;
    assert_problem(&res, 410, "history_trimmed");
    let res = call(&app, Method::GET, "/v1/rooms/h/events", &[], "").await;
    assert_eq!(
        res.body[0]["seq"], 4,
        "after=0 reads from the retained start"
    );
}

#[tokio::test]
async fn rate_limit_is_429_with_retry_after() {
    let app = app_with(|c| {
        c.write_rate = 1;
        c.write_burst = 2;
    })
    .await;
    for _ in 0..2 {
        let res = call(&app, Method::PUT, "/v1/rooms/r/items/x", &[], "1").await;
        assert_eq!(res.status, StatusCode::OK);
    }
    let res = call(&app, Method::PUT, "/v1/rooms/r/items/x", &[], "1").await;
    assert_problem(&res, 429, "rate_limited");
    assert_eq!(res.headers[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn cors_preflight_allows_the_sdk_headers() {
    let app = app().await;
    let res = app
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/v1/rooms/r/items/x")
                .header("origin", "http://other.test")
                .header("access-control-request-method", "PUT")
                .header(
                    "access-control-request-headers",
                    "idempotency-key,if-match,content-type",
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "idempotency-key",
        "if-match",
        "last-event-id",
        "authorization",
        "content-type",
    ] {
        assert!(allowed.contains(h), "{allowed}");
    }
    let res = call(
        &app,
        Method::GET,
        "/healthz",
        &[("origin", "http://other.test")],
        "",
    )
    .await;
    let exposed = res.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        exposed.contains("etag")
            && exposed.contains("idempotency-replayed")
            && exposed.contains("retry-after")
    );
}

#[tokio::test]
async fn static_files_health_and_metrics() {
    let www = tempfile::tempdir().unwrap();
    let pkg = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(pkg.path().join("tidewire_bg.wasm"), b"\0asm").unwrap();
    std::fs::write(pkg.path().join("tidewire.js"), "export {}").unwrap();
    let (w, p) = (www.path().to_owned(), pkg.path().to_owned());
    let app = app_with(move |c| {
        c.www_dir = w;
        c.pkg_dir = p;
    })
    .await;
    let res = call(&app, Method::GET, "/", &[], "").await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let res = call(&app, Method::GET, "/pkg/tidewire_bg.wasm", &[], "").await;
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/wasm");
    let res = call(&app, Method::GET, "/pkg/tidewire.js", &[], "").await;
    assert!(res.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(
        call(&app, Method::GET, "/pkg/missing.js", &[], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, Method::GET, "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    call(&app, Method::PUT, "/v1/rooms/m/items/x", &[], "1").await;
    let metrics = call(&app, Method::GET, "/metrics", &[], "").await;
    let text = metrics.body.as_str().unwrap().to_owned();
    assert!(text.contains("tidewire_events_in_total"), "{text}");
    assert!(text.contains("tidewire_write_latency_seconds"), "{text}");

    // Missing directories are a 404, not a crash.
    let app = app_with(|c| {
        c.www_dir = "/nonexistent/www".into();
        c.pkg_dir = "/nonexistent/pkg".into();
    })
    .await;
    assert_eq!(
        call(&app, Method::GET, "/", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, Method::GET, "/pkg/x.wasm", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unreachable_backends_fail_clearly() {
    for (f, what) in [
        (
            Box::new(|c: &mut Config| c.database = "postgres://root@127.0.0.1:1/x".into())
                as Box<dyn Fn(&mut Config)>,
            "store unavailable",
        ),
        (
            Box::new(|c: &mut Config| c.redis = Some("redis://127.0.0.1:1".into())),
            "redis",
        ),
        (
            Box::new(|c: &mut Config| c.database = "mysql://localhost/x".into()),
            "unknown database URL",
        ),
    ] {
        let mut config = Config {
            database: "sqlite::memory:".into(),
            ..Config::default()
        };
        f(&mut config);
        let started = std::time::Instant::now();
        let err = Server::new(config).await.err().unwrap().to_string();
        assert!(err.contains(what), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "fails fast"
        );
    }
}

/// A backend API key may write (and read) every room whatever JWT auth says; a wrong key, a
/// short key or a token that is neither is refused.
#[tokio::test]
async fn api_keys_write_every_room_beside_jwt_auth() {
    let keys = "old-backend-key-0001,new-backend-key-0002";
    let app = app_with(|c| {
        c.jwt_secret = Some("jwt-secret".into());
        c.api_key = keys.split(',').map(str::to_owned).collect();
    })
    .await;
    for key in keys.split(',') {
        let bearer = format!("Bearer {key}");
        let res = call(
            &app,
            Method::PUT,
            "/v1/rooms/any-room/items/a",
            &[("authorization", &bearer)],
            "1",
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
        let res = call(
            &app,
            Method::GET,
            "/v1/rooms/any-room/snapshot",
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    }
    for wrong in ["Bearer old-backend-key-0002", "Bearer x"] {
        let res = call(
            &app,
            Method::PUT,
            "/v1/rooms/any-room/items/a",
            &[("authorization", wrong)],
            "1",
        )
        .await;
        assert_problem(&res, 401, "unauthorized");
    }
    // Without JWT auth access is open anyway: the key is simply accepted.
    let open = app_with(|c| c.api_key = vec!["only-backend-key-01".into()]).await;
    let res = call(
        &open,
        Method::POST,
        "/v1/rooms/r/events",
        &[("authorization", "Bearer only-backend-key-01")],
        r#"{"type":"chat","data":1}"#,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    let mut config = Config {
        database: "sqlite::memory:".into(),
        ..Config::default()
    };
    config.api_key = vec!["short".into()];
    let err = Server::new(config)
        .await
        .err()
        .expect("a short key is refused");
    assert!(err.to_string().contains("--api-key"), "{err}");
}
