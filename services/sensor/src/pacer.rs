//! Pacing of readings at a fixed rate.
//!
//! Rather than sleeping `1/rate` between readings (which drifts, and cannot go below the
//! timer's 1 ms resolution), the pacer says how many readings are *due* after a given time
//! since the start: reading `n` (1-based) is due at `(n - 1) / rate` seconds. The sensor
//! takes every due reading at each wake-up, so 2,000 readings/s work with a 1 ms timer, and a
//! late wake-up is caught up rather than lost.

use std::time::Duration;

/// Which readings are due when, at `rate` readings per second (non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    /// Readings per second.
    rate: u32,
}

impl Pacer {
    /// A pacer for `rate` readings per second; `None` when `rate` is 0 (not paced).
    pub fn new(rate: u32) -> Option<Self> {
        (rate > 0).then_some(Self { rate })
    }

    /// How many readings are due `elapsed` after the start (the first one at once).
    pub fn due(&self, elapsed: Duration) -> u64 {
        let due = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000 + 1;
        u64::try_from(due).unwrap_or(u64::MAX)
    }

    /// When reading `n` (1-based) is due, as time since the start.
    pub fn due_at(&self, n: u64) -> Duration {
        // Rounded up, so that at `due_at(n)` the reading `n` is really due.
        let nanos =
            (u128::from(n.saturating_sub(1)) * 1_000_000_000).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_is_not_paced() {
        assert!(Pacer::new(0).is_none());
    }

    #[test]
    fn due_counts() {
        let p = Pacer::new(10).unwrap();
        assert_eq!(p.due(Duration::ZERO), 1);
        assert_eq!(p.due(Duration::from_millis(99)), 1);
        assert_eq!(p.due(Duration::from_millis(100)), 2);
        assert_eq!(p.due(Duration::from_secs(1)), 11);
        let fast = Pacer::new(2000).unwrap();
        assert_eq!(fast.due(Duration::from_millis(1)), 3);
        assert_eq!(fast.due(Duration::from_secs(10)), 20_001);
    }

    #[test]
    fn due_at_is_consistent_with_due() {
        for rate in [1, 3, 7, 10, 333, 2000, 1_000_000] {
            let p = Pacer::new(rate).unwrap();
            for n in 1..200 {
                let at = p.due_at(n);
                assert!(p.due(at) >= n, "rate {rate}, n {n}");
                if let Some(before) = at.checked_sub(Duration::from_nanos(1)) {
                    assert!(p.due(before) < n, "rate {rate}, n {n}: due too late");
                }
            }
        }
    }
}
