//! The crate's one clock: wall time for `ts` fields, retention cut-offs and presence TTLs.
//!
//! Ordering never depends on it (events are ordered by `seq`); it only stamps and expires.
//!
//! ```
//! let (text, ms) = tidewire_server::clock::now();
//! assert!(text.ends_with('Z') && ms > 1_600_000_000_000);
//! ```

/// Now as RFC 3339 UTC with milliseconds, and as Unix milliseconds.
pub fn now() -> (String, i64) {
    let t = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let text = t.format(&fmt).unwrap_or_default();
    (text, (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    now().1
}
