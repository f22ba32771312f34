//! Which transport to use next: the fallback ladder SSE → long-poll → snapshot polling, the
//! WebSocket when the application needs it, and the climb back. Pure logic, tested natively;
//! the client's supervisor asks it after every connection.
//!
//! - `auto` starts on SSE (or the WebSocket once presence or broadcast is used).
//! - SSE that never opens within the bound (a buffering proxy) steps down at once; SSE that
//!   fails twice while the server answers REST steps down too. A server that is down is not a
//!   reason to step down: that is a plain reconnect with backoff.
//! - Long-poll that stalls steps down to polling.
//! - A WebSocket that fails to open three times in a row gives way to the SSE ladder. One that
//!   stalls after it opened is reopened: presence and broadcast need it, and the next socket
//!   that opens starts the count over.
//! - On a fallback the client is `degraded`, and climbs back to the top after a while.
//! - A forced transport never changes.
//!
//! ```
//! use tidewire_client::ladder::{Ladder, Outcome};
//! use tidewire_client::state::TransportKind;
//! let mut l = Ladder::new(None);
//! assert_eq!(l.choose(), (TransportKind::Sse, false));
//! assert_eq!(l.failed(TransportKind::Sse, true, None), Outcome::Switch);
//! assert_eq!(l.choose(), (TransportKind::LongPoll, true));
//! l.climb();
//! assert_eq!(l.choose(), (TransportKind::Sse, false));
//! ```

use crate::state::TransportKind;

/// What to do after a connection that never opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Try the (new) choice at once, without backoff.
    Switch,
    /// Wait the backoff delay, then try again.
    Backoff,
}

/// The ladder's state. See the module docs.
#[derive(Debug, Clone)]
pub struct Ladder {
    forced: Option<TransportKind>,
    want_ws: bool,
    level: u8,
    sse_failures: u32,
    ws_failures: u32,
}

impl Ladder {
    /// A ladder for `auto` (`None`) or a forced transport.
    pub fn new(forced: Option<TransportKind>) -> Ladder {
        Ladder {
            forced,
            want_ws: forced == Some(TransportKind::Ws),
            level: 0,
            sse_failures: 0,
            ws_failures: 0,
        }
    }

    /// The transport to use now, and whether it is a fallback (`degraded`).
    pub fn choose(&self) -> (TransportKind, bool) {
        if let Some(t) = self.forced {
            return (t, false);
        }
        if self.want_ws && self.ws_failures < 3 {
            return (TransportKind::Ws, false);
        }
        match self.level {
            0 => (TransportKind::Sse, false),
            1 => (TransportKind::LongPoll, true),
            _ => (TransportKind::Poll, true),
        }
    }

    /// The application uses presence or broadcast; returns whether that changes the choice.
    pub fn want_ws(&mut self) -> bool {
        if self.want_ws || self.forced.is_some() {
            return false;
        }
        self.want_ws = true;
        true
    }

    /// A connection on `kind` opened.
    pub fn opened(&mut self, kind: TransportKind) {
        match kind {
            TransportKind::Sse => self.sse_failures = 0,
            TransportKind::Ws => self.ws_failures = 0,
            _ => {}
        }
    }

    /// Whether [`Ladder::failed`] wants to know if the server answers REST (so the caller
    /// probes it first).
    pub fn needs_probe(&self, kind: TransportKind, stalled: bool) -> bool {
        self.forced.is_none() && kind == TransportKind::Sse && !stalled
    }

    /// A connection on `kind` ended before it opened; `stalled` when it got no answer within
    /// the bound; `reachable` whether the server answered REST meanwhile (when probed).
    pub fn failed(
        &mut self,
        kind: TransportKind,
        stalled: bool,
        reachable: Option<bool>,
    ) -> Outcome {
        if self.forced.is_some() {
            return Outcome::Backoff;
        }
        match kind {
            TransportKind::Ws => {
                self.ws_failures += 1;
                if self.ws_failures >= 3 {
                    return Outcome::Switch;
                }
            }
            TransportKind::Sse if stalled => {
                self.level = 1;
                return Outcome::Switch;
            }
            TransportKind::LongPoll if stalled => {
                self.level = 2;
                return Outcome::Switch;
            }
            TransportKind::Sse => {
                if reachable == Some(true) {
                    self.sse_failures += 1;
                } else {
                    self.sse_failures = 0;
                }
                if self.sse_failures >= 2 {
                    self.sse_failures = 0;
                    self.level = 1;
                    return Outcome::Switch;
                }
            }
            _ => {}
        }
        Outcome::Backoff
    }

    /// Time to try the preferred transport again.
    pub fn climb(&mut self) {
        self.level = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportKind::*;

    #[test]
    fn stalls_step_down_one_rung_each() {
        let mut l = Ladder::new(None);
        assert_eq!(l.failed(Sse, true, None), Outcome::Switch);
        assert_eq!(l.choose(), (LongPoll, true));
        assert_eq!(
            l.failed(LongPoll, false, None),
            Outcome::Backoff,
            "errors back off"
        );
        assert_eq!(l.choose(), (LongPoll, true));
        assert_eq!(l.failed(LongPoll, true, None), Outcome::Switch);
        assert_eq!(l.choose(), (Poll, true));
        l.climb();
        assert_eq!(l.choose(), (Sse, false));
    }

    #[test]
    fn a_server_that_is_down_keeps_sse() {
        let mut l = Ladder::new(None);
        assert!(l.needs_probe(Sse, false));
        for _ in 0..10 {
            assert_eq!(l.failed(Sse, false, Some(false)), Outcome::Backoff);
        }
        assert_eq!(l.choose(), (Sse, false));
        // One failure while reachable, then down again: the count starts over.
        l.failed(Sse, false, Some(true));
        l.failed(Sse, false, Some(false));
        assert_eq!(l.failed(Sse, false, Some(true)), Outcome::Backoff);
        assert_eq!(l.failed(Sse, false, Some(true)), Outcome::Switch);
        assert_eq!(l.choose(), (LongPoll, true));
    }

    #[test]
    fn opening_resets_the_count() {
        let mut l = Ladder::new(None);
        l.failed(Sse, false, Some(true));
        l.opened(Sse);
        assert_eq!(l.failed(Sse, false, Some(true)), Outcome::Backoff);
    }

    #[test]
    fn websocket_when_wanted_then_gives_way_after_three_failures() {
        let mut l = Ladder::new(None);
        assert!(l.want_ws());
        assert!(!l.want_ws(), "only the first call changes anything");
        assert_eq!(l.choose(), (Ws, false));
        assert_eq!(l.failed(Ws, true, None), Outcome::Backoff);
        l.opened(Ws);
        for _ in 0..2 {
            assert_eq!(l.failed(Ws, false, None), Outcome::Backoff);
        }
        assert_eq!(l.failed(Ws, false, None), Outcome::Switch);
        assert_eq!(l.choose(), (Sse, false));
    }

    #[test]
    fn a_websocket_that_stalls_after_it_opened_is_reopened() {
        let mut l = Ladder::new(None);
        l.want_ws();
        for _ in 0..5 {
            l.opened(Ws);
            assert_eq!(l.failed(Ws, true, None), Outcome::Backoff);
            assert_eq!(l.choose(), (Ws, false));
        }
    }

    #[test]
    fn forced_never_moves() {
        for t in [Sse, Ws, LongPoll, Poll] {
            let mut l = Ladder::new(Some(t));
            assert!(!l.want_ws());
            assert!(!l.needs_probe(t, false));
            assert_eq!(l.failed(t, true, Some(true)), Outcome::Backoff);
            assert_eq!(l.failed(t, false, Some(true)), Outcome::Backoff);
            assert_eq!(l.choose(), (t, false));
        }
    }
}
