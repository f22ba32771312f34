//! Deadlines of a connection served by hyper: the header-read timeout and the keep-alive idle
//! timeout (see [`Options::header_read_timeout`] and [`Options::keep_alive_timeout`]).
//!
//! A connection is *busy* while a request is in flight: from the moment hyper hands its head
//! to the router until the response body has been written (or dropped). While busy it has no
//! deadline (a long-poll, an SSE stream through hyper, a large upload are bounded elsewhere).
//! While not busy:
//!
//! - from the connection's accept, and again from the first byte read after a response, the
//!   request head must be whole within the header-read timeout: a head trickling one byte a
//!   second is cut, since bytes do not move the deadline;
//! - after a response, a connection from which no byte has come is closed once it has been
//!   idle for the keep-alive timeout.
//!
//! The socket as hyper sees it notes bytes read in the connection's [`Activity`];
//! [`Activity::begin`] marks a request in flight until the returned [`InFlight`] is dropped,
//! which the response body does when hyper lets go of it. The connection's task sleeps until
//! [`Activity::deadline`] and closes the connection when it passes.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use tidewire_server::serve::deadline::{Activity, Expiry};
//! let header = Duration::from_secs(10);
//! let idle = Duration::from_secs(60);
//! let activity = Activity::new(tokio::time::Instant::now());
//! assert_eq!(activity.deadline(header, idle).unwrap().1, Expiry::Header);
//! let request = activity.begin();
//! assert!(activity.deadline(header, idle).is_none(), "busy: no deadline");
//! drop(request);
//! assert_eq!(activity.deadline(header, idle).unwrap().1, Expiry::Idle);
//! activity.on_read();
//! assert_eq!(activity.deadline(header, idle).unwrap().1, Expiry::Header);
//! # });
//! ```

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

#[cfg(doc)]
use super::Options;

/// Which deadline passed (the `reason` label of `tidewire_connections_timed_out_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive whole in time.
    Header,
    /// No request came within the keep-alive timeout.
    Idle,
}

impl Expiry {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Expiry::Header => "header",
            Expiry::Idle => "idle",
        }
    }
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// When the head now arriving began (its first byte, or the accept), if one is.
    head_since: Option<Instant>,
    /// When the last request ended.
    idle_since: Instant,
}

/// What one connection is doing, as far as its deadlines care.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    /// A connection accepted at `accepted`: its first head is due a header timeout later.
    pub fn new(accepted: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                head_since: Some(accepted),
                idle_since: accepted,
            }),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes were read: when no request is in flight, they begin a head.
    pub fn on_read(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request is in flight until the answer is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        {
            let mut s = self.state();
            s.in_flight += 1;
            s.head_since = None;
        }
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// When the connection is to be closed, and why (`None`: busy, or a timeout so long that
    /// no clock reaches it).
    pub fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, Expiry)> {
        let s = self.state();
        if s.in_flight > 0 {
            return None;
        }
        match s.head_since {
            Some(since) => Some((since.checked_add(header)?, Expiry::Header)),
            None => Some((s.idle_since.checked_add(idle)?, Expiry::Idle)),
        }
    }

    /// Resolves when the state has changed since the last [`Activity::deadline`] (at once if
    /// it changed meanwhile).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut s = self.0.state();
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.head_since = None;
            }
        }
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request in flight until hyper drops it.
pub(crate) struct Tracked {
    pub(crate) body: Body,
    pub(crate) _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it: reads are noted in the [`Activity`], and `guard` (the
/// connection's place under the caps) lives as long as the socket, also after an upgrade.
pub(crate) struct Watched<G> {
    pub(crate) tcp: TcpStream,
    pub(crate) activity: Arc<Activity>,
    pub(crate) _guard: G,
}

impl<G: Unpin> AsyncRead for Watched<G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<G: Unpin> AsyncWrite for Watched<G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_head_must_be_whole_a_header_timeout_after_it_began() {
        let h = Duration::from_millis(300);
        let i = Duration::from_secs(5);
        let start = Instant::now();
        let a = Activity::new(start);
        // Bytes of the first head do not move its deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.on_read();
        assert_eq!(a.deadline(h, i), Some((start + h, Expiry::Header)));
        let req = a.begin();
        assert_eq!(
            a.deadline(h, i),
            None,
            "a slow answer is not timed out here"
        );
        let before_end = Instant::now();
        drop(req);
        let (at, why) = a.deadline(h, i).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert!(at >= before_end + i && at <= Instant::now() + i);
        // The first byte of the next head starts its header deadline; later bytes do not move it.
        let before_read = Instant::now();
        a.on_read();
        let (at, why) = a.deadline(h, i).unwrap();
        assert_eq!(why, Expiry::Header);
        assert!(at >= before_read + h && at <= Instant::now() + h);
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.on_read();
        assert_eq!(a.deadline(h, i), Some((at, Expiry::Header)));
    }

    #[tokio::test]
    async fn two_requests_in_flight_keep_the_connection_busy_until_both_end() {
        let a = Activity::new(Instant::now());
        let (x, y) = (a.begin(), a.begin());
        drop(x);
        assert!(a.deadline(Duration::ZERO, Duration::ZERO).is_none());
        drop(y);
        assert!(a.deadline(Duration::ZERO, Duration::ZERO).is_some());
    }

    #[test]
    fn a_timeout_past_every_clock_means_no_deadline() {
        let a = Activity::new(Instant::now());
        assert!(a.deadline(Duration::MAX, Duration::MAX).is_none());
    }

    #[tokio::test]
    async fn a_change_wakes_the_waiter_even_when_it_came_first() {
        let a = Activity::new(Instant::now());
        let _req = a.begin();
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("the stored notification wakes it");
    }
}
