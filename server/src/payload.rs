//! The bytes of an envelope, serialised once and shared by every subscriber.
//!
//! A [`Payload`] is UTF-8 JSON by construction (it is only made from strings), cheap to clone
//! (a reference count), and free of any transport's types: the bus carries it, and the
//! outbound queue turns it into what the transports write without copying it.
//!
//! ```
//! use tidewire_server::payload::Payload;
//! let p = Payload::from(String::from("{\"v\":1}"));
//! let q = p.clone();
//! assert_eq!(q.as_bytes(), b"{\"v\":1}");
//! assert_eq!(p.len(), 7);
//! ```

use bytes::Bytes;

/// One envelope's JSON, shared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(Bytes);

impl Payload {
    /// The JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON bytes, shared.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON as text.
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload(Bytes::from(s))
    }
}

impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Self {
        Payload(Bytes::from_static(s.as_bytes()))
    }
}
