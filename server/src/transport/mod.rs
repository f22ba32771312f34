//! The streaming transports — [`sse`], [`ws`], [`poll`] — and nothing but I/O: each takes a
//! request, opens a [`Session`](crate::session::Session), writes what the session's catch-up
//! and outbound queue hand it, and hands the client's frames to the session's command
//! handler. What a client receives is decided in [`session`](crate::session), never here, so
//! a new transport needs only its framing.
//!
//! ```no_run
//! # fn f(server: tidewire_server::Server) {
//! use axum::routing::get;
//! // Each handler takes `State<Arc<Sessions>>` (and an identity) from any state that has them.
//! let app: axum::Router = axum::Router::new()
//!     .route("/live", get(tidewire_server::transport::sse::handler))
//!     .with_state(server.state().clone());
//! # }
//! ```

pub mod poll;
pub mod sse;
pub mod ws;
