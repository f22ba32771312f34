//! A minimal reader of an SSE byte stream into events (`id:` and `data:` fields), tolerant of
//! HTTP/1.1 chunk-size lines between events: an event ends at an empty line, and lines that are
//! not `id:`/`data:` fields (`retry:`, `: hb`, chunk sizes) are ignored.
//!
//! ```text
//! let mut r = SseReader::default();
//! for ev in r.feed(b"id: a=1\ndata: {\"seq\":1}\n\n") { /* ev.id, ev.data */ }
//! ```

/// One event of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field, when present.
    pub id: Option<String>,
    /// The `data:` field, when present.
    pub data: Option<String>,
}

/// Incremental reader: feed it bytes as they arrive.
#[derive(Default)]
pub struct SseReader {
    partial: Vec<u8>,
    current: SseEvent,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.strip_prefix(name)
        .and_then(|r| r.strip_prefix(':'))
        .map(|v| v.strip_prefix(' ').unwrap_or(v))
}

impl SseReader {
    /// The events completed by `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.partial.extend_from_slice(bytes);
        let mut out = Vec::new();
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return out;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        // Without the final newline, so that the split yields no empty piece after it.
        for raw in complete[..end].split(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if self.current != SseEvent::default() {
                    out.push(std::mem::take(&mut self.current));
                }
            } else if let Some(v) = field(line, "id") {
                self.current.id = Some(v.to_string());
            } else if let Some(v) = field(line, "data") {
                self.current.data = Some(v.to_string());
            }
        }
        out
    }
}

/// The number after `"name":` in a JSON text, if any (first occurrence).
pub fn json_number(text: &str, name: &str) -> Option<u64> {
    let mark = format!("\"{name}\":");
    let at = text.find(&mark)? + mark.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_chunk_lines_come_out_whole() {
        let mut r = SseReader::default();
        let stream = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n1c\r\nretry: 1000\n\nid: storm-1=0\n\n\r\n30\r\nid: storm-1=1\ndata: {\"seq\":1,\"type\":\"x\"}\n\n\r\n: hb\n\ndata: {\"type\":\"reconnect\",\"data\":{\"retry_ms\":1234}}\n\n";
        let mut events = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            events.extend(r.feed(piece));
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("storm-1=0".into()),
                    data: None
                },
                SseEvent {
                    id: Some("storm-1=1".into()),
                    data: Some(r#"{"seq":1,"type":"x"}"#.into())
                },
                SseEvent {
                    id: None,
                    data: Some(r#"{"type":"reconnect","data":{"retry_ms":1234}}"#.into())
                },
            ]
        );
        assert!(r.feed(b"id: half").is_empty(), "no newline yet");
        assert_eq!(r.feed(b"\n\n")[0].id.as_deref(), Some("half"));
    }

    #[test]
    fn numbers_are_read_from_json_text() {
        assert_eq!(json_number(r#"{"v":1,"seq":42,"id":"x"}"#, "seq"), Some(42));
        assert_eq!(json_number(r#"{"retry_ms": 250}"#, "retry_ms"), Some(250));
        assert_eq!(json_number(r#"{"seq":"x"}"#, "seq"), None);
        assert_eq!(json_number("{}", "seq"), None);
    }
}
