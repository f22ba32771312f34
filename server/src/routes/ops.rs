//! `GET /metrics` (Prometheus text) and `GET /healthz` (`200 ok`, `503` while draining).
//!
//! ```text
//! GET /healthz → 200 ok
//! ```

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use crate::state::Ops;

/// A router serving only `GET /metrics`, for a listener of its own (`--metrics-listen`).
pub fn metrics_router(ops: Ops) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(ops)
}

/// Prometheus text.
pub async fn metrics(State(state): State<Ops>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Liveness and readiness.
pub async fn healthz(State(state): State<Ops>) -> impl IntoResponse {
    if state.shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ok")
    }
}
