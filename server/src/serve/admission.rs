//! Admission of accepted TCP connections: at most [`Options::max_connections_per_address`]
//! open at once per client address, and at most [`Options::max_connections`] in all, with a
//! small reserve ([`Options::healthz_reserve`]) that answers only `GET /healthz`.
//!
//! A connection over the per-address cap is answered at once with `429 too_many_connections`
//! (problem+json, `Retry-After: 1`, `Connection: close`) and closed: the accept loop reads what
//! of the request has arrived, does one non-blocking write and drops the socket, so refusing
//! costs no task and no buffer.
//!
//! A connection over the total cap takes a place in the reserve and is served, by hyper, for
//! one HTTP/1 request whose head must arrive within [`RESERVE_HEAD_TIMEOUT`]: `/healthz` goes to
//! the router (so a load balancer's probe sees `200 ok`, or `503` while draining), anything
//! else gets the same `429`. When the reserve is full, the connection that has waited longest
//! in it is closed to make room (counted as refused): sockets that connect and send nothing
//! cannot keep a probe out, which sends its request as soon as it has connected and is
//! answered in microseconds. An attacker would have to open more than the reserve's size of
//! connections within one round trip of the probe to push it out.
//!
//! Addresses are counted per IPv4 address and per IPv6 `/64` (one host usually has a whole
//! `/64`); an IPv4-mapped IPv6 address counts as its IPv4 address. Peers in
//! [`Options::uncapped_peers`] (the `--trusted-proxies`: every client behind a load balancer
//! arrives from its address) are not capped per address, only in all.
//!
//! ```
//! use std::net::IpAddr;
//! use tidewire_server::serve::admission::address_key;
//! let v6: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
//! assert_eq!(address_key(v6).to_string(), "2001:db8:1:2::");
//! let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
//! assert_eq!(address_key(mapped).to_string(), "10.0.0.1");
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use tidewire_protocol::{ErrorCode, Problem};
use tokio::sync::Notify;

use super::Options;

/// How long the request head of a connection in the `/healthz` reserve may take (at most; the
/// header-read timeout when that is shorter). A probe sends its request at once.
pub const RESERVE_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a connection was refused (the `reason` label of `tidewire_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address had [`Options::max_connections_per_address`] open.
    PerAddress,
    /// The server had [`Options::max_connections`] open, and the connection in the
    /// `/healthz` reserve was not `/healthz` (or was closed to make room for a newer one).
    Global,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::Global => "global",
        }
    }
}

/// What the accept loop does with a new connection.
pub(crate) enum Admit {
    /// Serve it.
    Serve(Permit),
    /// Serve one request, and only if it is `GET /healthz`; stop when the notify fires (the
    /// reserve needed the room).
    HealthOnly(Permit, Arc<Notify>),
    /// Answer [`Admission::refusal`] and close.
    Refuse(Refusal),
}

/// The counts behind the caps, shared by the accept loop and every admitted connection.
pub(crate) struct Admission {
    per_address: usize,
    total: usize,
    reserve: usize,
    uncapped: Vec<ipnet::IpNet>,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    open: AtomicUsize,
    /// The connections in the reserve, oldest first, each with what closes it.
    reserved: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_reserved: AtomicU64,
    per_address_answer: Bytes,
    global_answer: Bytes,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("reserved", &lock(&self.reserved).len())
            .finish_non_exhaustive()
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its `/64`.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Admission {
    pub(crate) fn new(options: &Options) -> Arc<Admission> {
        let per_address = options.max_connections_per_address;
        let total = options.max_connections;
        Arc::new(Admission {
            per_address,
            total,
            reserve: options.healthz_reserve,
            uncapped: options.uncapped_peers.clone(),
            by_address: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            reserved: Mutex::new(VecDeque::new()),
            next_reserved: AtomicU64::new(0),
            per_address_answer: refusal_bytes(&format!(
                "too many connections from this address (limit {per_address})"
            )),
            global_answer: refusal_bytes(&format!(
                "the server has as many connections as it takes (limit {total}); retry shortly"
            )),
        })
    }

    /// Admits (or refuses) a connection from `peer`.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Admit {
        let key = (self.per_address > 0 && !self.uncapped.iter().any(|n| n.contains(&peer)))
            .then(|| address_key(peer));
        if let Some(key) = key {
            let mut counts = lock(&self.by_address);
            let count = counts.entry(key).or_insert(0);
            if *count >= self.per_address {
                return Admit::Refuse(Refusal::PerAddress);
            }
            *count += 1;
        }
        let mut permit = Permit {
            admission: self.clone(),
            key,
            reserved: None,
            counted: false,
        };
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        if self.total == 0 || open < self.total {
            permit.counted = true;
            metrics::gauge!("tidewire_tcp_connections").increment(1.0);
            return Admit::Serve(permit);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        if self.reserve == 0 {
            // Dropping the permit gives back the address's count.
            drop(permit);
            return Admit::Refuse(Refusal::Global);
        }
        let id = self.next_reserved.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        {
            let mut reserved = lock(&self.reserved);
            if reserved.len() >= self.reserve {
                if let Some((_, oldest)) = reserved.pop_front() {
                    oldest.notify_one();
                }
            }
            reserved.push_back((id, close.clone()));
        }
        permit.reserved = Some(id);
        permit.counted = true;
        metrics::gauge!("tidewire_tcp_connections").increment(1.0);
        Admit::HealthOnly(permit, close)
    }

    /// The whole HTTP/1.1 answer to a connection refused for `why`.
    pub(crate) fn refusal(&self, why: Refusal) -> &Bytes {
        match why {
            Refusal::PerAddress => &self.per_address_answer,
            Refusal::Global => &self.global_answer,
        }
    }

    /// The body of the `429` a reserve connection gets for anything but `/healthz`.
    pub(crate) fn global_problem(&self) -> Bytes {
        let answer = &self.global_answer;
        let start = memchr::memmem::find(answer, b"\r\n\r\n").map_or(0, |i| i + 4);
        answer.slice(start..)
    }
}

/// The connection's place under the caps, given back when it is dropped. It travels with the
/// socket (into a WebSocket after an upgrade, into a stream's task), so it lasts as long as the
/// connection does.
pub(crate) struct Permit {
    admission: Arc<Admission>,
    key: Option<IpAddr>,
    /// Its id in the reserve, if it is there.
    reserved: Option<u64>,
    counted: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        if self.counted {
            match self.reserved {
                // Gone already when it was closed to make room.
                Some(id) => lock(&a.reserved).retain(|(other, _)| *other != id),
                None => {
                    a.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            metrics::gauge!("tidewire_tcp_connections").decrement(1.0);
        }
        if let Some(key) = self.key {
            let mut counts = lock(&a.by_address);
            if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A whole `429 too_many_connections` response that closes the connection.
fn refusal_bytes(detail: &str) -> Bytes {
    let body = serde_json::to_vec(&Problem::new(ErrorCode::TooManyConnections, detail))
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The soft limit on open files of this process (Linux: `/proc/self/limits`), if known.
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_address: usize, total: usize, reserve: usize) -> Arc<Admission> {
        Admission::new(&Options {
            max_connections_per_address: per_address,
            max_connections: total,
            healthz_reserve: reserve,
            uncapped_peers: vec!["10.9.0.0/16".parse().unwrap()],
            ..Options::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_per_address_cap_counts_open_connections_of_one_address() {
        let a = admission(2, 0, 0);
        let first = a.admit(ip("192.0.2.1"));
        let second = a.admit(ip("192.0.2.1"));
        assert!(matches!(first, Admit::Serve(_)) && matches!(second, Admit::Serve(_)));
        assert!(matches!(
            a.admit(ip("192.0.2.1")),
            Admit::Refuse(Refusal::PerAddress)
        ));
        assert!(matches!(a.admit(ip("192.0.2.2")), Admit::Serve(_)));
        drop(first);
        assert!(matches!(a.admit(ip("192.0.2.1")), Admit::Serve(_)));
        // One /64 counts as one address; a trusted proxy is not capped.
        let _x = a.admit(ip("2001:db8::1"));
        let _y = a.admit(ip("2001:db8::2"));
        assert!(matches!(
            a.admit(ip("2001:db8::3")),
            Admit::Refuse(Refusal::PerAddress)
        ));
        let proxies: Vec<Admit> = (0..5).map(|_| a.admit(ip("10.9.1.1"))).collect();
        assert!(proxies.iter().all(|p| matches!(p, Admit::Serve(_))));
    }

    #[tokio::test]
    async fn over_the_total_cap_the_reserve_makes_room_by_closing_its_oldest() {
        let a = admission(0, 2, 2);
        let _held = [a.admit(ip("192.0.2.1")), a.admit(ip("192.0.2.2"))];
        let Admit::HealthOnly(first, first_close) = a.admit(ip("192.0.2.3")) else {
            panic!("reserve")
        };
        let Admit::HealthOnly(_second, second_close) = a.admit(ip("192.0.2.4")) else {
            panic!("reserve")
        };
        // Full: the next one closes the oldest (its notification is stored until awaited).
        let Admit::HealthOnly(_third, _) = a.admit(ip("192.0.2.5")) else {
            panic!("reserve")
        };
        let closes = |n: Arc<Notify>| async move {
            tokio::time::timeout(std::time::Duration::from_millis(50), n.notified())
                .await
                .is_ok()
        };
        assert!(closes(first_close).await, "the oldest is closed");
        assert!(!closes(second_close).await, "the others stay");
        assert_eq!(lock(&a.reserved).len(), 2);
        drop(first);
        assert_eq!(lock(&a.reserved).len(), 2, "the closed one was already out");
        assert_eq!(a.open.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn with_no_reserve_over_the_total_cap_is_refused() {
        let a = admission(0, 1, 0);
        let _held = a.admit(ip("192.0.2.1"));
        assert!(matches!(
            a.admit(ip("192.0.2.2")),
            Admit::Refuse(Refusal::Global)
        ));
    }

    #[test]
    fn a_global_refusal_gives_back_the_address_count() {
        let a = admission(1, 1, 0);
        let _held = a.admit(ip("192.0.2.1"));
        assert!(matches!(
            a.admit(ip("192.0.2.2")),
            Admit::Refuse(Refusal::Global)
        ));
        assert!(lock(&a.by_address).get(&ip("192.0.2.2")).is_none());
    }

    #[test]
    fn the_refusal_is_a_whole_problem_response() {
        let a = admission(3, 0, 0);
        let text = String::from_utf8(a.refusal(Refusal::PerAddress).to_vec()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "too_many_connections");
        assert!(problem["detail"].as_str().unwrap().contains("limit 3"));
        let body: serde_json::Value = serde_json::from_slice(&a.global_problem()).unwrap();
        assert_eq!(body["code"], "too_many_connections");
    }

    #[test]
    fn the_open_file_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(open_file_limit().is_some_and(|n| n > 0));
        }
    }
}
