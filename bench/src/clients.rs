//! The load generator's subscribers: raw SSE over a TCP stream, and WebSocket (Tidewire
//! `subscribe` frame, the bare WebSocket, or Socket.IO's Engine.IO v4 handshake).
//!
//! ```text
//! let shared = Arc::new(Shared::default());
//! let permit = connecting.clone().acquire_owned().await?;   // bounds connects in flight
//! tokio::spawn(run(Kind::TidewireSse, addr, source_ip, shared.clone(), permit));
//! // shared.ready counts subscribed clients; shared.deliveries counts events seen.
//! ```
//!
//! Every event carries `"t":<µs since the Unix epoch>` from the publisher; a client counts each
//! occurrence and, while `recording` is set, keeps `now − t` as a latency sample.
//!
//! Every client binds its socket to a given loopback source address before connecting, so that
//! the load generator's processes together have more than one address's ephemeral ports.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use tidewire_protocol::ClientFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::Message;

use crate::histogram::LatencyHistogram;
use crate::BenchError;

/// Which server and transport a subscriber speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Tidewire `GET /v1/sse?rooms=bench`.
    TidewireSse,
    /// Tidewire `GET /v1/ws` and a `subscribe` frame.
    TidewireWs,
    /// The bare axum server's `GET /sse`.
    BaselineSse,
    /// The bare axum server's `GET /ws`.
    BaselineWs,
    /// Socket.IO 4 over its WebSocket transport.
    SocketIo,
}

impl Kind {
    /// The target name, as in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::TidewireSse => "tidewire-sse",
            Kind::TidewireWs => "tidewire-ws",
            Kind::BaselineSse => "axum-sse",
            Kind::BaselineWs => "axum-ws",
            Kind::SocketIo => "socketio-ws",
        }
    }

    /// The kind named `name` ([`Kind::name`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        [
            Kind::TidewireSse,
            Kind::TidewireWs,
            Kind::BaselineSse,
            Kind::BaselineWs,
            Kind::SocketIo,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// A TCP connection to `addr` from `source` (any port).
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> Result<TcpStream, BenchError> {
    let sock = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(source, 0))?;
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Counters shared by every subscriber of one measurement.
#[derive(Default)]
pub struct Shared {
    /// Subscribers that are connected and subscribed.
    pub ready: AtomicUsize,
    /// Subscribers that failed or were closed by the server.
    pub failed: AtomicUsize,
    /// Events received, over all subscribers.
    pub deliveries: AtomicU64,
    /// Keep latency samples while set.
    pub recording: AtomicBool,
    /// Latency samples in microseconds.
    pub latencies: Mutex<LatencyHistogram>,
    /// The first failure, for the report.
    pub first_error: Mutex<Option<String>>,
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Counts the events in `bytes` (each holds one `"t":` field) and records latencies. The
/// search is `memchr`'s vectorised one: the generator shares the CPU with the server, and its
/// cost per event must not grow with the server's envelope size.
fn scan(shared: &Shared, bytes: &[u8]) {
    const MARK: &[u8] = b"\"t\":";
    let recording = shared.recording.load(Ordering::Relaxed);
    let now = if recording { now_micros() } else { 0 };
    let mut count = 0u64;
    let mut samples = Vec::new();
    for at in memchr::memmem::find_iter(bytes, MARK) {
        count += 1;
        if recording {
            let t = bytes[at + MARK.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |t, b| t * 10 + u64::from(b - b'0'));
            samples.push(now.saturating_sub(t));
        }
    }
    if count > 0 {
        shared.deliveries.fetch_add(count, Ordering::Relaxed);
    }
    if !samples.is_empty() {
        if let Ok(mut l) = shared.latencies.lock() {
            for us in samples {
                l.record(us);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs one subscriber until its connection ends; marks it failed on error. `permit` is held
/// until the subscriber is subscribed.
pub async fn run(
    kind: Kind,
    addr: SocketAddr,
    source: IpAddr,
    shared: std::sync::Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let p = &mut permit;
    let r = match kind {
        Kind::TidewireSse => sse(addr, source, "/v1/sse?rooms=bench", b"\nid:", &shared, p).await,
        Kind::BaselineSse => sse(addr, source, "/sse", b"\r\n\r\n", &shared, p).await,
        Kind::TidewireWs | Kind::BaselineWs | Kind::SocketIo => {
            ws(kind, addr, source, &shared, p).await
        }
    };
    if let Err(e) = r {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = shared.first_error.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
    }
}

async fn sse(
    addr: SocketAddr,
    source: IpAddr,
    path: &str,
    ready_mark: &[u8],
    shared: &Shared,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Result<(), BenchError> {
    let mut s = connect_from(source, addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut ready = false;
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(BenchError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if !ready {
            // Until subscribed, the buffer keeps everything from the status line on.
            if !buf.starts_with(b"HTTP/1.1 200") && buf.len() >= 12 {
                return Err(BenchError::Status(
                    String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned(),
                ));
            }
            if !contains(&buf, ready_mark) {
                continue;
            }
            ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
            permit.take();
        }
        if let Some(pos) = buf.iter().rposition(|&b| b == b'\n') {
            scan(shared, &buf[..=pos]);
            buf.drain(..=pos);
        }
    }
}

async fn ws(
    kind: Kind,
    addr: SocketAddr,
    source: IpAddr,
    shared: &Shared,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Result<(), BenchError> {
    let url = match kind {
        Kind::TidewireWs => format!("ws://{addr}/v1/ws"),
        Kind::BaselineWs => format!("ws://{addr}/ws"),
        _ => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
    };
    let tcp = connect_from(source, addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    let mut ready = false;
    match kind {
        Kind::TidewireWs => {
            let sub = ClientFrame::Subscribe {
                r#ref: Some("1".into()),
                rooms: vec!["bench".into()],
                since: None,
                presence: false,
            };
            ws.send(Message::Text(sub.encode().into())).await?;
        }
        Kind::BaselineWs => {
            ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
            permit.take();
        }
        _ => {}
    }
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(_) => return Err(BenchError::Closed),
            _ => continue,
        };
        let b = text.as_bytes();
        if kind == Kind::SocketIo {
            // Engine.IO: "0{..}" open, "2" ping; Socket.IO: "40" connected.
            if b == b"2" {
                ws.send(Message::Text("3".into())).await?;
                continue;
            }
            if b.starts_with(b"0{") {
                ws.send(Message::Text("40".into())).await?;
                continue;
            }
            if !ready && b.starts_with(b"40") {
                ready = true;
                shared.ready.fetch_add(1, Ordering::Relaxed);
                permit.take();
                continue;
            }
        }
        if kind == Kind::TidewireWs && !ready && contains(b, b"\"ack\"") {
            if !contains(b, b"\"ok\":true") {
                return Err(BenchError::Status(text.to_string()));
            }
            ready = true;
            shared.ready.fetch_add(1, Ordering::Relaxed);
            permit.take();
            continue;
        }
        scan(shared, b);
    }
    Err(BenchError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_events_and_records_latency_only_when_asked() {
        let s = Shared::default();
        scan(&s, br#"data: {"data":{"t":1,"pad":"x"}}"#);
        assert_eq!(s.deliveries.load(Ordering::Relaxed), 1);
        assert_eq!(s.latencies.lock().unwrap().len(), 0);
        s.recording.store(true, Ordering::Relaxed);
        let t = now_micros();
        let two = format!("{{\"t\":{t}}}\n{{\"ts\":\"x\",\"t\":{t}}}");
        scan(&s, two.as_bytes());
        assert_eq!(s.deliveries.load(Ordering::Relaxed), 3);
        let l = s.latencies.lock().unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.max_ms() < 10_000.0);
    }
}
