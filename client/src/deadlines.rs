//! The deadlines of one connection, as pure code over a monotonic clock in milliseconds: the
//! open bound, the climb-back time of a fallback transport, the stall watchdog of an open SSE
//! stream or WebSocket, and when a token is refreshed. The connection loop sleeps until
//! [`Watch::deadline`] (or an earlier one of its own) and then asks [`Watch::expired`].
//!
//! - Before it opens, a connection must open within `open_timeout_ms`.
//! - An open SSE stream must bring the server's first heartbeat within `open_timeout_ms`
//!   (the server sends one right after the headers: a stream without it is held by a proxy).
//! - Then SSE must bring an event or a heartbeat, and a WebSocket any frame, within
//!   `2 × heartbeat interval + heartbeat_slack_ms` of the last one (the interval the server
//!   announces; for a WebSocket the client's own ping interval).
//! - A fallback transport (`degraded`) gives way to the preferred one after `climb_ms`.
//! - A token is replaced 30 s, or 20 % of its lifetime, before it expires, whichever is sooner.
//!
//! ```
//! use tidewire_client::deadlines::{Bounds, Expiry, Watch};
//! use tidewire_client::state::TransportKind;
//! let bounds = Bounds { open_timeout_ms: 5_000, heartbeat_slack_ms: 5_000, climb_ms: 30_000 };
//! let mut w = Watch::new(TransportKind::Sse, false, 0, 15_000);
//! assert_eq!(w.deadline(&bounds), Some(5_000));
//! w.opened(1_000);
//! w.heartbeat(1_200, 15_000, 2_000);
//! assert_eq!(w.deadline(&bounds), Some(1_200 + 30_000 + 5_000));
//! assert_eq!(w.expired(36_200, &bounds), Some(Expiry::Stalled { opened_for: Some(35_200) }));
//! ```

use crate::state::TransportKind;

/// The bounds a client was configured with (see [`crate::Options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// SSE and WebSocket must open (and SSE bring its first heartbeat) within this time.
    pub open_timeout_ms: u64,
    /// Added to twice the heartbeat interval for the stall watchdog.
    pub heartbeat_slack_ms: u64,
    /// How long a fallback transport runs before the preferred one is tried again.
    pub climb_ms: u64,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The open connection brought nothing within the watchdog bound. `opened_for` is how
    /// long it was open, when it had announced a heartbeat interval (a stream that never
    /// brought its first heartbeat counts as one that never opened).
    Stalled {
        /// Milliseconds the connection was open.
        opened_for: Option<u64>,
    },
    /// The connection did not open within the open bound.
    OpenTimeout,
    /// Time for a fallback transport to give way to the preferred one.
    Climb,
}

/// What one connection has seen so far, for its deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    kind: TransportKind,
    degraded: bool,
    started: u64,
    opened_at: Option<u64>,
    last_seen: u64,
    heartbeat_ms: Option<u64>,
    retry_ms: Option<u64>,
}

impl Watch {
    /// A connection on `kind` started at `now`; `degraded` when it is a fallback. A
    /// WebSocket's heartbeat interval is the client's own ping interval `ws_ping_ms`.
    pub fn new(kind: TransportKind, degraded: bool, now: u64, ws_ping_ms: u64) -> Watch {
        Watch {
            kind,
            degraded,
            started: now,
            opened_at: None,
            last_seen: now,
            heartbeat_ms: (kind == TransportKind::Ws).then_some(ws_ping_ms),
            retry_ms: None,
        }
    }

    /// The transport opened at `now`.
    pub fn opened(&mut self, now: u64) {
        self.opened_at = Some(now);
        self.last_seen = now;
    }

    /// Something arrived at `now` (an event, an ack, a `pong`, any frame).
    pub fn seen(&mut self, now: u64) {
        self.last_seen = now;
    }

    /// An SSE heartbeat arrived at `now`, announcing the server's interval and `retry:` hint.
    pub fn heartbeat(&mut self, now: u64, heartbeat_ms: u64, retry_ms: u64) {
        self.last_seen = now;
        self.heartbeat_ms = Some(heartbeat_ms.max(1));
        self.retry_ms = Some(retry_ms);
    }

    /// When the transport opened.
    pub fn opened_at(&self) -> Option<u64> {
        self.opened_at
    }

    /// How long the connection has been open at `now`, if it opened.
    pub fn opened_for(&self, now: u64) -> Option<u64> {
        self.opened_at.map(|t| now.saturating_sub(t))
    }

    /// The server's `retry:` hint, once an SSE heartbeat announced it.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// When the stall watchdog fires, for an open SSE stream or WebSocket.
    pub fn watchdog(&self, bounds: &Bounds) -> Option<u64> {
        match (self.kind, self.opened_at, self.heartbeat_ms) {
            (TransportKind::Sse | TransportKind::Ws, Some(_), Some(h)) => Some(
                self.last_seen
                    .saturating_add(h.saturating_mul(2))
                    .saturating_add(bounds.heartbeat_slack_ms),
            ),
            (TransportKind::Sse, Some(t), None) => Some(t.saturating_add(bounds.open_timeout_ms)),
            _ => None,
        }
    }

    /// The earliest of the open bound, the climb time and the watchdog.
    pub fn deadline(&self, bounds: &Bounds) -> Option<u64> {
        let phase = match self.opened_at {
            None => Some(self.started.saturating_add(bounds.open_timeout_ms)),
            Some(t) if self.degraded => Some(t.saturating_add(bounds.climb_ms)),
            Some(_) => None,
        };
        earliest([phase, self.watchdog(bounds)])
    }

    /// Which deadline has passed at `now`, if any (the watchdog first).
    pub fn expired(&self, now: u64, bounds: &Bounds) -> Option<Expiry> {
        if self.watchdog(bounds).is_some_and(|t| now >= t) {
            return Some(Expiry::Stalled {
                opened_for: self.heartbeat_ms.and(self.opened_for(now)),
            });
        }
        match self.opened_at {
            None if now >= self.started.saturating_add(bounds.open_timeout_ms) => {
                Some(Expiry::OpenTimeout)
            }
            Some(t) if self.degraded && now >= t.saturating_add(bounds.climb_ms) => {
                Some(Expiry::Climb)
            }
            _ => None,
        }
    }
}

/// The earliest of some deadlines.
pub fn earliest(deadlines: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    deadlines.into_iter().flatten().min()
}

/// Refresh at most this long before a token expires.
pub const TOKEN_MARGIN_MS: f64 = 30_000.0;

/// When a token that expires at `exp_ms` and was received at `got_ms` (both wall-clock
/// milliseconds) is replaced: 30 s, or 20 % of its lifetime, before it expires, whichever is
/// sooner.
pub fn token_refresh_at(exp_ms: f64, got_ms: f64) -> f64 {
    exp_ms - TOKEN_MARGIN_MS.min((exp_ms - got_ms).max(0.0) * 0.2)
}

/// The wall-clock time `at_wall_ms` (a token's refresh time) as a deadline on the monotonic
/// clock: what is left of it, from `now`. A time already past is `now`.
pub fn wall_to_monotonic(now: u64, now_wall_ms: f64, at_wall_ms: f64) -> u64 {
    now + (at_wall_ms - now_wall_ms).max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportKind::*;

    const B: Bounds = Bounds {
        open_timeout_ms: 5_000,
        heartbeat_slack_ms: 2_000,
        climb_ms: 30_000,
    };

    #[test]
    fn before_it_opens_only_the_open_bound_counts() {
        for kind in [Sse, Ws, LongPoll, Poll] {
            let w = Watch::new(kind, false, 100, 15_000);
            assert_eq!(w.deadline(&B), Some(5_100), "{kind:?}");
            assert_eq!(w.expired(5_099, &B), None);
            assert_eq!(w.expired(5_100, &B), Some(Expiry::OpenTimeout));
        }
    }

    #[test]
    fn an_sse_stream_must_bring_its_first_heartbeat_within_the_open_bound() {
        let mut w = Watch::new(Sse, false, 0, 15_000);
        w.opened(1_000);
        assert_eq!(w.watchdog(&B), Some(6_000));
        assert_eq!(w.deadline(&B), Some(6_000));
        // Events alone do not replace the first heartbeat.
        w.seen(5_000);
        assert_eq!(
            w.expired(6_000, &B),
            Some(Expiry::Stalled { opened_for: None }),
            "no interval announced: counts as never opened"
        );
    }

    #[test]
    fn sse_watchdog_follows_the_announced_interval_and_every_arrival() {
        let mut w = Watch::new(Sse, false, 0, 15_000);
        w.opened(1_000);
        w.heartbeat(1_500, 10_000, 3_000);
        assert_eq!(w.retry_ms(), Some(3_000));
        assert_eq!(w.watchdog(&B), Some(1_500 + 20_000 + 2_000));
        w.seen(10_000);
        assert_eq!(w.deadline(&B), Some(32_000));
        assert_eq!(w.expired(31_999, &B), None);
        assert_eq!(
            w.expired(32_000, &B),
            Some(Expiry::Stalled {
                opened_for: Some(31_000)
            })
        );
    }

    #[test]
    fn a_zero_interval_is_taken_as_one_millisecond() {
        let mut w = Watch::new(Sse, false, 0, 15_000);
        w.opened(0);
        w.heartbeat(0, 0, 0);
        assert_eq!(w.watchdog(&B), Some(2 + 2_000));
    }

    #[test]
    fn websocket_watchdog_uses_the_ping_interval_from_the_start() {
        let mut w = Watch::new(Ws, false, 0, 15_000);
        assert_eq!(w.watchdog(&B), None, "not before it opens");
        w.opened(500);
        assert_eq!(w.watchdog(&B), Some(500 + 30_000 + 2_000));
        w.seen(20_000);
        assert_eq!(w.deadline(&B), Some(52_000));
        assert_eq!(
            w.expired(52_000, &B),
            Some(Expiry::Stalled {
                opened_for: Some(51_500)
            })
        );
    }

    #[test]
    fn polling_transports_have_no_watchdog() {
        for kind in [LongPoll, Poll] {
            let mut w = Watch::new(kind, false, 0, 15_000);
            w.opened(10);
            assert_eq!(w.watchdog(&B), None);
            assert_eq!(w.deadline(&B), None);
            assert_eq!(w.expired(u64::MAX, &B), None);
        }
    }

    #[test]
    fn a_fallback_climbs_back_after_climb_ms() {
        let mut w = Watch::new(LongPoll, true, 0, 15_000);
        w.opened(1_000);
        assert_eq!(w.deadline(&B), Some(31_000));
        assert_eq!(w.expired(30_999, &B), None);
        assert_eq!(w.expired(31_000, &B), Some(Expiry::Climb));
        assert_eq!(w.opened_for(31_000), Some(30_000));
    }

    #[test]
    fn the_watchdog_wins_over_the_climb() {
        let mut w = Watch::new(Sse, true, 0, 15_000);
        w.opened(0);
        // No heartbeat: the watchdog (5 s) comes before the climb (30 s).
        assert_eq!(w.deadline(&B), Some(5_000));
        assert!(matches!(
            w.expired(40_000, &B),
            Some(Expiry::Stalled { .. })
        ));
    }

    #[test]
    fn huge_bounds_do_not_overflow() {
        let big = Bounds {
            open_timeout_ms: u64::MAX,
            heartbeat_slack_ms: u64::MAX,
            climb_ms: u64::MAX,
        };
        let mut w = Watch::new(Ws, true, 10, u64::MAX);
        assert_eq!(w.deadline(&big), Some(u64::MAX));
        w.opened(20);
        assert_eq!(w.deadline(&big), Some(u64::MAX));
        assert_eq!(w.expired(1_000, &big), None);
    }

    #[test]
    fn earliest_of_some() {
        assert_eq!(earliest([None, Some(5), Some(3), None]), Some(3));
        assert_eq!(earliest([None, None]), None);
    }

    #[test]
    fn tokens_refresh_30_s_or_a_fifth_of_their_life_before_expiry() {
        // A one-hour token: 30 s before.
        assert_eq!(token_refresh_at(3_600_000.0, 0.0), 3_570_000.0);
        // A 60 s token: 12 s (20 %) before.
        assert_eq!(token_refresh_at(160_000.0, 100_000.0), 148_000.0);
        // Already expired when received: at once.
        assert_eq!(token_refresh_at(1_000.0, 5_000.0), 1_000.0);
    }

    #[test]
    fn wall_clock_refresh_times_become_monotonic_deadlines() {
        assert_eq!(wall_to_monotonic(500, 1_000_000.0, 1_004_000.0), 4_500);
        assert_eq!(wall_to_monotonic(500, 1_000_000.0, 900_000.0), 500);
    }
}
