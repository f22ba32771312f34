//! The one catch-up loop: what a connection receives after it follows rooms and before live
//! delivery, page by page, whatever transport writes it.
//!
//! Following registers with the hub first, so live events queue while the catch-up runs and
//! are deduplicated by `seq` when they are admitted after it. A catch-up yields, in order:
//! the `resync`s `follow` found (positions past a room's head), the replay from the log (one
//! page of at most [`REPLAY_PAGE`](super) events at a time, so a large replay never sits in
//! memory whole, and a `resync` when the log no longer reaches back), then, when asked for,
//! the `presence.state` of each room.
//!
//! ```no_run
//! # async fn f(mut session: tidewire_server::session::Session) -> tidewire_server::Result<()> {
//! let since: tidewire_protocol::Cursor = "a=4".parse()?;
//! let mut catch_up = session.catch_up(&["a".into()], &since, true).await?;
//! let mut written = 0;
//! while let Some(page) = catch_up.next(&mut session).await? {
//!     written += page.len(); // write the page, flush it
//! }
//! # Ok(()) }
//! ```

use tidewire_protocol::Cursor;

use super::{Ready, Session};
use crate::outbound::Outbound;
use crate::Result;

/// Where a catch-up is.
#[derive(Debug)]
enum Stage {
    /// What `follow` answered (resyncs) is next.
    First(Vec<Outbound>),
    /// Replaying the log.
    Replay,
    /// The presence states are next.
    Presence,
    /// Caught up.
    Done,
}

/// A connection's catch-up, drained with [`CatchUp::next`].
#[derive(Debug)]
pub struct CatchUp {
    rooms: Vec<String>,
    presence: bool,
    stage: Stage,
}

impl Session {
    /// Follows `rooms` from the positions in `since` (missing rooms start at their head) and
    /// answers what the connection must receive before live delivery. Every room is checked
    /// before any is followed: a refused room follows none.
    pub async fn catch_up(
        &mut self,
        rooms: &[String],
        since: &Cursor,
        presence: bool,
    ) -> Result<CatchUp> {
        let first = self.follow(rooms, since, presence).await?;
        Ok(CatchUp {
            rooms: rooms.to_vec(),
            presence,
            stage: Stage::First(first),
        })
    }
}

impl CatchUp {
    /// The next page to write; `None` once caught up. A page may be empty only when it is
    /// the last.
    pub async fn next(&mut self, session: &mut Session) -> Result<Option<Vec<Ready>>> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Done => return Ok(None),
                Stage::First(first) => {
                    self.stage = Stage::Replay;
                    let page = admit_all(session, first).await?;
                    if !page.is_empty() {
                        return Ok(Some(page));
                    }
                }
                Stage::Replay => match session.replay_next().await? {
                    Some(items) => {
                        self.stage = Stage::Replay;
                        return Ok(Some(admit_all(session, items).await?));
                    }
                    None if self.presence => self.stage = Stage::Presence,
                    None => return Ok(None),
                },
                Stage::Presence => {
                    let states = session.presence_states(&self.rooms).await?;
                    return Ok(Some(admit_all(session, states).await?));
                }
            }
        }
    }

    /// Whether nothing is left.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }
}

async fn admit_all(session: &mut Session, items: Vec<Outbound>) -> Result<Vec<Ready>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        session.admit_into(item, &mut out).await?;
    }
    Ok(out)
}
