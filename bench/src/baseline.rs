//! The ceiling: a bare axum server that streams one `tokio::sync::broadcast` channel over SSE
//! and WebSocket, with no persistence, no sequence numbers and no per-connection queue beyond
//! the broadcast ring.
//!
//! ```text
//! tidewire-bench baseline --listen 127.0.0.1:9000
//! curl -N http://127.0.0.1:9000/sse &
//! curl -d '{"t":1}' http://127.0.0.1:9000/publish
//! ```
//!
//! It uses the levers measured in PERF-FACTS: the payload is serialised once and shared
//! (`Arc<str>`), the WebSocket read buffer is 4 KiB, and WebSocket writes are batched (drain
//! what is queued with `try_recv`, `feed` each, one `flush`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::BenchError;

type Tx = broadcast::Sender<Arc<str>>;

/// Serves the baseline on `listen` until the process ends.
pub async fn serve(listen: SocketAddr) -> Result<(), BenchError> {
    let (tx, _) = broadcast::channel::<Arc<str>>(4096);
    let app = Router::new()
        .route("/publish", post(publish))
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("baseline listening on http://{listen}");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(State(tx): State<Tx>, body: String) -> &'static str {
    // No subscribers is not an error for a broadcast.
    let _ = tx.send(Arc::from(body));
    "ok"
}

async fn sse(State(tx): State<Tx>) -> impl IntoResponse {
    let stream = BroadcastStream::new(tx.subscribe()).filter_map(|m| async move {
        // A lagging receiver skips what it missed, as a ceiling should.
        m.ok()
            .map(|s| Ok::<_, Infallible>(Event::default().data(&*s)))
    });
    Sse::new(stream)
}

async fn ws(State(tx): State<Tx>, up: WebSocketUpgrade) -> impl IntoResponse {
    let rx = tx.subscribe();
    up.read_buffer_size(4096)
        .on_upgrade(move |socket| ws_loop(socket, rx))
}

async fn ws_loop(socket: WebSocket, mut rx: broadcast::Receiver<Arc<str>>) {
    let (mut sink, mut stream) = socket.split();
    // Reads only to notice the close.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    loop {
        let first = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if sink.feed(Message::Text((&*first).into())).await.is_err() {
            break;
        }
        let mut ok = true;
        loop {
            match rx.try_recv() {
                Ok(m) => {
                    if sink.feed(Message::Text((&*m).into())).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        if !ok || sink.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
}
