//! The few browser facts the client reads directly: the monotonic clock, `navigator.onLine`,
//! random ids, and console warnings.
//!
//! ```ignore
//! let started = now_ms();
//! if !online() { warn("tidewire: offline"); }
//! TimeoutFuture::new(timer_ms(deadline - started)).await;
//! ```

/// Milliseconds on the page's monotonic clock (`performance.now()`), for every elapsed time
/// and deadline: backoff waits, open and climb timeouts, reorder windows. The wall clock
/// (`Date.now()`) can jump days either way when the user or NTP changes it; measured with it,
/// a backoff wait could last days or an open connection look negative seconds old.
pub(crate) fn now_ms() -> u64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or_else(js_sys::Date::now, |p| p.now()) as u64
}

/// A random client id, `c` and 16 hex digits.
pub(crate) fn random_id() -> String {
    let a = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let b = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    format!("c{a:08x}{b:08x}")
}

/// Writes a warning to the console.
pub(crate) fn warn(text: &str) {
    web_sys::console::warn_1(&text.into());
}

/// A duration for a browser timer (which takes 32 bits).
pub(crate) fn timer_ms(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

/// Whether the browser says it is online (true outside a window).
pub(crate) fn online() -> bool {
    web_sys::window().is_none_or(|w| w.navigator().on_line())
}
