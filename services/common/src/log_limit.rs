//! Keeping a repeated warning readable: at most one line a second, with the count of the
//! ones held back. A hostile publisher can make a service warn on every message; the log
//! must still say so without growing with the attack.

use std::time::{Duration, Instant};

/// Lets a repeated warning through at most once a second, counting the ones held back.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// When a warning last went through.
    last: Option<Instant>,
    /// Warnings held back since then.
    suppressed: u64,
}

impl LogLimiter {
    /// `Some(held back since the last one)` when this warning should be logged.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`LogLimiter::check`] at `now`.
    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_second() {
        let t0 = Instant::now();
        let mut l = LogLimiter::default();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(l.check_at(t0 + Duration::from_millis(999)), None);
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Some(2));
    }
}
