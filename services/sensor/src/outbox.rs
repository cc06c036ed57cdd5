//! The outbox: encoded readings that nsqd has not confirmed yet.
//!
//! A reading enters the outbox when it is taken and leaves it in a batch handed to the
//! publisher. When the publish fails in a way that may pass, the batch comes back
//! ([`Outbox::put_back`]) and is published again later; only a confirmed publish removes a
//! reading for good. The outbox is bounded: when it is full, the **oldest** reading is
//! dropped to make room (the newest readings are the most valuable, and the dropped ones are
//! still in the history for replay). Readings leave in seq order.

use std::collections::BTreeMap;

use bytes::Bytes;

/// One reading waiting to be published: its seq and its encoded message.
pub type Pending = (u64, Bytes);

/// Bounded, seq-ordered queue of readings awaiting nsqd's confirmation.
#[derive(Debug)]
pub struct Outbox {
    /// Most readings held.
    capacity: usize,
    /// The readings, by seq.
    pending: BTreeMap<u64, Bytes>,
    /// Readings dropped because the outbox was full, since it was created.
    dropped: u64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` readings (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            pending: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Readings waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Readings dropped so far because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Adds a reading; returns the seqs dropped to make room (oldest first).
    pub fn push(&mut self, seq: u64, body: Bytes) -> Vec<u64> {
        self.pending.insert(seq, body);
        self.trim()
    }

    /// Takes up to `max` of the oldest readings, in seq order.
    pub fn take(&mut self, max: usize) -> Vec<Pending> {
        self.take_bounded(max, usize::MAX)
    }

    /// Takes up to `max` of the oldest readings, in seq order, stopping before their bodies
    /// add up to more than `max_bytes` (but always taking at least one when not empty).
    pub fn take_bounded(&mut self, max: usize, max_bytes: usize) -> Vec<Pending> {
        let mut batch = Vec::with_capacity(max.min(self.pending.len()));
        let mut bytes = 0usize;
        while batch.len() < max {
            let Some(mut entry) = self.pending.first_entry() else {
                break;
            };
            let size = entry.get_mut().len();
            if !batch.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            batch.push(entry.remove_entry());
        }
        batch
    }

    /// Returns a batch whose publish failed, to be published again; returns the seqs dropped
    /// when that overfills the outbox (oldest first).
    pub fn put_back(&mut self, batch: Vec<Pending>) -> Vec<u64> {
        self.pending.extend(batch);
        self.trim()
    }

    /// Drops the oldest readings beyond the capacity.
    fn trim(&mut self) -> Vec<u64> {
        let mut dropped = Vec::new();
        while self.pending.len() > self.capacity {
            if let Some((seq, _)) = self.pending.pop_first() {
                dropped.push(seq);
            }
        }
        self.dropped += dropped.len() as u64;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(seq: u64) -> Bytes {
        Bytes::from(seq.to_string())
    }

    #[test]
    fn takes_in_seq_order() {
        let mut o = Outbox::new(10);
        for seq in [3, 1, 2] {
            assert!(o.push(seq, body(seq)).is_empty());
        }
        let batch = o.take(2);
        assert_eq!(batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(o.len(), 1);
        assert_eq!(o.take(5).len(), 1);
        assert!(o.is_empty());
        assert!(o.take(5).is_empty());
    }

    #[test]
    fn batches_are_bounded_in_bytes() {
        let mut o = Outbox::new(10);
        for seq in 1..=5 {
            o.push(seq, Bytes::from(vec![0u8; 40]));
        }
        assert_eq!(o.take_bounded(10, 100).len(), 2);
        assert_eq!(
            o.take_bounded(10, 10).len(),
            1,
            "at least one, even when too big"
        );
        assert_eq!(o.take_bounded(1, 1000).len(), 1);
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn full_outbox_drops_the_oldest() {
        let mut o = Outbox::new(3);
        for seq in 1..=3 {
            o.push(seq, body(seq));
        }
        assert_eq!(o.push(4, body(4)), [1]);
        assert_eq!(o.push(5, body(5)), [2]);
        assert_eq!(o.dropped(), 2);
        let batch = o.take(10);
        assert_eq!(batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4, 5]);
    }

    #[test]
    fn failed_batch_comes_back_and_may_overflow() {
        let mut o = Outbox::new(4);
        for seq in 1..=4 {
            o.push(seq, body(seq));
        }
        let batch = o.take(2); // 1, 2 in flight
        o.push(5, body(5));
        o.push(6, body(6));
        assert_eq!(o.len(), 4);
        // The publish of 1 and 2 failed: they come back, and being the oldest, go again.
        assert_eq!(o.put_back(batch), [1, 2]);
        assert_eq!(o.dropped(), 2);
        assert_eq!(o.take(1)[0], (3, body(3)));
    }
}
