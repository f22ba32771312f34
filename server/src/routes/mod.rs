//! The HTTP surface: REST ([`rest`]), streaming transports, operations ([`ops`]) and static
//! files (`/` from `www_dir`, `/pkg/` from `pkg_dir`), with CORS and the body limit.
//!
//! ```no_run
//! # async fn f(server: tidewire_server::Server) {
//! let app: axum::Router = server.router(); // every route below, state attached
//! # }
//! ```

pub mod admin;
pub mod ops;
pub mod rest;
pub mod tickets;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, put};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

use crate::state::AppState;
use crate::transport::{poll, sse, ws};
use crate::{Config, Error};

/// Builds the router for `state`; `config` says where the static files are, the body
/// limit and the CORS origins.
pub fn router(state: AppState, config: &Config) -> Router {
    let api = Router::new()
        .route("/v1/rooms/{room}/snapshot", get(rest::snapshot))
        .route(
            "/v1/rooms/{room}/items/{id}",
            put(rest::put_item).delete(rest::delete_item),
        )
        .route(
            "/v1/rooms/{room}/events",
            get(rest::history).post(rest::post_event),
        )
        .route("/v1/rooms/{room}/presence", get(rest::presence))
        .route("/v1/sse", get(sse::handler))
        .route("/v1/ws", get(ws::handler))
        .route("/v1/poll", get(poll::handler))
        .route("/v1/tickets", axum::routing::post(tickets::tickets))
        .route("/v1", axum::routing::any(not_found))
        .route("/v1/{*rest}", axum::routing::any(not_found))
        .route("/healthz", get(ops::healthz))
        .merge(admin::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                // The path only: query strings may carry a `ticket`, which is never logged.
                |req: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
                },
            ),
        );
    // With `--metrics-listen`, `/metrics` is served there only.
    let api = match config.metrics_listen {
        None => api.route("/metrics", get(ops::metrics)),
        Some(_) => api,
    };
    let statics = Router::new()
        .nest_service("/pkg", ServeDir::new(&config.pkg_dir))
        .fallback_service(ServeDir::new(&config.www_dir))
        .layer(axum::middleware::from_fn(no_dotfiles));
    api.merge(statics)
        .layer(cors(&config.cors_origin))
        .with_state(state)
}

/// Refuses static paths with a segment starting with `.` (`/.env`, `/pkg/.wasm-optimized`):
/// files a deployment did not mean to publish.
async fn no_dotfiles(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if req.uri().path().split('/').any(|seg| seg.starts_with('.')) {
        return Error::NotFound("no such file".into()).into_response();
    }
    next.run(req).await
}

async fn not_found() -> Error {
    Error::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

fn cors(origins: &[String]) -> CorsLayer {
    let origin = if origins.is_empty() || origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("idempotency-key"),
            header::IF_MATCH,
            HeaderName::from_static("last-event-id"),
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
        ])
        .expose_headers([
            header::ETAG,
            HeaderName::from_static("idempotency-replayed"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}
