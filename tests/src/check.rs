//! Loss and duplicate accounting for resume tests.
//!
//! A test records which `seq`s each room should deliver and what a client actually received;
//! [`Delivery::assert_exact`] prints the counts and fails on any loss, duplicate or reordering.
//!
//! ```
//! use tidewire_tests::Delivery;
//! let mut d = Delivery::default();
//! d.expect("a", 1..=3);
//! for seq in [1, 2, 3] { d.received("a", seq); }
//! let counts = d.counts();
//! assert_eq!((counts.lost, counts.duplicated), (0, 0));
//! d.assert_exact("example");
//! ```

use std::collections::{BTreeMap, BTreeSet};

/// Counts of one delivery check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events the client should have received.
    pub expected: usize,
    /// Events the client received (with duplicates).
    pub delivered: usize,
    /// Expected events never received.
    pub lost: usize,
    /// Receipts beyond the first of the same event.
    pub duplicated: usize,
    /// Receipts whose `seq` was not above the previous one of the same room.
    pub out_of_order: usize,
    /// Receipts of events that were never expected.
    pub unexpected: usize,
}

/// Expected versus received `seq`s, per room.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    expected: BTreeMap<String, BTreeSet<u64>>,
    received: BTreeMap<String, Vec<u64>>,
}

impl Delivery {
    /// Expects these `seq`s in `room`.
    pub fn expect(&mut self, room: &str, seqs: impl IntoIterator<Item = u64>) {
        self.expected
            .entry(room.to_owned())
            .or_default()
            .extend(seqs);
    }

    /// Records one received event.
    pub fn received(&mut self, room: &str, seq: u64) {
        self.received.entry(room.to_owned()).or_default().push(seq);
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        let empty = BTreeSet::new();
        let rooms: BTreeSet<&String> = self.expected.keys().chain(self.received.keys()).collect();
        for room in rooms {
            let expected = self.expected.get(room).unwrap_or(&empty);
            let got = self.received.get(room).map(Vec::as_slice).unwrap_or(&[]);
            c.expected += expected.len();
            c.delivered += got.len();
            let mut seen = BTreeSet::new();
            let mut last = None;
            for &seq in got {
                if !seen.insert(seq) {
                    c.duplicated += 1;
                }
                if last.is_some_and(|l| seq <= l) {
                    c.out_of_order += 1;
                }
                last = Some(seq);
                if !expected.contains(&seq) {
                    c.unexpected += 1;
                }
            }
            c.lost += expected.difference(&seen).count();
        }
        c
    }

    /// Prints the counts under `label` and panics unless nothing was lost, duplicated,
    /// reordered or unexpected.
    #[track_caller]
    pub fn assert_exact(&self, label: &str) {
        let c = self.counts();
        println!(
            "[{label}] expected={} delivered={} lost={} duplicated={} out_of_order={} unexpected={}",
            c.expected, c.delivered, c.lost, c.duplicated, c.out_of_order, c.unexpected
        );
        assert_eq!(c.lost, 0, "[{label}] lost events: {c:?}");
        assert_eq!(c.duplicated, 0, "[{label}] duplicated events: {c:?}");
        assert_eq!(c.out_of_order, 0, "[{label}] events out of order: {c:?}");
        assert_eq!(c.unexpected, 0, "[{label}] unexpected events: {c:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_duplicates_and_order() {
        let mut d = Delivery::default();
        d.expect("a", 1..=4);
        d.expect("b", [1]);
        for seq in [1, 3, 3, 2] {
            d.received("a", seq);
        }
        d.received("c", 9);
        let c = d.counts();
        assert_eq!(c.expected, 5);
        assert_eq!(c.delivered, 5);
        assert_eq!(c.lost, 2, "a=4 and b=1");
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.out_of_order, 2, "3 after 3, 2 after 3");
        assert_eq!(c.unexpected, 1);
    }

    #[test]
    #[should_panic(expected = "lost events")]
    fn loss_fails() {
        let mut d = Delivery::default();
        d.expect("a", [1, 2]);
        d.received("a", 1);
        d.assert_exact("loss");
    }
}
