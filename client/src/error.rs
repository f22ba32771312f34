//! The client's one error type. At the JavaScript boundary it becomes an `Error` whose
//! `code` property is the stable code (the protocol's codes, plus `network` and `closed`, and
//! for expected changes `timeout`, `failed` and `too_many_expected`).
//!
//! ```
//! use tidewire_client::Error;
//! use tidewire_protocol::ErrorCode;
//! let e = Error::Server {
//!     code: ErrorCode::VersionConflict,
//!     status: 409,
//!     message: "stale".into(),
//!     current: None,
//!     retry_after: None,
//! };
//! assert_eq!(e.code(), "version_conflict");
//! assert_eq!(Error::Network("refused".into()).code(), "network");
//! ```

use tidewire_protocol::{ErrorCode, Item, ProtocolError};

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request (a problem+json answer or a failed `ack`).
    #[error("{message}")]
    Server {
        /// The stable code.
        code: ErrorCode,
        /// The HTTP status (0 over WebSocket).
        status: u16,
        /// The server's explanation.
        message: String,
        /// For `version_conflict`: the item as the server has it now.
        current: Option<Item>,
        /// For `rate_limited` over REST: the seconds of `Retry-After` (or the problem's
        /// `retry_after`), which the client waits before it retries.
        retry_after: Option<u64>,
    },
    /// The request did not reach the server or its answer did not come back.
    #[error("network error: {0}")]
    Network(String),
    /// Input from the server or the application breaks the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// An option passed to the client is not valid.
    #[error("bad option `{name}`: {reason}")]
    BadOption {
        /// The option.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// An expected change ([`crate::Room::expect`]) was not confirmed in time.
    #[error("no event with key `{key}` within {timeout_ms} ms")]
    Timeout {
        /// The idempotency key that was expected.
        key: String,
        /// How long the client waited.
        timeout_ms: u64,
    },
    /// The application said an expected change failed (`fail(reason)`).
    #[error("{0}")]
    Failed(String),
    /// Too many expected changes wait in one room.
    #[error("more than {0} expected changes wait in this room")]
    TooManyExpected(usize),
}

impl Error {
    /// The stable code: an [`ErrorCode`] name, `network`, `closed`, `timeout`, `failed` or
    /// `too_many_expected`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Server { code, .. } => code.as_str(),
            Error::Network(_) => "network",
            Error::Protocol(p) => p.code().as_str(),
            Error::BadOption { .. } => ErrorCode::BadRequest.as_str(),
            Error::Closed => "closed",
            Error::Timeout { .. } => "timeout",
            Error::Failed(_) => "failed",
            Error::TooManyExpected(_) => "too_many_expected",
        }
    }

    /// Whether sending the same request again may succeed (network failures and the
    /// protocol's retryable range).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Network(_) => true,
            Error::Server { code, .. } => code.is_retryable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable() {
        assert!(Error::Network("x".into()).is_retryable());
        let server = |code| Error::Server {
            code,
            status: 0,
            message: String::new(),
            current: None,
            retry_after: None,
        };
        assert!(server(ErrorCode::StoreUnavailable).is_retryable());
        assert!(!server(ErrorCode::VersionConflict).is_retryable());
        assert!(server(ErrorCode::RateLimited).is_retryable());
        assert!(!Error::Closed.is_retryable());
        assert!(!Error::Failed("no".into()).is_retryable());
        assert_eq!(Error::Failed("no".into()).code(), "failed");
        assert_eq!(
            Error::from(ProtocolError::BadRoomName("x y".into())).code(),
            "bad_room_name"
        );
    }
}
