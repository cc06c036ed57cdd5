//! The worker's computation and the envelopes it publishes, free of I/O.
//!
//! [`compute`] turns a [`SensorReading`] into a [`WorkResult`] (the squares of its values),
//! applying the staleness policy; [`dead_letter`] wraps a message the worker gives up on.
//! Everything here takes the clock as a parameter, so that it is tested without waiting.

use std::time::Duration;

use messages::{DeadLetter, SensorReading, WorkResult, SCHEMA_VERSION};

use crate::config::StalePolicy;

/// What to do with a decoded reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish this result (its `stale` flag set when the reading was stale under
    /// [`StalePolicy::Flag`]).
    Publish(WorkResult),
    /// The reading is stale under [`StalePolicy::Drop`]: finish it without a result.
    DropStale {
        /// How old the reading was.
        age: Duration,
    },
}

/// The square of each value, as `u64` (a `u32` squared always fits).
pub fn squares(values: &[u32]) -> Vec<u64> {
    values
        .iter()
        .map(|v| u64::from(*v) * u64::from(*v))
        .collect()
}

/// How old a reading taken at `taken_at` is at `now` (both Unix nanoseconds); zero when it
/// is from the future (clock skew between hosts).
pub fn age(taken_at: u64, now: u64) -> Duration {
    Duration::from_nanos(now.saturating_sub(taken_at))
}

/// The worker's answer to `reading`, computed at `now` (Unix nanoseconds).
pub fn compute(
    reading: SensorReading,
    worker_id: &str,
    now: u64,
    max_age: Option<Duration>,
    policy: StalePolicy,
) -> Verdict {
    let age = age(reading.taken_at, now);
    let stale = max_age.is_some_and(|max| age > max);
    if stale && policy == StalePolicy::Drop {
        return Verdict::DropStale { age };
    }
    Verdict::Publish(WorkResult {
        schema: SCHEMA_VERSION,
        squares: squares(&reading.values),
        sensor_id: reading.sensor_id,
        epoch: reading.epoch,
        seq: reading.seq,
        taken_at: reading.taken_at,
        values: reading.values,
        worker_id: worker_id.to_owned(),
        computed_at: now,
        stale,
    })
}

/// The envelope of a message given up on: its original bytes and why.
pub fn dead_letter(
    original: &[u8],
    topic: &str,
    channel: &str,
    attempts: u16,
    error: String,
    at: u64,
) -> DeadLetter {
    DeadLetter {
        schema: SCHEMA_VERSION,
        original: original.to_vec(),
        topic: topic.to_owned(),
        channel: channel.to_owned(),
        attempts,
        error,
        at,
    }
}

/// The delay before a requeued message is delivered again: 100 ms per attempt so far,
/// at most 10 s.
pub fn requeue_delay(attempts: u16) -> Duration {
    (Duration::from_millis(100) * u32::from(attempts.max(1))).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn reading(values: Vec<u32>, taken_at: u64) -> SensorReading {
        SensorReading {
            schema: SCHEMA_VERSION,
            sensor_id: "s1".to_owned(),
            epoch: 7,
            seq: 42,
            taken_at,
            values,
        }
    }

    #[test]
    fn squares_do_not_overflow() {
        assert_eq!(squares(&[0, 3, 4]), [0, 9, 16]);
        assert_eq!(squares(&[u32::MAX]), [18_446_744_065_119_617_025]);
        assert!(squares(&[]).is_empty());
    }

    #[test]
    fn result_carries_the_reading_identity() {
        let v = compute(
            reading(vec![2, 5], 10 * SEC),
            "w1",
            11 * SEC,
            None,
            StalePolicy::Drop,
        );
        let Verdict::Publish(r) = v else {
            panic!("{v:?}")
        };
        assert_eq!((r.sensor_id.as_str(), r.epoch, r.seq), ("s1", 7, 42));
        assert_eq!((r.values, r.squares), (vec![2, 5], vec![4, 25]));
        assert_eq!(
            (r.worker_id.as_str(), r.computed_at, r.taken_at),
            ("w1", 11 * SEC, 10 * SEC)
        );
        assert!(!r.stale);
        assert_eq!(r.schema, SCHEMA_VERSION);
    }

    #[test]
    fn stale_policies() {
        let max = Some(Duration::from_secs(30));
        let old = || reading(vec![1], 10 * SEC);
        let now = 41 * SEC; // 31 s old
        assert_eq!(
            compute(old(), "w", now, max, StalePolicy::Drop),
            Verdict::DropStale {
                age: Duration::from_secs(31)
            }
        );
        let Verdict::Publish(r) = compute(old(), "w", now, max, StalePolicy::Flag) else {
            panic!("flag publishes")
        };
        assert!(r.stale);
        // Exactly max-age old is not stale; no max-age means never stale.
        let v = compute(old(), "w", 40 * SEC, max, StalePolicy::Drop);
        assert!(matches!(
            v,
            Verdict::Publish(WorkResult { stale: false, .. })
        ));
        let v = compute(old(), "w", 1000 * SEC, None, StalePolicy::Drop);
        assert!(matches!(
            v,
            Verdict::Publish(WorkResult { stale: false, .. })
        ));
        // A reading from the future (clock skew) is not stale.
        assert_eq!(age(50 * SEC, 40 * SEC), Duration::ZERO);
    }

    #[test]
    fn dead_letter_keeps_the_original() {
        let d = dead_letter(
            b"\xc1garbage",
            "sensor_data",
            "worker",
            1,
            "bad".to_owned(),
            5,
        );
        assert_eq!(d.original, b"\xc1garbage");
        assert_eq!(
            (d.topic.as_str(), d.channel.as_str()),
            ("sensor_data", "worker")
        );
        assert_eq!((d.attempts, d.error.as_str(), d.at), (1, "bad", 5));
        assert_eq!(DeadLetter::decode(&d.encode().unwrap()).unwrap(), d);
    }

    #[test]
    fn requeue_delay_grows_and_is_capped() {
        assert_eq!(requeue_delay(0), Duration::from_millis(100));
        assert_eq!(requeue_delay(1), Duration::from_millis(100));
        assert_eq!(requeue_delay(3), Duration::from_millis(300));
        assert_eq!(requeue_delay(500), Duration::from_secs(10));
    }
}
