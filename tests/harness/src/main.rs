//! `tidewire-harness`: runs the `tidewire` server for browser tests and lets the tests control
//! it over HTTP.
//!
//! ```text
//! tidewire-harness [--port 18080] [--ctl-port 18081] [--proxy-port 18082]
//!                  [--chaos-port PORT] [--server-arg ARG]... [-- COMMAND ARGS...]
//! ```
//!
//! - The server (`$TIDEWIRE_BIN`, else `tidewire` next to this binary) listens on `--port` with
//!   a database in a fresh temporary directory.
//! - A control API with open CORS listens on `--ctl-port`: `POST /restart` (kill the server and
//!   start it again on the same port and database; `?graceful=1` sends SIGTERM first),
//!   `POST /stop`, `POST /start`, `POST /sse-stall?on=1|0`, `POST /sse-freeze?on=1|0`,
//!   `POST /ws-freeze?on=1|0`, `POST /fail-writes?status=503&count=2&retry_after=1`,
//!   `GET /fail-writes`, `GET /health`.
//! - A reverse proxy listens on `--proxy-port` in front of the server. While SSE stalling is
//!   on, it holds `/v1/sse` requests without sending a byte, as a buffering proxy would. While
//!   SSE freezing is on, it stops forwarding the bytes of `/v1/sse` streams, those already
//!   open included, without closing them (a proxy that hangs mid-stream); what it holds is
//!   forwarded when freezing is turned off. `/v1/ws` is proxied too (a WebSocket to the
//!   browser, one to the server, text and binary frames relayed); while WebSocket freezing is
//!   on, it relays no frame in either direction, on sockets already open and on new ones,
//!   without closing them, and relays what it holds when freezing is turned off. After
//!   `POST /fail-writes?status=S&count=N[&retry_after=R]` it answers the next `N` writes
//!   (`PUT`/`POST`/`DELETE` under `/v1/rooms/`) itself with status `S` (a problem+json body,
//!   `Retry-After: R` when given) instead of forwarding them; `GET /fail-writes` answers
//!   `{"left":…,"keys":[…]}`, the `Idempotency-Key`s of the writes it failed (the last 100).
//! - A second server with auth on (`--jwt-secret`, a free port) for the auth browser tests;
//!   `POST /token?sub=&read=a,b&write=a,b&ttl=3` on the control API mints an HS256 token for
//!   it (`read`/`write` are comma-separated room patterns, `ttl` in seconds).
//! - A chaos proxy (see [`chaos`]) listens on `--chaos-port` (default: a free port): under
//!   `/seed/<n>/` it forwards to the server and duplicates and reorders the events of SSE
//!   streams and WebSockets, deterministically from the seed `n`.
//! - With a command after `--`, the harness runs it with `TIDEWIRE_TEST_URL`, `TIDEWIRE_AUTH_URL`,
//!   `TIDEWIRE_CTL_URL`, `TIDEWIRE_PROXY_URL` and `TIDEWIRE_CHAOS_URL` set (and
//!   `WASM_BINDGEN_TEST_TIMEOUT=180` unless set), stops everything when it ends, and exits with
//!   its exit code. Without one it runs until SIGINT or SIGTERM, and stops the server either
//!   way.
//!
//! ```text
//! cargo build -p tidewire-server --bin tidewire -p tidewire-harness
//! target/debug/tidewire-harness -- wasm-pack test --headless --chrome client
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message as TMessage;

mod chaos;

struct Args {
    port: u16,
    ctl_port: u16,
    proxy_port: u16,
    chaos_port: u16,
    server_args: Vec<String>,
    command: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        port: 18080,
        ctl_port: 18081,
        proxy_port: 18082,
        chaos_port: 0,
        server_args: Vec::new(),
        command: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--port" => args.port = value("--port")?.parse()?,
            "--ctl-port" => args.ctl_port = value("--ctl-port")?.parse()?,
            "--proxy-port" => args.proxy_port = value("--proxy-port")?.parse()?,
            "--chaos-port" => args.chaos_port = value("--chaos-port")?.parse()?,
            "--server-arg" => args.server_args.push(value("--server-arg")?),
            "--" => {
                args.command = it.collect();
                break;
            }
            "-h" | "--help" => {
                println!(
                    "usage: tidewire-harness [--port 18080] [--ctl-port 18081] [--proxy-port 18082] [--chaos-port PORT] [--server-arg ARG]... [-- COMMAND...]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    Ok(args)
}

fn server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TIDEWIRE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let next_to_me = me.with_file_name("tidewire");
    if next_to_me.exists() {
        return Ok(next_to_me);
    }
    bail!(
        "no tidewire binary: set TIDEWIRE_BIN or build it next to the harness (cargo build -p tidewire-server --bin tidewire)"
    )
}

/// The server process and how to start it again.
struct Server {
    bin: PathBuf,
    port: u16,
    db: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database")
            .arg(&self.db)
            .args([
                "--write-rate",
                "2000",
                "--write-burst",
                "5000",
                "--drain-window-ms",
                "300",
                "--presence-grace-ms",
                "500",
                "--heartbeat-secs",
                "2",
            ])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                println!("[tidewire] {line}");
                if line.contains("listening on") {
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {}
            _ => {
                let _ = child.kill().await;
                bail!("the server did not say it was listening within 30 s");
            }
        }
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[tidewire] {line}");
            }
        });
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self, graceful: bool) {
        if let Some(mut child) = self.child.take() {
            if graceful {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status();
                    if tokio::time::timeout(Duration::from_secs(10), child.wait())
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
            }
            let _ = child.kill().await;
        }
    }
}

/// The secret of the auth server (a test secret, never used elsewhere).
const AUTH_SECRET: &str = "tidewire-harness-test-secret";

#[derive(serde::Deserialize, Default)]
struct TokenQuery {
    sub: Option<String>,
    read: Option<String>,
    write: Option<String>,
    ttl: Option<i64>,
}

/// `POST /token`: an HS256 token for the auth server.
async fn token(Query(q): Query<TokenQuery>) -> Response {
    let list = |v: &Option<String>| -> Vec<String> {
        v.as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = serde_json::json!({
        "sub": q.sub.as_deref().unwrap_or("browser"),
        "exp": now + q.ttl.unwrap_or(60),
        "read": list(&q.read),
        "write": list(&q.write),
    });
    match jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(AUTH_SECRET.as_bytes()),
    ) {
        Ok(t) => t.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

struct Ctl {
    server: Mutex<Server>,
    stall_sse: AtomicBool,
    /// While true, `/v1/sse` response bytes are held (see the module docs).
    freeze_sse: tokio::sync::watch::Sender<bool>,
    /// While true, proxied WebSocket frames are held in both directions.
    freeze_ws: tokio::sync::watch::Sender<bool>,
    upstream: String,
    http: reqwest::Client,
    /// Writes the proxy answers itself with an error (see the module docs).
    fail_writes: std::sync::Mutex<FailWrites>,
}

#[derive(Default, serde::Serialize)]
struct FailWrites {
    #[serde(skip)]
    status: u16,
    #[serde(skip)]
    retry_after: Option<u64>,
    left: u32,
    keys: std::collections::VecDeque<String>,
}

type Shared = Arc<Ctl>;

#[derive(serde::Deserialize)]
struct FailQuery {
    status: u16,
    count: u32,
    retry_after: Option<u64>,
}

async fn fail_writes(State(ctl): State<Shared>, Query(q): Query<FailQuery>) -> Response {
    if !(400..600).contains(&q.status) {
        return (StatusCode::BAD_REQUEST, "status must be 400..=599").into_response();
    }
    let mut f = ctl.fail_writes.lock().unwrap_or_else(|e| e.into_inner());
    *f = FailWrites {
        status: q.status,
        retry_after: q.retry_after,
        left: q.count.min(1_000),
        keys: Default::default(),
    };
    "failing writes".into_response()
}

async fn failed_writes(State(ctl): State<Shared>) -> Response {
    let f = ctl.fail_writes.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(&*f).into_response()
}

/// The error answer for a write while `fail-writes` has some left.
fn failed_write(ctl: &Ctl, req: &Request) -> Option<Response> {
    let m = req.method();
    let write = m == axum::http::Method::PUT
        || m == axum::http::Method::POST
        || m == axum::http::Method::DELETE;
    if !write || !req.uri().path().starts_with("/v1/rooms/") {
        return None;
    }
    let mut f = ctl.fail_writes.lock().unwrap_or_else(|e| e.into_inner());
    if f.left == 0 {
        return None;
    }
    f.left -= 1;
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if f.keys.len() == 100 {
        f.keys.pop_front();
    }
    f.keys.push_back(key);
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let code = match f.status {
        429 => "rate_limited",
        503 => "store_unavailable",
        403 => "forbidden",
        s if s >= 500 => "internal",
        _ => "bad_request",
    };
    let body = serde_json::json!({
        "type": format!("https://tidewire.dev/problems/{code}"),
        "title": code.replace('_', " "),
        "status": f.status,
        "detail": "answered by the harness proxy (fail-writes)",
        "code": code,
    });
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .header("access-control-allow-origin", "*")
        .header("access-control-expose-headers", "retry-after");
    if let Some(r) = f.retry_after {
        resp = resp.header("retry-after", r.to_string());
    }
    resp.body(Body::from(body.to_string())).ok()
}

#[derive(serde::Deserialize, Default)]
struct Flags {
    on: Option<String>,
    graceful: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1") | Some("true") | Some("on"))
}

async fn restart(State(ctl): State<Shared>, Query(f): Query<Flags>) -> Response {
    let mut s = ctl.server.lock().await;
    s.stop(truthy(&f.graceful)).await;
    match s.start().await {
        Ok(()) => "restarted".into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn stop(State(ctl): State<Shared>, Query(f): Query<Flags>) -> Response {
    ctl.server.lock().await.stop(truthy(&f.graceful)).await;
    "stopped".into_response()
}

async fn start(State(ctl): State<Shared>) -> Response {
    match ctl.server.lock().await.start().await {
        Ok(()) => "started".into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn sse_stall(State(ctl): State<Shared>, Query(f): Query<Flags>) -> Response {
    let on = f.on.is_none() || truthy(&f.on);
    ctl.stall_sse.store(on, Ordering::SeqCst);
    (if on { "sse stalled" } else { "sse flowing" }).into_response()
}

async fn sse_freeze(State(ctl): State<Shared>, Query(f): Query<Flags>) -> Response {
    let on = f.on.is_none() || truthy(&f.on);
    ctl.freeze_sse.send_replace(on);
    (if on { "sse frozen" } else { "sse thawed" }).into_response()
}

async fn ws_freeze(State(ctl): State<Shared>, Query(f): Query<Flags>) -> Response {
    let on = f.on.is_none() || truthy(&f.on);
    ctl.freeze_ws.send_replace(on);
    (if on { "ws frozen" } else { "ws thawed" }).into_response()
}

/// The proxy's `/v1/ws`: connects to the server's WebSocket with the same query, then
/// accepts the browser's and relays frames between them.
async fn ws_proxy(
    State(ctl): State<Shared>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let base = ctl.upstream.replacen("http://", "ws://", 1);
    let url = match query {
        Some(q) => format!("{base}/v1/ws?{q}"),
        None => format!("{base}/v1/ws"),
    };
    let upstream = match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => socket,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let gate = ctl.freeze_ws.subscribe();
    upgrade.on_upgrade(move |browser| ws_relay(browser, upstream, gate))
}

/// Relays text and binary frames both ways; each waits while frozen (the source is not read
/// meanwhile). Pings and closes are each side's own; when either side ends, both close.
async fn ws_relay(
    browser: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    gate: tokio::sync::watch::Receiver<bool>,
) {
    let (mut to_browser, mut from_browser) = browser.split();
    let (mut to_server, mut from_server) = upstream.split();
    let mut up_gate = gate.clone();
    let up = async move {
        while let Some(Ok(msg)) = from_browser.next().await {
            let out = match msg {
                AxMessage::Text(t) => TMessage::text(t.as_str()),
                AxMessage::Binary(b) => TMessage::binary(b),
                AxMessage::Close(_) => break,
                AxMessage::Ping(_) | AxMessage::Pong(_) => continue,
            };
            let _ = up_gate.wait_for(|frozen| !*frozen).await;
            if to_server.send(out).await.is_err() {
                break;
            }
        }
        let _ = to_server.close().await;
    };
    let mut down_gate = gate;
    let down = async move {
        while let Some(Ok(msg)) = from_server.next().await {
            let out = match msg {
                TMessage::Text(t) => AxMessage::text(t.as_str()),
                TMessage::Binary(b) => AxMessage::binary(b),
                TMessage::Close(_) => break,
                _ => continue,
            };
            let _ = down_gate.wait_for(|frozen| !*frozen).await;
            if to_browser.send(out).await.is_err() {
                break;
            }
        }
        let _ = to_browser.close().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The reverse proxy in front of the server.
async fn proxy(State(ctl): State<Shared>, req: Request) -> Response {
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if let Some(resp) = failed_write(&ctl, &req) {
        return resp;
    }
    let is_sse = req.uri().path() == "/v1/sse";
    if is_sse && ctl.stall_sse.load(Ordering::SeqCst) {
        // A buffering proxy: hold the response without a byte (bounded).
        tokio::time::sleep(Duration::from_secs(120)).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let method = req.method().clone();
    let mut headers = HeaderMap::new();
    for (k, v) in req.headers() {
        if k != "host" && k != "connection" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let body = match axum::body::to_bytes(req.into_body(), 2 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let upstream = ctl
        .http
        .request(method, format!("{}{}", ctl.upstream, path_q))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                if k != "connection" && k != "transfer-encoding" && k != "content-length" {
                    out = out.header(k, v);
                }
            }
            let stream = resp.bytes_stream().map_err(std::io::Error::other);
            let body = if is_sse {
                // Each chunk waits while frozen; upstream is not read meanwhile.
                let gate = ctl.freeze_sse.subscribe();
                Body::from_stream(stream.then(move |chunk| {
                    let mut gate = gate.clone();
                    async move {
                        let _ = gate.wait_for(|frozen| !*frozen).await;
                        chunk
                    }
                }))
            } else {
                Body::from_stream(stream)
            };
            out.body(body)
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn serve(addr: SocketAddr, app: Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// SIGINT or SIGTERM: either way the server is stopped before the harness exits.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/t.db", dir.path().display());
    let mut server = Server {
        bin: server_binary()?,
        port: args.port,
        db,
        extra: args.server_args.clone(),
        child: None,
    };
    server.start().await?;
    let auth_port = free_port()?;
    let mut auth_server = Server {
        bin: server_binary()?,
        port: auth_port,
        db: format!("sqlite://{}/auth.db", dir.path().display()),
        extra: vec!["--jwt-secret".into(), AUTH_SECRET.into()],
        child: None,
    };
    auth_server.start().await?;
    let auth_url = format!("http://127.0.0.1:{auth_port}");
    let upstream = format!("http://127.0.0.1:{}", args.port);
    let ctl: Shared = Arc::new(Ctl {
        server: Mutex::new(server),
        stall_sse: AtomicBool::new(false),
        freeze_sse: tokio::sync::watch::channel(false).0,
        freeze_ws: tokio::sync::watch::channel(false).0,
        upstream: upstream.clone(),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("http client")?,
        fail_writes: Default::default(),
    });
    let cors = tower_http::cors::CorsLayer::very_permissive();
    let control = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/restart", post(restart))
        .route("/stop", post(stop))
        .route("/start", post(start))
        .route("/sse-stall", post(sse_stall))
        .route("/sse-freeze", post(sse_freeze))
        .route("/ws-freeze", post(ws_freeze))
        .route("/token", post(token))
        .route("/fail-writes", post(fail_writes).get(failed_writes))
        .layer(cors)
        .with_state(ctl.clone());
    serve(SocketAddr::from(([127, 0, 0, 1], args.ctl_port)), control).await?;
    let proxy_app = Router::new()
        .route("/v1/ws", get(ws_proxy))
        .fallback(proxy)
        .with_state(ctl.clone());
    serve(
        SocketAddr::from(([127, 0, 0, 1], args.proxy_port)),
        proxy_app,
    )
    .await?;
    let chaos_port = match args.chaos_port {
        0 => free_port()?,
        p => p,
    };
    chaos::serve(SocketAddr::from(([127, 0, 0, 1], chaos_port)), &upstream).await?;
    let chaos_url = format!("http://127.0.0.1:{chaos_port}");
    let ctl_url = format!("http://127.0.0.1:{}", args.ctl_port);
    let proxy_url = format!("http://127.0.0.1:{}", args.proxy_port);
    println!("harness: server {upstream}, control {ctl_url}, proxy {proxy_url}, chaos {chaos_url}");

    let code = if args.command.is_empty() {
        stop_signal().await;
        0
    } else {
        let mut cmd = Command::new(&args.command[0]);
        cmd.args(&args.command[1..])
            .env("TIDEWIRE_TEST_URL", &upstream)
            .env("TIDEWIRE_AUTH_URL", &auth_url)
            .env("TIDEWIRE_CTL_URL", &ctl_url)
            .env("TIDEWIRE_PROXY_URL", &proxy_url)
            .env("TIDEWIRE_CHAOS_URL", &chaos_url)
            .kill_on_drop(true);
        if std::env::var_os("WASM_BINDGEN_TEST_TIMEOUT").is_none() {
            // The browser suite restarts the server and waits for fallbacks: allow 3 minutes.
            cmd.env("WASM_BINDGEN_TEST_TIMEOUT", "180");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {:?}", args.command))?;
        tokio::select! {
            status = child.wait() => status?.code().unwrap_or(1),
            _ = stop_signal() => { let _ = child.kill().await; 130 }
        }
    };
    ctl.server.lock().await.stop(false).await;
    auth_server.stop(false).await;
    drop(dir);
    std::process::exit(code);
}
