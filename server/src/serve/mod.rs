//! Serving the router on a TCP listener, as the `tidewire` binary does.
//!
//! Every request goes through the same axum [`Router`] (its routes, limits, CORS and tracing).
//! How the bytes are framed depends on the connection:
//!
//! - A fresh connection whose first request is a plain `GET` of one of the
//!   [`Options::stream_paths`] (the SSE endpoint) and arrived whole is answered by
//!   [`stream`]'s HTTP/1.1 responder: the response streams straight to the socket and the
//!   connection closes when it ends. A long-lived stream then costs its session and a small
//!   task, not the 16 KiB of read and write buffers an HTTP/1 connection keeps in hyper for
//!   its whole life.
//! - Everything else (other requests, keep-alive, WebSocket upgrades, HTTP/2 with prior
//!   knowledge, a request head split over several packets) is served by hyper, exactly as
//!   `axum::serve` does.
//!
//! What bounds a connection (each an [`Options`] field, a `tidewire serve` flag, and a metric):
//!
//! - [`admission`]: at most [`Options::max_connections_per_address`] open per client address
//!   and [`Options::max_connections`] in all; over a cap a connection is answered `429
//!   too_many_connections` at once and closed, except that a small reserve still answers
//!   `GET /healthz`.
//! - [`deadline`]: a request head must be whole within [`Options::header_read_timeout`] (of the
//!   accept, or of its first byte on a kept-alive connection), and a kept-alive connection
//!   with no request in flight is closed after [`Options::keep_alive_timeout`].
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let mut config = tidewire_server::Config::default();
//! config.database = "sqlite::memory:".into();
//! let server = tidewire_server::Server::new(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let options = tidewire_server::serve::Options::default();
//! tidewire_server::serve::serve(listener, server.router(), options, std::future::pending()).await;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod deadline;
pub mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How [`serve`] treats connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Paths whose `GET` on a fresh connection is answered by the streaming responder
    /// (default: `/v1/sse`).
    pub stream_paths: Vec<String>,
    /// How long a new connection may take to send its first bytes before it is closed (at
    /// most [`Options::header_read_timeout`]).
    pub first_bytes_timeout: Duration,
    /// How long a request head may take to arrive whole: from the accept for a connection's
    /// first request, from its first byte for a later one. A head that trickles in is cut.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may stay open with no request in flight.
    pub keep_alive_timeout: Duration,
    /// Connections open at once from one client address (an IPv6 `/64`); `0`: no cap.
    pub max_connections_per_address: usize,
    /// Connections open at once in all (keep it below the open-file limit, with room for the
    /// store); `0`: no cap. Over it, [`Options::healthz_reserve`] more connections may still
    /// ask `GET /healthz`.
    pub max_connections: usize,
    /// Connections over [`Options::max_connections`] served for `GET /healthz` only.
    pub healthz_reserve: usize,
    /// Peers not capped per address (the trusted proxies: all their clients share their
    /// address), only in all.
    pub uncapped_peers: Vec<IpNet>,
    /// `TCP_USER_TIMEOUT` of every accepted socket: the kernel drops a connection whose peer
    /// has stopped acknowledging (a network cut without a close) or keeps its window shut (a
    /// client that stopped reading) for this long. An SSE stream has no client-to-server
    /// traffic, so this is what ends a dead one: its next write fails and the session ends.
    pub tcp_user_timeout: Option<Duration>,
    /// Counts connections by who served them.
    pub stats: Arc<Stats>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            stream_paths: vec!["/v1/sse".into()],
            first_bytes_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections_per_address: 1024,
            max_connections: 16_000,
            healthz_reserve: 32,
            uncapped_peers: Vec::new(),
            tcp_user_timeout: None,
            stats: Arc::default(),
        }
    }
}

impl Options {
    /// The options the `tidewire` binary serves with: the defaults, with the connection limits
    /// of `config` (`--header-read-timeout-ms`, `--keep-alive-timeout-ms`,
    /// `--max-connections-per-address`, `--max-connections`; `--trusted-proxies` are not
    /// capped per address).
    ///
    /// ```
    /// let config = tidewire_server::Config::default();
    /// let options = tidewire_server::serve::Options::from_config(&config);
    /// assert_eq!(options.max_connections, 16_000);
    /// assert_eq!(options.header_read_timeout.as_secs(), 10);
    /// ```
    pub fn from_config(config: &crate::Config) -> Options {
        Options {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(config.keep_alive_timeout_ms),
            max_connections_per_address: config.max_connections_per_address,
            max_connections: config.max_connections,
            uncapped_peers: config.trusted_proxies.clone(),
            ..Options::default()
        }
    }
}

/// Connections served so far, by who served them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Answered by the streaming responder.
    pub streamed: AtomicU64,
    /// Served by hyper.
    pub hyper: AtomicU64,
    /// Refused: too many from their address.
    pub refused_per_address: AtomicU64,
    /// Refused: too many in all (and not `/healthz` in the reserve).
    pub refused_global: AtomicU64,
    /// Closed: nothing within the first-bytes timeout.
    pub timed_out_first_bytes: AtomicU64,
    /// Closed: a request head not whole within the header-read timeout.
    pub timed_out_header: AtomicU64,
    /// Closed: idle for the keep-alive timeout.
    pub timed_out_idle: AtomicU64,
}

impl Stats {
    fn refused(&self, why: admission::Refusal) {
        let counter = match why {
            admission::Refusal::PerAddress => &self.refused_per_address,
            admission::Refusal::Global => &self.refused_global,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_refused(why.label());
    }

    fn timed_out(&self, counter: &AtomicU64, reason: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_timed_out(reason);
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets hyper
/// close idle keep-alive connections, and returns once every connection has ended. (Streams
/// end by themselves when the server drains: see [`crate::shutdown`].)
pub async fn serve(
    mut listener: TcpListener,
    router: Router,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) {
    let options = Arc::new(options);
    let admission = admission::Admission::new(&options);
    warn_about_the_file_limit(&options);
    // Dropping `signal_tx` tells connections to finish; every connection holds a `close_rx`
    // and `close_tx.closed()` resolves once all have ended.
    let (signal_tx, signal_rx) = watch::channel(());
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let accepted = tokio::time::Instant::now();
        let (permit, reserve) = match admission.admit(remote.ip()) {
            admission::Admit::Serve(permit) => (permit, None),
            admission::Admit::HealthOnly(permit, close) => (permit, Some(close)),
            admission::Admit::Refuse(why) => {
                options.stats.refused(why);
                // What of the request has arrived is read (so that the close is a FIN the
                // client reads the answer before, not a reset), the answer is one write into
                // an empty socket buffer, and the socket is dropped: no task, no wait.
                let mut head = [0u8; 4096];
                let _ = tcp.try_read(&mut head);
                let _ = tcp.try_write(admission.refusal(why));
                continue;
            }
        };
        if let Some(after) = options.tcp_user_timeout {
            reap_unacknowledged(&tcp, after);
        }
        let conn = Connection {
            tcp,
            remote,
            router: router.clone(),
            options: options.clone(),
            signal: signal_rx.clone(),
            _close: close_rx.clone(),
            permit,
            health_only: reserve.as_ref().map(|_| admission.global_problem()),
            evicted: reserve,
            activity: deadline::Activity::new(accepted),
        };
        tokio::spawn(conn.run());
    }
    drop(listener);
    drop(signal_tx);
    drop(signal_rx);
    drop(close_rx);
    close_tx.closed().await;
}

/// One accepted connection.
struct Connection {
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    options: Arc<Options>,
    /// Closed when the server stops accepting.
    signal: watch::Receiver<()>,
    /// Held until the connection ends.
    _close: watch::Receiver<()>,
    /// The connection's place under the caps, held until it ends.
    permit: admission::Permit,
    /// Over the total cap: only `/healthz` is served; the body of the `429` for the rest.
    health_only: Option<Bytes>,
    /// Over the total cap: fires when the reserve needs the connection's place.
    evicted: Option<Arc<Notify>>,
    /// What its deadlines depend on.
    activity: Arc<deadline::Activity>,
}

impl Connection {
    /// Serves the connection. A stream continues in a task of its own (see
    /// [`stream::respond`]); hyper's connection state is boxed.
    async fn run(mut self) {
        // A connection in the reserve is never a stream.
        let paths: &[String] = match self.health_only {
            Some(_) => &[],
            None => &self.options.stream_paths,
        };
        let first = Box::pin(tokio::time::timeout(
            self.options
                .first_bytes_timeout
                .min(self.options.header_read_timeout),
            stream::take_stream_request(&mut self.tcp, paths),
        ));
        // A connection that has sent nothing yet does not hold up a shutdown (as hyper closes
        // one that is idle).
        let first = tokio::select! {
            first = first => first,
            _ = self.signal.changed() => return,
        };
        match first {
            Ok(Ok(Some(request))) => {
                self.options.stats.streamed.fetch_add(1, Ordering::Relaxed);
                let version = request.version();
                let Ok(response) = self.answer(request).await;
                let Connection {
                    tcp,
                    remote,
                    _close,
                    permit,
                    ..
                } = self;
                // The stream goes on in a task of its own, sized by what it needs.
                tokio::spawn(async move {
                    let guard = (_close, permit);
                    if let Err(err) = stream::respond(tcp, version, response, guard).await {
                        tracing::debug!(%err, %remote, "stream connection ended");
                    }
                });
            }
            Ok(Ok(None)) => {
                self.options.stats.hyper.fetch_add(1, Ordering::Relaxed);
                let Connection {
                    tcp,
                    remote,
                    router,
                    options,
                    mut signal,
                    _close,
                    permit,
                    health_only,
                    evicted,
                    activity,
                } = self;
                let conn = Hyper {
                    io: deadline::Watched {
                        tcp,
                        activity: activity.clone(),
                        _guard: (_close, permit),
                    },
                    remote,
                    router,
                    options,
                    activity,
                    health_only,
                    evicted,
                };
                Box::pin(conn.serve(&mut signal)).await;
            }
            Ok(Err(err)) => {
                tracing::debug!(%err, remote = %self.remote, "connection failed before a request");
            }
            Err(_) => {
                let stats = &self.options.stats;
                stats.timed_out(&stats.timed_out_first_bytes, "first_bytes");
                tracing::debug!(remote = %self.remote, "no request within the first-bytes timeout")
            }
        }
    }

    /// The router's response to `request` (boxed: see [`Connection::run`]).
    fn answer(
        &self,
        mut request: axum::http::Request<Body>,
    ) -> BoxFuture<'static, Result<axum::response::Response, std::convert::Infallible>> {
        request.extensions_mut().insert(ConnectInfo(self.remote));
        Box::pin(self.router.clone().oneshot(request))
    }
}

/// A connection for hyper.
struct Hyper {
    io: deadline::Watched<(watch::Receiver<()>, admission::Permit)>,
    remote: SocketAddr,
    router: Router,
    options: Arc<Options>,
    activity: Arc<deadline::Activity>,
    /// See [`Connection::health_only`].
    health_only: Option<Bytes>,
    /// See [`Connection::evicted`].
    evicted: Option<Arc<Notify>>,
}

impl Hyper {
    /// Serves the connection with hyper (HTTP/1 with upgrades, or HTTP/2), as `axum::serve`
    /// does, and closes it when one of its deadlines passes (see [`deadline`]).
    async fn serve(self, signal: &mut watch::Receiver<()>) {
        let Hyper {
            io,
            remote,
            router,
            options,
            activity,
            health_only,
            evicted,
        } = self;
        let in_flight = activity.clone();
        let service_options = options.clone();
        let reserve = health_only.is_some();
        let service = tower::service_fn(move |req: axum::http::Request<Incoming>| {
            let request = in_flight.begin();
            let router = router.clone();
            let refusal = health_only.clone();
            let stats = service_options.stats.clone();
            async move {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(remote));
                let response = match refusal {
                    Some(body) if req.uri().path() != "/healthz" => {
                        refuse_over_the_cap(&stats, body)
                    }
                    _ => router.oneshot(req).await?,
                };
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(deadline::Tracked {
                        body,
                        _in_flight: request,
                    })
                }))
            }
        });
        let service = TowerToHyperService::new(service);
        let mut builder = Builder::new(TokioExecutor::new());
        builder.http2().enable_connect_protocol();
        if reserve {
            // One HTTP/1 request, then the connection closes.
            builder = builder.http1_only();
            builder.http1().keep_alive(false);
        }
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut graceful = false;
        let header = match evicted {
            Some(_) => options
                .header_read_timeout
                .min(admission::RESERVE_HEAD_TIMEOUT),
            None => options.header_read_timeout,
        };
        let idle = options.keep_alive_timeout;
        loop {
            let due = activity.deadline(header, idle);
            let changed = activity.changed();
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::trace!(%err, %remote, "connection");
                    }
                    return;
                }
                _ = signal.changed(), if !graceful => {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = changed => {}
                () = closed_by(&evicted) => {
                    options.stats.refused(admission::Refusal::Global);
                    tracing::debug!(%remote, "closed to make room in the /healthz reserve");
                    return;
                }
                () = sleep_until(due.map(|(at, _)| at)) => {
                    // Closed only if the deadline still stands (nothing began meanwhile).
                    if let Some((at, why)) = activity.deadline(header, idle) {
                        if at <= tokio::time::Instant::now() {
                            let stats = &options.stats;
                            let counter = match why {
                                deadline::Expiry::Header => &stats.timed_out_header,
                                deadline::Expiry::Idle => &stats.timed_out_idle,
                            };
                            stats.timed_out(counter, why.label());
                            tracing::debug!(%remote, reason = why.label(), "connection timed out");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when `notify` fires; never when there is none.
async fn closed_by(notify: &Option<Arc<Notify>>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever when there is none.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The `429` a connection in the `/healthz` reserve gets for any other request.
fn refuse_over_the_cap(stats: &Stats, body: Bytes) -> axum::response::Response {
    stats.refused(admission::Refusal::Global);
    axum::response::Response::builder()
        .status(axum::http::StatusCode::TOO_MANY_REQUESTS)
        .header("content-type", "application/problem+json")
        .header("retry-after", "1")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// Logs a warning when the caps leave no room under the process's open-file limit.
fn warn_about_the_file_limit(options: &Options) {
    let Some(limit) = admission::open_file_limit() else {
        return;
    };
    let wanted = options.max_connections as u64 + options.healthz_reserve as u64;
    if options.max_connections == 0 || wanted + 256 > limit {
        tracing::warn!(
            max_connections = options.max_connections,
            open_file_limit = limit,
            "--max-connections leaves too little room under the open-file limit for the \
             store and /healthz; lower it (or raise `ulimit -n`)"
        );
    }
}

/// Sets `TCP_USER_TIMEOUT` (see [`Options::tcp_user_timeout`]).
fn reap_unacknowledged(tcp: &TcpStream, after: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(after)) {
        tracing::debug!(%err, "TCP_USER_TIMEOUT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, after);
}
