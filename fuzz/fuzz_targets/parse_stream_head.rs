//! Feeds arbitrary bytes to the HTTP/1.1 request head parser of the server's streaming
//! responder (`tidewire_server::serve::stream::parse_stream_head`, what `take_stream_request`
//! decides with on every fresh connection). It must never panic; a head it takes must be a
//! `GET` of one of the stream paths, no longer than the input, ending in a blank line, and
//! carry nothing that asks for more than a response (a body, an upgrade, `Expect`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_server::serve::stream::parse_stream_head;

fuzz_target!(|data: &[u8]| {
    let paths = ["/v1/sse".to_string(), "/events".to_string()];
    let Some((len, request)) = parse_stream_head(data, &paths) else {
        return;
    };
    assert!(len <= data.len());
    assert!(data[..len].ends_with(b"\n"), "a head ends with a blank line");
    assert_eq!(request.method(), "GET");
    assert!(paths.iter().any(|p| p == request.uri().path()));
    for name in ["transfer-encoding", "upgrade", "expect"] {
        assert!(!request.headers().contains_key(name), "{name}");
    }
    if let Some(n) = request.headers().get("content-length") {
        assert_eq!(n, "0");
    }
    // Whatever follows the head is not part of it: the same head with other bytes after it
    // parses to the same length.
    let mut again = data[..len].to_vec();
    again.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let (len2, _) = parse_stream_head(&again, &paths).expect("the same head parses again");
    assert_eq!(len2, len);
});
