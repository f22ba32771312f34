//! `GET /metrics` (Prometheus text) and `GET /healthz` (`200 ok`, `503` while draining).
//!
//! With `--outbox`, a node whose outbox database does not answer still serves its clients
//! from its own store: `/healthz` stays `200` (it is alive and ready) but says `degraded`.
//!
//! ```text
//! GET /healthz → 200 ok
//! GET /healthz → 200 degraded: outbox database unreachable
//! GET /healthz → 503 draining
//! ```

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::AppState;

/// Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Liveness and readiness.
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.outbox.as_ref().is_some_and(|h| h.problem().is_some()) {
        (StatusCode::OK, "degraded: outbox database unreachable")
    } else {
        (StatusCode::OK, "ok")
    }
}
