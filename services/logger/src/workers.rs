//! Per-worker counts over a sliding window: who did how much of the work lately.
//!
//! This makes NSQ's load balancing visible: `GET /workers` answers the counts and rates of
//! the last window (by default [`WINDOW`]; the logger uses its `--summary-interval`, so that a
//! worker that starts or stops shows in the very next summary), and every
//! `--summary-interval` the logger logs a line such as
//! `3 workers, 33% / 34% / 33%, 1200 results/s`. Counts are kept in one-second buckets, so
//! memory is bounded by the number of workers times the window's seconds.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Length of the sliding window, in seconds.
pub const WINDOW_SECS: u64 = 10;

/// Length of the sliding window.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(WINDOW_SECS);

/// Most workers counted apart; the results of any further worker ids within the window are
/// counted under [`OTHER_WORKERS`].
pub const MAX_WORKERS: usize = 1024;

/// Most workers whose share the summary line lists.
const SUMMARY_MAX_WORKERS: usize = 32;

/// The id under which the workers beyond [`MAX_WORKERS`] are counted.
pub const OTHER_WORKERS: &str = "(other workers)";

/// Results per worker per second, over a sliding window of whole seconds.
#[derive(Debug)]
pub struct WorkerWindow {
    /// Per worker: `(second, count)` buckets, oldest first, and the all-time total.
    workers: BTreeMap<String, (VecDeque<(u64, u64)>, u64)>,
    /// The first second anything was recorded (rates over a shorter history are not
    /// under-estimated).
    first: Option<u64>,
    /// The window's length in seconds (at least 1).
    window_secs: u64,
}

impl Default for WorkerWindow {
    /// A [`WINDOW`]-long window.
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

/// One worker's share of the recent work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerShare {
    /// The worker's id (from the results).
    pub worker_id: String,
    /// Results in the window.
    pub count: u64,
    /// Results per second over the window.
    pub rate: f64,
    /// Fraction of the window's results (0 to 1).
    pub share: f64,
    /// Results since the logger started.
    pub total: u64,
}

/// The window's figures, as answered by `GET /workers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The window's length in seconds.
    pub window_seconds: u64,
    /// Results in the window, all workers.
    pub count: u64,
    /// Results per second over the window, all workers.
    pub rate: f64,
    /// Workers with results in the window, by id.
    pub workers: Vec<WorkerShare>,
}

impl WorkerWindow {
    /// A window of `window`, rounded up to whole seconds (at least one).
    pub fn new(window: std::time::Duration) -> Self {
        let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        Self {
            workers: BTreeMap::new(),
            first: None,
            window_secs: secs.max(1),
        }
    }

    /// Records `n` results of `worker_id` at second `now` (any monotonic clock in seconds).
    pub fn record(&mut self, worker_id: &str, n: u64, now: u64) {
        self.first.get_or_insert(now);
        // Worker ids come from the results: a flood of forged ids shares one entry.
        let worker_id =
            if self.workers.len() >= MAX_WORKERS && !self.workers.contains_key(worker_id) {
                OTHER_WORKERS
            } else {
                worker_id
            };
        let (buckets, total) = match self.workers.get_mut(worker_id) {
            Some(entry) => entry,
            None => self.workers.entry(worker_id.to_owned()).or_default(),
        };
        *total += n;
        match buckets.back_mut() {
            Some((second, count)) if *second == now => *count += n,
            _ => buckets.push_back((now, n)),
        }
        Self::expire(buckets, now, self.window_secs);
    }

    /// The figures at second `now`; workers idle for a whole window are forgotten.
    ///
    /// Second `now` is still filling, so the figures are over the window's complete seconds,
    /// `now - window` to `now - 1` (fewer when the first result came later): counting the
    /// partial second as a whole one under-estimated the rate by up to one second's worth
    /// (a steady 10/s read as 8/s in a 5 s window). Before one second is complete, the
    /// figures are those of the current second.
    pub fn snapshot(&mut self, now: u64) -> Snapshot {
        let window = self.window_secs;
        for (buckets, _) in self.workers.values_mut() {
            Self::expire(buckets, now, window);
        }
        self.workers.retain(|_, (buckets, _)| !buckets.is_empty());
        let complete = self
            .first
            .map_or(0, |first| now.saturating_sub(first).min(window));
        let (from, until, span) = if complete == 0 {
            (now, now + 1, 1)
        } else {
            (now - complete, now, complete)
        };
        let counts: Vec<(&String, u64, u64)> = self
            .workers
            .iter()
            .map(|(id, (buckets, total))| {
                let in_window = buckets
                    .iter()
                    .filter(|(second, _)| (from..until).contains(second))
                    .map(|(_, c)| c)
                    .sum();
                (id, in_window, *total)
            })
            .collect();
        let count: u64 = counts.iter().map(|(_, c, _)| c).sum();
        let workers = counts
            .into_iter()
            .map(|(id, c, total)| WorkerShare {
                worker_id: id.clone(),
                count: c,
                rate: c as f64 / span as f64,
                share: if count == 0 {
                    0.0
                } else {
                    c as f64 / count as f64
                },
                total,
            })
            .collect();
        Snapshot {
            window_seconds: window,
            count,
            rate: count as f64 / span as f64,
            workers,
        }
    }

    /// Drops the buckets that left the window at second `now` (the window's complete seconds
    /// and the current one are kept).
    fn expire(buckets: &mut VecDeque<(u64, u64)>, now: u64, window_secs: u64) {
        while buckets
            .front()
            .is_some_and(|(second, _)| second + window_secs < now)
        {
            buckets.pop_front();
        }
    }
}

impl Snapshot {
    /// The summary line, e.g. `3 workers, 33% / 34% / 33%, 1200 results/s`.
    pub fn summary(&self) -> String {
        let mut shares: Vec<String> = self
            .workers
            .iter()
            .take(SUMMARY_MAX_WORKERS)
            .map(|w| format!("{:.0}%", w.share * 100.0))
            .collect();
        if self.workers.len() > SUMMARY_MAX_WORKERS {
            shares.push(format!(
                "... ({} more)",
                self.workers.len() - SUMMARY_MAX_WORKERS
            ));
        }
        let noun = if self.workers.len() == 1 {
            "worker"
        } else {
            "workers"
        };
        if shares.is_empty() {
            format!("0 workers, {:.0} results/s", self.rate)
        } else {
            format!(
                "{} {noun}, {}, {:.0} results/s",
                self.workers.len(),
                shares.join(" / "),
                self.rate
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_worker_ids_share_one_entry() {
        let mut w = WorkerWindow::new(std::time::Duration::from_secs(5));
        for n in 0..(MAX_WORKERS + 500) {
            w.record(&format!("w{n}"), 1, 0);
        }
        let snap = w.snapshot(0);
        assert_eq!(snap.workers.len(), MAX_WORKERS + 1);
        let other = snap
            .workers
            .iter()
            .find(|s| s.worker_id == OTHER_WORKERS)
            .map(|s| s.count);
        assert_eq!(other, Some(500));
        assert_eq!(snap.count, (MAX_WORKERS + 500) as u64);
    }

    #[test]
    fn shares_and_rates() {
        let mut w = WorkerWindow::default();
        for second in 100..110 {
            w.record("a", 30, second);
            w.record("b", 60, second);
            w.record("c", 30, second);
        }
        let s = w.snapshot(110);
        assert_eq!(s.count, 1200);
        assert!((s.rate - 120.0).abs() < 1e-9);
        assert_eq!(s.workers.len(), 3);
        assert!((s.workers[1].share - 0.5).abs() < 1e-9);
        assert!((s.workers[0].rate - 30.0).abs() < 1e-9);
        assert_eq!(s.summary(), "3 workers, 25% / 50% / 25%, 120 results/s");
    }

    #[test]
    fn old_buckets_leave_the_window() {
        let mut w = WorkerWindow::default();
        w.record("a", 10, 0);
        w.record("b", 10, 5);
        let s = w.snapshot(11);
        assert_eq!(s.count, 10, "a's bucket from second 0 left the window");
        assert_eq!(s.workers.len(), 1);
        let s = w.snapshot(100);
        assert_eq!(s.count, 0);
        assert!(s.workers.is_empty());
        assert_eq!(s.summary(), "0 workers, 0 results/s");
        // Totals survive while the worker is active.
        w.record("c", 5, 200);
        w.record("c", 5, 201);
        assert_eq!(w.snapshot(202).workers[0].total, 10);
    }

    #[test]
    fn a_stopped_worker_leaves_a_short_window_at_once() {
        // The logger's window is its summary interval: a worker that stopped is gone from the
        // next summary, one that started is in it.
        let mut w = WorkerWindow::new(std::time::Duration::from_millis(2500));
        w.record("old", 10, 100);
        w.record("old", 10, 101);
        w.record("new", 10, 102);
        w.record("new", 10, 103);
        w.record("new", 10, 104);
        let s = w.snapshot(105);
        assert_eq!(s.window_seconds, 3);
        assert_eq!(s.workers.len(), 1, "{s:?}");
        assert_eq!(s.workers[0].worker_id, "new");
        assert_eq!(s.summary(), "1 worker, 100%, 10 results/s");
    }

    #[test]
    fn a_short_history_is_not_underestimated() {
        let mut w = WorkerWindow::default();
        w.record("a", 50, 7);
        w.record("a", 50, 8);
        let s = w.snapshot(9);
        assert!((s.rate - 50.0).abs() < 1e-9, "{}", s.rate);
        assert_eq!(s.summary(), "1 worker, 100%, 50 results/s");
    }

    /// A steady rate reads as that rate whenever the summary is taken, including at the start
    /// of a second whose bucket is still filling (it read 8/s for 10/s in a 5 s window).
    #[test]
    fn a_steady_rate_reads_right_at_any_phase() {
        let mut w = WorkerWindow::new(std::time::Duration::from_secs(5));
        for second in 0..30 {
            // 10 results a second, split over two workers.
            w.record("a", 5, second);
            // The summary comes early in the second: one result of it is in so far.
            if second >= 10 {
                let s = w.snapshot(second);
                assert!((s.rate - 10.0).abs() < 1e-9, "at {second}: {}", s.rate);
                assert_eq!(s.count, 50);
                assert_eq!(s.summary(), "2 workers, 50% / 50%, 10 results/s");
            }
            w.record("b", 5, second);
        }
        // /workers at any time between two summaries reads the same.
        let s = w.snapshot(30);
        assert!((s.rate - 10.0).abs() < 1e-9, "{}", s.rate);
    }
}
