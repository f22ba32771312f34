//! Who is making a request, derived in one place, and the one room-access check.
//!
//! With no JWT secret configured every caller is anonymous, keyed by peer IP (or, behind a
//! `--trusted-proxies` load balancer, by the address its `X-Forwarded-For` names: see
//! [`client_ip`]), and may do anything. With a secret, [`ClientIdentity`]'s extractor takes the credentials a browser can
//! send — `Authorization: Bearer <jwt>`, a single-use `?ticket=` from `POST /v1/tickets`, or
//! the `tidewire_token` cookie, which is taken **only** on `GET …/v1/sse` (the one request an
//! `EventSource` makes, and one that changes nothing), so a cross-site page cannot ride it to
//! write or to open a WebSocket — and [`authorize`] checks the token's room patterns.
//!
//! ```
//! use tidewire_server::identity::{authorize, Access, ClientIdentity};
//! let who = ClientIdentity::anonymous("127.0.0.1");
//! assert!(authorize(&who, "board-1", Access::Write).is_ok());
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use ipnet::IpNet;

use crate::auth::{Auth, Grant, COOKIE_NAME};
use crate::{Error, Result};

/// What the identity extractor needs: the JWT auth (when on) and the proxies whose
/// `X-Forwarded-For` is believed.
#[derive(Clone)]
pub struct Identify {
    /// JWT auth; `None`: open access.
    pub auth: Option<Arc<Auth>>,
    /// Load balancers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<[IpNet]>,
    /// Backend API keys (`--api-key`): they may read and write every room.
    pub api_keys: crate::auth::api_key::ApiKeys,
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The key limits are counted against: the subject when authenticated, else the peer IP.
    pub key: String,
    /// The authenticated subject, when auth is on.
    pub subject: Option<String>,
    /// What the token allows; `None` when auth is off (everything is allowed).
    pub grant: Option<Arc<Grant>>,
}

impl ClientIdentity {
    /// An anonymous caller keyed by `key`.
    pub fn anonymous(key: impl Into<String>) -> Self {
        ClientIdentity {
            key: key.into(),
            subject: None,
            grant: None,
        }
    }

    /// A backend holding API key number `index` (`--api-key`): it may do anything (no
    /// grant), and its limits are counted against `api-key:<index>`.
    pub fn backend(index: usize) -> Self {
        ClientIdentity {
            key: format!("api-key:{index}"),
            subject: Some(format!("api-key:{index}")),
            grant: None,
        }
    }

    /// An authenticated caller, keyed by its subject.
    pub fn authenticated(grant: Arc<Grant>) -> Self {
        ClientIdentity {
            key: format!("sub:{}", grant.subject),
            subject: Some(grant.subject.clone()),
            grant: Some(grant),
        }
    }
}

/// The Bearer token of `headers`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether a request carries credentials other than the cookie (Bearer, `?ticket=`): the
/// cookie counts only on the SSE stream.
pub fn has_credentials(headers: &HeaderMap, query: Option<&str>) -> bool {
    headers.contains_key(header::AUTHORIZATION) || ticket(query).is_some()
}

/// Whether the request is the SSE stream's `GET` (where, alone, the cookie is accepted).
fn is_event_stream(parts: &Parts) -> bool {
    parts.method == axum::http::Method::GET && parts.uri.path().ends_with("/v1/sse")
}

fn ticket(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "ticket")
        .map(|(_, v)| v)
}

impl<S> FromRequestParts<S> for ClientIdentity
where
    Identify: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    /// A backend API key first (`--api-key`). Anonymous when auth is off. Otherwise the
    /// Bearer token wins, then `?ticket=`, then
    /// the cookie; none of them is `401 unauthorized`.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let state = Identify::from_ref(state);
        // A backend API key (`--api-key`) may do anything, with or without JWT auth.
        if let Some(i) = bearer(&parts.headers).and_then(|t| state.api_keys.find(t)) {
            return Ok(ClientIdentity::backend(i));
        }
        let Some(auth) = state.auth.as_ref() else {
            let key = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| {
                    client_ip(addr.ip(), &parts.headers, &state.trusted_proxies).to_string()
                })
                .unwrap_or_else(|| "local".to_owned());
            return Ok(ClientIdentity::anonymous(key));
        };
        let grant = if let Some(token) = bearer(&parts.headers) {
            auth.verify(token)?
        } else if let Some(t) = ticket(parts.uri.query()) {
            auth.redeem(t).await?
        } else if let Some(token) = cookie(&parts.headers).filter(|_| is_event_stream(parts)) {
            auth.verify(token)?
        } else {
            return Err(Error::Unauthorized(
                "credentials required: Authorization: Bearer <token>, ?ticket= or the \
                 tidewire_token cookie"
                    .into(),
            ));
        };
        Ok(ClientIdentity::authenticated(grant))
    }
}

/// The address an anonymous caller is keyed by. A peer that is not a trusted proxy is the
/// client. Behind trusted proxies, `X-Forwarded-For` is read from the right (each proxy appends
/// the address it received from) and the first address that is not itself a trusted proxy is
/// the client; an entry that is not an address stops the walk at the last trusted hop, so a
/// client cannot pick its own key with a forged header.
///
/// ```
/// use std::net::IpAddr;
/// use axum::http::HeaderMap;
/// use tidewire_server::identity::client_ip;
///
/// let lb: IpAddr = "10.0.0.2".parse().unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "198.51.100.1, 203.0.113.7".parse().unwrap());
/// let trusted = ["10.0.0.0/8".parse().unwrap()];
/// assert_eq!(client_ip(lb, &headers, &trusted), "203.0.113.7".parse::<IpAddr>().unwrap());
/// assert_eq!(client_ip(lb, &headers, &[]), lb);
/// ```
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `203.0.113.7`, `203.0.113.7:5000`, `2001:db8::1` or
/// `[2001:db8::1]:5000`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// What a caller wants to do with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Snapshot, history, presence, streams.
    Read,
    /// Writes, broadcasts, presence updates.
    Write,
}

/// Whether `who` may `access` `room`: always when auth is off; otherwise `token_expired`
/// past the token's expiry, `forbidden` when no pattern of the token matches.
pub fn authorize(who: &ClientIdentity, room: &str, access: Access) -> Result<()> {
    if crate::stats::is_internal_room(room) {
        return Err(Error::Forbidden(format!(
            "room `{room}` is the server's own"
        )));
    }
    let Some(grant) = &who.grant else {
        return Ok(());
    };
    if grant.expired() {
        return Err(Error::TokenExpired);
    }
    let ok = match access {
        Access::Read => grant.can_read(room),
        Access::Write => grant.can_write(room),
    };
    if ok {
        Ok(())
    } else {
        let what = match access {
            Access::Read => "read",
            Access::Write => "write",
        };
        Err(Error::Forbidden(format!(
            "the token does not allow to {what} room `{room}`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Auth, Claims};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let lb = ip("10.1.2.3");
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_ip(ip("198.51.100.9"), &xff(&["203.0.113.7"]), &trusted),
            ip("198.51.100.9")
        );
        // One trusted hop: the address it appended.
        assert_eq!(
            client_ip(lb, &xff(&["203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        // A forged left part is skipped: the rightmost untrusted address wins.
        assert_eq!(
            client_ip(lb, &xff(&["1.1.1.1, 203.0.113.7, 10.9.9.9"]), &trusted),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client_ip(lb, &xff(&["1.1.1.1", "203.0.113.8"]), &trusted),
            ip("203.0.113.8")
        );
        // Ports and bracketed IPv6 are understood.
        assert_eq!(
            client_ip(lb, &xff(&["203.0.113.7:5000"]), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(ip("::1"), &xff(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
        // No header, or garbage: the last trusted hop, never a made-up key.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &trusted), lb);
        assert_eq!(client_ip(lb, &xff(&["unknown"]), &trusted), lb);
        assert_eq!(
            client_ip(lb, &xff(&["203.0.113.7, garbage, 10.0.0.9"]), &trusted),
            ip("10.0.0.9")
        );
        // Only trusted addresses: the leftmost of them.
        assert_eq!(client_ip(lb, &xff(&["10.0.0.7"]), &trusted), ip("10.0.0.7"));
        // Nothing trusted: the peer.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.7"]), &[]), lb);
    }

    #[test]
    fn credentials_are_found() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        h.insert(header::COOKIE, "x=1; tidewire_token=tok".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        assert_eq!(cookie(&h), Some("tok"));
        assert_eq!(ticket(Some("rooms=a&ticket=t1")), Some("t1"));
        assert_eq!(ticket(Some("rooms=a")), None);
    }

    #[test]
    fn authorize_checks_patterns_and_access() {
        let auth = Auth::new("s");
        let t = auth
            .mint(&Claims::new("a", 60, &["board-*"], &["board-1"]))
            .unwrap();
        let who = ClientIdentity::authenticated(auth.verify(&t).unwrap());
        assert_eq!(who.key, "sub:a");
        assert!(authorize(&who, "board-2", Access::Read).is_ok());
        assert!(matches!(
            authorize(&who, "board-2", Access::Write),
            Err(Error::Forbidden(_))
        ));
        assert!(authorize(&who, "board-1", Access::Write).is_ok());
        assert!(matches!(
            authorize(&who, "chat", Access::Read),
            Err(Error::Forbidden(_))
        ));
    }
}
