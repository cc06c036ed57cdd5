//! Which readings the output already holds: the logger's de-duplication state.
//!
//! Per `(sensor_id, epoch)`, a [`SeqSet`] stores the seqs compactly: every seq up to a
//! watermark (`1..=contiguous`) plus the ones above it that arrived early. With several
//! workers results arrive slightly out of order, so the set above the watermark stays small
//! and memory grows with the number of epochs, not of readings. The same structure tells
//! which seqs are missing, which gap detection (issue 4) needs.

use std::collections::{BTreeSet, HashMap};

use crate::line::Key;

/// A set of seqs (`>= 1`), stored as a contiguous prefix plus the seqs above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// Every seq in `1..=contiguous` is in the set.
    contiguous: u64,
    /// Seqs above `contiguous + 1` that are in the set.
    above: BTreeSet<u64>,
}

impl SeqSet {
    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        (seq >= 1 && seq <= self.contiguous) || self.above.contains(&seq)
    }

    /// Adds `seq`; returns whether it was new. Seq 0 is kept like any other (above).
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.above.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else {
            self.above.insert(seq);
        }
        true
    }

    /// How many seqs are in the set.
    pub fn len(&self) -> u64 {
        self.contiguous + self.above.len() as u64
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every seq up to this one is in the set.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// The highest seq in the set (0 when empty).
    pub fn max(&self) -> u64 {
        self.above.last().copied().unwrap_or(self.contiguous)
    }
}

/// The keys written so far, grouped by `(sensor_id, epoch)`.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Seqs written, per sensor epoch.
    epochs: HashMap<(String, u64), SeqSet>,
}

impl Seen {
    /// Whether `key` was written.
    pub fn contains(&self, key: &Key) -> bool {
        // A borrowed lookup would need an owned tuple; clone only the id (short).
        self.epochs
            .get(&(key.sensor_id.clone(), key.epoch))
            .is_some_and(|set| set.contains(key.seq))
    }

    /// Records `key` as written; returns whether it was new.
    pub fn insert(&mut self, key: &Key) -> bool {
        self.epochs
            .entry((key.sensor_id.clone(), key.epoch))
            .or_default()
            .insert(key.seq)
    }

    /// Number of keys written.
    pub fn len(&self) -> u64 {
        self.epochs.values().map(SeqSet::len).sum()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seqs written for one sensor epoch.
    pub fn epoch(&self, sensor_id: &str, epoch: u64) -> Option<&SeqSet> {
        self.epochs.get(&(sensor_id.to_owned(), epoch))
    }

    /// Number of sensor epochs seen.
    pub fn epochs(&self) -> usize {
        self.epochs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sensor: &str, epoch: u64, seq: u64) -> Key {
        Key {
            sensor_id: sensor.to_owned(),
            epoch,
            seq,
        }
    }

    #[test]
    fn in_order_stays_compact() {
        let mut s = SeqSet::default();
        for seq in 1..=1000 {
            assert!(s.insert(seq));
        }
        assert_eq!((s.contiguous(), s.len(), s.max()), (1000, 1000, 1000));
        assert!(s.above.is_empty());
        assert!(!s.insert(500));
    }

    #[test]
    fn out_of_order_fills_the_prefix() {
        let mut s = SeqSet::default();
        assert!(s.insert(3));
        assert!(s.insert(5));
        assert!(!s.contains(1));
        assert_eq!((s.contiguous(), s.len(), s.max()), (0, 2, 5));
        assert!(s.insert(1));
        assert!(s.insert(2));
        assert_eq!(s.contiguous(), 3);
        assert!(s.insert(4));
        assert_eq!(s.contiguous(), 5);
        assert!(s.above.is_empty());
        assert!(!s.insert(3));
        assert!(!s.contains(0) && !s.contains(6));
    }

    #[test]
    fn seq_zero_is_an_ordinary_member() {
        let mut s = SeqSet::default();
        assert!(!s.contains(0));
        assert!(s.insert(0));
        assert!(s.contains(0));
        assert!(!s.insert(0));
    }

    #[test]
    fn keys_are_per_sensor_epoch() {
        let mut seen = Seen::default();
        assert!(seen.insert(&key("a", 1, 1)));
        assert!(seen.insert(&key("a", 2, 1)), "another epoch");
        assert!(seen.insert(&key("b", 1, 1)), "another sensor");
        assert!(!seen.insert(&key("a", 1, 1)));
        assert!(seen.contains(&key("b", 1, 1)));
        assert!(!seen.contains(&key("b", 1, 2)));
        assert_eq!((seen.len(), seen.epochs()), (3, 3));
        assert_eq!(seen.epoch("a", 1).unwrap().contiguous(), 1);
    }
}
