//! `serve::serve` over real sockets: which connections the streaming responder takes, what it
//! writes, and that it notices a client going away; everything else goes to hyper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::get;
use axum::Router;
use tidewire_server::serve::{self, Options, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};

/// The body of one `/v1/sse` response: frames come from the test, and `dropped` is set when
/// the server lets go of it.
struct Feed {
    frames: Mutex<Option<mpsc::UnboundedReceiver<&'static str>>>,
    dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Harness {
    addr: std::net::SocketAddr,
    stats: Arc<Stats>,
    frames: mpsc::UnboundedSender<&'static str>,
    dropped: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

async fn start() -> Harness {
    let (tx, rx) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let feed = Arc::new(Feed {
        frames: Mutex::new(Some(rx)),
        dropped: dropped.clone(),
    });
    let app = Router::new()
        .route("/plain", get(|| async { "plain" }))
        .route(
            "/v1/sse",
            get(move |uri: axum::http::Uri| {
                let feed = feed.clone();
                async move {
                    if uri.query() == Some("fail") {
                        return axum::http::Response::builder()
                            .status(400)
                            .header("content-type", "application/problem+json")
                            .body(Body::from("{\"code\":\"bad_request\"}"))
                            .unwrap();
                    }
                    let rx = feed
                        .frames
                        .lock()
                        .await
                        .take()
                        .expect("one stream per test");
                    let flag = DropFlag(feed.dropped.clone());
                    let stream = futures::stream::unfold((rx, flag), |(mut rx, flag)| async move {
                        let frame = rx.recv().await?;
                        Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(frame)),
                            (rx, flag),
                        ))
                    });
                    axum::http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(stream))
                        .unwrap()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let options = Options {
        stats: stats.clone(),
        ..Options::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve::serve(listener, app, options, async move {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        stats,
        frames: tx,
        dropped,
        stop: Some(stop),
        served,
    }
}

/// A connection to `h` that has sent `head`.
async fn send_head(h: &Harness, head: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(head).await.unwrap();
    tcp
}

/// An open `/v1/sse` stream on a fresh connection that has received `first`.
async fn open_stream(h: &Harness, first: &'static str) -> (TcpStream, Vec<u8>) {
    let mut tcp = send_head(h, b"GET /v1/sse HTTP/1.1\r\n\r\n").await;
    h.frames.send(first).unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, first).await;
    (tcp, buf)
}

/// Reads until `buf` contains `needle` (or fails after 5 s).
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(buf).contains(needle) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(buf)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads to the end of the connection (within 5 s).
async fn read_to_end(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(buf))
        .await
        .expect("the server closes the connection")
        .unwrap();
}

async fn wait_for(flag: &AtomicBool) -> bool {
    for _ in 0..100 {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_fresh_stream_request_is_streamed_chunk_by_chunk_then_closed() {
    let h = start().await;
    let mut tcp = send_head(&h, b"GET /v1/sse?rooms=a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    h.frames.send("retry: 1000\n\n").unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, "retry: 1000\n\n\r\n").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("content-type: text/event-stream\r\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "connection: close\r\ntransfer-encoding: chunked\r\n\r\nd\r\nretry: 1000\n\n\r\n"
        ),
        "{text}"
    );
    // The next frame goes out while the response is still open.
    h.frames.send("data: 1\n\n").unwrap();
    read_until(&mut tcp, &mut buf, "9\r\ndata: 1\n\n\r\n").await;
    assert_eq!(h.stats.streamed.load(Ordering::SeqCst), 1);
    assert_eq!(h.stats.hyper.load(Ordering::SeqCst), 0);
    // The body ends: the last chunk, then the connection closes.
    drop(h.frames);
    read_to_end(&mut tcp, &mut buf).await;
    assert!(String::from_utf8_lossy(&buf).ends_with("\r\n0\r\n\r\n"));
}

#[tokio::test]
async fn a_client_that_goes_away_releases_its_stream_at_once() {
    let h = start().await;
    let (tcp, _) = open_stream(&h, ": hi\n\n").await;
    assert!(!h.dropped.load(Ordering::SeqCst));
    drop(tcp);
    // Nothing is written after the close: noticing it is up to the read side.
    assert!(wait_for(&h.dropped).await, "the stream was not dropped");
}

#[tokio::test]
async fn a_client_that_keeps_sending_after_its_request_is_cut() {
    let h = start().await;
    let (mut tcp, mut buf) = open_stream(&h, ": hi\n\n").await;
    // A few stray bytes are ignored …
    tcp.write_all(b"\r\n\r\n").await.unwrap();
    h.frames.send(": still\n\n").unwrap();
    read_until(&mut tcp, &mut buf, ": still").await;
    // … a flood is not.
    let junk = vec![b'x'; 64 * 1024];
    let _ = tcp.write_all(&junk).await;
    assert!(wait_for(&h.dropped).await, "the stream was not dropped");
}

#[tokio::test]
async fn http_1_0_gets_a_close_delimited_body() {
    let h = start().await;
    let mut tcp = send_head(&h, b"GET /v1/sse HTTP/1.0\r\n\r\n").await;
    h.frames.send("data: a\n\n").unwrap();
    h.frames.send("data: b\n\n").unwrap();
    drop(h.frames);
    let mut buf = Vec::new();
    read_to_end(&mut tcp, &mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.ends_with("\r\n\r\ndata: a\n\ndata: b\n\n"), "{text}");
}

#[tokio::test]
async fn an_error_answer_has_a_length_and_closes() {
    let h = start().await;
    let mut tcp = send_head(&h, b"GET /v1/sse?fail HTTP/1.1\r\n\r\n").await;
    let mut buf = Vec::new();
    read_to_end(&mut tcp, &mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("content-length: 22\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n{\"code\":\"bad_request\"}"),
        "{text}"
    );
    assert_eq!(h.stats.streamed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn keep_alive_and_split_heads_are_served_by_hyper() {
    let h = start().await;
    // A stream asked for on a connection that already served a request.
    let mut tcp = send_head(&h, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, "plain").await;
    tcp.write_all(b"GET /v1/sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    h.frames.send("data: via hyper\n\n").unwrap();
    read_until(&mut tcp, &mut buf, "data: via hyper").await;
    assert_eq!(h.stats.hyper.load(Ordering::SeqCst), 1);
    // A head that arrives in two pieces.
    let mut split = send_head(&h, b"GET /pla").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    split
        .write_all(b"in HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut split, &mut buf, "plain").await;
    assert_eq!(h.stats.hyper.load(Ordering::SeqCst), 2);
    assert_eq!(h.stats.streamed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn shutdown_waits_for_open_streams_and_closes_idle_connections() {
    let mut h = start().await;
    let (mut stream, mut buf) = open_stream(&h, ": open\n\n").await;
    let mut idle = send_head(&h, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut idle_buf = Vec::new();
    read_until(&mut idle, &mut idle_buf, "plain").await;

    h.stop.take().unwrap().send(()).unwrap();
    // The idle keep-alive connection is closed; the stream stays, and so does the server.
    read_to_end(&mut idle, &mut idle_buf).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!h.served.is_finished(), "returned while a stream was open");
    assert!(TcpStream::connect(h.addr).await.is_err(), "still accepting");
    // The stream ends (as a draining server's streams do): the server returns.
    drop(h.frames);
    read_to_end(&mut stream, &mut buf).await;
    tokio::time::timeout(Duration::from_secs(5), h.served)
        .await
        .expect("serve returns once every connection ended")
        .unwrap();
}

#[tokio::test]
async fn a_head_larger_than_the_first_look_is_still_streamed() {
    let h = start().await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let cookie = "c".repeat(3000);
    let head = format!("GET /v1/sse HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    h.frames.send(": big\n\n").unwrap();
    let mut buf = Vec::new();
    read_until(&mut tcp, &mut buf, ": big").await;
    assert_eq!(h.stats.streamed.load(Ordering::SeqCst), 1);
    assert_eq!(h.stats.hyper.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_connection_that_sent_nothing_does_not_hold_up_shutdown() {
    let mut h = start().await;
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.served)
        .await
        .expect("serve returns without waiting for the first-bytes timeout")
        .unwrap();
    let mut buf = Vec::new();
    read_to_end(&mut silent, &mut buf).await;
    assert!(buf.is_empty());
}
