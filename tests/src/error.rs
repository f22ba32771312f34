//! The one error type of the test kit.
//!
//! Every helper answers `Result<T, Error>`; a test usually `.expect()`s it, so the message
//! says what went wrong (a timeout names what it waited for, a problem carries its code).
//!
//! ```
//! use std::time::Duration;
//! use tidewire_tests::Error;
//! let err = Error::Timeout { after: Duration::from_secs(1), what: "an ack".into() };
//! assert_eq!(err.to_string(), "timed out after 1s waiting for an ack");
//! ```

use std::time::Duration;

use tidewire_protocol::{Problem, ProtocolError};

/// What can go wrong while driving the server under test.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server binary could not be built, started, or did not print its address in time.
    #[error("could not start the server: {0}")]
    Start(String),
    /// A local I/O failure (spawning, signals, raw sockets).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An HTTP transport failure (connection refused, reset …), not an HTTP status.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// A WebSocket transport failure.
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server sent something the protocol crate cannot decode.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with a problem (non-2xx, `application/problem+json`).
    #[error("the server answered {} {}: {}", .0.status, .0.code, .0.detail)]
    Problem(Box<Problem>),
    /// The server answered a status the helper did not expect, with a body that is no problem.
    #[error("the server answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body as text (truncated).
        body: String,
    },
    /// The SSE byte stream could not be parsed as an event stream.
    #[error("SSE stream: {0}")]
    Sse(String),
    /// Nothing arrived in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// How long the helper waited.
        after: Duration,
        /// What it waited for.
        what: String,
    },
    /// The stream or socket ended; for WebSocket, the close code and reason when sent.
    #[error("the stream ended (close frame: {0:?})")]
    Closed(Option<(u16, String)>),
    /// A JSON body did not have the expected shape.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Error {
        Error::WebSocket(Box::new(err))
    }
}

/// Shorthand for results of the kit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `fut` with a deadline, turning a timeout into [`Error::Timeout`] naming `what`.
pub async fn within<T>(
    after: Duration,
    what: impl Into<String>,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            after,
            what: what.into(),
        }),
    }
}
