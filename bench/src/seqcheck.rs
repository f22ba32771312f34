//! Per-client check of one room's `seq` over a whole run: every event exactly once, in order.
//!
//! ```text
//! let mut c = SeqCheck::default();
//! c.observe(1); c.observe(2); c.observe(2); c.observe(4);
//! assert_eq!((c.lost_at(4), c.duplicated()), (1, 1));
//! ```

/// What one client saw of one room since `seq` 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqCheck {
    last: u64,
    received: u64,
    gaps: u64,
    duplicated: u64,
}

impl SeqCheck {
    /// Records a delivered `seq`: one at or below the last is a duplicate, a jump skips events.
    pub fn observe(&mut self, seq: u64) {
        if seq <= self.last {
            self.duplicated += 1;
        } else {
            self.gaps += seq - self.last - 1;
            self.last = seq;
            self.received += 1;
        }
    }

    /// The highest `seq` seen (0 before any).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Distinct events received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Events delivered more than once.
    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    /// Events missing when the room's log ends at `head`: skipped ones plus those not yet seen.
    pub fn lost_at(&self, head: u64) -> u64 {
        self.gaps + head.saturating_sub(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contiguous_run_is_clean() {
        let mut c = SeqCheck::default();
        for s in 1..=50 {
            c.observe(s);
        }
        assert_eq!((c.lost_at(50), c.duplicated(), c.received()), (0, 0, 50));
    }

    #[test]
    fn gaps_duplicates_and_a_short_tail_are_counted() {
        let mut c = SeqCheck::default();
        for s in [1, 2, 2, 1, 5, 6] {
            c.observe(s);
        }
        assert_eq!(c.duplicated(), 2);
        assert_eq!(c.received(), 4);
        assert_eq!(c.lost_at(6), 2, "3 and 4 skipped");
        assert_eq!(c.lost_at(9), 5, "and 7..=9 never arrived");
        assert_eq!(SeqCheck::default().lost_at(3), 3);
    }
}
