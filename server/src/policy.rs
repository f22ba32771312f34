//! The one write policy: every write a client makes, over REST or a WebSocket frame, goes
//! **authorize → rate limit → size → write**, in that order, here and nowhere else.
//! Broadcasts and presence frames follow the same policy (authorize, counted by the same rate
//! limiter, their own size limits) before they reach the bus, so no frame a client sends is
//! free.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tidewire_server::{bus::memory::MemoryBus, presence::memory::MemoryPresence, service::Service};
//! use tidewire_server::store::{sqlite::SqliteStore, Retention, WriteOp, WriteRequest};
//! use tidewire_server::{identity::ClientIdentity, limits::Limits, policy::Policy};
//! let store = Arc::new(SqliteStore::open("sqlite::memory:", Retention::default()).await.unwrap());
//! let presence = Arc::new(MemoryPresence::new(std::time::Duration::from_secs(5), std::time::Duration::from_secs(60)));
//! let service = Arc::new(Service::new(store, Arc::new(MemoryBus::new()), presence));
//! let sizes = tidewire_server::policy::Sizes { item: 10, broadcast: 10, presence_meta: 10 };
//! let policy = Policy::new(service, Arc::new(Limits::new(8, 100, 100)), sizes);
//! let who = ClientIdentity::anonymous("127.0.0.1");
//! let put = |v: serde_json::Value| WriteRequest::new("r", WriteOp::Put { id: "x".into(), value: v });
//! assert!(policy.write(&who, put(serde_json::json!(1))).await.is_ok());
//! let too_big = policy.write(&who, put(serde_json::json!("0123456789abc"))).await;
//! assert!(matches!(too_big, Err(tidewire_server::Error::PayloadTooLarge { .. })));
//! # });
//! ```

use std::sync::Arc;

use serde_json::Value;

use crate::identity::{authorize, Access, ClientIdentity};
use crate::limits::Limits;
use crate::service::Service;
use crate::store::{WriteOp, WriteRequest, Written};
use crate::{Error, Result};

/// Longest broadcast event name.
const MAX_BROADCAST_EVENT: usize = 64;

/// Size limits, in bytes of compact JSON.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// An item's value.
    pub item: usize,
    /// A broadcast's `data`.
    pub broadcast: usize,
    /// A presence member's `meta`.
    pub presence_meta: usize,
}

/// The write policy of one server (cheap to clone).
#[derive(Clone)]
pub struct Policy {
    service: Arc<Service>,
    limits: Arc<Limits>,
    sizes: Sizes,
}

fn check_size(value: &Value, limit: usize) -> Result<()> {
    let size = json_len(value);
    if size > limit {
        return Err(Error::PayloadTooLarge { size, limit });
    }
    Ok(())
}

impl Policy {
    /// Writes through `service`, rate limited by `limits`, within `sizes`.
    pub fn new(service: Arc<Service>, limits: Arc<Limits>, sizes: Sizes) -> Policy {
        Policy {
            service,
            limits,
            sizes,
        }
    }

    /// The limit counters (connections are counted by the session layer).
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Authorizes `who` to write `req.room`, counts the write against its rate, checks the
    /// item's size, then writes.
    pub async fn write(&self, who: &ClientIdentity, req: WriteRequest) -> Result<Written> {
        authorize(who, &req.room, Access::Write)?;
        self.limits.check_write(&who.key).await?;
        if let WriteOp::Put { value, .. } = &req.op {
            check_size(value, self.sizes.item)?;
        }
        let room = req.room.clone();
        self.service.write(req).await.map_err(|err| match err {
            // The current item tells what the room holds: only for those who may read it.
            Error::VersionConflict { detail, .. }
                if authorize(who, &room, Access::Read).is_err() =>
            {
                Error::VersionConflict {
                    detail,
                    current: None,
                }
            }
            other => other,
        })
    }

    /// Authorizes `who` to announce itself in `room` with `meta`: allowed to write the room,
    /// counted by the rate limiter, `meta` within its size limit.
    pub async fn check_presence(
        &self,
        who: &ClientIdentity,
        room: &str,
        meta: &Value,
    ) -> Result<()> {
        authorize(who, room, Access::Write)?;
        self.limits.check_write(&who.key).await?;
        check_size(meta, self.sizes.presence_meta)
    }

    /// Authorizes `who` to write `room`, checks the event name, counts it against the rate,
    /// checks the size of `data`, then sends the broadcast to the room's subscribers other
    /// than connection `origin` (whose client id is `from`).
    pub async fn broadcast(
        &self,
        who: &ClientIdentity,
        room: &str,
        origin: &str,
        from: &str,
        event: String,
        data: Value,
    ) -> Result<()> {
        authorize(who, room, Access::Write)?;
        if event.is_empty() || event.len() > MAX_BROADCAST_EVENT {
            return Err(Error::BadRequest(format!(
                "broadcast `event` must be 1 to {MAX_BROADCAST_EVENT} characters"
            )));
        }
        self.limits.check_write(&who.key).await?;
        check_size(&data, self.sizes.broadcast)?;
        self.service
            .broadcast(room, origin, (from, who.subject.as_deref()), event, data)
            .await
    }
}

/// Bytes of `value` as compact JSON, counted without building the string.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
