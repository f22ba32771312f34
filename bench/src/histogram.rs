//! Histograms that merge across worker processes: publish-to-receipt latency in log-spaced
//! buckets (≈1 % wide above 100 µs, so a percentile is within 1 %), and counts per second.
//!
//! ```text
//! let mut h = LatencyHistogram::default();
//! h.record(1_500);                       // µs
//! h.merge(&LatencyHistogram::from_pairs(&other.pairs(), other.max_us()));
//! let p99_ms = h.percentile_ms(0.99);
//! ```

use std::collections::BTreeMap;

/// Samples below this many microseconds get a bucket each.
const LINEAR: u64 = 100;
/// Growth factor of the buckets above [`LINEAR`].
const GROWTH: f64 = 1.01;

/// Latency samples in microseconds, bucketed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    counts: BTreeMap<u32, u64>,
    total: u64,
    max_us: u64,
}

fn bucket(us: u64) -> u32 {
    if us < LINEAR {
        us as u32
    } else {
        LINEAR as u32 + ((us as f64 / LINEAR as f64).ln() / GROWTH.ln()) as u32
    }
}

/// The lower bound of a bucket, in microseconds.
fn lower_us(b: u32) -> f64 {
    if u64::from(b) < LINEAR {
        f64::from(b)
    } else {
        LINEAR as f64 * GROWTH.powi((b - LINEAR as u32) as i32)
    }
}

impl LatencyHistogram {
    /// Adds one sample.
    pub fn record(&mut self, us: u64) {
        *self.counts.entry(bucket(us)).or_default() += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (b, c) in &other.counts {
            *self.counts.entry(*b).or_default() += c;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The largest sample, in milliseconds (NaN when empty).
    pub fn max_ms(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.max_us as f64 / 1000.0
        }
    }

    /// The largest sample, in microseconds.
    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The `q` quantile (0..=1) in milliseconds: the lower bound of the bucket holding the
    /// sample of rank ⌊len·q⌋ (NaN when empty).
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((self.total as f64 * q) as u64).min(self.total - 1);
        let mut seen = 0;
        for (b, c) in &self.counts {
            seen += c;
            if seen > rank {
                return lower_us(*b) / 1000.0;
            }
        }
        self.max_ms()
    }

    /// The non-empty buckets, for sending to another process.
    pub fn pairs(&self) -> Vec<(u32, u64)> {
        self.counts.iter().map(|(b, c)| (*b, *c)).collect()
    }

    /// Rebuilds a histogram sent as [`LatencyHistogram::pairs`] and its maximum.
    pub fn from_pairs(pairs: &[(u32, u64)], max_us: u64) -> LatencyHistogram {
        let mut h = LatencyHistogram {
            max_us,
            ..LatencyHistogram::default()
        };
        for (b, c) in pairs {
            *h.counts.entry(*b).or_default() += c;
            h.total += c;
        }
        h
    }
}

/// Counts of `offsets_ms` per whole second (index 0 = the first second).
pub fn per_second(offsets_ms: impl IntoIterator<Item = u64>) -> Vec<usize> {
    let mut h = Vec::new();
    for ms in offsets_ms {
        let s = (ms / 1000) as usize;
        if h.len() <= s {
            h.resize(s + 1, 0);
        }
        h[s] += 1;
    }
    h
}

/// Adds the per-second counts `b` to `a`, element by element.
pub fn add_per_second(a: &mut Vec<usize>, b: &[usize]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_one_percent_and_survive_a_round_trip() {
        let mut h = LatencyHistogram::default();
        for us in 1..=100_000u64 {
            h.record(us);
        }
        for (q, want_ms) in [(0.5, 50.0), (0.9, 90.0), (0.99, 99.0)] {
            let got = h.percentile_ms(q);
            assert!(
                got <= want_ms && got >= want_ms * 0.985,
                "q{q}: {got} ms, want ≈{want_ms}"
            );
        }
        assert_eq!(h.max_ms(), 100.0);
        assert_eq!(h.percentile_ms(0.0), 0.001);
        let back = LatencyHistogram::from_pairs(&h.pairs(), h.max_us());
        assert_eq!(back, h);
        assert!(LatencyHistogram::default().percentile_ms(0.5).is_nan());
    }

    #[test]
    fn merged_histograms_equal_one_fed_everything() {
        let (mut a, mut b, mut all) = (
            LatencyHistogram::default(),
            LatencyHistogram::default(),
            LatencyHistogram::default(),
        );
        for us in [5, 150, 2_000, 2_010, 90_000] {
            a.record(us);
            all.record(us);
        }
        for us in [7, 3_000_000] {
            b.record(us);
            all.record(us);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.len(), 7);
        assert_eq!(a.max_ms(), 3000.0);
    }

    #[test]
    fn per_second_counts_add_up() {
        let mut h = per_second([0, 999, 1000, 4500]);
        assert_eq!(h, vec![2, 1, 0, 0, 1]);
        add_per_second(&mut h, &[1, 0, 0, 0, 0, 0, 3]);
        assert_eq!(h, vec![3, 1, 0, 0, 1, 0, 3]);
    }
}
