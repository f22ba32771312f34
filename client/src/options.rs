//! The client's options, defined once: the [`options!`] table below declares each option
//! with its documentation, Rust type and default, and the type in which JavaScript passes it.
//! From it come the Rust [`Options`] (with [`Options::new`]), the JavaScript options object
//! ([`JsOptions`], camelCase names, every field optional but `url`) and, through `ts-rs`, its
//! TypeScript declaration `ClientOptions` in `client/types/client.d.ts`.
//!
//! ```
//! use tidewire_client::Options;
//! let mut options = Options::new("http://127.0.0.1:8080/");
//! assert_eq!(options.url, "http://127.0.0.1:8080");
//! assert_eq!(options.open_timeout_ms, 5_000);
//! options.transport = Some(tidewire_client::state::TransportKind::Ws);
//! ```

use serde::Deserialize;

use crate::backoff::{BackoffConfig, Random};
use crate::state::TransportKind;
use crate::Error;

/// Declares the options: `$field: RustType = default; js JsType => setter;` per option, where
/// `setter(js_value, &mut rust_field)` applies a value JavaScript gave (see the setters below).
/// `#[ts(…)]` and `#[serde(…)]` apply to the JavaScript form only; `#[cfg(…)]` to the Rust
/// field only.
macro_rules! options {
    (
        $(#[doc = $url_doc:literal])*
        url: String;
        $(
            $(#[doc = $doc:literal])*
            $(#[ts($($ts:tt)*)])?
            $(#[serde($($serde:tt)*)])?
            $(#[cfg($cfg:meta)])?
            $field:ident: $ty:ty = $default:expr; js $js:ty => $set:path;
        )*
    ) => {
        /// Client options. [`Options::new`] gives the defaults; JavaScript passes the same
        /// options to `new Client(options)` with camelCase names.
        pub struct Options {
            $(#[doc = $url_doc])*
            pub url: String,
            $(
                $(#[doc = $doc])*
                $(#[cfg($cfg)])?
                pub $field: $ty,
            )*
        }

        impl Options {
            /// Defaults for a server at `url` (a trailing `/` is dropped).
            pub fn new(url: impl Into<String>) -> Options {
                Options {
                    url: url.into().trim_end_matches('/').to_owned(),
                    $(
                        $(#[cfg($cfg)])?
                        $field: $default,
                    )*
                }
            }
        }

        // The function-valued options (`random`, `getToken`) are read from the JavaScript
        // object directly (see `js.rs`); here they only have their declared type.
        /// Options of `new Client(options)`. Times are in milliseconds unless named otherwise.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        #[cfg_attr(
            feature = "ts",
            derive(ts_rs::TS),
            ts(rename = "ClientOptions", optional_fields)
        )]
        pub(crate) struct JsOptions {
            $(#[doc = $url_doc])*
            #[cfg_attr(feature = "ts", ts(optional = false))]
            pub(crate) url: String,
            $(
                $(#[doc = $doc])*
                $(#[cfg_attr(feature = "ts", ts($($ts)*))])?
                $(#[serde($($serde)*)])?
                pub(crate) $field: Option<$js>,
            )*
        }

        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        impl JsOptions {
            /// The Rust options: the defaults, with what JavaScript gave applied.
            pub(crate) fn into_options(self) -> Result<Options, Error> {
                let mut o = Options::new(self.url);
                $(
                    $(#[cfg($cfg)])?
                    $set(self.$field, &mut o.$field)?;
                )*
                Ok(o)
            }
        }
    };
}

options! {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    url: String;

    /// Force one transport; `auto` (`None` in Rust, the default) uses SSE, a WebSocket for
    /// presence and broadcast, and long-poll then polling as fallbacks.
    #[ts(type = "TransportName", optional)]
    transport: Option<TransportKind> = None; js String => set_transport;

    /// Reconnection backoff: a random delay in `[0, min(capMs, baseMs · 2^attempt))`; the
    /// attempt counter resets after a connection stayed up `stableMs`
    /// (defaults 500, 30000, 10000).
    #[ts(inline, optional)]
    backoff: BackoffConfig = BackoffConfig::default(); js BackoffOptions => set_backoff;

    /// SSE and WebSocket must open within this many milliseconds, or they count as stalled
    /// (default 5000).
    open_timeout_ms: u64 = 5_000; js u64 => set;

    /// An open SSE stream that brings neither an event nor a heartbeat for twice the server's
    /// announced heartbeat interval plus this many milliseconds counts as stalled; so does an
    /// open WebSocket that brings no frame for twice the ping interval plus this (default 5000).
    heartbeat_slack_ms: u64 = 5_000; js u64 => set;

    /// While a WebSocket is open, the client sends a `ping` frame this often, in milliseconds
    /// (the server answers `pong`); the WebSocket protocol announces no heartbeat interval, so
    /// this is the interval its stall bound is computed from (default 15000).
    ws_ping_ms: u64 = 15_000; js u64 => set;

    /// How long a fallback transport runs before the client tries the preferred one again, in
    /// milliseconds (default 30000).
    climb_ms: u64 = 30_000; js u64 => set;

    /// How long an out-of-order event waits for the gap before the snapshot is re-fetched, in
    /// milliseconds (default 1000).
    reorder_ms: u64 = 1_000; js u64 => set;

    /// Snapshot polling interval of the last-resort transport, in milliseconds (default 3000).
    poll_interval_ms: u64 = 3_000; js u64 => set;

    /// Long-poll wait, in seconds (default 25, at most 60).
    long_poll_wait_secs: u32 = 25; js u32 => set;

    /// How many times a write is retried, with the same idempotency key, on a network
    /// failure (default 8).
    write_retries: u32 = 8; js u32 => set;

    /// The stable client id for presence (random by default).
    #[ts(type = "string", optional)]
    client_id: Option<String> = None; js String => set_some;

    /// The random source in `[0, 1)` for the jitter (`Math.random` by default).
    #[ts(type = "() => number", optional)]
    random: Option<Box<dyn Random>> = None; js FnValue => read_separately;

    /// With auth on: where this client's tokens come from (JavaScript: `getToken`, a function
    /// answering a JWT or a promise of one; called again before the token expires). Each
    /// client has its own, also for the same server.
    #[ts(type = "() => string | Promise<string>", optional)]
    #[serde(rename = "getToken")]
    #[cfg(target_arch = "wasm32")]
    token: Option<std::rc::Rc<crate::auth::TokenSource>> = None; js FnValue => read_separately;
}

/// The `backoff` option as JavaScript passes it: every field optional.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(optional_fields))]
pub(crate) struct BackoffOptions {
    base_ms: Option<u64>,
    cap_ms: Option<u64>,
    stable_ms: Option<u64>,
}

/// A function-valued option: JavaScript passes a function, read from the options object
/// directly; in the data this is decoded from, it is absent.
pub(crate) struct FnValue;

impl<'de> Deserialize<'de> for FnValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| FnValue)
    }
}

/// A plain option: the given value replaces the default.
fn set<T>(value: Option<T>, slot: &mut T) -> Result<(), Error> {
    if let Some(v) = value {
        *slot = v;
    }
    Ok(())
}

/// An option whose default is `None`.
fn set_some<T>(value: Option<T>, slot: &mut Option<T>) -> Result<(), Error> {
    if value.is_some() {
        *slot = value;
    }
    Ok(())
}

/// `transport`: `auto` or a transport name.
fn set_transport(value: Option<String>, slot: &mut Option<TransportKind>) -> Result<(), Error> {
    *slot = match value.as_deref() {
        None | Some("auto") => None,
        Some(name) => Some(TransportKind::parse(name).ok_or_else(|| Error::BadOption {
            name: "transport",
            reason: format!("`{name}` is not auto, sse, ws, longpoll or poll"),
        })?),
    };
    Ok(())
}

/// `backoff`: each field given replaces its default.
fn set_backoff(value: Option<BackoffOptions>, slot: &mut BackoffConfig) -> Result<(), Error> {
    let b = value.unwrap_or_default();
    set(b.base_ms, &mut slot.base_ms)?;
    set(b.cap_ms, &mut slot.cap_ms)?;
    set(b.stable_ms, &mut slot.stable_ms)
}

/// The function-valued options are read from the JavaScript object, not from its data.
fn read_separately<T>(_: Option<FnValue>, _: &mut T) -> Result<(), Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Options, Error> {
        serde_json::from_value::<JsOptions>(v)
            .map_err(|e| Error::BadOption {
                name: "options",
                reason: e.to_string(),
            })?
            .into_options()
    }

    #[test]
    fn defaults() {
        let o = Options::new("http://h:1//");
        assert_eq!(o.url, "http://h:1");
        assert_eq!(o.transport, None);
        assert_eq!(o.backoff, BackoffConfig::default());
        assert_eq!(
            (
                o.open_timeout_ms,
                o.heartbeat_slack_ms,
                o.ws_ping_ms,
                o.climb_ms
            ),
            (5_000, 5_000, 15_000, 30_000)
        );
        assert_eq!((o.reorder_ms, o.poll_interval_ms), (1_000, 3_000));
        assert_eq!((o.long_poll_wait_secs, o.write_retries), (25, 8));
        assert!(o.client_id.is_none() && o.random.is_none());
    }

    #[test]
    fn javascript_options_override_the_defaults() {
        let o = parse(json!({
            "url": "http://h:1/",
            "transport": "longpoll",
            "backoff": { "baseMs": 10, "stableMs": null },
            "openTimeoutMs": 1,
            "heartbeatSlackMs": 2,
            "wsPingMs": 3,
            "climbMs": 4,
            "reorderMs": 5,
            "pollIntervalMs": 6,
            "longPollWaitSecs": 7,
            "writeRetries": 8,
            "clientId": "me",
        }))
        .unwrap();
        assert_eq!(o.url, "http://h:1");
        assert_eq!(o.transport, Some(TransportKind::LongPoll));
        let d = BackoffConfig::default();
        assert_eq!(o.backoff, BackoffConfig { base_ms: 10, ..d });
        assert_eq!(
            (
                o.open_timeout_ms,
                o.heartbeat_slack_ms,
                o.ws_ping_ms,
                o.climb_ms
            ),
            (1, 2, 3, 4)
        );
        assert_eq!((o.reorder_ms, o.poll_interval_ms), (5, 6));
        assert_eq!((o.long_poll_wait_secs, o.write_retries), (7, 8));
        assert_eq!(o.client_id.as_deref(), Some("me"));
    }

    #[test]
    fn null_and_absent_mean_the_default() {
        let o = parse(json!({ "url": "http://h", "transport": null, "openTimeoutMs": null, "clientId": null }))
            .unwrap();
        assert_eq!(o.transport, None);
        assert_eq!(o.open_timeout_ms, 5_000);
        assert!(o.client_id.is_none());
        assert_eq!(
            parse(json!({ "url": "http://h", "transport": "auto" }))
                .unwrap()
                .transport,
            None
        );
        assert_eq!(
            parse(json!({ "url": "http://h", "transport": "websocket" }))
                .unwrap()
                .transport,
            Some(TransportKind::Ws)
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let e = parse(json!({ "url": "http://h", "transport": "carrier-pigeon" })).err();
        assert!(
            matches!(
                e,
                Some(Error::BadOption {
                    name: "transport",
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(
            parse(json!({ "transport": "sse" })).is_err(),
            "url is required"
        );
        assert!(parse(json!({ "url": "http://h", "openTimeoutMs": -1 })).is_err());
    }
}
