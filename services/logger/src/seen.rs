//! Which readings the output already holds: the logger's de-duplication state.
//!
//! Per `(sensor_id, epoch)`, a [`SeqSet`] stores the seqs as disjoint ranges. With several
//! workers results arrive slightly out of order, so the set is one long range plus a few
//! short ones; even readings lost for good (a hole that never fills) cost one range, not one
//! entry per later seq. Memory grows with the number of holes and epochs, not of readings.
//! The same structure tells which seqs are missing ([`SeqSet::missing`]), which the gap
//! detection ([`crate::gaps`]) needs, and holds the ranges reported lost.
//!
//! # Complete epochs are dropped, and still recognised
//!
//! A sensor's epoch is the Unix time in milliseconds of its start, so a sensor's epochs
//! only grow. An epoch is *complete* once its sensor has a newer epoch in the set (the
//! process that took its readings is gone, no new reading of it can be taken). A complete
//! epoch that has not been written to for `--epoch-retention` is dropped ([`Seen::retire`]):
//! its ranges leave memory (and the state file), and only one number per sensor stays, the
//! highest epoch dropped. A result of that sensor with an epoch at or below that number,
//! and not held otherwise, is taken as already written: it is finished without a line, as a
//! duplicate. A redelivery of a result written long ago is thus still recognised; the price
//! is that a result of such an epoch that was *never* written (after `--epoch-retention` of
//! silence, and long after the gap detection reported it lost) is not written either.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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

    /// The last seq of the range holding `seq`, if `seq` is in the set.
    pub fn range_end(&self, seq: u64) -> Option<u64> {
        self.ranges
            .range(..=seq)
            .next_back()
            .and_then(|(_, end)| (*end >= seq).then_some(*end))
    }

    /// The highest seq in the set that is at most `limit` (0 when none).
    pub fn max_at_most(&self, limit: u64) -> u64 {
        self.ranges
            .range(..=limit)
            .next_back()
            .map_or(0, |(_, end)| (*end).min(limit))
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

/// Limits on the de-duplication state, so that forged results cannot grow it without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenLimits {
    /// Most sensor epochs kept (`--max-sensor-epochs`); past it the least recently written
    /// one is forgotten.
    pub max_epochs: usize,
    /// Most seq ranges kept over all epochs (`--max-seq-ranges`); past it the epoch with the
    /// most ranges (scattered seqs) is forgotten.
    pub max_ranges: usize,
}

impl Default for SeenLimits {
    fn default() -> Self {
        Self {
            max_epochs: 4096,
            max_ranges: 200_000,
        }
    }
}

/// A set of sensor epochs with a fixed capacity, forgetting the oldest inserted first.
#[derive(Debug, Clone, Default)]
pub struct EpochSet {
    /// Members, in insertion order.
    order: VecDeque<(String, u64)>,
    /// The same members, for lookups.
    members: HashSet<(String, u64)>,
}

impl EpochSet {
    /// Adds a member, forgetting the oldest beyond `capacity`.
    pub fn insert(&mut self, key: (String, u64), capacity: usize) {
        if self.members.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
    }

    /// Whether `key` is a member.
    pub fn contains(&self, key: &(String, u64)) -> bool {
        self.members.contains(key)
    }
}

/// One sensor epoch's written seqs, and when it was last written to.
#[derive(Debug, Clone, Default)]
struct EpochSeen {
    /// The seqs written.
    set: SeqSet,
    /// The value of [`Seen::clock`] at its last insert (least recently written goes first).
    touched: u64,
    /// Unix seconds of its last insert: a complete epoch is dropped `--epoch-retention`
    /// after it ([`Seen::retire`]).
    written_secs: u64,
}

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One sensor epoch as saved in the state file ([`crate::state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    /// The sensor.
    pub sensor_id: String,
    /// Its epoch.
    pub epoch: u64,
    /// Unix seconds of the last write to it.
    pub written_secs: u64,
    /// The seqs written, as ordered, disjoint, non-adjacent inclusive ranges.
    pub ranges: Vec<(u64, u64)>,
}

/// An owned copy of what [`Seen`] holds, for the state file; [`Seen::restore`] reads it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every epoch held, sorted by `(sensor_id, epoch)`.
    pub epochs: Vec<EpochRecord>,
    /// Per sensor, the highest epoch dropped as complete, sorted by sensor.
    pub retired: Vec<(String, u64)>,
}

/// The keys of the `count` lowest-ranked items, in no particular order: the epochs to forget
/// first. One partial sort, `O(n)`.
pub fn lowest<'a, R: Ord>(
    items: impl Iterator<Item = (R, &'a (String, u64))>,
    count: usize,
) -> Vec<(String, u64)> {
    let mut order: Vec<(R, &(String, u64))> = items.collect();
    let count = count.min(order.len());
    if count > 0 && count < order.len() {
        order.select_nth_unstable_by(count - 1, |a, b| a.0.cmp(&b.0));
    }
    order[..count].iter().map(|(_, k)| (*k).clone()).collect()
}

/// Epochs forgotten at a limit, as reported to the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// How many epochs were forgotten at `max_epochs`.
    pub epochs: u64,
    /// How many were forgotten at `max_ranges`.
    pub ranges: u64,
    /// One of them, for the log.
    pub example: Option<(String, u64)>,
}

/// The keys written so far, grouped by `(sensor_id, epoch)`, within [`SeenLimits`].
///
/// An epoch forgotten at a limit loses its de-duplication: a result of it delivered again
/// later would be written again. That only happens with more active sensor epochs, or more
/// scattered seqs, than the limits allow: in practice, forged results. Forgotten epochs are
/// remembered (up to `max_epochs` of them) so that the gap detection leaves them alone.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Seqs written, per sensor epoch.
    epochs: HashMap<(String, u64), EpochSeen>,
    /// The limits.
    limits: SeenLimits,
    /// Keys written, over all epochs.
    len: u64,
    /// Ranges held, over all epochs.
    ranges: usize,
    /// Counts inserts, to order epochs by their last write.
    clock: u64,
    /// Epochs forgotten at a limit.
    forgotten: EpochSet,
    /// Forgotten since the last [`Seen::take_forgotten`].
    recent: Forgotten,
    /// Per sensor, the highest epoch dropped as complete ([`Seen::retire`]): its results
    /// and those of older epochs (not held otherwise) count as written. At most
    /// `max_epochs` sensors; past it the one with the oldest such epoch goes.
    retired: HashMap<String, u64>,
}

impl Seen {
    /// An empty set within `limits`.
    pub fn with_limits(limits: SeenLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Changes the limits, forgetting what exceeds them now.
    pub fn set_limits(&mut self, limits: SeenLimits) {
        self.limits = SeenLimits {
            max_epochs: limits.max_epochs.max(1),
            max_ranges: limits.max_ranges.max(1),
        };
        self.enforce(None);
        self.bound_retired();
    }

    /// Whether `key` was written (or belongs to an epoch dropped as complete).
    pub fn contains(&self, key: &Key) -> bool {
        // A borrowed lookup would need an owned tuple; clone only the id (short).
        match self.epochs.get(&(key.sensor_id.clone(), key.epoch)) {
            Some(e) => e.set.contains(key.seq),
            None => self.is_retired(&key.sensor_id, key.epoch),
        }
    }

    /// Whether `(sensor_id, epoch)` is not held and at or below its sensor's highest epoch
    /// dropped as complete: its results count as written.
    pub fn is_retired(&self, sensor_id: &str, epoch: u64) -> bool {
        self.retired.get(sensor_id).is_some_and(|r| epoch <= *r)
            && !self.epochs.contains_key(&(sensor_id.to_owned(), epoch))
    }

    /// Records `key` as written now; returns whether it was new.
    pub fn insert(&mut self, key: &Key) -> bool {
        self.insert_at(key, unix_secs())
    }

    /// Records `key` as written at `now_secs` (Unix seconds); returns whether it was new.
    /// A key of an epoch dropped as complete is not new.
    pub fn insert_at(&mut self, key: &Key, now_secs: u64) -> bool {
        if self.is_retired(&key.sensor_id, key.epoch) {
            return false;
        }
        self.clock += 1;
        let id = (key.sensor_id.clone(), key.epoch);
        let entry = self.epochs.entry(id.clone()).or_default();
        entry.touched = self.clock;
        entry.written_secs = entry.written_secs.max(now_secs);
        let before = entry.set.range_count();
        let new = entry.set.insert(key.seq);
        let after = entry.set.range_count();
        self.ranges = (self.ranges + after).saturating_sub(before);
        self.len += u64::from(new);
        self.enforce(Some(&id));
        new
    }

    /// Forgets epochs until the limits hold; `keep` (the epoch just written) goes last.
    fn enforce(&mut self, keep: Option<&(String, u64)>) {
        if self.epochs.len() > self.limits.max_epochs {
            // The epochs with the fewest readings go first, the least recently written of
            // those: a flood of forged sensor ids (one reading each) then costs the real
            // sensors nothing, and forgetting them loses the least de-duplication. A
            // sixteenth of the limit goes at once, so that the scan is paid once per many
            // new epochs rather than once per result.
            let excess = self.epochs.len() - self.limits.max_epochs;
            let count = excess.max(self.limits.max_epochs / 16).max(1);
            let victims = lowest(
                self.epochs
                    .iter()
                    .filter(|(k, _)| Some(*k) != keep)
                    .map(|(k, e)| ((e.set.len(), e.touched), k)),
                count,
            );
            for victim in victims {
                self.forget(victim);
                self.recent.epochs += 1;
            }
        }
        while self.ranges > self.limits.max_ranges {
            let Some(largest) = self
                .epochs
                .iter()
                .max_by_key(|(_, e)| e.set.range_count())
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.forget(largest);
            self.recent.ranges += 1;
        }
    }

    /// Drops one epoch, remembering that it was forgotten.
    fn forget(&mut self, key: (String, u64)) {
        if let Some(e) = self.epochs.remove(&key) {
            self.len -= e.set.len();
            self.ranges = self.ranges.saturating_sub(e.set.range_count());
        }
        self.recent.example.get_or_insert_with(|| key.clone());
        self.forgotten.insert(key, self.limits.max_epochs);
    }

    /// The epochs forgotten at a limit since the last call.
    pub fn take_forgotten(&mut self) -> Forgotten {
        std::mem::take(&mut self.recent)
    }

    /// Whether this epoch was forgotten at a limit (and is remembered as such), or dropped
    /// as complete: either way it is no longer tracked seq by seq.
    pub fn is_forgotten(&self, key: &(String, u64)) -> bool {
        self.forgotten.contains(key) || self.is_retired(&key.0, key.1)
    }

    /// Drops the complete epochs (their sensor has a newer one) not written to for
    /// `retention` at `now_secs`, keeping per sensor only the highest epoch dropped (see
    /// the module's guide). Returns how many epochs were dropped.
    pub fn retire(&mut self, now_secs: u64, retention: Duration) -> usize {
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for (sensor_id, epoch) in self.epochs.keys() {
            let n = newest.entry(sensor_id.as_str()).or_insert(*epoch);
            *n = (*n).max(*epoch);
        }
        let retention = retention.as_secs();
        let done: Vec<(String, u64)> = self
            .epochs
            .iter()
            .filter(|((sensor_id, epoch), e)| {
                newest.get(sensor_id.as_str()).is_some_and(|n| *epoch < *n)
                    && e.written_secs.saturating_add(retention) <= now_secs
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (sensor_id, epoch) in &done {
            if let Some(e) = self.epochs.remove(&(sensor_id.clone(), *epoch)) {
                self.len -= e.set.len();
                self.ranges = self.ranges.saturating_sub(e.set.range_count());
            }
            let mark = self.retired.entry(sensor_id.clone()).or_insert(*epoch);
            *mark = (*mark).max(*epoch);
        }
        self.bound_retired();
        done.len()
    }

    /// Keeps at most `max_epochs` sensors' retired marks, dropping the oldest marks first.
    fn bound_retired(&mut self) {
        let excess = self.retired.len().saturating_sub(self.limits.max_epochs);
        if excess == 0 {
            return;
        }
        let mut marks: Vec<(u64, String)> =
            self.retired.iter().map(|(s, e)| (*e, s.clone())).collect();
        marks.sort_unstable();
        for (_, sensor_id) in marks.into_iter().take(excess) {
            self.retired.remove(&sensor_id);
        }
    }

    /// Number of sensors with epochs dropped as complete.
    pub fn retired_sensors(&self) -> usize {
        self.retired.len()
    }

    /// An owned copy of the epochs held and the retired marks, sorted, for the state file.
    pub fn snapshot(&self) -> Snapshot {
        let mut epochs: Vec<EpochRecord> = self
            .epochs
            .iter()
            .map(|((sensor_id, epoch), e)| EpochRecord {
                sensor_id: sensor_id.clone(),
                epoch: *epoch,
                written_secs: e.written_secs,
                ranges: e.set.ranges().collect(),
            })
            .collect();
        epochs.sort_unstable_by(|a, b| (&a.sensor_id, a.epoch).cmp(&(&b.sensor_id, b.epoch)));
        let mut retired: Vec<(String, u64)> =
            self.retired.iter().map(|(s, e)| (s.clone(), *e)).collect();
        retired.sort_unstable();
        Snapshot { epochs, retired }
    }

    /// The set a [`Snapshot`] describes, within `limits` (what exceeds them is forgotten, as
    /// when it is written).
    pub fn restore(snapshot: Snapshot, limits: SeenLimits) -> Self {
        let mut seen = Self::with_limits(SeenLimits {
            max_epochs: usize::MAX,
            max_ranges: usize::MAX,
        });
        for record in snapshot.epochs {
            seen.clock += 1;
            let entry = seen
                .epochs
                .entry((record.sensor_id, record.epoch))
                .or_default();
            entry.touched = seen.clock;
            entry.written_secs = entry.written_secs.max(record.written_secs);
            for (from, to) in record.ranges {
                let before = entry.set.range_count();
                seen.len += entry.set.insert_range(from, to);
                seen.ranges = (seen.ranges + entry.set.range_count()).saturating_sub(before);
            }
        }
        for (sensor_id, epoch) in snapshot.retired {
            let mark = seen.retired.entry(sensor_id).or_insert(epoch);
            *mark = (*mark).max(epoch);
        }
        seen.set_limits(limits);
        seen
    }

    /// Number of keys written (those of forgotten epochs no longer count).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of seq ranges held over all epochs.
    pub fn range_count(&self) -> usize {
        self.ranges
    }

    /// The seqs written for one sensor epoch.
    pub fn epoch(&self, sensor_id: &str, epoch: u64) -> Option<&SeqSet> {
        self.epochs
            .get(&(sensor_id.to_owned(), epoch))
            .map(|e| &e.set)
    }

    /// Number of sensor epochs seen.
    pub fn epochs(&self) -> usize {
        self.epochs.len()
    }

    /// Every sensor epoch with the seqs written for it, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, &SeqSet)> + '_ {
        self.epochs
            .iter()
            .map(|((sensor_id, epoch), e)| (sensor_id.as_str(), *epoch, &e.set))
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
    fn epochs_beyond_the_limit_are_forgotten_smallest_then_least_recently_written_first() {
        let mut seen = Seen::with_limits(SeenLimits {
            max_epochs: 3,
            max_ranges: 1000,
        });
        for epoch in [2, 3, 1] {
            seen.insert(&key("real", epoch, 1));
        }
        // A flood of forged sensor ids while the real sensor keeps writing epoch 1.
        for n in 0..100 {
            seen.insert(&key(&format!("forged-{n}"), 9, 1));
            seen.insert(&key("real", 1, n + 2));
        }
        // Then more, while it is quiet: its epoch holds more readings than any forged one.
        for n in 100..200 {
            seen.insert(&key(&format!("forged-{n}"), 9, 1));
        }
        assert_eq!(seen.epoch("real", 1).map(SeqSet::len), Some(101));
        seen.take_forgotten();
        assert_eq!(seen.epochs(), 3);
        assert_eq!(seen.epoch("real", 1).map(SeqSet::len), Some(101));
        assert_eq!(seen.len(), 101 + 2, "{seen:?}");
        // The last few forgotten are remembered (as many as max_epochs).
        assert!(seen.is_forgotten(&("forged-197".to_owned(), 9)));
        assert!(!seen.is_forgotten(&("real".to_owned(), 1)));
        assert_eq!(seen.take_forgotten(), Forgotten::default(), "taken once");
    }

    #[test]
    fn scattered_seqs_beyond_the_range_limit_forget_their_epoch() {
        let mut seen = Seen::with_limits(SeenLimits {
            max_epochs: 10,
            max_ranges: 100,
        });
        for seq in 1..=1000 {
            seen.insert(&key("real", 1, seq));
        }
        for seq in 1..=200 {
            seen.insert(&key("forged", 1, seq * 2));
        }
        assert!(seen.range_count() <= 100);
        assert_eq!(seen.epoch("real", 1).map(SeqSet::len), Some(1000));
        assert!(seen.is_forgotten(&("forged".to_owned(), 1)));
        assert!(seen.take_forgotten().ranges >= 1);
    }

    #[test]
    fn complete_epochs_are_dropped_after_the_retention_and_still_recognised() {
        let day = Duration::from_secs(86_400);
        let mut seen = Seen::default();
        // Epoch 100 written at t=1000; the sensor restarts: epoch 200 at t=2000.
        for seq in 1..=50 {
            seen.insert_at(&key("s", 100, seq), 1000);
        }
        seen.insert_at(&key("s", 200, 1), 2000);
        // Another sensor with one epoch only: never complete.
        seen.insert_at(&key("t", 5, 1), 0);
        assert_eq!(seen.retire(1000 + 86_399, day), 0, "not yet idle for a day");
        assert_eq!(seen.retire(1000 + 86_400, day), 1);
        assert_eq!(seen.epoch("s", 100), None, "dropped from memory");
        assert_eq!((seen.epochs(), seen.len()), (2, 2));
        assert_eq!(seen.retired_sensors(), 1);
        // A late duplicate of the dropped epoch, or of an older one, is still recognised.
        assert!(seen.contains(&key("s", 100, 7)));
        assert!(seen.contains(&key("s", 99, 1)));
        assert!(!seen.insert(&key("s", 100, 51)), "taken as written");
        assert_eq!(seen.epoch("s", 100), None, "and not tracked again");
        assert!(
            seen.is_forgotten(&("s".to_owned(), 100)),
            "gap detection leaves it"
        );
        // The newest epoch and other sensors are untouched.
        assert!(seen.contains(&key("s", 200, 1)) && !seen.contains(&key("s", 200, 2)));
        assert!(!seen.contains(&key("t", 4, 1)) && !seen.contains(&key("u", 1, 1)));
        assert!(seen.insert(&key("s", 201, 1)), "a newer epoch is new");
        // The marks survive a snapshot, and are bounded like the epochs.
        let restored = Seen::restore(seen.snapshot(), SeenLimits::default());
        assert!(restored.contains(&key("s", 100, 7)));
        let mut many = Seen::with_limits(SeenLimits {
            max_epochs: 4,
            max_ranges: 100,
        });
        for n in 0..10u64 {
            let id = format!("s{n}");
            many.insert_at(&key(&id, n, 1), 0);
            many.insert_at(&key(&id, n + 1, 1), 0);
            many.retire(86_400, day);
        }
        assert_eq!(many.retired_sensors(), 4, "at most max_epochs marks");
        assert!(many.contains(&key("s9", 9, 1)), "the newest marks stay");
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
