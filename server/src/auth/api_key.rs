//! Backend API keys (`--api-key`, `TIDEWIRE_API_KEY`, comma-separated so an old and a new key
//! can both work while a backend rotates): `Authorization: Bearer <key>` may read and write
//! every room. They are for servers, never for browsers: unlike a JWT a key names no rooms and
//! never expires. Keys are kept as SHA-256 digests and compared in constant time.
//!
//! ```
//! use tidewire_server::auth::api_key::ApiKeys;
//! let keys = ApiKeys::new(&["old-backend-key-0001".into(), "new-backend-key-0002".into()]).unwrap();
//! assert_eq!(keys.find("new-backend-key-0002"), Some(1));
//! assert_eq!(keys.find("guess"), None);
//! assert!(ApiKeys::new(&["short".into()]).is_err(), "too easy to guess");
//! ```

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Error, Result};

/// Shortest API key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// The configured keys (possibly none).
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// The keys of `--api-key` (empty entries, as a trailing comma makes, are skipped).
    /// A key shorter than [`MIN_KEY_LEN`] or with spaces is a configuration error.
    pub fn new(keys: &[String]) -> Result<ApiKeys> {
        let mut digests = Vec::new();
        for key in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            if key.len() < MIN_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::Config(format!(
                    "an --api-key must be at least {MIN_KEY_LEN} visible ASCII characters"
                )));
            }
            digests.push(digest(key));
        }
        Ok(ApiKeys { digests })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The index of the key `token` is, if any. Every key is compared, each in constant
    /// time, so the answer's timing says nothing about how close a guess was.
    pub fn find(&self, token: &str) -> Option<usize> {
        if self.digests.is_empty() {
            return None;
        }
        let seen = digest(token);
        let mut found = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&seen)) {
                found = Some(i);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{authorize, Access, ClientIdentity};

    fn identify(keys: &ApiKeys, token: Option<&str>) -> Option<ClientIdentity> {
        keys.find(token?).map(ClientIdentity::backend)
    }

    #[test]
    fn a_key_may_write_every_room_and_other_tokens_are_nobody() {
        let keys = ApiKeys::new(&[" backend-key-000000001 ".into(), "".into()]).unwrap();
        assert!(!keys.is_empty());
        let who = identify(&keys, Some("backend-key-000000001")).unwrap();
        assert_eq!(who.key, "api-key:0");
        assert!(authorize(&who, "any-room", Access::Write).is_ok());
        assert!(identify(&keys, Some("backend-key-000000002")).is_none());
        assert!(identify(&keys, None).is_none());
        assert!(identify(&ApiKeys::default(), Some("x")).is_none());
        assert!(ApiKeys::new(&["has a space in it!!".into()]).is_err());
        assert_eq!(format!("{keys:?}"), "ApiKeys(1 keys)", "never printed");
    }
}
