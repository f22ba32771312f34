//! Typed REST helpers: writes, snapshot, history, presence, long-poll, metrics.
//!
//! Every call answers an [`Answer`]: the HTTP status, the headers and either the typed body
//! (decoded with `tidewire-protocol` types) or the [`Problem`]. A non-2xx answer that is not
//! `application/problem+json` is an [`Error::Status`](crate::Error::Status).
//!
//! ```no_run
//! # async fn demo() -> tidewire_tests::Result<()> {
//! use serde_json::json;
//! use tidewire_tests::{Rest, WriteOptions};
//! let rest = Rest::new("http://127.0.0.1:8080");
//! let env = rest.put("board", "slot-1", &json!({"free": true}), &WriteOptions::key("k-1")).await?.ok();
//! assert_eq!(env.seq, Some(1));
//! let stale = rest.put("board", "slot-1", &json!(1), &WriteOptions::default().if_match("\"7\"")).await?;
//! assert_eq!(stale.problem().code.as_str(), "version_conflict");
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tidewire_protocol::{Envelope, PollResponse, PresenceList, Problem, Snapshot};

use crate::{Error, Result};

/// Per-request timeout of the helpers (long-polls get `wait` on top).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Headers of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `Idempotency-Key`.
    pub key: Option<String>,
    /// `If-Match`, sent verbatim.
    pub if_match: Option<String>,
}

impl WriteOptions {
    /// Options with an idempotency key.
    pub fn key(key: impl Into<String>) -> WriteOptions {
        WriteOptions {
            key: Some(key.into()),
            if_match: None,
        }
    }

    /// Adds `If-Match` (sent verbatim, e.g. `"\"3\""` or `"3"`).
    pub fn if_match(mut self, value: impl Into<String>) -> WriteOptions {
        self.if_match = Some(value.into());
        self
    }
}

/// An HTTP answer with a typed body or a problem.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The decoded body on 2xx, the problem otherwise.
    pub body: std::result::Result<T, Problem>,
}

impl<T: std::fmt::Debug> Answer<T> {
    /// The success body; panics with the problem otherwise.
    #[track_caller]
    pub fn ok(self) -> T {
        match self.body {
            Ok(t) => t,
            Err(p) => panic!("expected success, got {} {p:?}", self.status),
        }
    }

    /// The problem; panics when the answer was a success.
    #[track_caller]
    pub fn problem(&self) -> &Problem {
        match &self.body {
            Err(p) => p,
            Ok(t) => panic!("expected a problem, got {} {t:?}", self.status),
        }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP answer with the raw body, for requests the typed helpers cannot express.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body bytes.
    pub body: Bytes,
}

impl RawAnswer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a problem, when it is `application/problem+json` and decodes as one.
    pub fn problem(&self) -> Option<Problem> {
        let ct = self.header("content-type")?;
        if !ct.starts_with("application/problem+json") {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A REST client bound to one server.
#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    /// A client for `base` (`http://host:port`, no trailing slash).
    pub fn new(base: &str) -> Rest {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a default reqwest client");
        Rest {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `PUT /v1/rooms/{room}/items/{id}` with `value` as the body.
    pub async fn put(
        &self,
        room: &str,
        id: &str,
        value: &Value,
        opts: &WriteOptions,
    ) -> Result<Answer<Envelope>> {
        let req = self
            .http
            .put(format!("{}/v1/rooms/{room}/items/{id}", self.base))
            .json(value);
        typed(with_opts(req, opts)).await
    }

    /// `DELETE /v1/rooms/{room}/items/{id}`.
    pub async fn delete(
        &self,
        room: &str,
        id: &str,
        opts: &WriteOptions,
    ) -> Result<Answer<Envelope>> {
        let req = self
            .http
            .delete(format!("{}/v1/rooms/{room}/items/{id}", self.base));
        typed(with_opts(req, opts)).await
    }

    /// `POST /v1/rooms/{room}/events` with `{"type", "data"}`.
    pub async fn publish(
        &self,
        room: &str,
        event_type: &str,
        data: &Value,
        opts: &WriteOptions,
    ) -> Result<Answer<Envelope>> {
        let req = self
            .http
            .post(format!("{}/v1/rooms/{room}/events", self.base))
            .json(&serde_json::json!({"type": event_type, "data": data}));
        typed(with_opts(req, opts)).await
    }

    /// `GET /v1/rooms/{room}/snapshot`.
    pub async fn snapshot(&self, room: &str) -> Result<Answer<Snapshot>> {
        typed(
            self.http
                .get(format!("{}/v1/rooms/{room}/snapshot", self.base)),
        )
        .await
    }

    /// `GET /v1/rooms/{room}/events?after=&limit=`.
    pub async fn history(
        &self,
        room: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Answer<Vec<Envelope>>> {
        let mut url = format!("{}/v1/rooms/{room}/events?after={after}", self.base);
        if let Some(limit) = limit {
            url.push_str(&format!("&limit={limit}"));
        }
        typed(self.http.get(url)).await
    }

    /// The whole retained log of `room` after `after`, paging 1000 at a time.
    pub async fn history_all(&self, room: &str, mut after: u64) -> Result<Vec<Envelope>> {
        let mut all = Vec::new();
        for _ in 0..10_000 {
            let page = self.history(room, after, Some(1000)).await?;
            let page = match page.body {
                Ok(p) => p,
                Err(p) => return Err(Error::Problem(Box::new(p))),
            };
            let Some(last) = page.last().and_then(|e| e.seq) else {
                return Ok(all);
            };
            after = last;
            all.extend(page);
        }
        Ok(all)
    }

    /// `GET /v1/rooms/{room}/presence`.
    pub async fn presence(&self, room: &str) -> Result<Answer<PresenceList>> {
        typed(
            self.http
                .get(format!("{}/v1/rooms/{room}/presence", self.base)),
        )
        .await
    }

    /// `GET /v1/poll?rooms=…&since=…&wait=…`.
    pub async fn poll(
        &self,
        rooms: &[&str],
        since: Option<&str>,
        wait_secs: u64,
    ) -> Result<Answer<PollResponse>> {
        let mut query = vec![("rooms", rooms.join(",")), ("wait", wait_secs.to_string())];
        if let Some(since) = since {
            query.push(("since", since.to_owned()));
        }
        let req = self
            .http
            .get(format!("{}/v1/poll", self.base))
            .query(&query)
            .timeout(REQUEST_TIMEOUT + Duration::from_secs(wait_secs));
        typed(req).await
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String> {
        let raw = self.raw(Method::GET, "/metrics", &[], None).await?;
        if raw.status != 200 {
            return Err(Error::Status {
                status: raw.status,
                body: raw.text(),
            });
        }
        Ok(raw.text())
    }

    /// Any request: `path` includes the query, `headers` are sent verbatim.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawAnswer> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok(RawAnswer {
            status,
            headers,
            body,
        })
    }
}

fn with_opts(mut req: reqwest::RequestBuilder, opts: &WriteOptions) -> reqwest::RequestBuilder {
    if let Some(key) = &opts.key {
        req = req.header("Idempotency-Key", key);
    }
    if let Some(m) = &opts.if_match {
        req = req.header("If-Match", m);
    }
    req
}

async fn typed<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<Answer<T>> {
    let resp = req.send().await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await?;
    let body = decode_body(status, &headers, &bytes)?;
    Ok(Answer {
        status: status.as_u16(),
        headers,
        body,
    })
}

/// Decodes a success body as `T` or an error body as a [`Problem`].
pub fn decode_body<T: DeserializeOwned>(
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<std::result::Result<T, Problem>> {
    let text = || {
        let t = String::from_utf8_lossy(bytes);
        t.chars().take(2000).collect::<String>()
    };
    if status.is_success() {
        return serde_json::from_slice(bytes)
            .map(Ok)
            .map_err(|e| Error::Status {
                status: status.as_u16(),
                body: format!("{e}: {}", text()),
            });
    }
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/problem+json") {
        return Err(Error::Status {
            status: status.as_u16(),
            body: format!("(content-type `{ct}`) {}", text()),
        });
    }
    let problem: Problem = serde_json::from_slice(bytes).map_err(|e| Error::Status {
        status: status.as_u16(),
        body: format!("not a problem ({e}): {}", text()),
    })?;
    Ok(Err(problem))
}

/// The sum of every sample of the metric `name` (all label sets) in Prometheus text, or `None`
/// when no sample has that name.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets() {
        let text = "# HELP x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_totalish 9\ny 1\n";
        assert_eq!(metric_sum(text, "x_total"), Some(5.0));
        assert_eq!(metric_sum(text, "z"), None);
    }
}
