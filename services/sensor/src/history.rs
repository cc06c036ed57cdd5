//! The bounded in-memory history of the readings this sensor took in its current epoch.
//!
//! Every reading goes into the history when it is taken, whether or not nsqd has confirmed
//! it, so that a reading dropped from a full outbox, or lost by a crashing nsqd, can still be
//! replayed. The history keeps the most recent `capacity` readings; seqs in it are
//! contiguous, so a lookup is an index computation.

use std::collections::VecDeque;

use messages::SensorReading;
use serde::Serialize;

/// An inclusive range of seqs, `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeqRange {
    /// First seq of the range.
    pub from: u64,
    /// Last seq of the range (inclusive).
    pub to: u64,
}

/// What the history holds of a requested range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lookup {
    /// The readings found, in seq order.
    pub readings: Vec<SensorReading>,
    /// The parts of the range the history does not hold: already evicted (below the oldest
    /// seq) or not taken yet (above the newest).
    pub unavailable: Vec<SeqRange>,
}

/// What the history can give of a replay request's range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    /// The readings held, in seq order.
    pub readings: Vec<SensorReading>,
    /// The part taken but no longer held (evicted): these readings are lost if the
    /// requester does not have them.
    pub evicted: Option<SeqRange>,
    /// The part not taken yet: nothing is lost there.
    pub not_taken: Option<SeqRange>,
}

/// The most recent readings of one epoch, oldest first, stored compactly: the fields every
/// reading of an epoch shares (schema, sensor id, epoch, number of values) once, the seq
/// implied by the position, and per reading only its `taken_at` and its values, each in one
/// contiguous ring. A reading with 3 values costs 20 bytes ([`History::bytes_per_reading`]),
/// where a `SensorReading` with its own `String` and `Vec` costs well over 100.
#[derive(Debug, Clone)]
pub struct History {
    /// Most readings kept (`--history`); 0 keeps none.
    capacity: usize,
    /// Most bytes the readings may take (`--history-bytes`); with the values per reading,
    /// this bounds the readings kept too.
    max_bytes: usize,
    /// Schema of the readings held.
    schema: u8,
    /// Sensor id of the readings held.
    sensor_id: String,
    /// Epoch of the readings held.
    epoch: u64,
    /// Values per reading held.
    stride: usize,
    /// Seq of the oldest reading held (meaningful while `taken_at` is not empty).
    oldest: u64,
    /// `taken_at` of each reading held, oldest first.
    taken_at: VecDeque<u64>,
    /// The values of the readings held, `stride` per reading, oldest first.
    values: VecDeque<u32>,
    /// Seq of the newest reading pushed, held or not (0 before the first).
    last_seq: u64,
}

impl History {
    /// An empty history keeping at most `capacity` readings, and at most `max_bytes` of
    /// them (see [`History::bytes_per_reading`]).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            capacity,
            max_bytes,
            schema: messages::SCHEMA_VERSION,
            sensor_id: String::new(),
            epoch: 0,
            stride: 0,
            oldest: 0,
            taken_at: VecDeque::new(),
            values: VecDeque::new(),
            last_seq: 0,
        }
    }

    /// What one reading with `values` values costs in the history, in bytes: its `taken_at`
    /// and its values (plus the ring's spare room, at most as much again).
    pub const fn bytes_per_reading(values: usize) -> usize {
        8 + 4 * values
    }

    /// Most readings held with `values` values per reading: `--history`, or fewer when
    /// `--history-bytes` is the tighter bound.
    pub fn capacity_for(&self, values: usize) -> usize {
        self.capacity
            .min(self.max_bytes / Self::bytes_per_reading(values))
    }

    /// Adds the newest reading, evicting the oldest when full.
    ///
    /// Its seq must follow the newest one held, and it must share the held readings' sensor
    /// id, epoch and number of values (the sensor takes readings in seq order, all alike); a
    /// reading that does not restarts the history, which keeps it contiguous.
    pub fn push(&mut self, reading: SensorReading) {
        self.last_seq = reading.seq;
        let capacity = self.capacity_for(reading.values.len());
        if capacity == 0 {
            self.clear();
            return;
        }
        let follows = self
            .newest_seq()
            .is_some_and(|newest| reading.seq == newest.wrapping_add(1));
        let alike = reading.epoch == self.epoch
            && reading.values.len() == self.stride
            && reading.schema == self.schema
            && reading.sensor_id == self.sensor_id;
        if !(follows && alike) {
            self.clear();
            self.schema = reading.schema;
            self.sensor_id = reading.sensor_id;
            self.epoch = reading.epoch;
            self.stride = reading.values.len();
            self.oldest = reading.seq;
        }
        while self.taken_at.len() >= capacity {
            self.taken_at.pop_front();
            self.values.drain(..self.stride);
            self.oldest += 1;
        }
        self.taken_at.push_back(reading.taken_at);
        self.values.extend(reading.values);
    }

    /// Drops every reading held.
    fn clear(&mut self) {
        self.taken_at.clear();
        self.values.clear();
    }

    /// Number of readings held.
    pub fn len(&self) -> usize {
        self.taken_at.len()
    }

    /// Whether no reading is held.
    pub fn is_empty(&self) -> bool {
        self.taken_at.is_empty()
    }

    /// Bytes the held readings take in their rings (allocated room included).
    pub fn allocated_bytes(&self) -> usize {
        self.taken_at.capacity() * 8 + self.values.capacity() * 4
    }

    /// Seq of the oldest reading held.
    pub fn oldest_seq(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.oldest)
    }

    /// Seq of the newest reading held.
    pub fn newest_seq(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.oldest + self.taken_at.len() as u64 - 1)
    }

    /// The reading with this seq, if held, as it was taken.
    pub fn get(&self, seq: u64) -> Option<SensorReading> {
        let index = usize::try_from(seq.checked_sub(self.oldest_seq()?)?).ok()?;
        let taken_at = *self.taken_at.get(index)?;
        let start = index * self.stride;
        Some(SensorReading {
            schema: self.schema,
            sensor_id: self.sensor_id.clone(),
            epoch: self.epoch,
            seq,
            taken_at,
            values: self
                .values
                .range(start..start + self.stride)
                .copied()
                .collect(),
        })
    }

    /// Seq of the newest reading pushed, whether still held or not (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The oldest seq a replay can still send, as announced in `SensorStatus::oldest_seq`:
    /// the oldest held, else the one after the last taken (nothing older is held), and 0
    /// before the first reading.
    pub fn replayable_from(&self) -> u64 {
        match self.oldest_seq() {
            Some(oldest) => oldest,
            None if self.last_seq == 0 => 0,
            None => self.last_seq.saturating_add(1),
        }
    }

    /// What a replay of `from..=to` can send: the readings held, the part evicted (lost
    /// unless the requester has it) and the part not taken yet. Seq 0 is never taken.
    pub fn replay(&self, from: u64, to: u64) -> Replay {
        let mut replay = Replay::default();
        let from = from.max(1);
        if from > to {
            return replay;
        }
        if to > self.last_seq {
            replay.not_taken = Some(SeqRange {
                from: from.max(self.last_seq + 1),
                to,
            });
        }
        let taken_to = to.min(self.last_seq);
        if from > taken_to {
            return replay;
        }
        let oldest = self.oldest_seq().unwrap_or(self.last_seq + 1);
        if from < oldest {
            replay.evicted = Some(SeqRange {
                from,
                to: taken_to.min(oldest - 1),
            });
        }
        let start = from.max(oldest);
        if start <= taken_to {
            replay
                .readings
                .extend((start..=taken_to).filter_map(|seq| self.get(seq)));
        }
        replay
    }

    /// The readings `from..=to` that are held, and the parts that are not.
    pub fn range(&self, from: u64, to: u64) -> Lookup {
        let mut lookup = Lookup::default();
        if from > to {
            return lookup;
        }
        let (Some(oldest), Some(newest)) = (self.oldest_seq(), self.newest_seq()) else {
            lookup.unavailable.push(SeqRange { from, to });
            return lookup;
        };
        if from < oldest {
            lookup.unavailable.push(SeqRange {
                from,
                to: to.min(oldest - 1),
            });
        }
        let start = from.max(oldest);
        let end = to.min(newest);
        if start <= end {
            lookup
                .readings
                .extend((start..=end).filter_map(|seq| self.get(seq)));
        }
        if to > newest {
            lookup.unavailable.push(SeqRange {
                from: from.max(newest + 1),
                to,
            });
        }
        lookup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seq: u64) -> SensorReading {
        SensorReading {
            schema: messages::SCHEMA_VERSION,
            sensor_id: "s".to_owned(),
            epoch: 1,
            seq,
            taken_at: seq,
            values: vec![1],
        }
    }

    fn seqs(lookup: &Lookup) -> Vec<u64> {
        lookup.readings.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn keeps_the_most_recent() {
        let mut h = History::new(3, usize::MAX);
        for seq in 1..=5 {
            h.push(reading(seq));
        }
        assert_eq!(h.len(), 3);
        assert_eq!((h.oldest_seq(), h.newest_seq()), (Some(3), Some(5)));
        assert!(h.get(2).is_none());
        assert_eq!(h.get(4).unwrap().seq, 4);
        assert!(h.get(6).is_none());
    }

    #[test]
    fn range_reports_what_is_missing() {
        let mut h = History::new(3, usize::MAX);
        for seq in 1..=5 {
            h.push(reading(seq));
        }
        let all = h.range(1, 7);
        assert_eq!(seqs(&all), [3, 4, 5]);
        assert_eq!(
            all.unavailable,
            [SeqRange { from: 1, to: 2 }, SeqRange { from: 6, to: 7 }]
        );
        let inside = h.range(4, 4);
        assert_eq!(seqs(&inside), [4]);
        assert!(inside.unavailable.is_empty());
        let evicted = h.range(1, 2);
        assert!(evicted.readings.is_empty());
        assert_eq!(evicted.unavailable, [SeqRange { from: 1, to: 2 }]);
        let future = h.range(9, 10);
        assert_eq!(future.unavailable, [SeqRange { from: 9, to: 10 }]);
        assert_eq!(h.range(5, 4), Lookup::default());
    }

    #[test]
    fn empty_and_zero_capacity() {
        let mut h = History::new(0, usize::MAX);
        h.push(reading(1));
        assert!(h.is_empty());
        assert_eq!(h.range(1, 1).unavailable, [SeqRange { from: 1, to: 1 }]);
    }

    #[test]
    fn replay_tells_evicted_from_not_yet_taken() {
        let mut h = History::new(3, usize::MAX);
        for seq in 1..=5 {
            h.push(reading(seq));
        }
        assert_eq!(h.last_seq(), 5);
        let r = h.replay(1, 7);
        assert_eq!(
            r.readings.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(r.evicted, Some(SeqRange { from: 1, to: 2 }));
        assert_eq!(r.not_taken, Some(SeqRange { from: 6, to: 7 }));
        let r = h.replay(4, 5);
        assert_eq!((r.readings.len(), r.evicted, r.not_taken), (2, None, None));
        let r = h.replay(0, 1);
        assert_eq!(
            (r.readings.len(), r.evicted),
            (0, Some(SeqRange { from: 1, to: 1 }))
        );
        let r = h.replay(9, 9);
        assert_eq!((r.readings.len(), r.evicted), (0, None));
        assert_eq!(r.not_taken, Some(SeqRange { from: 9, to: 9 }));
        assert_eq!(h.replay(5, 4), Replay::default());
    }

    #[test]
    fn replay_without_history_evicts_everything_taken() {
        let mut h = History::new(0, usize::MAX);
        h.push(reading(1));
        h.push(reading(2));
        let r = h.replay(1, 3);
        assert!(r.readings.is_empty());
        assert_eq!(r.evicted, Some(SeqRange { from: 1, to: 2 }));
        assert_eq!(r.not_taken, Some(SeqRange { from: 3, to: 3 }));
    }

    #[test]
    fn readings_come_back_exactly_as_taken() {
        let mut h = History::new(4, usize::MAX);
        let taken: Vec<SensorReading> = (1..=6)
            .map(|seq| SensorReading {
                schema: messages::SCHEMA_VERSION,
                sensor_id: "sensor-7".to_owned(),
                epoch: 99,
                seq,
                taken_at: 1_000 + seq * 7,
                values: vec![seq as u32, u32::MAX, 0],
            })
            .collect();
        for r in &taken {
            h.push(r.clone());
        }
        assert_eq!(h.range(1, 6).readings, taken[2..]);
        assert_eq!(h.replay(3, 6).readings, taken[2..]);
        assert_eq!(h.get(5), Some(taken[4].clone()));
    }

    #[test]
    fn bytes_bound_the_readings_kept() {
        let per = History::bytes_per_reading(40);
        assert_eq!(per, 168);
        let mut h = History::new(100_000, 10 * per);
        assert_eq!(h.capacity_for(40), 10);
        assert_eq!(h.capacity_for(3), 84);
        for seq in 1..=50 {
            h.push(SensorReading {
                values: vec![1; 40],
                ..reading(seq)
            });
        }
        assert_eq!(h.len(), 10);
        assert_eq!((h.oldest_seq(), h.newest_seq()), (Some(41), Some(50)));
        assert!(
            h.allocated_bytes() <= 2 * 10 * per,
            "{}",
            h.allocated_bytes()
        );
    }

    #[test]
    fn a_full_default_history_is_small() {
        // --history 100,000 with --values 3: 20 bytes a reading, 2 MB, where SensorReadings
        // took about 24 MB.
        let mut h = History::new(100_000, usize::MAX);
        for seq in 1..=150_000 {
            h.push(SensorReading {
                values: vec![1, 2, 3],
                ..reading(seq)
            });
        }
        assert_eq!(h.len(), 100_000);
        assert!(
            h.allocated_bytes() <= 2 * 100_000 * History::bytes_per_reading(3),
            "{}",
            h.allocated_bytes()
        );
    }

    #[test]
    fn another_epoch_or_shape_restarts_the_history() {
        let mut h = History::new(10, usize::MAX);
        h.push(reading(1));
        h.push(SensorReading {
            epoch: 2,
            ..reading(2)
        });
        assert_eq!((h.oldest_seq(), h.len()), (Some(2), 1));
        h.push(SensorReading {
            epoch: 2,
            values: vec![1, 2],
            ..reading(3)
        });
        assert_eq!((h.oldest_seq(), h.len()), (Some(3), 1));
    }

    #[test]
    fn a_seq_jump_restarts_the_history() {
        let mut h = History::new(10, usize::MAX);
        h.push(reading(1));
        h.push(reading(2));
        h.push(reading(7));
        assert_eq!((h.oldest_seq(), h.newest_seq()), (Some(7), Some(7)));
    }
}
