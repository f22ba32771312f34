//! The streaming responder: HTTP/1.1 for one `GET` whose response streams until it ends.
//!
//! [`take_stream_request`] looks at what has arrived on a fresh connection without consuming
//! it; when that is a whole `GET` head for a stream path, it consumes the head and returns the
//! request. [`respond`] writes the status line and headers, then the body frames as they come
//! (`Transfer-Encoding: chunked` to HTTP/1.1, close-delimited to HTTP/1.0), everything ready
//! at once in one write, and ends with the body, on a write error, or when the client closes.
//! The connection closes after the response. Between writes it keeps no buffer: each write
//! gathers what is ready into one sized by it.
//!
//! ```text
//! → GET /v1/sse?rooms=a HTTP/1.1
//! ← HTTP/1.1 200 OK
//!   content-type: text/event-stream
//!   date: Sun, 22 Nov 2026 23:40:00 GMT
//!   connection: close
//!   transfer-encoding: chunked
//!
//!   18
//!   retry: 1000
//!   id: a=4
//!
//!   …
//! ```

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::Poll;

use axum::body::{Body, HttpBody};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest request head looked at; a longer one is left to hyper.
const MAX_HEAD: usize = 8 * 1024;
/// What is looked at first.
const SMALL_HEAD: usize = 1024;
/// The most request headers parsed; more are left to hyper.
const MAX_HEADERS: usize = 64;
/// The most bytes gathered into one write.
const MAX_WRITE: usize = 64 * 1024;
/// Bytes a client may send after its request (they are read and ignored) before it is cut.
const MAX_IGNORED: usize = 16 * 1024;

/// The request on `tcp` if it is a `GET` of one of `paths` whose head has fully arrived
/// (consumed from the socket); `None` (nothing consumed) otherwise.
pub async fn take_stream_request(
    tcp: &mut TcpStream,
    paths: &[String],
) -> io::Result<Option<Request<Body>>> {
    if paths.is_empty() {
        return Ok(None);
    }
    // Most heads fit the small buffer; a larger one is looked at again whole. (Thousands of
    // connections arrive at once after a restart: what each holds meanwhile adds up.)
    let mut buf = vec![0u8; SMALL_HEAD];
    let mut n = tcp.peek(&mut buf).await?;
    if n == SMALL_HEAD && !head_complete(&buf) {
        buf.resize(MAX_HEAD, 0);
        n = tcp.peek(&mut buf).await?;
    }
    let Some((len, request)) = parse(&buf[..n], paths) else {
        return Ok(None);
    };
    tcp.read_exact(&mut buf[..len]).await?;
    Ok(Some(request))
}

/// What [`take_stream_request`] makes of the bytes it looked at: the head's length and the
/// request, when `bytes` start with a whole `GET` head for one of `paths` that needs nothing
/// but a response (no body, no upgrade, no `Expect`); `None` when the connection is hyper's.
/// Public for the fuzz target `fuzz/fuzz_targets/parse_stream_head.rs`; the server itself only
/// calls it through [`take_stream_request`].
///
/// ```
/// use tidewire_server::serve::stream::parse_stream_head;
/// let paths = ["/v1/sse".to_string()];
/// let head = b"GET /v1/sse?rooms=a HTTP/1.1\r\nHost: x\r\n\r\nrest";
/// let (len, request) = parse_stream_head(head, &paths).unwrap();
/// assert_eq!((len, request.uri().query()), (head.len() - 4, Some("rooms=a")));
/// assert!(parse_stream_head(b"POST /v1/sse HTTP/1.1\r\n\r\n", &paths).is_none());
/// ```
pub fn parse_stream_head(bytes: &[u8], paths: &[String]) -> Option<(usize, Request<Body>)> {
    parse(bytes, paths)
}

/// Whether `bytes` hold the end of a request head.
fn head_complete(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"\r\n\r\n").is_some()
}

/// The head's length and the request, if `bytes` start with a whole `GET` head for one of
/// `paths` that needs nothing but a response: no body, no upgrade, no `Expect`.
fn parse(bytes: &[u8], paths: &[String]) -> Option<(usize, Request<Body>)> {
    if !bytes.starts_with(b"GET /") {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = head.parse(bytes).ok()? else {
        return None;
    };
    let target = head.path?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !paths.iter().any(|p| p == path) {
        return None;
    }
    let version = match head.version? {
        1 => Version::HTTP_11,
        0 => Version::HTTP_10,
        _ => return None,
    };
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version);
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let has_body = name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && h.value != b"0");
        if has_body || name == UPGRADE || name == EXPECT {
            return None;
        }
        request = request.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((len, request.body(Body::empty()).ok()?))
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(u64),
    /// HTTP/1.0: the body ends when the connection closes.
    Close,
    /// No body (`204`, `304`).
    None,
}

/// What the body did while the connection waited.
enum Step {
    /// Bytes to write.
    Write,
    /// The body ended; the last bytes are in the buffer.
    End,
    /// The body failed: the response is cut short.
    Failed,
    /// The client closed (or sent more than a streaming client would).
    Gone,
}

/// Writes `response` to a request of `version`, streaming its body, then closes the
/// connection. `guard` is held until then.
///
/// What an open stream keeps is the returned future: the head is written into the first
/// buffer here, and only the socket and the body go on.
pub fn respond<G: Send + 'static>(
    mut tcp: TcpStream,
    version: Version,
    response: Response<Body>,
    guard: G,
) -> impl std::future::Future<Output = io::Result<()>> + Send + 'static {
    let (parts, body) = response.into_parts();
    let framing = if matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        Framing::None
    } else if version == Version::HTTP_10 {
        Framing::Close
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else {
        Framing::Chunked
    };
    let mut head = Vec::with_capacity(512);
    push_head(&mut head, &parts, framing);
    async move {
        let _guard = guard;
        write_body(&mut tcp, head, body, framing).await
    }
}

/// Writes `out` (the head), then the body.
async fn write_body(
    tcp: &mut TcpStream,
    mut out: Vec<u8>,
    mut body: Body,
    framing: Framing,
) -> io::Result<()> {
    if framing == Framing::None {
        tcp.write_all(&out).await?;
        return tcp.shutdown().await;
    }
    let mut ignored = 0usize;
    loop {
        let step = std::future::poll_fn(|cx| {
            if client_gone(tcp, cx, &mut ignored) {
                return Poll::Ready(Step::Gone);
            }
            loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            push_data(&mut out, &data, framing);
                        }
                        if out.len() >= MAX_WRITE {
                            return Poll::Ready(Step::Write);
                        }
                    }
                    Poll::Ready(Some(Err(err))) => {
                        tracing::debug!(%err, "response body failed");
                        return Poll::Ready(Step::Failed);
                    }
                    Poll::Ready(None) => {
                        if framing == Framing::Chunked {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        return Poll::Ready(Step::End);
                    }
                    Poll::Pending if out.is_empty() => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Step::Write),
                }
            }
        })
        .await;
        match step {
            Step::Gone => return Ok(()),
            Step::Write => {
                tcp.write_all(&out).await?;
                // An idle stream holds no buffer; the next write allocates one of its size.
                out = Vec::new();
            }
            Step::End | Step::Failed => {
                // A failed chunked body ends without its last chunk: the client sees the cut.
                tcp.write_all(&out).await?;
                return tcp.shutdown().await;
            }
        }
    }
}

/// Whether the client has closed its side (or sent more than [`MAX_IGNORED`] bytes after its
/// request). Whatever it sends is read and ignored; the read side is watched through `cx`.
fn client_gone(tcp: &TcpStream, cx: &mut std::task::Context<'_>, ignored: &mut usize) -> bool {
    loop {
        match tcp.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {}
        }
        let mut scratch = [0u8; 256];
        match tcp.try_read(&mut scratch) {
            Ok(0) => return true,
            Ok(n) => {
                *ignored += n;
                if *ignored > MAX_IGNORED {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
    }
}

/// The status line and headers. Hop-by-hop headers of the response are replaced by this
/// connection's own: it closes after the response.
fn push_head(out: &mut Vec<u8>, parts: &axum::http::response::Parts, framing: Framing) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == CONNECTION
            || name == TRANSFER_ENCODING
            || name == CONTENT_LENGTH
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n");
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Close | Framing::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// One body frame's bytes, framed.
fn push_data(out: &mut Vec<u8>, data: &[u8], framing: Framing) {
    if data.is_empty() {
        return;
    }
    if framing == Framing::Chunked {
        // The size line is written in place: no string per chunk on the delivery path.
        out.reserve(data.len() + 20);
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Vec<String> {
        vec!["/v1/sse".into()]
    }

    #[test]
    fn a_whole_get_of_a_stream_path_is_taken() {
        let head = b"GET /v1/sse?rooms=a,b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: a=4\r\n\r\n";
        let (len, req) = parse(head, &paths()).expect("taken");
        assert_eq!(len, head.len());
        assert_eq!(req.uri(), "/v1/sse?rooms=a,b");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["last-event-id"], "a=4");
        let (_, req) = parse(b"GET /v1/sse HTTP/1.0\r\n\r\n", &paths()).expect("taken");
        assert_eq!(req.version(), Version::HTTP_10);
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for head in [
            &b"GET /v1/sse?rooms=a HTTP/1.1\r\nHost: x\r\n"[..], // not whole yet
            b"GET /v1/ssex HTTP/1.1\r\n\r\n",
            b"GET /v1/sse/x HTTP/1.1\r\n\r\n",
            b"GET /v1/ws HTTP/1.1\r\n\r\n",
            b"POST /v1/sse HTTP/1.1\r\n\r\n",
            b"HEAD /v1/sse HTTP/1.1\r\n\r\n",
            b"GET http://x/v1/sse HTTP/1.1\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /v1/sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /v1/sse HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                parse(head, &paths()).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        let head = format!("GET /v1/sse HTTP/1.1\r\n{many}\r\n");
        assert!(
            parse(head.as_bytes(), &paths()).is_none(),
            "too many headers"
        );
    }

    #[test]
    fn chunks_are_framed_and_empty_frames_skipped() {
        let mut out = Vec::new();
        push_data(&mut out, b"retry: 1000\n\n", Framing::Chunked);
        push_data(&mut out, b"", Framing::Chunked);
        assert_eq!(out, b"d\r\nretry: 1000\n\n\r\n");
        let mut out = Vec::new();
        push_data(&mut out, b"abc", Framing::Close);
        assert_eq!(out, b"abc");
    }

    #[test]
    fn the_head_replaces_hop_by_hop_headers() {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .header("connection", "keep-alive")
            .header("content-length", "3")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        push_head(&mut out, &parts, Framing::Chunked);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(text.contains("\r\ndate: "));
        assert!(text.ends_with("connection: close\r\ntransfer-encoding: chunked\r\n\r\n"));
        assert!(!text.contains("keep-alive") && !text.contains("content-length"));
    }
}
