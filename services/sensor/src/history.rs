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

/// The most recent readings of one epoch, oldest first.
#[derive(Debug, Clone)]
pub struct History {
    /// Most readings kept; 0 keeps none.
    capacity: usize,
    /// The readings, with contiguous increasing seqs.
    readings: VecDeque<SensorReading>,
    /// Seq of the newest reading pushed, held or not (0 before the first).
    last_seq: u64,
}

impl History {
    /// An empty history keeping at most `capacity` readings.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            readings: VecDeque::with_capacity(capacity.min(4096)),
            last_seq: 0,
        }
    }

    /// Adds the newest reading, evicting the oldest when full.
    ///
    /// Its seq must follow the newest one held (the sensor takes readings in seq order); a
    /// reading that does not restarts the history, which keeps the seqs contiguous.
    pub fn push(&mut self, reading: SensorReading) {
        self.last_seq = reading.seq;
        if self.capacity == 0 {
            return;
        }
        if self
            .newest_seq()
            .is_some_and(|newest| reading.seq != newest.wrapping_add(1))
        {
            self.readings.clear();
        }
        if self.readings.len() == self.capacity {
            self.readings.pop_front();
        }
        self.readings.push_back(reading);
    }

    /// Number of readings held.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// Whether no reading is held.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// Seq of the oldest reading held.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.readings.front().map(|r| r.seq)
    }

    /// Seq of the newest reading held.
    pub fn newest_seq(&self) -> Option<u64> {
        self.readings.back().map(|r| r.seq)
    }

    /// The reading with this seq, if held.
    pub fn get(&self, seq: u64) -> Option<&SensorReading> {
        let oldest = self.oldest_seq()?;
        let index = usize::try_from(seq.checked_sub(oldest)?).ok()?;
        self.readings.get(index)
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
                .extend((start..=taken_to).filter_map(|seq| self.get(seq)).cloned());
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
                .extend((start..=end).filter_map(|seq| self.get(seq)).cloned());
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
        let mut h = History::new(3);
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
        let mut h = History::new(3);
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
        let mut h = History::new(0);
        h.push(reading(1));
        assert!(h.is_empty());
        assert_eq!(h.range(1, 1).unavailable, [SeqRange { from: 1, to: 1 }]);
    }

    #[test]
    fn replay_tells_evicted_from_not_yet_taken() {
        let mut h = History::new(3);
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
        let mut h = History::new(0);
        h.push(reading(1));
        h.push(reading(2));
        let r = h.replay(1, 3);
        assert!(r.readings.is_empty());
        assert_eq!(r.evicted, Some(SeqRange { from: 1, to: 2 }));
        assert_eq!(r.not_taken, Some(SeqRange { from: 3, to: 3 }));
    }

    #[test]
    fn a_seq_jump_restarts_the_history() {
        let mut h = History::new(10);
        h.push(reading(1));
        h.push(reading(2));
        h.push(reading(7));
        assert_eq!((h.oldest_seq(), h.newest_seq()), (Some(7), Some(7)));
    }
}
