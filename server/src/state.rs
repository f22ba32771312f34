//! The router's state, split so that each handler takes only what it uses: axum substates
//! (`#[derive(FromRef)]`), so a REST read takes `State<Arc<Service>>`, a write
//! `State<Policy>`, a stream `State<Arc<Sessions>>`, and the identity extractor works over
//! any state that holds an [`Identify`].
//!
//! ```no_run
//! # async fn f(server: tidewire_server::Server) {
//! use axum::extract::State;
//! use tidewire_server::policy::Policy;
//! async fn my_handler(State(_policy): State<Policy>) {}
//! let app: axum::Router = axum::Router::new()
//!     .route("/mine", axum::routing::post(my_handler))
//!     .with_state(server.state().clone());
//! # }
//! ```

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;

pub use crate::admin::Admin;
pub use crate::identity::Identify;
use crate::policy::Policy;
use crate::service::Service;
use crate::session::Sessions;
use crate::shutdown::Shutdown;

/// What the operations endpoints need.
#[derive(Clone)]
pub struct Ops {
    /// The Prometheus registry's page.
    pub metrics: PrometheusHandle,
    /// The draining flag.
    pub shutdown: Arc<Shutdown>,
    /// Whether the app's outbox database answers (`--outbox`; `None` without it).
    #[cfg(feature = "postgres")]
    pub outbox: Option<crate::outbox::Health>,
}

/// Request limits the REST routes report in their errors.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The state of every route, made of the substates handlers extract.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// Streaming connections.
    pub sessions: Arc<Sessions>,
    /// The write policy.
    pub policy: Policy,
    /// Reads (snapshot, history, presence).
    pub service: Arc<Service>,
    /// Who is calling.
    pub identify: Identify,
    /// Metrics and health.
    pub ops: Ops,
    /// The request body limit.
    pub body_limit: BodyLimit,
    /// The `/admin` dashboard (off without an admin token).
    pub admin: Admin,
}
