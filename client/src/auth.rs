//! Tokens for a server with auth on: the application's `getToken()` callback, called again
//! before the token expires (30 s or 20 % of its lifetime before `exp`, whichever is sooner),
//! so REST calls carry a fresh `Authorization: Bearer`, SSE opens with a fresh ticket and an
//! open WebSocket gets a fresh `auth` frame.
//!
//! Each client has its own source (given in its options), so two clients of one server may
//! use different tokens.
//!
//! ```ignore
//! // JS: new Client({ url, getToken: async () => (await fetch('/my-token')).text() })
//! let source = std::rc::Rc::new(tidewire_client::auth::TokenSource::new(get_token_function));
//! let mut options = tidewire_client::Options::new("http://127.0.0.1:8080");
//! options.token = Some(source.clone());
//! let token = source.token().await?;
//! ```

use std::cell::RefCell;

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::deadlines::token_refresh_at;
use crate::Error;

struct Cached {
    token: String,
    exp_ms: Option<f64>,
    got_ms: f64,
}

/// A client's token callback, with the last token it gave.
pub struct TokenSource {
    get: Function,
    cached: RefCell<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").finish_non_exhaustive()
    }
}

/// `exp` of a JWT in milliseconds, read from its payload (not verified: the server does that).
pub fn jwt_exp_ms(token: &str) -> Option<f64> {
    let payload = token.split('.').nth(1)?;
    let mut b64: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    let text = web_sys::window()?.atob(&b64).ok()?;
    let claims = js_sys::JSON::parse(&text).ok()?;
    let exp = Reflect::get(&claims, &"exp".into()).ok()?.as_f64()?;
    Some(exp * 1000.0)
}

impl TokenSource {
    /// A source calling `get` (a function answering a token or a promise of one).
    pub fn new(get: Function) -> TokenSource {
        TokenSource {
            get,
            cached: RefCell::new(None),
        }
    }

    /// When the current token should be replaced (ms since the epoch); `None` when there is
    /// none yet or its expiry is unknown.
    pub fn refresh_at(&self) -> Option<f64> {
        self.cached
            .borrow()
            .as_ref()
            .and_then(|c| self.refresh_at_of(c))
    }

    /// A token that is not due for refresh, calling `getToken()` when needed.
    pub async fn token(&self) -> Result<String, Error> {
        let now = js_sys::Date::now();
        if let Some(c) = self.cached.borrow().as_ref() {
            if self.refresh_at_of(c).is_none_or(|t| now < t) {
                return Ok(c.token.clone());
            }
        }
        self.fetch().await
    }

    fn refresh_at_of(&self, c: &Cached) -> Option<f64> {
        Some(token_refresh_at(c.exp_ms?, c.got_ms))
    }

    /// Calls `getToken()` now.
    pub async fn fetch(&self) -> Result<String, Error> {
        let bad = |why: String| Error::BadOption {
            name: "getToken",
            reason: why,
        };
        let mut v = self
            .get
            .call0(&JsValue::NULL)
            .map_err(|e| bad(format!("getToken() threw: {e:?}")))?;
        if let Some(p) = v.dyn_ref::<Promise>() {
            v = JsFuture::from(p.clone())
                .await
                .map_err(|e| bad(format!("getToken() rejected: {e:?}")))?;
        }
        let token = v
            .as_string()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("getToken() must answer a non-empty string".into()))?;
        *self.cached.borrow_mut() = Some(Cached {
            exp_ms: jwt_exp_ms(&token),
            token: token.clone(),
            got_ms: js_sys::Date::now(),
        });
        Ok(token)
    }
}
