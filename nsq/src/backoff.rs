//! Capped exponential backoff with jitter, without overflow or panics at any attempt count.

use std::time::Duration;

use rand::Rng;

/// Delays for attempt 0, 1, 2, ...: `initial * 2^attempt`, capped at `max`, then jittered to a
/// value between half and all of it, so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// Failed attempts in a row.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay, counting one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = capped(self.initial, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jitter(d)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `initial * 2^exp`, capped at `max`.
pub(crate) fn capped(initial: Duration, max: Duration, exp: u32) -> Duration {
    let factor = 1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = half.as_nanos().min(u64::MAX as u128) as u64;
    half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_without_overflow() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut last = Duration::ZERO;
        for i in 0..10_000u32 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(10), "attempt {i}: {d:?}");
            assert!(d >= Duration::from_millis(50));
            if i > 20 {
                assert!(
                    d >= Duration::from_secs(5),
                    "capped delays stay near the cap"
                );
            }
            last = d;
        }
        assert!(last >= Duration::from_secs(5));
        assert_eq!(b.attempt(), 10_000);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
