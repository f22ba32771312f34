//! The server's one error type. Every failure maps to a stable [`ErrorCode`]; over HTTP it
//! answers `application/problem+json` (RFC 9457), over WebSocket an `error` frame or a failed
//! `ack`.
//!
//! ```
//! use tidewire_server::Error;
//! use tidewire_protocol::ErrorCode;
//! let err = Error::NotFound("no item `x`".into());
//! assert_eq!(err.code(), ErrorCode::NotFound);
//! assert_eq!(err.problem().status, 404);
//! ```

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tidewire_protocol::{AckError, ErrorCode, Item, Problem, ProtocolError};

/// What a client is told when the store failed. The driver's text (SQL, table names, file
/// paths) stays in the server's log.
const STORE_UNAVAILABLE: &str = "store unavailable: the database could not complete the request";

/// The detail of a `503` for a backend other than the store (the cause goes to the log).
const BACKEND_UNAVAILABLE: &str = "a backend the server needs is unavailable; retry shortly";

/// The detail of a `500` (the cause goes to the log).
const INTERNAL: &str = "internal server error";

/// Everything that can go wrong in the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input on the wire (names, keys, cursors, JSON, sizes).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A request that is malformed in another way (query parameters, headers).
    #[error("{0}")]
    BadRequest(String),
    /// A body or item over its limit.
    #[error("payload too large: {size} bytes, limit {limit}")]
    PayloadTooLarge {
        /// The size seen (a lower bound when the body was cut off).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// `If-Match` did not match; `current` is the item as it is now.
    #[error("{detail}")]
    VersionConflict {
        /// What was expected and found.
        detail: String,
        /// The current item, absent when it does not exist.
        current: Option<Item>,
    },
    /// No such item (or route).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The idempotency key was used before with a different request.
    #[error("idempotency key `{0}` was used with a different request")]
    IdempotencyKeyReused(String),
    /// The log no longer reaches back to the requested position.
    #[error("history trimmed: position {after} is older than the retained log (head {head})")]
    HistoryTrimmed {
        /// The requested position.
        after: u64,
        /// The room's head.
        head: u64,
    },
    /// Too many rooms on one connection.
    #[error("too many rooms: {count}, limit {limit}")]
    TooManyRooms {
        /// Rooms asked for.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many concurrent connections for this client key.
    #[error("too many connections for this client (limit {0})")]
    TooManyConnections(usize),
    /// Write rate exceeded; retry after the given seconds.
    #[error("write rate exceeded, retry after {retry_after} s")]
    RateLimited {
        /// Seconds until a write is allowed again.
        retry_after: u64,
    },
    /// Not allowed to read or write this room.
    #[error("{0}")]
    Forbidden(String),
    /// No credentials, or credentials that are not valid (auth is on).
    #[error("{0}")]
    Unauthorized(String),
    /// The token has expired: get a fresh one.
    #[error("the token has expired")]
    TokenExpired,
    /// The server is draining.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store failed: its database did not answer, refused a statement or is full. Each
    /// backend turns its driver's errors into this one (see [`StoreError`]).
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    /// A shared backend other than the store (the ticket ledger in Redis) did not answer.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The app's outbox database (`--outbox`) failed or did not answer.
    #[error("outbox: {0}")]
    Outbox(String),
    /// A setting is invalid or a backend is not available yet.
    #[error("configuration: {0}")]
    Config(String),
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Protocol(e) => e.code(),
            Error::BadRequest(_) => ErrorCode::BadRequest,
            Error::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::VersionConflict { .. } => ErrorCode::VersionConflict,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Error::IdempotencyKeyReused(_) => ErrorCode::IdempotencyKeyReused,
            Error::HistoryTrimmed { .. } => ErrorCode::HistoryTrimmed,
            Error::TooManyRooms { .. } => ErrorCode::TooManyRooms,
            Error::TooManyConnections(_) => ErrorCode::TooManyConnections,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::TokenExpired => ErrorCode::TokenExpired,
            Error::ShuttingDown => ErrorCode::ShuttingDown,
            Error::Store(_) | Error::Unavailable(_) | Error::Outbox(_) => {
                ErrorCode::StoreUnavailable
            }
            Error::Config(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What a client is told: the error's text, except for a store failure, whose cause is
    /// only logged (a stable short detail instead).
    fn public_detail(&self) -> String {
        match self {
            Error::Store(_) | Error::Outbox(_) => STORE_UNAVAILABLE.to_owned(),
            // The cause is logged; what a client sees is short and stable.
            Error::Unavailable(_) => BACKEND_UNAVAILABLE.to_owned(),
            Error::Internal(_) | Error::Config(_) => INTERNAL.to_owned(),
            _ => self.to_string(),
        }
    }

    /// The RFC 9457 problem for this error.
    pub fn problem(&self) -> Problem {
        let mut p = Problem::new(self.code(), self.public_detail());
        match self {
            Error::VersionConflict { current, .. } => p.current = current.clone(),
            Error::RateLimited { retry_after } => p.retry_after = Some(*retry_after),
            _ => {}
        }
        p
    }

    /// The error inside a failed WebSocket `ack`.
    pub fn ack_error(&self) -> AckError {
        if let Error::Store(_) = self {
            tracing::error!(error = %self, "a WebSocket request failed in the store");
            crate::metrics::store_error();
        }
        AckError {
            code: self.code(),
            title: self.public_detail(),
            current: match self {
                Error::VersionConflict { current, .. } => current.clone(),
                _ => None,
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if matches!(
            self,
            Error::Store(_)
                | Error::Outbox(_)
                | Error::Unavailable(_)
                | Error::Internal(_)
                | Error::Config(_)
        ) {
            tracing::error!(error = %self, "request failed");
        }
        if matches!(self, Error::Store(_)) {
            crate::metrics::store_error();
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Error::RateLimited { retry_after } = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        res
    }
}

/// A store backend failed: the database did not answer, refused a statement, or ran out of
/// space. Over HTTP it is `503 store_unavailable`.
///
/// Opaque: it keeps which backend failed and the driver's message (and the driver's error as
/// its [`source`](std::error::Error::source)), but names no driver type, so the rest of the
/// server does not depend on one. Each backend turns its driver's errors into this one.
///
/// ```
/// use tidewire_server::store::StoreError;
/// let io = std::io::Error::other("disk I/O error");
/// let err = StoreError::new("sqlite", io);
/// assert_eq!(err.backend(), "sqlite");
/// assert_eq!(err.to_string(), "sqlite: disk I/O error");
/// assert!(std::error::Error::source(&err).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {source}")]
pub struct StoreError {
    backend: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// The error `source` of the backend named `backend` (`sqlite`, `postgres`).
    pub fn new(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError {
            backend,
            source: source.into(),
        }
    }

    /// The backend that failed.
    pub fn backend(&self) -> &'static str {
        self.backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_problem_carries_the_current_item() {
        let item = Item {
            id: "x".into(),
            value: serde_json::json!(1),
            version: 4,
        };
        let err = Error::VersionConflict {
            detail: "If-Match 3 but the item is at version 4".into(),
            current: Some(item.clone()),
        };
        let p = err.problem();
        assert_eq!(p.status, 409);
        assert_eq!(p.code, ErrorCode::VersionConflict);
        assert_eq!(p.current, Some(item.clone()));
        assert_eq!(err.ack_error().current, Some(item));
    }

    /// A store failure is a 503 `store_unavailable` whose detail names no driver text; the
    /// error's own message (for the log) keeps the cause.
    #[test]
    fn a_store_failure_is_a_503_without_the_driver_s_text() {
        let err = Error::from(StoreError::new(
            "sqlite",
            std::io::Error::other("database or disk is full: INSERT INTO events"),
        ));
        assert!(
            err.to_string().contains("database or disk is full"),
            "{err}"
        );
        let p = err.problem();
        assert_eq!(p.status, 503);
        assert_eq!(p.code, ErrorCode::StoreUnavailable);
        assert_eq!(p.detail, STORE_UNAVAILABLE);
        assert_eq!(err.ack_error().title, STORE_UNAVAILABLE);
        let res = err.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn rate_limited_sets_retry_after() {
        let res = Error::RateLimited { retry_after: 2 }.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
