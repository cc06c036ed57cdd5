//! Which readings the output already holds: the logger's de-duplication state.
//!
//! Per `(sensor_id, epoch)`, a [`SeqSet`] stores the seqs as disjoint ranges. With several
//! workers results arrive slightly out of order, so the set is one long range plus a few
//! short ones; even readings lost for good (a hole that never fills) cost one range, not one
//! entry per later seq. Memory grows with the number of holes and epochs, not of readings.
//! The same structure tells which seqs are missing ([`SeqSet::missing`]), which the gap
//! detection ([`crate::gaps`]) needs, and holds the ranges reported lost.

use std::collections::{BTreeMap, HashMap};

use crate::line::Key;

/// A set of seqs, stored as disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// `start -> end` (inclusive) of each range; no two ranges touch or overlap.
    ranges: BTreeMap<u64, u64>,
    /// How many seqs the ranges hold.
    len: u64,
}

impl SeqSet {
    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, end)| *end >= seq)
    }

    /// Adds `seq`; returns whether it was new.
    pub fn insert(&mut self, seq: u64) -> bool {
        self.insert_range(seq, seq) == 1
    }

    /// Adds every seq of `from..=to`; returns how many were new (0 when `from > to`).
    pub fn insert_range(&mut self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        let (mut start, mut end) = (from, to);
        let mut absorbed = 0u64;
        // Ranges that overlap or touch `from..=to` merge into it: the one starting at or
        // before `from` (if it reaches `from - 1`), then every one starting up to `to + 1`.
        let first = self
            .ranges
            .range(..=from)
            .next_back()
            .filter(|(_, e)| e.saturating_add(1) >= from)
            .map(|(s, _)| *s)
            .unwrap_or(from);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(first..=to.saturating_add(1))
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            absorbed += (e - s).saturating_add(1);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        let added = (end - start).saturating_add(1) - absorbed;
        self.len += added;
        added
    }

    /// Removes every seq of `from..=to`; returns how many were in the set.
    pub fn remove_range(&mut self, from: u64, to: u64) -> u64 {
        let mut removed = 0u64;
        for (a, b) in self.intersect(from, to) {
            // The range holding `a..=b` starts at or before `a`.
            let Some((&start, &end)) = self.ranges.range(..=a).next_back() else {
                continue;
            };
            self.ranges.remove(&start);
            if start < a {
                self.ranges.insert(start, a - 1);
            }
            if end > b {
                self.ranges.insert(b + 1, end);
            }
            removed += (b - a).saturating_add(1);
        }
        self.len -= removed;
        removed
    }

    /// How many seqs are in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every seq in `1..=contiguous()` is in the set (0 when seq 1 is not).
    pub fn contiguous(&self) -> u64 {
        match self.ranges.iter().next() {
            Some((start, end)) if *start <= 1 && *end >= 1 => *end,
            _ => 0,
        }
    }

    /// The highest seq in the set (0 when empty).
    pub fn max(&self) -> u64 {
        self.ranges.values().next_back().copied().unwrap_or(0)
    }

    /// The ranges of the set, in order, as `(from, to)` inclusive.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// How many separate ranges the set holds.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The seqs of `1..=upto` that are not in the set, as ranges `(from, to)` in order.
    pub fn missing(&self, upto: u64) -> Vec<(u64, u64)> {
        let mut missing = Vec::new();
        let mut next = 1u64;
        for (start, end) in self.ranges() {
            if next > upto {
                break;
            }
            if start > next {
                missing.push((next, (start - 1).min(upto)));
            }
            next = next.max(end.saturating_add(1));
        }
        if next <= upto {
            missing.push((next, upto));
        }
        missing
    }

    /// The seqs of `from..=to` that are in the set, as ranges in order.
    pub fn intersect(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        if from > to {
            return Vec::new();
        }
        let first = self
            .ranges
            .range(..=from)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(from);
        self.ranges
            .range(first..=to)
            .filter_map(|(s, e)| {
                let (a, b) = ((*s).max(from), (*e).min(to));
                (a <= b).then_some((a, b))
            })
            .collect()
    }

    /// The seqs of `from..=to` that are not in the set, as ranges in order.
    pub fn subtract_from(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if from > to {
            return out;
        }
        let mut next = from;
        for (a, b) in self.intersect(from, to) {
            if a > next {
                out.push((next, a - 1));
            }
            next = b.saturating_add(1);
            if b == u64::MAX {
                return out;
            }
        }
        if next <= to {
            out.push((next, to));
        }
        out
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

    /// Every sensor epoch with the seqs written for it, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, &SeqSet)> + '_ {
        self.epochs
            .iter()
            .map(|((sensor_id, epoch), set)| (sensor_id.as_str(), *epoch, set))
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
        assert_eq!(s.range_count(), 1);
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
        assert_eq!(s.range_count(), 1);
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
    fn a_hole_that_never_fills_costs_one_range() {
        let mut s = SeqSet::default();
        for seq in (1..=100).chain(201..=10_000) {
            s.insert(seq);
        }
        assert_eq!(s.range_count(), 2);
        assert_eq!((s.contiguous(), s.len(), s.max()), (100, 9_900, 10_000));
        assert_eq!(s.missing(10_005), [(101, 200), (10_001, 10_005)]);
        assert_eq!(s.missing(150), [(101, 150)]);
        assert_eq!(s.missing(50), []);
        assert_eq!(SeqSet::default().missing(3), [(1, 3)]);
        assert_eq!(SeqSet::default().missing(0), []);
    }

    #[test]
    fn ranges_merge_and_count_only_new_seqs() {
        let mut s = SeqSet::default();
        assert_eq!(s.insert_range(10, 20), 11);
        assert_eq!(s.insert_range(30, 40), 11);
        assert_eq!(s.insert_range(15, 35), 9, "21..=29 are new");
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(10, 40)]);
        assert_eq!(s.insert_range(41, 41), 1, "adjacent merges");
        assert_eq!(s.insert_range(8, 8), 1);
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(8, 8), (10, 41)]);
        assert_eq!(s.insert_range(9, 9), 1);
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(8, 41)]);
        assert_eq!(s.insert_range(5, 3), 0, "empty range");
        assert_eq!(s.len(), 34);
    }

    #[test]
    fn remove_splits_ranges() {
        let mut s = SeqSet::default();
        s.insert_range(10, 20);
        s.insert_range(30, 40);
        assert_eq!(s.remove_range(15, 32), 9);
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(10, 14), (33, 40)]);
        assert_eq!(s.remove_range(1, 9), 0);
        assert_eq!(s.remove_range(10, 14), 5);
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(33, 40)]);
        assert_eq!(s.len(), 8);
    }

    #[test]
    fn intersect_and_subtract() {
        let mut s = SeqSet::default();
        s.insert_range(10, 20);
        s.insert_range(30, 40);
        assert_eq!(s.intersect(15, 35), [(15, 20), (30, 35)]);
        assert_eq!(s.intersect(21, 29), []);
        assert_eq!(s.subtract_from(5, 45), [(5, 9), (21, 29), (41, 45)]);
        assert_eq!(s.subtract_from(12, 18), []);
        assert_eq!(s.subtract_from(25, 25), [(25, 25)]);
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
