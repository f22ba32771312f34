//! The chaos proxy: a reverse proxy in front of the server that duplicates and reorders the
//! events of SSE streams and WebSocket connections, deterministically from a seed.
//!
//! A client points its base URL at `http://127.0.0.1:<chaos-port>/seed/<n>`; every request
//! under it goes to the server with the prefix removed. Plain requests (snapshot, writes) pass
//! through unchanged. On `GET /v1/sse` the proxy splits the stream into event blocks (separated
//! by a blank line) and on `GET /v1/ws` it relays messages (tokio-tungstenite to the server);
//! each durable event (an SSE block with `id:` and `data:`, a WebSocket text message with a
//! numeric `seq`) is, by a roll of the seeded RNG, passed on, passed on and sent again a little
//! later, or held back and sent after the next one to three events (or 20–150 ms, whichever
//! comes first). Everything else passes in order. Stream `k` of seed `n` draws from an RNG
//! seeded with `n` and `k`, so a run replays with the same seed.
//!
//! `GET /stats/<n>` (open CORS) answers what was done for seed `n`:
//! `{"streams":…,"events":…,"duplicated":…,"delayed":…}`.
//!
//! `POST /inject/<n>` (open CORS) with a text body sends that text, in order with the rest,
//! into every SSE stream (as one `data:` event) and WebSocket (as one text message) of seed
//! `n` open now, and into every long-poll of seed `n` waiting now (a JSON text, put before
//! the events of its answer), to test how a client handles what the server would never send
//! (an unknown `v` or `type`); it answers how many streams got it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures::{SinkExt, Stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

/// Chance that an event is held back and sent after later ones.
const DELAY_P: f64 = 0.2;
/// Chance that an event is sent twice.
const DUPLICATE_P: f64 = 0.15;
/// A held event goes out after this many later events at most …
const MAX_AFTER: u32 = 3;
/// … or after this many milliseconds at most.
const MAX_HOLD_MS: u64 = 150;

/// What the proxy did for one seed.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct Stats {
    streams: u64,
    events: u64,
    duplicated: u64,
    delayed: u64,
}

struct Chaos {
    upstream: String,
    ws_upstream: String,
    http: reqwest::Client,
    stats: Mutex<HashMap<u64, Stats>>,
    /// Per seed: where `POST /inject/<n>` sends its text.
    inject: Mutex<HashMap<u64, tokio::sync::broadcast::Sender<String>>>,
}

type Shared = Arc<Chaos>;

impl Chaos {
    /// A receiver of the texts injected into the streams of `seed`.
    fn injected(&self, seed: u64) -> tokio::sync::broadcast::Receiver<String> {
        let mut inject = self.inject.lock().unwrap_or_else(|e| e.into_inner());
        inject
            .entry(seed)
            .or_insert_with(|| tokio::sync::broadcast::channel(16).0)
            .subscribe()
    }
}

/// `upstream` with the texts of `rx` (wrapped by `wrap`) merged in; ends when `upstream` ends.
fn with_injected<T: 'static, S>(
    upstream: S,
    rx: tokio::sync::broadcast::Receiver<String>,
    wrap: fn(String) -> T,
) -> impl Stream<Item = Item<T>>
where
    S: Stream<Item = Item<T>>,
{
    use tokio::sync::broadcast::error::RecvError;
    let up = upstream
        .map(Some)
        .chain(futures::stream::once(async { None }));
    let injected = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(text) => return Some((text, rx)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .map(move |text| Some(Item::Other(wrap(text))));
    futures::stream::select(up, injected)
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
}

/// `POST /inject/<n>`: see the module docs.
async fn inject(State(chaos): State<Shared>, Path(seed): Path<u64>, body: String) -> String {
    let inject = chaos.inject.lock().unwrap_or_else(|e| e.into_inner());
    let sent = inject
        .get(&seed)
        .and_then(|tx| tx.send(body).ok())
        .unwrap_or(0);
    sent.to_string()
}

impl Chaos {
    /// A new stream of `seed`: its RNG (seeded with the seed and the stream's index).
    fn stream_rng(&self, seed: u64) -> StdRng {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(seed).or_default();
        s.streams += 1;
        StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ s.streams)
    }

    fn count(&self, seed: u64, f: impl FnOnce(&mut Stats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        f(stats.entry(seed).or_default());
    }
}

/// An event waiting to be sent again (a duplicate) or for the first time (a delayed one).
struct Held<T> {
    after: u32,
    at: Instant,
    item: T,
}

/// The per-stream decision maker: feeds durable events in, answers what to send in order.
struct Shuffler<T> {
    rng: StdRng,
    held: Vec<Held<T>>,
}

impl<T: Clone> Shuffler<T> {
    fn new(rng: StdRng) -> Self {
        Shuffler {
            rng,
            held: Vec::new(),
        }
    }

    /// A durable event arrives; what to send now goes to `out`. Answers (duplicated, delayed).
    fn push(&mut self, item: T, out: &mut Vec<T>) -> (bool, bool) {
        // Held events whose count of later events is reached go out after this one.
        let mut release = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            self.held[i].after -= 1;
            if self.held[i].after == 0 {
                release.push(self.held.remove(i).item);
            } else {
                i += 1;
            }
        }
        let roll: f64 = self.rng.random();
        let hold = Held {
            after: self.rng.random_range(1..=MAX_AFTER),
            at: Instant::now() + Duration::from_millis(self.rng.random_range(20..=MAX_HOLD_MS)),
            item: item.clone(),
        };
        let outcome = if roll < DELAY_P {
            self.held.push(hold);
            (false, true)
        } else if roll < DELAY_P + DUPLICATE_P {
            out.push(item);
            self.held.push(hold);
            (true, false)
        } else {
            out.push(item);
            (false, false)
        };
        out.extend(release);
        outcome
    }

    /// Held events whose time has come.
    fn due(&mut self, out: &mut Vec<T>) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].at <= now {
                out.push(self.held.remove(i).item);
            } else {
                i += 1;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.at).min()
    }

    fn flush(&mut self, out: &mut Vec<T>) {
        out.extend(self.held.drain(..).map(|h| h.item));
    }
}

/// One item from upstream: a durable event (subject to chaos) or anything else.
enum Item<T> {
    Event(T),
    Other(T),
}

/// Relays `upstream` to `send`, shuffling the durable events. Ends when either side ends.
async fn relay<T: Clone, S, F, Fut>(chaos: &Chaos, seed: u64, upstream: S, mut send: F)
where
    S: Stream<Item = Item<T>>,
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut shuffler = Shuffler::new(chaos.stream_rng(seed));
    let mut upstream = std::pin::pin!(upstream);
    let mut out = Vec::new();
    loop {
        let deadline = shuffler.next_deadline();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut done = false;
        tokio::select! {
            item = upstream.next() => match item {
                Some(Item::Event(t)) => {
                    let (dup, delayed) = shuffler.push(t, &mut out);
                    chaos.count(seed, |s| {
                        s.events += 1;
                        s.duplicated += u64::from(dup);
                        s.delayed += u64::from(delayed);
                    });
                }
                Some(Item::Other(t)) => out.push(t),
                None => {
                    shuffler.flush(&mut out);
                    done = true;
                }
            },
            () = timer => shuffler.due(&mut out),
        }
        for t in out.drain(..) {
            if !send(t).await {
                return;
            }
        }
        if done {
            return;
        }
    }
}

/// Splits an SSE byte stream into blocks (each with its blank line); the blocks with `id:`
/// and `data:` lines are durable events.
fn sse_blocks(body: impl Stream<Item = reqwest::Result<Bytes>>) -> impl Stream<Item = Item<Bytes>> {
    futures::stream::unfold(
        (Box::pin(body), Vec::<u8>::new(), false),
        |(mut body, mut buf, mut ended)| async move {
            loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buf.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&block);
                    let durable = text.lines().any(|l| l.starts_with("id:"))
                        && text.lines().any(|l| l.starts_with("data:"));
                    let block = Bytes::from(block);
                    let item = if durable {
                        Item::Event(block)
                    } else {
                        Item::Other(block)
                    };
                    return Some((item, (body, buf, ended)));
                }
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = Bytes::from(std::mem::take(&mut buf));
                    return Some((Item::Other(rest), (body, buf, ended)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    _ => ended = true,
                }
            }
        },
    )
}

fn forward_headers(req: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in req {
        if k != "host" && k != "connection" {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers
}

/// Everything under `/seed/<n>/` except the WebSocket: forwarded; SSE streams shuffled.
async fn proxy(
    State(chaos): State<Shared>,
    Path((seed, rest)): Path<(u64, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let url = match &query {
        Some(q) => format!("{}/{rest}?{q}", chaos.upstream),
        None => format!("{}/{rest}", chaos.upstream),
    };
    // A long-poll waiting now counts as a stream for `/inject` (see `splice_injected`).
    let mut injected = (rest == "v1/poll").then(|| chaos.injected(seed));
    let method = req.method().clone();
    let headers = forward_headers(req.headers());
    let body = match axum::body::to_bytes(req.into_body(), 2 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let resp = match chaos
        .http
        .request(method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut out = Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        if k != "connection" && k != "transfer-encoding" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let is_sse = rest == "v1/sse" && resp.status().is_success();
    let body = if let (Some(rx), true) = (injected.as_mut(), resp.status().is_success()) {
        match resp.bytes().await {
            Ok(bytes) => Body::from(splice_injected(&bytes, rx)),
            Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    } else if is_sse {
        let (tx, rx) = futures::channel::mpsc::channel::<std::io::Result<Bytes>>(16);
        let upstream = with_injected(sse_blocks(resp.bytes_stream()), chaos.injected(seed), |t| {
            Bytes::from(format!("data: {}\n\n", t.replace('\n', "\ndata: ")))
        });
        tokio::spawn(async move {
            relay(&chaos, seed, upstream, |b| {
                let mut tx = tx.clone();
                async move { tx.send(Ok(b)).await.is_ok() }
            })
            .await;
        });
        Body::from_stream(rx)
    } else {
        Body::from_stream(resp.bytes_stream())
    };
    out.body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// A long-poll answer (`{"events":[…],"cursor":…}`) with the JSON texts injected while it
/// waited put before its events.
fn splice_injected(body: &[u8], rx: &mut tokio::sync::broadcast::Receiver<String>) -> Vec<u8> {
    let mut extra = Vec::new();
    while let Ok(text) = rx.try_recv() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            extra.push(v);
        }
    }
    let Ok(mut answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    if extra.is_empty() {
        return body.to_vec();
    }
    if let Some(events) = answer.get_mut("events").and_then(|e| e.as_array_mut()) {
        extra.append(events);
        *events = extra;
    }
    answer.to_string().into_bytes()
}

fn to_upstream(m: ws::Message) -> tungstenite::Message {
    match m {
        ws::Message::Text(t) => tungstenite::Message::text(t.as_str()),
        ws::Message::Binary(b) => tungstenite::Message::binary(b),
        ws::Message::Ping(b) => tungstenite::Message::Ping(b),
        ws::Message::Pong(b) => tungstenite::Message::Pong(b),
        ws::Message::Close(c) => {
            tungstenite::Message::Close(c.map(|c| tungstenite::protocol::CloseFrame {
                code: c.code.into(),
                reason: c.reason.as_str().into(),
            }))
        }
    }
}

fn to_client(m: tungstenite::Message) -> Option<ws::Message> {
    Some(match m {
        tungstenite::Message::Text(t) => ws::Message::Text(t.as_str().into()),
        tungstenite::Message::Binary(b) => ws::Message::Binary(b),
        tungstenite::Message::Ping(b) => ws::Message::Ping(b),
        tungstenite::Message::Pong(b) => ws::Message::Pong(b),
        tungstenite::Message::Close(c) => ws::Message::Close(c.map(|c| ws::CloseFrame {
            code: c.code.into(),
            reason: c.reason.as_str().into(),
        })),
        tungstenite::Message::Frame(_) => return None,
    })
}

/// Whether a server message is a durable event (a JSON object with a numeric `seq`).
fn is_durable(m: &ws::Message) -> bool {
    match m {
        ws::Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str())
            .is_ok_and(|v| v.get("seq").is_some_and(serde_json::Value::is_u64)),
        _ => false,
    }
}

/// `GET /seed/<n>/v1/ws`: a WebSocket to the server, the server's events shuffled.
async fn websocket(
    State(chaos): State<Shared>,
    Path(seed): Path<u64>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let url = match &query {
        Some(q) => format!("{}/v1/ws?{q}", chaos.ws_upstream),
        None => format!("{}/v1/ws", chaos.ws_upstream),
    };
    let upstream = match tokio_tungstenite::connect_async(url).await {
        Ok((s, _)) => s,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let injected = chaos.injected(seed);
    upgrade.on_upgrade(move |client: WebSocket| async move {
        let (mut up_tx, up_rx) = upstream.split();
        let (client_tx, mut client_rx) = client.split();
        let to_server = async move {
            while let Some(Ok(m)) = client_rx.next().await {
                if up_tx.send(to_upstream(m)).await.is_err() {
                    break;
                }
            }
            let _ = up_tx.close().await;
        };
        let from_server = async move {
            let items = up_rx
                .take_while(|m| std::future::ready(m.is_ok()))
                .filter_map(|m| std::future::ready(m.ok().and_then(to_client)))
                .map(|m| {
                    if is_durable(&m) {
                        Item::Event(m)
                    } else {
                        Item::Other(m)
                    }
                });
            let items = with_injected(items, injected, |t| ws::Message::Text(t.into()));
            let client_tx = Arc::new(tokio::sync::Mutex::new(client_tx));
            relay(&chaos, seed, items, |m| {
                let client_tx = client_tx.clone();
                async move { client_tx.lock().await.send(m).await.is_ok() }
            })
            .await;
            let _ = client_tx.lock().await.close().await;
        };
        tokio::select! {
            () = to_server => {}
            () = from_server => {}
        }
    })
}

async fn stats(State(chaos): State<Shared>, Path(seed): Path<u64>) -> Json<Stats> {
    let stats = chaos.stats.lock().unwrap_or_else(|e| e.into_inner());
    Json(stats.get(&seed).copied().unwrap_or_default())
}

/// Starts the chaos proxy on `addr` in front of the server at `upstream` (`http://host:port`).
pub async fn serve(addr: SocketAddr, upstream: &str) -> Result<()> {
    let chaos: Shared = Arc::new(Chaos {
        upstream: upstream.to_owned(),
        ws_upstream: upstream.replacen("http://", "ws://", 1),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("http client")?,
        stats: Mutex::new(HashMap::new()),
        inject: Mutex::new(HashMap::new()),
    });
    let cors = tower_http::cors::CorsLayer::very_permissive();
    let app = Router::new()
        .route("/stats/{seed}", get(stats).layer(cors.clone()))
        .route("/inject/{seed}", axum::routing::post(inject).layer(cors))
        .route("/seed/{seed}/v1/ws", get(websocket))
        .route("/seed/{seed}/{*rest}", any(proxy))
        .with_state(chaos);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
