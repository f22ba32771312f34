//! Who is in a room now. Ephemeral: nothing here is in the log.
//!
//! A member is identified by its `client_id` (stable across a quick reconnect) and may be held
//! by several connections. When its last connection leaves, the member stays for a grace
//! period, so a reconnect within it is not seen as leave + join; [`Presence::reap`] reports
//! the members whose grace (or TTL) ran out.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use tidewire_protocol::Member;
//! use tidewire_server::presence::{memory::MemoryPresence, Presence};
//! let p = MemoryPresence::new(Duration::from_secs(5), Duration::from_secs(60));
//! let ada = Member { client_id: "ada".into(), user: None, meta: serde_json::json!({}) };
//! assert!(p.join("r", "conn-1", ada).await.unwrap());
//! assert_eq!(p.members("r").await.unwrap().len(), 1);
//! # });
//! ```

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use async_trait::async_trait;
use tidewire_protocol::Member;

use crate::Result;

/// The presence sets of all rooms.
///
/// Contract:
/// - `join` adds or updates `member` held by connection `conn`; it answers `true` when the
///   room should be told (`presence.join`): a new member, or new metadata. A connection of
///   the same `client_id` joining within the grace period answers `false` when nothing
///   changed.
/// - `leave` releases `conn`'s hold; the member is removed only when no connection holds it
///   and the grace period has passed, and is then returned (once) by `reap`.
/// - `touch` keeps `conn`'s members alive; a member not touched within the TTL is reaped even
///   if its connection never said goodbye (a crashed node).
/// - `members` lists members currently present (including those within their grace).
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Adds or updates a member.
    async fn join(&self, room: &str, conn: &str, member: Member) -> Result<bool>;
    /// Releases `conn`'s hold on `client_id` in `room`.
    async fn leave(&self, room: &str, conn: &str, client_id: &str) -> Result<()>;
    /// Keeps `conn`'s members alive.
    async fn touch(&self, conn: &str) -> Result<()>;
    /// Who is present.
    async fn members(&self, room: &str) -> Result<Vec<Member>>;
    /// Removes and answers the members whose grace or TTL ran out.
    async fn reap(&self) -> Result<Vec<(String, Member)>>;
}
