//! The `/admin` dashboard: the page (embedded in the binary from `www/admin/`), its history
//! (`GET /admin/stats`, JSON) and its live feed (`GET /admin/stream`, Server-Sent Events of
//! the `_tidewire.admin` room as this node receives it). Off (404) without `--admin-token`;
//! the data answers 401 problem+json without `Authorization: Bearer <admin token>`.
//!
//! ```text
//! GET /admin                                          → 200 the page (it asks for the token)
//! GET /admin/stats   Authorization: Bearer s3cret     → 200 {"node":"…","interval_ms":1000,"nodes":[…]}
//! GET /admin/stream  Authorization: Bearer s3cret     → 200 text/event-stream, `event: stats` each second per node
//! GET /admin/stats                                    → 401 application/problem+json
//! ```

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use tokio_stream::wrappers::BroadcastStream;

use crate::admin::{Admin, NodeHistory};
use crate::Result;

const PAGE: &str = include_str!("../../../www/admin/index.html");
const SCRIPT: &str = include_str!("../../../www/admin/admin.js");
const STYLE: &str = include_str!("../../../www/admin/admin.css");

/// The routes, to merge into the main router.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    Admin: axum::extract::FromRef<S>,
{
    use axum::routing::get;
    axum::Router::new()
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .route("/admin/admin.js", get(script))
        .route("/admin/admin.css", get(style))
        .route("/admin/stats", get(stats))
        .route("/admin/stream", get(stream))
        .route("/admin/{*rest}", axum::routing::any(not_found))
}

fn asset(admin: &Admin, mime: &'static str, body: &'static str) -> Result<Response> {
    if !admin.enabled() {
        return Err(crate::Error::NotFound("no such endpoint".into()));
    }
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// The page: 404 when off; 401 when a wrong credential is sent along; else the page, which
/// asks for the token itself.
async fn page(State(admin): State<Admin>, headers: HeaderMap) -> Result<Response> {
    if headers.contains_key(header::AUTHORIZATION) {
        admin.check(&headers)?;
    }
    let mut res = asset(&admin, "text/html; charset=utf-8", PAGE)?;
    // The page loads only its own script and style and talks only to this origin.
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    Ok(res)
}

async fn script(State(admin): State<Admin>) -> Result<Response> {
    asset(&admin, "text/javascript; charset=utf-8", SCRIPT)
}

async fn style(State(admin): State<Admin>) -> Result<Response> {
    asset(&admin, "text/css; charset=utf-8", STYLE)
}

async fn not_found() -> crate::Error {
    crate::Error::NotFound("no such endpoint".into())
}

/// The body of `GET /admin/stats`.
#[derive(Debug, Serialize)]
pub struct StatsBody {
    /// The answering node.
    pub node: String,
    /// Milliseconds between samples.
    pub interval_ms: u64,
    /// Every node heard from in the last minute, this one first.
    pub nodes: Vec<NodeHistory>,
}

/// Every node's last five minutes.
async fn stats(State(admin): State<Admin>, headers: HeaderMap) -> Result<Json<StatsBody>> {
    admin.check(&headers)?;
    Ok(Json(StatsBody {
        node: admin.node().to_owned(),
        interval_ms: 1000,
        nodes: admin.history(),
    }))
}

/// Each sample as it arrives, as `event: stats` with the sample's JSON; ends when the server
/// drains.
async fn stream(State(admin): State<Admin>, headers: HeaderMap) -> Result<Response> {
    admin.check(&headers)?;
    let events = BroadcastStream::new(admin.live())
        .filter_map(|item| async move {
            // A viewer that fell behind skips what it missed.
            let json = item.ok()?;
            Some(Ok::<_, Infallible>(
                Event::default().event("stats").data(&*json),
            ))
        })
        .take_until(admin.draining());
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
