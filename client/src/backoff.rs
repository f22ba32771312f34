//! Reconnection backoff: exponential growth with full jitter and a cap, reset after the
//! connection has been stable for a while, and server hints taking precedence.
//!
//! The random source is injected ([`Random`]), so tests are deterministic.
//!
//! ```
//! use tidewire_client::backoff::{Backoff, BackoffConfig};
//! let mut b = Backoff::new(BackoffConfig { base_ms: 100, cap_ms: 1_000, stable_ms: 5_000 });
//! let mut top = || 0.999_999; // always the top of the jitter window
//! assert_eq!(b.next_delay(&mut top), 99);
//! assert_eq!(b.next_delay(&mut top), 199);
//! assert_eq!(b.next_delay(&mut top), 399);
//! b.reset();
//! assert_eq!(b.attempt(), 0);
//! ```

/// A source of uniformly distributed numbers in `[0, 1)`.
///
/// Contract: every call returns a finite number `r` with `0.0 <= r < 1.0`; values outside that
/// range are clamped by the caller.
pub trait Random {
    /// The next number in `[0, 1)`.
    fn next_f64(&mut self) -> f64;
}

impl<F: FnMut() -> f64> Random for F {
    fn next_f64(&mut self) -> f64 {
        self()
    }
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The delay window of the first attempt, in milliseconds.
    pub base_ms: u64,
    /// The largest delay window, in milliseconds.
    pub cap_ms: u64,
    /// A connection open at least this long resets the attempt counter when it ends.
    pub stable_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 500,
            cap_ms: 30_000,
            stable_ms: 10_000,
        }
    }
}

/// Exponential backoff with full jitter: attempt `n` waits a uniform random time in
/// `[0, min(cap, base * 2^n))`.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    hint_ms: Option<u64>,
}

impl Backoff {
    /// A backoff at attempt 0.
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            attempt: 0,
            hint_ms: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> BackoffConfig {
        self.config
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay window of the next attempt (before jitter).
    pub fn window_ms(&self) -> u64 {
        let base = self.config.base_ms.max(1);
        let factor = 1u64.checked_shl(self.attempt.min(40)).unwrap_or(u64::MAX);
        base.saturating_mul(factor).min(self.config.cap_ms.max(1))
    }

    /// The next delay: full jitter over the current window, then the window doubles. A pending
    /// server hint ([`Backoff::hint`]) is used once instead, as given (the server jitters it).
    pub fn next_delay(&mut self, random: &mut dyn Random) -> u64 {
        let delay = match self.hint_ms.take() {
            Some(hint) => hint,
            None => {
                let r = random.next_f64();
                let r = if r.is_finite() {
                    r.clamp(0.0, 0.999_999_999)
                } else {
                    0.0
                };
                (r * self.window_ms() as f64).floor() as u64
            }
        };
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The server asked to wait `retry_ms` before the next attempt (a `reconnect` event);
    /// hints above two minutes are cut to two minutes.
    pub fn hint(&mut self, retry_ms: u64) {
        self.hint_ms = Some(retry_ms.min(120_000));
    }

    /// [`Backoff::next_delay`] after an SSE stream that announced the server's `retry:` value
    /// (`floor_ms`): the delay is `floor_ms` (at most two minutes) plus the full-jitter delay,
    /// so clients stay spread out above the floor. A pending `reconnect` hint is used as given
    /// instead, as it is the server's latest word.
    pub fn next_delay_with_floor(&mut self, random: &mut dyn Random, floor_ms: u64) -> u64 {
        if self.hint_ms.is_some() {
            return self.next_delay(random);
        }
        floor_ms
            .min(120_000)
            .saturating_add(self.next_delay(random))
    }

    /// Starts again from attempt 0.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection that was open for `open_for_ms` ended: reset when it was stable.
    pub fn connection_ended(&mut self, open_for_ms: u64) {
        if open_for_ms >= self.config.stable_ms {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            base_ms: 100,
            cap_ms: 2_000,
            stable_ms: 1_000,
        }
    }

    /// A deterministic linear congruential generator.
    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn windows_grow_and_cap() {
        let mut b = Backoff::new(cfg());
        let mut top = || 0.999_999_9;
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(&mut top)).collect();
        assert_eq!(delays, vec![99, 199, 399, 799, 1599, 1999, 1999, 1999]);
    }

    #[test]
    fn full_jitter_spreads_within_window() {
        let mut b = Backoff::new(cfg());
        let mut rng = lcg(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            b.reset();
            for _ in 0..4 {
                b.next_delay(&mut rng);
            }
            let d = b.next_delay(&mut rng); // window 1600
            assert!(d < 1600);
            seen.insert(d / 100);
        }
        assert!(seen.len() > 10, "jitter spreads delays: {seen:?}");
    }

    #[test]
    fn zero_random_gives_zero_and_bad_random_is_clamped() {
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_delay(&mut || 0.0), 0);
        assert_eq!(b.next_delay(&mut || f64::NAN), 0);
        assert!(b.next_delay(&mut || 7.0) < 400);
    }

    #[test]
    fn stable_connection_resets() {
        let mut b = Backoff::new(cfg());
        let mut top = || 0.5;
        b.next_delay(&mut top);
        b.next_delay(&mut top);
        b.connection_ended(500);
        assert_eq!(b.attempt(), 2);
        b.connection_ended(1_000);
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn hint_is_used_once() {
        let mut b = Backoff::new(cfg());
        b.hint(1234);
        assert_eq!(b.next_delay(&mut || 0.0), 1234);
        assert_eq!(b.next_delay(&mut || 0.0), 0);
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig {
            base_ms: u64::MAX / 2,
            cap_ms: u64::MAX,
            stable_ms: 1,
        });
        for _ in 0..100 {
            b.next_delay(&mut || 0.9);
        }
        assert_eq!(b.window_ms(), u64::MAX);
    }

    #[test]
    fn the_retry_floor_lifts_the_jittered_delay() {
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_delay_with_floor(&mut || 0.0, 1_500), 1_500);
        assert_eq!(b.next_delay_with_floor(&mut || 0.5, 1_500), 1_600);
        assert_eq!(
            b.attempt(),
            2,
            "a floored delay is an attempt like any other"
        );
        assert_eq!(
            b.next_delay_with_floor(&mut || 0.0, 10_000_000),
            120_000,
            "the floor is capped at two minutes"
        );
        b.hint(40);
        assert_eq!(
            b.next_delay_with_floor(&mut || 0.9, 1_500),
            40,
            "a reconnect hint wins"
        );
    }
}
