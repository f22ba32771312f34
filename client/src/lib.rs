//! # tidewire-client
//!
//! The Tidewire browser SDK: live rooms over SSE, WebSocket, long-poll and polling, with
//! exact resume, optimistic writes, presence and broadcast. Built by `wasm-pack` into the npm
//! package `tidewire`; Rust/wasm applications use it as a crate.
//!
//! The logic that decides things is plain Rust and tested natively:
//! [`backoff`] (exponential backoff with full jitter), [`state`] (the connection state
//! machine), [`ladder`] (which transport next: fallback and climb-back), [`deadlines`] (open
//! bound, stall watchdog, climb and token-refresh times), [`frames`] (URLs and WebSocket
//! frames), [`retry`] (when a write is sent again) and [`room`] (room state, ordering,
//! pending writes); so are the options
//! ([`Options`]) and the public event types ([`RoomUpdate`], [`StateChange`], …). The browser
//! layer (`client`, `room_handle`, `optimistic`, `expect`, `supervisor`, `connection`,
//! `transport`, `http`, `js`) is a thin shell around them, compiled for wasm32 only. The module layout is
//! described in the crate's README.
//!
//! ```
//! use tidewire_client::room::RoomState;
//! let room = RoomState::new("board-1", 1_000);
//! assert_eq!(room.seq(), 0);
//! ```
//!
//! In a browser (Rust):
//!
//! ```ignore
//! let client = tidewire_client::Client::new(tidewire_client::Options::new("http://127.0.0.1:8080"))?;
//! let room = client.room("board-1")?;
//! let _sub = room.subscribe(|update| log(&format!("{} items", update.items.len())));
//! room.put("slot-3", serde_json::json!({"free": false})).await?;
//! ```

#[cfg(target_arch = "wasm32")]
pub mod auth;
pub mod backoff;
#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(target_arch = "wasm32")]
mod client;
#[cfg(target_arch = "wasm32")]
mod connection;
pub mod deadlines;
mod error;
#[cfg(target_arch = "wasm32")]
pub mod expect;
pub mod frames;
#[cfg(target_arch = "wasm32")]
pub mod http;
#[cfg(target_arch = "wasm32")]
pub mod js;
pub mod ladder;
pub mod listeners;
#[cfg(target_arch = "wasm32")]
mod optimistic;
mod options;
pub mod retry;
pub mod room;
#[cfg(target_arch = "wasm32")]
mod room_handle;
#[cfg(target_arch = "wasm32")]
mod shared;
pub mod state;
#[cfg(target_arch = "wasm32")]
mod supervisor;
#[cfg(target_arch = "wasm32")]
mod transport;
#[cfg(feature = "ts")]
pub mod ts;
pub mod typed;
mod types;

#[cfg(target_arch = "wasm32")]
pub use client::Client;
pub use error::Error;
#[cfg(target_arch = "wasm32")]
pub use expect::{Expected, ExpectedChange};
pub use listeners::{ListenerStream, Subscription};
pub use options::Options;
#[cfg(target_arch = "wasm32")]
pub use room_handle::Room;
pub use tidewire_protocol as protocol;
pub use types::{
    BroadcastMessage, Cause, ErrorInfo, LocalCause, PresenceUpdate, Rollback, RoomUpdate,
    StateChange,
};
