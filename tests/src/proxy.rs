//! A TCP proxy for failure drills: forwards bytes between a client and the server until it is
//! told to cut, then freezes every open connection without closing it (a half-open network:
//! no FIN, no RST, nothing flows), and accepts new connections normally once restored.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tidewire_tests::proxy::Proxy;
//! let proxy = Proxy::start("127.0.0.1:8080".parse().unwrap()).await?;
//! println!("connect to {}", proxy.addr());
//! proxy.cut();     // open connections go silent, new ones hang after the handshake
//! proxy.restore(); // new connections flow again; the cut ones stay frozen
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Debug, Default)]
struct State {
    /// Bumped on every cut: a connection from an older generation never flows again.
    generation: AtomicU64,
    cut: AtomicBool,
}

/// A running proxy; stops (dropping every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let st = Arc::clone(&st);
                conns.spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let generation = st.generation.load(Ordering::SeqCst);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = pump(dr, uw, Arc::clone(&st), generation);
                    let b = pump(ur, dw, st, generation);
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Ok(Proxy {
            addr,
            state,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freezes every open connection (and new ones until [`Proxy::restore`]) without closing.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Lets new connections flow again; connections frozen by [`Proxy::cut`] stay frozen.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while the connection's generation is current and the proxy is not
/// cut; then holds both halves open forever (until the proxy is dropped).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    st: Arc<State>,
    generation: u64,
) {
    let frozen = |st: &State| {
        st.cut.load(Ordering::SeqCst) || st.generation.load(Ordering::SeqCst) != generation
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen(&st) {
            break;
        }
        let n =
            match tokio::time::timeout(std::time::Duration::from_millis(50), from.read(&mut buf))
                .await
            {
                Err(_) => continue,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(Ok(n)) => n,
            };
        if frozen(&st) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Half-open: keep both sockets, read nothing, write nothing.
    std::future::pending::<()>().await;
    drop((from, to));
}
