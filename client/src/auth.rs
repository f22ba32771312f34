//! Tokens for a server with auth on: the application's `getToken()` callback, called again
//! before the token expires (30 s or 20 % of its lifetime before `exp`, whichever is sooner),
//! so REST calls carry a fresh `Authorization: Bearer`, SSE opens with a fresh ticket and an
//! open WebSocket gets a fresh `auth` frame.
//!
//! ```ignore
//! // JS: new Client({ url, getToken: async () => (await fetch('/my-token')).text() })
//! tidewire_client::auth::register("http://127.0.0.1:8080", get_token_function);
//! let token = tidewire_client::auth::for_url("http://127.0.0.1:8080/v1/poll").unwrap().token().await?;
//! ```

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::Error;

/// Refresh at most this long before expiry.
const MARGIN_MS: f64 = 30_000.0;

struct Cached {
    token: String,
    exp_ms: Option<f64>,
    got_ms: f64,
}

/// The token callback of one server URL, with the last token it gave.
pub struct TokenSource {
    get: Function,
    cached: RefCell<Option<Cached>>,
}

thread_local! {
    static SOURCES: RefCell<Vec<(String, Rc<TokenSource>)>> = const { RefCell::new(Vec::new()) };
}

/// Uses `get` (a function answering a token or a promise of one) for every request to `base`.
pub fn register(base: &str, get: Function) {
    let base = base.trim_end_matches('/').to_owned();
    let source = Rc::new(TokenSource {
        get,
        cached: RefCell::new(None),
    });
    SOURCES.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|(b, _)| *b != base);
        s.push((base, source));
    });
}

/// The token source for a request to `url`, if its server has one.
pub fn for_url(url: &str) -> Option<Rc<TokenSource>> {
    SOURCES.with(|s| {
        s.borrow()
            .iter()
            .find(|(b, _)| {
                url.strip_prefix(b.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(_, src)| src.clone())
    })
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
        let exp = c.exp_ms?;
        Some(exp - MARGIN_MS.min((exp - c.got_ms).max(0.0) * 0.2))
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
