//! Capped exponential backoff, the one the whole suite uses: [`exponential`] for a delay
//! computed from an attempt count, [`Backoff`] for a retry loop with jitter. Neither overflows
//! nor panics at any attempt count.

use std::time::Duration;

use rand::Rng;

/// `initial * 2^doublings`, capped at `max`; `max` too when the product overflows.
///
/// Pure and exact (no jitter), for callers that show or test their delays: the consumer's
/// RDY backoff, the sensor's retry pause, the logger's replay requests. A caller that counts
/// attempts from 1 passes `attempt - 1` (saturating), so that the first pause is `initial`.
pub fn exponential(initial: Duration, max: Duration, doublings: u32) -> Duration {
    // `min(31)` keeps the shift in range; 2^31 times any non-zero `initial` of a nanosecond
    // or more is past any useful cap, and a product beyond `Duration::MAX` becomes `max`.
    let factor = 1u32 << doublings.min(31);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// A retry loop's delays for attempt 0, 1, 2, ...: [`exponential`] (`initial * 2^attempt`,
/// capped at `max`), then jittered to a value between half and all of it, so that many clients
/// do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at attempt 0; `max` below `initial` is taken as `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// Failed attempts in a row.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = exponential(self.initial, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jitter(d)
    }

    /// Back to attempt 0, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = half.as_nanos().min(u64::MAX as u128) as u64;
    half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_then_caps() {
        // (initial, max, doublings, expected)
        let cases: &[(Duration, Duration, u32, Duration)] = &[
            (100 * MS, 5000 * MS, 0, 100 * MS),
            (100 * MS, 5000 * MS, 1, 200 * MS),
            (100 * MS, 5000 * MS, 5, 3200 * MS),
            (100 * MS, 5000 * MS, 6, 5000 * MS),
            (100 * MS, 5000 * MS, 31, 5000 * MS),
            (100 * MS, 5000 * MS, u32::MAX, 5000 * MS),
            // The product overflows `Duration`: the cap, not a panic.
            (Duration::MAX, Duration::MAX, 1, Duration::MAX),
            (
                Duration::from_secs(u64::MAX / 4),
                Duration::MAX,
                3,
                Duration::MAX,
            ),
            // A cap below `initial` wins (the consumer's settings are not reordered).
            (100 * MS, 50 * MS, 0, 50 * MS),
            (Duration::ZERO, 5000 * MS, 40, Duration::ZERO),
            (
                Duration::from_nanos(1),
                Duration::MAX,
                31,
                Duration::from_nanos(1 << 31),
            ),
            (
                Duration::from_nanos(1),
                Duration::MAX,
                64,
                Duration::from_nanos(1 << 31),
            ),
        ];
        for &(initial, max, doublings, expected) in cases {
            assert_eq!(
                exponential(initial, max, doublings),
                expected,
                "exponential({initial:?}, {max:?}, {doublings})"
            );
        }
    }

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

    #[test]
    fn jitter_stays_between_half_and_all_of_the_exponential_delay() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..12u32 {
            let full = exponential(Duration::from_millis(100), Duration::from_secs(10), attempt);
            let d = b.next_delay();
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} of {full:?}"
            );
        }
    }
}
