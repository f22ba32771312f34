//! When a write is sent again: the delay before retry number `attempt` of a write (`put`,
//! `delete`, `publish`) that failed with a retryable error. The write keeps its idempotency
//! key, so a retry of a write that did reach the server is not applied twice.
//!
//! The delay doubles from 250 ms up to 5 s; a `429 rate_limited` answer that says how long
//! to wait (`Retry-After`) is honoured, but never for more than [`MAX_RETRY_AFTER_MS`].
//!
//! ```
//! use tidewire_client::retry::{write_retry_delay_ms, MAX_RETRY_AFTER_MS};
//! assert_eq!(write_retry_delay_ms(0, None), 250);
//! assert_eq!(write_retry_delay_ms(0, Some(3)), 3_000);
//! assert_eq!(write_retry_delay_ms(0, Some(3_600)), MAX_RETRY_AFTER_MS);
//! ```

/// The longest `Retry-After` the client honours (a larger one is cut to this).
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// The delay before retry number `attempt` (0 for the first), given the server's
/// `Retry-After` in seconds when it sent one: the larger of the doubling backoff and the
/// hint, the hint bounded by [`MAX_RETRY_AFTER_MS`].
pub fn write_retry_delay_ms(attempt: u32, retry_after_secs: Option<u64>) -> u64 {
    let backoff = (250u64 << attempt.min(5)).min(5_000);
    let hint = retry_after_secs.map_or(0, |s| s.saturating_mul(1_000).min(MAX_RETRY_AFTER_MS));
    backoff.max(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_five_seconds() {
        let delays: Vec<u64> = (0..8).map(|a| write_retry_delay_ms(a, None)).collect();
        assert_eq!(
            delays,
            vec![250, 500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000]
        );
        assert_eq!(write_retry_delay_ms(u32::MAX, None), 5_000);
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_bounded() {
        assert_eq!(write_retry_delay_ms(0, Some(2)), 2_000);
        // A hint shorter than the backoff does not shorten it.
        assert_eq!(write_retry_delay_ms(4, Some(1)), 4_000);
        assert_eq!(write_retry_delay_ms(0, Some(0)), 250);
        assert_eq!(write_retry_delay_ms(0, Some(60)), 60_000);
        assert_eq!(write_retry_delay_ms(0, Some(61)), MAX_RETRY_AFTER_MS);
        assert_eq!(write_retry_delay_ms(0, Some(u64::MAX)), MAX_RETRY_AFTER_MS);
    }
}
