//! Decoding a raw HTTP/1.1 response read from a plain socket (the slow-consumer tests read
//! SSE through a `TcpStream` with a tiny receive buffer, not through an HTTP client).
//!
//! ```
//! use tidewire_tests::split_response;
//! let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
//! let (head, body, complete) = split_response(raw).unwrap();
//! assert!(head.starts_with("http/1.1 200"));
//! assert_eq!(body, b"hello");
//! assert!(complete);
//! ```

/// Removes HTTP/1.1 chunked framing; answers the body so far and whether the terminating
/// chunk was seen.
pub fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        let data = &body[eol + 2..];
        if data.len() < size {
            out.extend_from_slice(data);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        body = &data[(size + 2).min(data.len())..];
    }
}

/// Splits a raw HTTP/1.1 response into its lower-cased head and its decoded body, and says
/// whether the body is complete (the terminating chunk was seen). `None` until the head is in.
pub fn split_response(raw: &[u8]) -> Option<(String, Vec<u8>, bool)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let rest = &raw[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        let (body, complete) = dechunk(rest);
        Some((head, body, complete))
    } else {
        Some((head, rest.to_vec(), false))
    }
}
