//! The connection state machine: `connecting`, `open`, `reconnecting {attempt, delay_ms}`,
//! `degraded` (a fallback transport is carrying the rooms), `offline`, `closed`.
//!
//! The machine is pure: [`StateMachine::handle`] takes an [`Input`] and returns the new
//! [`ConnState`] when it changed, so the caller notifies listeners exactly once per change.
//! `closed` is terminal.
//!
//! ```
//! use tidewire_client::state::{ConnState, Input, StateMachine, TransportKind};
//! let mut m = StateMachine::new();
//! assert_eq!(m.state(), &ConnState::Connecting);
//! assert_eq!(m.handle(Input::Opened { transport: TransportKind::Sse, degraded: false }), Some(ConnState::Open));
//! assert_eq!(m.handle(Input::Opened { transport: TransportKind::Sse, degraded: false }), None);
//! m.handle(Input::Close);
//! assert_eq!(m.handle(Input::Connect), None);
//! assert_eq!(m.state(), &ConnState::Closed);
//! ```

use serde::Serialize;

/// The transports a client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Server-Sent Events (`EventSource`), the default.
    Sse,
    /// WebSocket: used for presence and broadcast, or when asked for.
    Ws,
    /// Long-polling `GET /v1/poll`: the fallback when SSE stalls.
    #[serde(rename = "longpoll")]
    LongPoll,
    /// Polling the snapshot: the last resort.
    Poll,
}

impl TransportKind {
    /// Every transport, best first.
    pub const ALL: [TransportKind; 4] = [
        TransportKind::Sse,
        TransportKind::Ws,
        TransportKind::LongPoll,
        TransportKind::Poll,
    ];

    /// The name used in options and state objects: `sse`, `ws`, `longpoll`, `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Sse => "sse",
            TransportKind::Ws => "ws",
            TransportKind::LongPoll => "longpoll",
            TransportKind::Poll => "poll",
        }
    }

    /// Parses a name; `None` for an unknown one.
    pub fn parse(name: &str) -> Option<TransportKind> {
        Some(match name {
            "sse" => TransportKind::Sse,
            "ws" | "websocket" => TransportKind::Ws,
            "longpoll" | "long-poll" => TransportKind::LongPoll,
            "poll" => TransportKind::Poll,
            _ => return None,
        })
    }
}

/// The state of a client's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ConnState {
    /// Not started yet, or opening the first connection.
    Connecting,
    /// Live on the preferred transport.
    Open,
    /// Waiting `delay_ms` before attempt number `attempt`.
    Reconnecting {
        /// The attempt about to be made (1 for the first retry).
        attempt: u32,
        /// How long the client waits before it, in milliseconds.
        #[serde(rename = "delayMs")]
        delay_ms: u64,
    },
    /// Live, but on a fallback transport (long-poll or polling); the client keeps trying to
    /// climb back to the preferred one.
    Degraded,
    /// The browser says it is offline; nothing is attempted until it is back.
    Offline,
    /// `close()` was called. Terminal.
    Closed,
}

impl ConnState {
    /// Every state's name, as [`ConnState::name`] gives it.
    pub const NAMES: [&'static str; 6] = [
        "connecting",
        "open",
        "reconnecting",
        "degraded",
        "offline",
        "closed",
    ];

    /// The state's name: `connecting`, `open`, `reconnecting`, `degraded`, `offline`, `closed`.
    pub fn name(&self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Open => "open",
            ConnState::Reconnecting { .. } => "reconnecting",
            ConnState::Degraded => "degraded",
            ConnState::Offline => "offline",
            ConnState::Closed => "closed",
        }
    }

    /// Whether events are flowing.
    pub fn is_live(&self) -> bool {
        matches!(self, ConnState::Open | ConnState::Degraded)
    }
}

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An attempt to connect starts.
    Connect,
    /// A transport is live.
    Opened {
        /// Which one.
        transport: TransportKind,
        /// Whether it is a fallback chosen because the preferred transport failed.
        degraded: bool,
    },
    /// The connection was lost; the next attempt comes after `delay_ms`.
    Lost {
        /// The attempt about to be made.
        attempt: u32,
        /// The wait before it.
        delay_ms: u64,
    },
    /// The browser went offline.
    Offline,
    /// The browser came back online.
    Online,
    /// The application closed the client.
    Close,
}

/// The state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct StateMachine {
    state: ConnState,
    transport: Option<TransportKind>,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachine {
    /// A machine in `connecting`.
    pub fn new() -> StateMachine {
        StateMachine {
            state: ConnState::Connecting,
            transport: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &ConnState {
        &self.state
    }

    /// The transport of the live connection, or the last one used.
    pub fn transport(&self) -> Option<TransportKind> {
        self.transport
    }

    /// Applies an input; returns the new state if it changed.
    pub fn handle(&mut self, input: Input) -> Option<ConnState> {
        if self.state == ConnState::Closed {
            return None;
        }
        let next = match input {
            Input::Close => ConnState::Closed,
            // While offline only `online` (or close) moves the machine.
            _ if self.state == ConnState::Offline && input != Input::Online => return None,
            Input::Connect => ConnState::Connecting,
            Input::Opened {
                transport,
                degraded,
            } => {
                let changed_transport = self.transport != Some(transport);
                self.transport = Some(transport);
                let next = if degraded {
                    ConnState::Degraded
                } else {
                    ConnState::Open
                };
                if changed_transport && next == self.state {
                    // Same state name on another transport is still a change worth telling.
                    return Some(next);
                }
                next
            }
            Input::Lost { attempt, delay_ms } => ConnState::Reconnecting { attempt, delay_ms },
            Input::Offline => ConnState::Offline,
            Input::Online => ConnState::Connecting,
        };
        if next == self.state {
            None
        } else {
            self.state = next.clone();
            Some(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_name_every_transport_and_state() {
        for t in TransportKind::ALL {
            assert_eq!(TransportKind::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        let states = [
            ConnState::Connecting,
            ConnState::Open,
            ConnState::Reconnecting {
                attempt: 1,
                delay_ms: 2,
            },
            ConnState::Degraded,
            ConnState::Offline,
            ConnState::Closed,
        ];
        let names: Vec<&str> = states.iter().map(ConnState::name).collect();
        assert_eq!(names, ConnState::NAMES);
        for s in &states {
            assert_eq!(serde_json::to_value(s).unwrap()["state"], s.name());
        }
    }

    #[test]
    fn full_cycle() {
        let mut m = StateMachine::new();
        assert_eq!(m.handle(Input::Connect), None, "already connecting");
        let sse = Input::Opened {
            transport: TransportKind::Sse,
            degraded: false,
        };
        assert_eq!(m.handle(sse), Some(ConnState::Open));
        assert_eq!(m.transport(), Some(TransportKind::Sse));
        let lost = Input::Lost {
            attempt: 1,
            delay_ms: 250,
        };
        assert_eq!(
            m.handle(lost),
            Some(ConnState::Reconnecting {
                attempt: 1,
                delay_ms: 250
            })
        );
        assert_eq!(m.handle(Input::Connect), Some(ConnState::Connecting));
        let lp = Input::Opened {
            transport: TransportKind::LongPoll,
            degraded: true,
        };
        assert_eq!(m.handle(lp), Some(ConnState::Degraded));
        assert_eq!(m.handle(sse), Some(ConnState::Open), "climbed back");
    }

    #[test]
    fn offline_ignores_everything_but_online_and_close() {
        let mut m = StateMachine::new();
        assert_eq!(m.handle(Input::Offline), Some(ConnState::Offline));
        assert_eq!(m.handle(Input::Connect), None);
        assert_eq!(
            m.handle(Input::Lost {
                attempt: 3,
                delay_ms: 9
            }),
            None
        );
        assert_eq!(m.handle(Input::Online), Some(ConnState::Connecting));
        m.handle(Input::Offline);
        assert_eq!(m.handle(Input::Close), Some(ConnState::Closed));
    }

    #[test]
    fn closed_is_terminal() {
        let mut m = StateMachine::new();
        m.handle(Input::Close);
        for input in [
            Input::Connect,
            Input::Online,
            Input::Offline,
            Input::Close,
            Input::Opened {
                transport: TransportKind::Ws,
                degraded: false,
            },
        ] {
            assert_eq!(m.handle(input), None);
        }
        assert_eq!(m.state().name(), "closed");
    }

    #[test]
    fn transport_switch_in_same_state_is_reported() {
        let mut m = StateMachine::new();
        m.handle(Input::Opened {
            transport: TransportKind::Sse,
            degraded: false,
        });
        assert_eq!(
            m.handle(Input::Opened {
                transport: TransportKind::Ws,
                degraded: false
            }),
            Some(ConnState::Open)
        );
    }

    #[test]
    fn names_and_parse() {
        for t in [
            TransportKind::Sse,
            TransportKind::Ws,
            TransportKind::LongPoll,
            TransportKind::Poll,
        ] {
            assert_eq!(TransportKind::parse(t.as_str()), Some(t));
        }
        assert_eq!(TransportKind::parse("carrier-pigeon"), None);
        let json = serde_json::to_string(&ConnState::Reconnecting {
            attempt: 2,
            delay_ms: 40,
        })
        .unwrap();
        assert_eq!(json, r#"{"state":"reconnecting","attempt":2,"delayMs":40}"#);
    }
}
