//! REST calls through the browser's `fetch`: snapshots, writes, long-poll, presence.
//!
//! Answers are parsed by the browser (`Response.json()`) and decoded with
//! `serde-wasm-bindgen`, so no JSON parser is linked into the wasm. Error answers
//! (`application/problem+json`) become [`Error::Server`] with the problem's code; a request
//! that never got an answer is [`Error::Network`].
//!
//! Every call takes an [`Endpoint`]: the server's base URL and, with auth on, the token
//! source whose token goes in `Authorization: Bearer`.
//!
//! ```ignore
//! let server = tidewire_client::http::Endpoint::new("http://127.0.0.1:8080");
//! let snap = tidewire_client::http::snapshot(&server, "board-1").await?;
//! println!("{} items at seq {}", snap.items.len(), snap.seq);
//! ```

use std::rc::Rc;

use js_sys::JSON;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tidewire_protocol::{Envelope, ErrorCode, Item, PresenceList, Snapshot};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, Headers, RequestInit, Response};

use crate::auth::TokenSource;
use crate::Error;

/// A server to call: its base URL and, with auth on, where its tokens come from.
#[derive(Clone, Debug)]
pub struct Endpoint {
    base: String,
    auth: Option<Rc<TokenSource>>,
}

impl Endpoint {
    /// A server at `base` (e.g. `http://127.0.0.1:8080`), without credentials.
    pub fn new(base: &str) -> Endpoint {
        Endpoint {
            base: base.trim_end_matches('/').to_owned(),
            auth: None,
        }
    }

    /// A server at `base` whose requests carry a token from `source`.
    pub fn with_token(base: &str, source: Rc<TokenSource>) -> Endpoint {
        Endpoint {
            auth: Some(source),
            ..Endpoint::new(base)
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token source, when requests carry a token.
    pub fn token_source(&self) -> Option<&Rc<TokenSource>> {
        self.auth.as_ref()
    }
}

fn bad_json(e: impl std::fmt::Display) -> Error {
    Error::Protocol(tidewire_protocol::ProtocolError::BadJson(e.to_string()))
}

/// Converts a JavaScript value into a Rust value. Everything goes through one
/// `serde_json::Value` step, so each type's `Deserialize` is compiled once (for `Value`, which
/// the protocol crate needs anyway) instead of once per deserializer: a smaller module.
pub(crate) fn from_js<T: DeserializeOwned>(value: JsValue) -> Result<T, Error> {
    let value: Value = serde_wasm_bindgen::from_value(value).map_err(bad_json)?;
    serde_json::from_value(value).map_err(bad_json)
}

/// Decodes an envelope from a parsed JavaScript value.
pub(crate) fn envelope_from_js(value: JsValue) -> Result<Envelope, Error> {
    let value: Value = serde_wasm_bindgen::from_value(value).map_err(bad_json)?;
    Ok(Envelope::decode_from(value)?)
}

/// Parses JSON text with the browser's parser.
pub(crate) fn parse_json(text: &str) -> Result<JsValue, Error> {
    JSON::parse(text).map_err(|_| {
        Error::Protocol(tidewire_protocol::ProtocolError::BadJson(
            "not JSON".to_owned(),
        ))
    })
}

/// Converts a Rust value to a plain JavaScript value (objects, not Maps).
pub(crate) fn to_js<T: serde::Serialize + ?Sized>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::NULL)
}

fn js_error_text(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| "request failed".to_owned())
}

/// One request. `body` is JSON text; the token of `auth`, if any, goes in `Authorization`.
pub(crate) async fn request(
    auth: Option<&TokenSource>,
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, String)],
    signal: Option<&AbortSignal>,
) -> Result<JsValue, Error> {
    let window = web_sys::window().ok_or_else(|| Error::Network("no window".to_owned()))?;
    let init = RequestInit::new();
    init.set_method(method);
    let h = Headers::new().map_err(|e| Error::Network(js_error_text(&e)))?;
    if body.is_some() {
        let _ = h.set("Content-Type", "application/json");
    }
    for (name, value) in headers {
        h.set(name, value)
            .map_err(|e| Error::Network(js_error_text(&e)))?;
    }
    if let Some(source) = auth {
        let token = source.token().await?;
        h.set("Authorization", &format!("Bearer {token}"))
            .map_err(|e| Error::Network(js_error_text(&e)))?;
    }
    init.set_headers(&h);
    if let Some(body) = body {
        init.set_body(&JsValue::from_str(body));
    }
    if let Some(signal) = signal {
        init.set_signal(Some(signal));
    }
    let resp = JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .map_err(|e| Error::Network(js_error_text(&e)))?;
    let resp: Response = resp
        .dyn_into()
        .map_err(|_| Error::Network("not a Response".to_owned()))?;
    let status = resp.status();
    let json = match resp.json() {
        Ok(p) => JsFuture::from(p).await.ok(),
        Err(_) => None,
    };
    if (200..300).contains(&status) {
        return json.ok_or_else(|| {
            Error::Protocol(tidewire_protocol::ProtocolError::BadJson(format!(
                "{method} {url}: the answer is not JSON"
            )))
        });
    }
    // `Retry-After` in seconds (the server exposes it to cross-origin pages); the problem's
    // `retry_after` when the header is not readable.
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<u64>().ok());
    Err(problem_error(status, json, retry_after))
}

fn problem_error(status: u16, json: Option<JsValue>, retry_after: Option<u64>) -> Error {
    #[derive(serde::Deserialize)]
    struct Prob {
        code: Option<String>,
        detail: Option<String>,
        title: Option<String>,
        current: Option<Item>,
        retry_after: Option<u64>,
    }
    let prob: Option<Prob> = json.and_then(|j| from_js(j).ok());
    let fallback = match status {
        409 => ErrorCode::VersionConflict,
        404 => ErrorCode::NotFound,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        503 => ErrorCode::StoreUnavailable,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    match prob {
        Some(p) => Error::Server {
            code: p.code.and_then(|c| c.parse().ok()).unwrap_or(fallback),
            status,
            message: p
                .detail
                .or(p.title)
                .unwrap_or_else(|| format!("HTTP {status}")),
            current: p.current,
            retry_after: retry_after.or(p.retry_after),
        },
        None => Error::Server {
            code: fallback,
            status,
            message: format!("HTTP {status}"),
            current: None,
            retry_after,
        },
    }
}

fn enc(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

/// `GET /v1/rooms/{room}/snapshot`.
pub async fn snapshot(server: &Endpoint, room: &str) -> Result<Snapshot, Error> {
    let url = format!("{}/v1/rooms/{}/snapshot", server.base, enc(room));
    from_js(request(server.auth.as_deref(), "GET", &url, None, &[], None).await?)
}

/// `GET /v1/rooms/{room}/presence`.
pub async fn presence(server: &Endpoint, room: &str) -> Result<PresenceList, Error> {
    let url = format!("{}/v1/rooms/{}/presence", server.base, enc(room));
    from_js(request(server.auth.as_deref(), "GET", &url, None, &[], None).await?)
}

/// `GET /healthz` answered.
pub(crate) async fn reachable(base: &str) -> bool {
    let window = match web_sys::window() {
        Some(w) => w,
        None => return false,
    };
    match JsFuture::from(window.fetch_with_str(&format!("{base}/healthz"))).await {
        Ok(r) => r.dyn_into::<Response>().map(|r| r.ok()).unwrap_or(false),
        Err(_) => false,
    }
}

fn write_headers(key: &str, if_match: Option<u64>) -> Vec<(&'static str, String)> {
    let mut h = vec![("Idempotency-Key", key.to_owned())];
    if let Some(v) = if_match {
        h.push(("If-Match", format!("\"{v}\"")));
    }
    h
}

/// `PUT /v1/rooms/{room}/items/{id}` with an idempotency key and optional `If-Match`.
pub async fn put(
    server: &Endpoint,
    room: &str,
    id: &str,
    value: &Value,
    key: &str,
    if_match: Option<u64>,
) -> Result<Envelope, Error> {
    let url = format!("{}/v1/rooms/{}/items/{}", server.base, enc(room), enc(id));
    let body = serde_json::to_string(value).map_err(|e| Error::BadOption {
        name: "value",
        reason: e.to_string(),
    })?;
    let js = request(
        server.auth.as_deref(),
        "PUT",
        &url,
        Some(&body),
        &write_headers(key, if_match),
        None,
    )
    .await?;
    envelope_from_js(js)
}

/// `DELETE /v1/rooms/{room}/items/{id}` with an idempotency key and optional `If-Match`.
pub async fn delete(
    server: &Endpoint,
    room: &str,
    id: &str,
    key: &str,
    if_match: Option<u64>,
) -> Result<Envelope, Error> {
    let url = format!("{}/v1/rooms/{}/items/{}", server.base, enc(room), enc(id));
    let js = request(
        server.auth.as_deref(),
        "DELETE",
        &url,
        None,
        &write_headers(key, if_match),
        None,
    )
    .await?;
    envelope_from_js(js)
}

/// `POST /v1/rooms/{room}/events`: appends an application event.
pub async fn publish(
    server: &Endpoint,
    room: &str,
    event_type: &str,
    data: &Value,
    key: &str,
) -> Result<Envelope, Error> {
    let url = format!("{}/v1/rooms/{}/events", server.base, enc(room));
    let body = serde_json::json!({"type": event_type, "data": data}).to_string();
    let js = request(
        server.auth.as_deref(),
        "POST",
        &url,
        Some(&body),
        &[("Idempotency-Key", key.to_owned())],
        None,
    )
    .await?;
    envelope_from_js(js)
}

/// `POST /v1/tickets`: a single-use ticket for `?ticket=` (auth on; the Bearer token comes
/// from the endpoint's token source).
pub(crate) async fn ticket(server: &Endpoint) -> Result<String, Error> {
    #[derive(serde::Deserialize)]
    struct Ticket {
        ticket: String,
    }
    let url = format!("{}/v1/tickets", server.base);
    let t: Ticket = from_js(request(server.auth.as_deref(), "POST", &url, None, &[], None).await?)?;
    Ok(t.ticket)
}

/// What a long-poll brought: each event decoded on its own (one the client does not
/// understand, an unknown `v` or `type`, is an error in its place and the others still
/// count), and the cursor to poll from next (past all of them).
pub(crate) struct Polled {
    pub(crate) events: Vec<Result<Envelope, Error>>,
    pub(crate) cursor: String,
}

/// `GET /v1/poll`: waits up to `wait` seconds for events after `since`.
pub(crate) async fn poll(
    server: &Endpoint,
    rooms: &str,
    since: &str,
    wait: u32,
    signal: Option<&AbortSignal>,
) -> Result<Polled, Error> {
    #[derive(serde::Deserialize)]
    struct Raw {
        events: Vec<Value>,
        cursor: String,
    }
    let url = format!(
        "{}/v1/poll?rooms={}&since={}&wait={wait}",
        server.base,
        enc(rooms),
        enc(since)
    );
    let raw: Raw = from_js(request(server.auth.as_deref(), "GET", &url, None, &[], signal).await?)?;
    Ok(Polled {
        events: raw
            .events
            .into_iter()
            .map(|v| Envelope::decode_from(v).map_err(Error::from))
            .collect(),
        cursor: raw.cursor,
    })
}
