//! Jobs started on a schedule, a bounded number at a time: the sensor's pushes at `--rate`
//! and the app's pulls every `--interval`.
//!
//! Job `n` (0-based) is due at `n × period` after the start; a late wake-up starts every job
//! that is due (none is skipped), and a period of zero starts them as fast as the concurrency
//! allows. When `concurrency` jobs are running, the next waits: the schedule slips rather than
//! growing without bound.

use std::{future::Future, sync::Arc, time::Duration};

use suite_common::shutdown::CancellationToken;
use tokio::{sync::Semaphore, time::Instant};

/// How the jobs are started.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Time between two jobs' start; zero for as fast as possible.
    pub period: Duration,
    /// Jobs running at most at once (at least 1).
    pub concurrency: usize,
    /// Stop after this many jobs (`None`: until cancelled).
    pub count: Option<u64>,
}

/// Starts `job(n)` for n = 0, 1, ... on `schedule` until `count` jobs were started or `stop`
/// is cancelled, then waits for the running ones. Returns the number started.
pub async fn run<F, Fut>(schedule: Schedule, stop: &CancellationToken, mut job: F) -> u64
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = u32::try_from(schedule.concurrency.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(permits as usize));
    let start = Instant::now();
    let mut n: u64 = 0;
    while schedule.count.is_none_or(|c| n < c) {
        let due = start
            + schedule
                .period
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        let slot = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            slot = async {
                tokio::time::sleep_until(due).await;
                Arc::clone(&slots).acquire_owned().await
            } => slot,
        };
        let Ok(slot) = slot else { break };
        let work = job(n);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
        n += 1;
    }
    // Every slot free again: the running jobs are done.
    let _ = slots.acquire_many(permits).await;
    n
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn starts_on_schedule_and_bounds_the_running_jobs() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let schedule = Schedule {
            period: Duration::from_millis(10),
            concurrency: 2,
            count: Some(6),
        };
        let started = run(schedule, &stop, |_| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .await;
        assert_eq!(started, 6);
        assert_eq!(most.load(Ordering::SeqCst), 2, "at most 2 at once");
        assert_eq!(running.load(Ordering::SeqCst), 0, "all done on return");
    }

    #[tokio::test]
    async fn cancelling_stops_starting() {
        let stop = CancellationToken::new();
        stop.cancel();
        let schedule = Schedule {
            period: Duration::ZERO,
            concurrency: 1,
            count: None,
        };
        assert_eq!(run(schedule, &stop, |_| async {}).await, 0);
    }
}
