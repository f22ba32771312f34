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

pub mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// How [`serve`] treats connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Paths whose `GET` on a fresh connection is answered by the streaming responder
    /// (default: `/v1/sse`).
    pub stream_paths: Vec<String>,
    /// How long a new connection may take to send its first bytes before it is closed.
    pub first_bytes_timeout: Duration,
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
            tcp_user_timeout: None,
            stats: Arc::default(),
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
}

impl Connection {
    /// Serves the connection. A stream continues in a task of its own (see
    /// [`stream::respond`]); hyper's connection state is boxed.
    async fn run(mut self) {
        let first = Box::pin(tokio::time::timeout(
            self.options.first_bytes_timeout,
            stream::take_stream_request(&mut self.tcp, &self.options.stream_paths),
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
                    ..
                } = self;
                // The stream goes on in a task of its own, sized by what it needs.
                tokio::spawn(async move {
                    if let Err(err) = stream::respond(tcp, version, response, _close).await {
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
                    mut signal,
                    ..
                } = self;
                Box::pin(serve_hyper(tcp, remote, router, &mut signal)).await;
            }
            Ok(Err(err)) => {
                tracing::debug!(%err, remote = %self.remote, "connection failed before a request");
            }
            Err(_) => {
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

/// Serves a connection with hyper (HTTP/1 with upgrades, or HTTP/2), as `axum::serve` does.
async fn serve_hyper(
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    signal: &mut watch::Receiver<()>,
) {
    let service = router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        req.map(Body::new)
    });
    let service = TowerToHyperService::new(service);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    let mut graceful = false;
    loop {
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
        }
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
