//! JWT auth: HS256 tokens with room patterns, and single-use tickets for transports that
//! cannot send headers (EventSource, and WebSocket as an alternative to the `auth` frame).
//!
//! A token's claims are `sub`, `exp` (seconds since the epoch), `read` and `write`: lists of
//! room patterns where `*` matches any run of characters.
//!
//! Tickets are single-use across every node that shares the [`ledger::TicketLedger`]: the
//! process's own by default, Redis with `--redis`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tidewire_server::auth::{Auth, Claims};
//! let auth = Auth::new("secret");
//! let token = auth.mint(&Claims::new("ada", 60, &["board-*"], &["board-1"])).unwrap();
//! let grant = auth.verify(&token).unwrap();
//! assert!(grant.can_read("board-7") && !grant.can_write("board-7"));
//! let ticket = auth.issue_ticket(grant.clone()).unwrap();
//! assert_eq!(auth.redeem(&ticket).await.unwrap().subject, "ada");
//! assert!(auth.redeem(&ticket).await.is_err(), "tickets are single-use");
//! # });
//! ```

pub mod api_key;
pub mod ledger;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey};
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
use ledger::{MemoryLedger, TicketLedger};

/// Seconds a ticket from `POST /v1/tickets` stays valid.
pub const TICKET_TTL_SECS: u64 = 30;

/// The cookie that may carry the token (for EventSource on the same site).
pub const COOKIE_NAME: &str = "tidewire_token";

/// The claims of a Tidewire token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: limits are counted against it.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Room patterns the subject may read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Room patterns the subject may write.
    #[serde(default)]
    pub write: Vec<String>,
}

impl Claims {
    /// Claims for `sub` expiring `ttl_secs` from now.
    pub fn new(sub: &str, ttl_secs: u64, read: &[&str], write: &[&str]) -> Claims {
        Claims {
            sub: sub.to_owned(),
            exp: now_secs() + ttl_secs,
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The subject.
    pub subject: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    read: Vec<String>,
    write: Vec<String>,
}

impl Grant {
    /// Whether `room` matches one of the read patterns.
    pub fn can_read(&self, room: &str) -> bool {
        self.read.iter().any(|p| pattern_matches(p, room))
    }
    /// Whether `room` matches one of the write patterns.
    pub fn can_write(&self, room: &str) -> bool {
        self.write.iter().any(|p| pattern_matches(p, room))
    }
    /// Whether the token has expired.
    pub fn expired(&self) -> bool {
        now_secs() >= self.exp
    }
    /// Time left until expiry (zero when expired).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(now_secs()))
            .saturating_sub(Duration::from_millis(now_millis_part()))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_millis_part() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_millis()))
}

/// Whether `room` matches `pattern`, where `*` matches any run of characters (also none).
pub fn pattern_matches(pattern: &str, room: &str) -> bool {
    let (p, r) = (pattern.as_bytes(), room.as_bytes());
    let (mut pi, mut ri) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ri < r.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ri));
            pi += 1;
        } else if pi < p.len() && p[pi] == r[ri] {
            pi += 1;
            ri += 1;
        } else if let Some((sp, sr)) = star {
            pi = sp + 1;
            ri = sr + 1;
            star = Some((sp, sr + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The key tickets are signed with: derived from the secret, distinct from it.
fn ticket_key(secret: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("tidewire-ticket\0{secret}").as_bytes()).to_vec()
}

/// The verifier and the ticket redeemer of one server.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ticket_encoding: EncodingKey,
    ticket_decoding: DecodingKey,
    /// Where redeemed ticket ids are remembered.
    ledger: Arc<dyn TicketLedger>,
}

/// The claims of a ticket: the token's grant, the ticket's own expiry and its id.
#[derive(Debug, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    exp: u64,
    read: Vec<String>,
    write: Vec<String>,
    until: u64,
    jti: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

impl Auth {
    /// Auth with the HS256 `secret`; tickets are single-use in this process.
    pub fn new(secret: &str) -> Auth {
        Auth::with_ledger(secret, Arc::new(MemoryLedger::default()))
    }

    /// Auth with the HS256 `secret`, remembering redeemed tickets in `ledger` (a
    /// [`RedisLedger`](ledger::RedisLedger) makes them single-use across nodes).
    pub fn with_ledger(secret: &str, ledger: Arc<dyn TicketLedger>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // A token (or ticket) with an `nbf` in the future is not valid yet.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ticket_encoding: EncodingKey::from_secret(&ticket_key(secret)),
            ticket_decoding: DecodingKey::from_secret(&ticket_key(secret)),
            ledger,
        }
    }

    /// Signs `claims` (for tests and tools that share the secret).
    pub fn mint(&self, claims: &Claims) -> Result<String> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing a token: {e}")))
    }

    /// Verifies a token: `token_expired` past `exp`, `unauthorized` for anything else wrong.
    pub fn verify(&self, token: &str) -> Result<Arc<Grant>> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                ErrorKind::ImmatureSignature => {
                    Error::Unauthorized("the token is not valid yet (`nbf`)".into())
                }
                ErrorKind::InvalidSignature => {
                    Error::Unauthorized("the token's signature is not valid".into())
                }
                _ => {
                    // The library's words (`Base64 error`, `InvalidAlgorithm`) go to the
                    // log; the client gets one stable detail.
                    tracing::debug!(error = %e, "a token was refused");
                    Error::Unauthorized("the token is not valid".into())
                }
            }
        })?;
        let c = data.claims;
        let grant = Grant {
            subject: c.sub,
            exp: c.exp,
            read: c.read,
            write: c.write,
        };
        if grant.expired() {
            return Err(Error::TokenExpired);
        }
        Ok(Arc::new(grant))
    }

    /// A single-use ticket for `grant`, valid [`TICKET_TTL_SECS`]. The ticket is itself signed
    /// (with a key derived from the secret, so it never passes as a Bearer token), so any node
    /// sharing the secret can redeem it; single use is enforced by the [`TicketLedger`].
    pub fn issue_ticket(&self, grant: Arc<Grant>) -> Result<String> {
        use rand::RngCore;
        let mut bytes = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut bytes);
        let claims = TicketClaims {
            sub: grant.subject.clone(),
            exp: grant.exp,
            read: grant.read.clone(),
            write: grant.write.clone(),
            until: now_secs() + TICKET_TTL_SECS,
            jti: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.ticket_encoding,
        )
        .map_err(|e| Error::Internal(format!("signing a ticket: {e}")))
    }

    /// Redeems a ticket once: `unauthorized` when forged, used or older than its TTL,
    /// `token_expired` when the token it was issued for has expired meanwhile,
    /// `store_unavailable` when the ledger cannot tell whether it was used.
    pub async fn redeem(&self, ticket: &str) -> Result<Arc<Grant>> {
        let unknown = || {
            Error::Unauthorized(
                "the ticket is not valid, used or expired: get a new one from POST /v1/tickets"
                    .into(),
            )
        };
        let c = decode::<TicketClaims>(ticket, &self.ticket_decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                _ => unknown(),
            })?
            .claims;
        let now = now_secs();
        if c.until <= now {
            return Err(unknown());
        }
        if !self.ledger.first_use(&c.jti, c.until).await? {
            return Err(unknown());
        }
        let grant = Grant {
            subject: c.sub,
            exp: c.exp,
            read: c.read,
            write: c.write,
        };
        if grant.expired() {
            return Err(Error::TokenExpired);
        }
        Ok(Arc::new(grant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("board-*", "board-1"));
        assert!(pattern_matches("board-*", "board-"));
        assert!(!pattern_matches("board-*", "boardx"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("a*c*e", "abcde"));
        assert!(!pattern_matches("a*c*e", "abcdf"));
        assert!(pattern_matches("chat", "chat"));
        assert!(!pattern_matches("chat", "chat2"));
        assert!(!pattern_matches("", "x"));
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Auth::new("s");
        let other = Auth::new("t");
        let ok = auth.mint(&Claims::new("a", 60, &["r"], &[])).unwrap();
        assert!(auth.verify(&ok).is_ok());
        assert!(matches!(other.verify(&ok), Err(Error::Unauthorized(_))));
        let mut old = Claims::new("a", 0, &["r"], &[]);
        old.exp -= 10;
        let old = auth.mint(&old).unwrap();
        assert!(matches!(auth.verify(&old), Err(Error::TokenExpired)));
        assert!(matches!(auth.verify("nope"), Err(Error::Unauthorized(_))));
    }

    #[test]
    fn a_huge_exp_verifies_and_leaves_a_finite_remaining_time() {
        let auth = Auth::new("s");
        let mut claims = Claims::new("a", 60, &["r"], &[]);
        claims.exp = u64::MAX;
        let grant = auth.verify(&auth.mint(&claims).unwrap()).unwrap();
        assert!(!grant.expired());
        assert!(grant.remaining() > Duration::from_secs(1 << 62));
        // A ticket carries the same `exp`.
        assert!(auth.issue_ticket(grant).is_ok());
    }

    #[test]
    fn a_token_before_its_nbf_is_refused() {
        let auth = Auth::new("s");
        let sign = |nbf: u64| {
            let claims = serde_json::json!({"sub": "a", "exp": now_secs() + 600, "nbf": nbf});
            encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap()
        };
        match auth.verify(&sign(now_secs() + 300)) {
            Err(Error::Unauthorized(detail)) => {
                assert!(detail.contains("not valid yet"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert!(auth.verify(&sign(now_secs() - 1)).is_ok());
    }

    #[tokio::test]
    async fn tickets_are_single_use_and_no_bearer_tokens() {
        let a = Auth::new("s");
        let b = Auth::new("s");
        let token = a.mint(&Claims::new("a", 60, &["r"], &[])).unwrap();
        let ticket = a.issue_ticket(a.verify(&token).unwrap()).unwrap();
        assert!(a.verify(&ticket).is_err(), "a ticket is no Bearer token");
        assert!(a.redeem(&token).await.is_err(), "a token is no ticket");
        // Another node with the same secret redeems it; with their own ledgers, each node
        // only once.
        assert_eq!(b.redeem(&ticket).await.unwrap().subject, "a");
        assert!(b.redeem(&ticket).await.is_err());
        assert!(Auth::new("t").redeem(&ticket).await.is_err());
        // With one shared ledger, once in all.
        let shared: Arc<dyn TicketLedger> = Arc::new(MemoryLedger::default());
        let (c, d) = (
            Auth::with_ledger("s", shared.clone()),
            Auth::with_ledger("s", shared),
        );
        let ticket = c.issue_ticket(c.verify(&token).unwrap()).unwrap();
        assert!(c.redeem(&ticket).await.is_ok());
        assert!(d.redeem(&ticket).await.is_err(), "used on the other node");
    }
}
