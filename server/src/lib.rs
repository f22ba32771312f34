//! # tidewire-server
//!
//! A complete real-time backend in one process: durable rooms (SQLite), live fan-out over
//! SSE, WebSocket and long-poll with exact resume, presence, limits, graceful shutdown and
//! metrics. It is an axum [`Router`](axum::Router::new) you can mount in your own app, and the
//! `tidewire` binary (`tidewire serve`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = tidewire_server::Config::default();
//! config.database = "sqlite::memory:".into();
//! let server = tidewire_server::Server::new(config).await?;
//! let app = axum::Router::new().nest("/realtime", server.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Under `axum::serve` the router works (every transport, nested under any prefix), but it
//! gets none of what the binary's accept loop adds: the small SSE responder (an idle stream
//! then costs hyper's buffers, ~19 KB instead of ~4 KB), `TCP_USER_TIMEOUT` (a dead peer of
//! an SSE stream lingers until the kernel's own timeouts), and the header and keep-alive
//! deadlines and connection caps of `docs/security.md`. To have them, serve your whole app
//! with [`serve::serve`], naming the nested stream path:
//!
//! ```no_run
//! # async fn run(server: tidewire_server::Server) {
//! let app = axum::Router::new().nest("/realtime", server.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let mut options = tidewire_server::serve::Options::from_config(server.config());
//! options.stream_paths = vec!["/realtime/v1/sse".into()];
//! options.tcp_user_timeout = Some(server.config().idle_timeout());
//! tidewire_server::serve::serve(listener, app, options, std::future::pending()).await;
//! # }
//! ```
//!
//! Architecture (each layer imports only those below it; `docs/architecture.md` draws it):
//! [`store`], [`bus`], [`presence`] (backends behind traits) → [`service`] (the ordered write
//! path), [`hub`] (fan-out to this node's connections) and [`outbound`] (one bounded queue per
//! connection) → [`policy`] (the one write policy) → [`session`] (what a connection receives:
//! catch-up, dedupe, commands) → [`transport`] (SSE, WebSocket, long-poll: I/O only) →
//! [`routes`] (the HTTP surface) → [`serve`] (the accept loop). [`state`] splits the router's
//! state into the substates handlers extract; [`identity`], [`auth`], [`limits`],
//! [`metrics`], [`shutdown`] and [`clock`] are cross-cutting.
//!
//! The app's own PostgreSQL: `--outbox postgres://…` starts the [`outbox`] consumer, which
//! appends what the app's committed transactions published (`docs/outbox.md`).
//!
//! Several nodes: `--database postgres://…` selects [`store::postgres`] and `--redis redis://…`
//! the Redis [`bus`] and [`presence`] (see `docs/scaling.md`); without them a node runs on
//! SQLite with the in-process bus.

pub mod admin;
pub mod auth;
mod backends;
pub mod bus;
pub mod clock;
pub mod config;
pub mod error;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod outbound;
#[cfg(feature = "postgres")]
pub mod outbox;
pub mod payload;
pub mod policy;
pub mod presence;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod routes;
pub mod serve;
pub mod service;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod stats;
pub mod store;
#[cfg(test)]
mod testing;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

pub use config::Config;
pub use error::{Error, Result};
pub use state::AppState;
pub use store::Store;

use crate::hub::Hub;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::service::Service;
use crate::session::{Sessions, Settings};
use crate::shutdown::Shutdown;
use crate::state::{BodyLimit, Identify, Ops};

/// A configured server: backends opened, background tasks running.
#[derive(Clone)]
pub struct Server {
    state: AppState,
    config: Arc<Config>,
}

/// With a lossy bus, a room whose *last* event was lost has no later event to reveal the gap:
/// every second, compare each locally followed room's head in the store with what the hub
/// delivered, and deliver the head (the hub fills the gap before it from the store).
fn spawn_head_check(hub: std::sync::Weak<Hub>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(hub) = hub.upgrade() else { return };
            for (room, _) in hub.followed() {
                hub.check_head(&room).await;
            }
        }
    });
}

impl Server {
    /// Opens the store (creating and migrating it), starts the hub, the presence reaper and
    /// retention. Must run inside a Tokio runtime.
    pub async fn new(config: Config) -> Result<Server> {
        let auth = backends::open_auth(&config).await?;
        let api_keys = auth::api_key::ApiKeys::new(&config.api_key)?;
        let (store, bus, presence) = backends::open(&config).await?;
        let hub = Hub::with_bus(store.clone(), bus.clone());
        tokio::spawn(hub.clone().run_events(bus.events()));
        if config.redis.is_some() {
            spawn_head_check(Arc::downgrade(&hub));
        }
        let service = Arc::new(Service::new(store, bus, presence));
        #[cfg(feature = "postgres")]
        let outbox = outbox::spawn(&config, &service).await?;
        #[cfg(not(feature = "postgres"))]
        if config.outbox.is_some() {
            return Err(Error::Config(
                "--outbox is not built into this server: enable the `postgres` feature".into(),
            ));
        }
        let mut limits = Limits::new(
            config.max_connections_per_client,
            config.write_rate,
            config.write_burst,
        );
        if let Some(cluster) = backends::open_limits(&config).await? {
            limits = limits.with_cluster(cluster);
        }
        let limits = Arc::new(limits);
        let sizes = policy::Sizes {
            item: config.max_item_bytes,
            broadcast: config.max_broadcast_bytes,
            presence_meta: config.max_presence_meta_bytes,
        };
        let policy = Policy::new(service.clone(), limits, sizes);
        let shutdown = Arc::new(Shutdown::new(config.drain_window()));
        // A backend API key is an admin credential too.
        let admin = admin::Admin::new(
            config.admin_token.iter().chain(&config.api_key).cloned(),
            &hub,
            &service,
            shutdown.clone(),
        );
        let sessions = Arc::new(Sessions::new(
            service.clone(),
            hub,
            policy.clone(),
            shutdown.clone(),
            auth.clone(),
            Settings::from_config(&config),
        ));
        let state = AppState {
            sessions,
            policy,
            service: service.clone(),
            identify: Identify {
                auth,
                trusted_proxies: config.trusted_proxies.clone().into(),
                api_keys,
            },
            ops: Ops {
                metrics: metrics::install(),
                shutdown,
                #[cfg(feature = "postgres")]
                outbox,
            },
            body_limit: BodyLimit(config.max_body_bytes),
            admin,
        };
        spawn_maintenance(Arc::downgrade(&service), config.retention_secs);
        Ok(Server {
            state,
            config: Arc::new(config),
        })
    }

    /// The routes, ready to serve or to mount. Serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so limits are per peer address.
    pub fn router(&self) -> Router {
        routes::router(self.state.clone(), &self.config)
    }

    /// `GET /metrics` alone, for a separate listener (`--metrics-listen`).
    pub fn metrics_router(&self) -> Router {
        routes::ops::metrics_router(self.state.ops.clone())
    }

    /// Starts draining: `/healthz` answers 503, every connection is told to reconnect.
    pub fn begin_shutdown(&self) {
        self.state.ops.shutdown.begin();
    }

    /// The router's state (for embedding: mount your own routes on its substates).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Builds a server and answers its router.
pub async fn router(config: Config) -> Result<Router> {
    Ok(Server::new(config).await?.router())
}

fn spawn_maintenance(service: std::sync::Weak<Service>, retention_secs: u64) {
    tokio::spawn(async move {
        let mut reap = tokio::time::interval(Duration::from_millis(250));
        let mut ticks: u64 = 0;
        loop {
            reap.tick().await;
            let Some(service) = service.upgrade() else {
                return;
            };
            if let Err(err) = service.reap_presence().await {
                tracing::warn!(%err, "presence reaper");
            }
            // Retention by age, once a minute (and at start).
            if ticks.is_multiple_of(240) {
                let cutoff =
                    clock::now_ms().saturating_sub((retention_secs as i64).saturating_mul(1000));
                match service.trim_expired(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "retention trimmed events"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "retention"),
                }
            }
            ticks += 1;
        }
    });
}
