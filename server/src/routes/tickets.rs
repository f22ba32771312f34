//! `POST /v1/tickets` with `Authorization: Bearer <jwt>`: a single-use ticket for `?ticket=`
//! on `/v1/sse` (and `/v1/ws`, `/v1/poll`), because `EventSource` cannot send headers.
//!
//! ```text
//! POST /v1/tickets   Authorization: Bearer eyJ…
//! → 200 {"ticket":"…","expires_in":30}
//! ```

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::auth::TICKET_TTL_SECS;
use crate::state::Identify;
use crate::{Error, Result};

/// The answer of `POST /v1/tickets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketResponse {
    /// The single-use ticket, for `?ticket=`.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// `POST /v1/tickets` with `Authorization: Bearer <jwt>`: a single-use ticket for
/// `?ticket=` on `/v1/sse` (and `/v1/ws`, `/v1/poll`). Only a Bearer token is accepted here.
pub async fn tickets(
    State(state): State<Identify>,
    headers: HeaderMap,
) -> Result<Json<TicketResponse>> {
    let Some(auth) = state.auth.as_ref() else {
        return Err(Error::NotFound(
            "tickets exist only when auth is on (--jwt-secret)".into(),
        ));
    };
    let token = crate::identity::bearer(&headers).ok_or_else(|| {
        Error::Unauthorized("POST /v1/tickets needs Authorization: Bearer <token>".into())
    })?;
    let grant = auth.verify(token)?;
    Ok(Json(TicketResponse {
        ticket: auth.issue_ticket(grant)?,
        expires_in: TICKET_TTL_SECS,
    }))
}
