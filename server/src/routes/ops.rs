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
    #[cfg(feature = "postgres")]
    let outbox_away = state.outbox.as_ref().is_some_and(|h| h.problem().is_some());
    #[cfg(not(feature = "postgres"))]
    let outbox_away = false;
    if state.shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if outbox_away {
        (StatusCode::OK, "degraded: outbox database unreachable")
    } else {
        (StatusCode::OK, "ok")
    }
}
