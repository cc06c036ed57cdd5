//! The sensor's main loop: take readings, publish them, retry what failed, flush at the end.
//!
//! One task owns the [`Outbox`] and the publishes in flight, so that no lock is needed for
//! them; the [`History`] is shared with the HTTP handler behind a mutex. Each turn of the loop
//! starts publishes while the outbox has readings (up to [`MAX_PARALLEL`] MPUBs of up to
//! [`MAX_BATCH`] readings in flight), then waits for whichever comes first:
//!
//! * the shutdown signal: stop taking readings, keep publishing for at most `flush_timeout`;
//! * a publish's answer: confirmed readings are done; on a transient failure the batch goes
//!   back to the outbox and publishing pauses with a growing delay; on a permanent one the
//!   readings are reported as failed (an error log, a counter);
//! * the next reading being due (`--rate N`), or room in the publish window (`--rate 0`,
//!   where taking readings waits for nsqd instead of overflowing the outbox).
//!
//! It ends when `--count` readings are all confirmed, or after a shutdown when the outbox is
//! empty or the flush timeout has passed; the [`Report`] says what happened to every reading.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use suite_common::unix_nanos;

use anyhow::Context as _;
use bytes::Bytes;
use messages::{SensorReading, SensorStatus, SCHEMA_VERSION};
use nsq::{Producer, PublishError};
use rand::{rngs::SmallRng, Rng as _, SeedableRng as _};
use suite_common::log_limit::LogLimiter;
use suite_common::shutdown::CancellationToken;
use tokio::{
    sync::watch,
    task::{self, JoinError, JoinSet},
    time::Instant,
};

use crate::{
    complete::{covers, Completed},
    config::Config,
    history::History,
    metrics as m,
    outbox::{Outbox, Pending},
    pacer::Pacer,
};

/// Most readings in one MPUB.
pub const MAX_BATCH: usize = 200;
/// Most bytes of readings in one MPUB (nsqd's default `--max-body-size` is 5 MiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most publishes (PUB or MPUB) awaiting nsqd's answer at once.
pub const MAX_PARALLEL: usize = 8;
/// With `--rate 0`, readings taken ahead of nsqd's confirmations (outbox plus in flight).
pub const FAST_WINDOW: usize = 2 * MAX_BATCH * MAX_PARALLEL;
/// First pause after a transient publish failure; doubles per failure in a row.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between publish retries.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Time allowed for the final status announcement, and again for closing the producer: with
/// the default flush timeout, a stop takes at most about 9 s, within `docker stop`'s 10 s.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--count` readings were taken and every one was dealt with.
    CountReached,
    /// Shutdown was asked and the outbox was flushed.
    Flushed,
    /// Shutdown was asked and the flush timeout passed with readings not confirmed.
    FlushTimedOut,
}

/// What happened to the readings of one run (one epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// This run's epoch.
    pub epoch: u64,
    /// Why the run ended.
    pub reason: StopReason,
    /// Readings taken; their seqs are `1..=taken`.
    pub taken: u64,
    /// Readings nsqd confirmed.
    pub confirmed: u64,
    /// Readings dropped from the full outbox (never published).
    pub dropped: u64,
    /// Readings whose publish failed permanently (rejected by nsqd).
    pub failed: u64,
    /// Readings still unconfirmed when the flush timeout passed.
    pub unflushed: u64,
}

impl Report {
    /// Whether every reading taken was confirmed by nsqd.
    pub fn all_confirmed(&self) -> bool {
        self.confirmed == self.taken
    }
}

/// The result of one PUB or MPUB: the readings it carried and nsqd's answer.
struct BatchResult {
    /// The readings sent.
    batch: Vec<Pending>,
    /// nsqd's answer.
    result: Result<(), PublishError>,
}

/// State of the sensor's loop; see the module documentation.
pub(crate) struct Engine {
    /// The validated configuration.
    settings: Arc<Config>,
    /// This run's epoch.
    epoch: u64,
    /// Publishes to nsqd.
    producer: Producer,
    /// Recent readings, shared with `GET /readings`.
    history: Arc<Mutex<History>>,
    /// Readings not yet confirmed and not in flight.
    outbox: Outbox,
    /// Publishes awaiting nsqd's answer.
    publishes: JoinSet<BatchResult>,
    /// Readings carried by `publishes`.
    in_flight: usize,
    /// The seqs each publish in flight carries, by task, to report them if it never ends.
    in_flight_seqs: HashMap<task::Id, Vec<u64>>,
    /// Seq of the newest reading taken (0 before the first).
    last_seq: u64,
    /// Readings confirmed by nsqd.
    confirmed: u64,
    /// Highest seq confirmed by nsqd, read by the status announcer.
    confirmed_seq: Arc<AtomicU64>,
    /// Set once `--count` is reached: the status announcer's announcements are final.
    final_announced: Arc<AtomicBool>,
    /// Readings that failed permanently.
    failed: u64,
    /// Transient failures in a row (drives the retry pause).
    failures_in_a_row: u32,
    /// While set, no publish is started before this instant.
    retry_at: Option<Instant>,
    /// Source of the random values.
    rng: SmallRng,
    /// Keeps "outbox full" warnings to one a second.
    drop_warnings: LogLimiter,
    /// Keeps "publish failed" warnings to one a second.
    failure_warnings: LogLimiter,
    /// Cancelled when the loop is over, before the final status and the producer's close:
    /// what else publishes with the producer (the replay responder) stops there.
    finishing: CancellationToken,
}

impl Engine {
    /// A loop for a new epoch; nothing runs until [`Engine::run`].
    pub(crate) fn new(
        settings: Arc<Config>,
        epoch: u64,
        producer: Producer,
        history: Arc<Mutex<History>>,
        confirmed_seq: Arc<AtomicU64>,
        finishing: CancellationToken,
    ) -> Self {
        let outbox = Outbox::new(settings.outbox_size);
        Self {
            settings,
            epoch,
            producer,
            history,
            outbox,
            publishes: JoinSet::new(),
            in_flight: 0,
            in_flight_seqs: HashMap::new(),
            last_seq: 0,
            confirmed: 0,
            confirmed_seq,
            final_announced: Arc::new(AtomicBool::new(false)),
            failed: 0,
            failures_in_a_row: 0,
            retry_at: None,
            rng: SmallRng::from_rng(&mut rand::rng()),
            drop_warnings: LogLimiter::default(),
            failure_warnings: LogLimiter::default(),
            finishing,
        }
    }

    /// Runs until `--count` is reached (and `--linger` has passed) or `shutdown` resolves
    /// and the outbox is flushed (or the flush timeout passes); then announces the final
    /// status and closes the producer.
    pub(crate) async fn run<F>(
        mut self,
        shutdown: F,
        mut completed: watch::Receiver<Completed>,
    ) -> anyhow::Result<Report>
    where
        F: Future<Output = ()>,
    {
        let announcer = tokio::spawn(announce_status(
            self.producer.clone(),
            Arc::clone(&self.settings),
            self.epoch,
            Arc::clone(&self.confirmed_seq),
            Arc::clone(&self.history),
            Arc::clone(&self.final_announced),
        ));
        tokio::pin!(shutdown);
        let reason = self.run_loop(shutdown.as_mut()).await;
        let linger = self.settings.linger.get();
        if matches!(reason, Ok(StopReason::CountReached)) && !linger.is_zero() {
            // CountReached means the shutdown future has not resolved yet. No reading will
            // follow: say so at once (and again with every periodic announcement), so that a
            // logger can tell when nothing of the epoch is missing.
            self.final_announced.store(true, Ordering::Relaxed);
            let status = self.status(true);
            if let Err(e) = publish_status(
                &self.producer,
                &self.settings.status_topic,
                &status,
                CLOSE_TIMEOUT,
            )
            .await
            {
                tracing::debug!(error = %e, "final status not announced yet (announced again)");
            }
            tracing::info!(
                taken = self.last_seq,
                linger = ?linger,
                "all readings confirmed: still answering replay requests until a logger \
                 announces the epoch complete, SIGTERM, or the end of --linger"
            );
            let last_seq = self.last_seq;
            let complete = async {
                completed
                    .wait_for(|c| covers(c, last_seq))
                    .await
                    .map(|c| c.as_ref().map(|(_, by)| by.clone()).unwrap_or_default())
            };
            tokio::select! {
                () = shutdown.as_mut() => {}
                () = tokio::time::sleep(linger) => {
                    tracing::warn!(
                        linger = ?linger,
                        "no logger announced the epoch complete within --linger: stopping; \
                         readings still asked for after this are reported lost by the logger"
                    );
                }
                done = complete => match done {
                    Ok(by) => {
                        tracing::info!(
                            logger = %by,
                            "a logger announced the epoch complete: nothing can still be asked for"
                        );
                    }
                    // The watcher is gone (it cannot start): wait for the other two.
                    Err(_) => tokio::select! {
                        () = shutdown.as_mut() => {}
                        () = tokio::time::sleep(linger) => {}
                    },
                },
            }
        }
        // The final announcement is the engine's own: no periodic one may follow it.
        announcer.abort();
        self.finishing.cancel();
        self.finish(reason?).await
    }

    /// The loop itself; returns why it ended.
    async fn run_loop<F>(&mut self, shutdown: F) -> anyhow::Result<StopReason>
    where
        F: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let start = Instant::now();
        let pacer = Pacer::new(self.settings.rate);
        let count = self.settings.count.unwrap_or(u64::MAX);
        // Never more ahead than the outbox holds, so that `--rate 0` never drops a reading.
        let window = FAST_WINDOW.min(self.settings.outbox_size);
        let mut flush_deadline: Option<Instant> = None;

        let reason = loop {
            self.start_publishes();
            let idle = self.outbox.is_empty() && self.publishes.is_empty();
            if idle && flush_deadline.is_some() {
                break StopReason::Flushed;
            }
            if idle && self.last_seq >= count {
                break StopReason::CountReached;
            }

            let taking = flush_deadline.is_none() && self.last_seq < count;
            let next_reading = match (taking, pacer) {
                (false, _) => None,
                (true, Some(pacer)) => Some(start + pacer.due_at(self.last_seq + 1)),
                (true, None) => (self.outbox.len() + self.in_flight < window).then(Instant::now),
            };
            let far = Instant::now() + Duration::from_secs(3600);

            tokio::select! {
                biased;
                () = &mut shutdown, if flush_deadline.is_none() => {
                    let waiting = self.outbox.len() + self.in_flight;
                    tracing::info!(
                        waiting,
                        timeout = ?self.settings.flush_timeout(),
                        "stopping: no more readings, flushing the outbox"
                    );
                    flush_deadline = Some(Instant::now() + self.settings.flush_timeout());
                }
                Some(joined) = self.publishes.join_next_with_id(), if !self.publishes.is_empty() => {
                    self.on_published(joined);
                }
                () = tokio::time::sleep_until(flush_deadline.unwrap_or(far)),
                    if flush_deadline.is_some() => {
                    break StopReason::FlushTimedOut;
                }
                () = tokio::time::sleep_until(self.retry_at.unwrap_or(far)),
                    if self.retry_at.is_some() => {
                    self.retry_at = None;
                }
                () = tokio::time::sleep_until(next_reading.unwrap_or(far)),
                    if next_reading.is_some() => {
                    let due = match pacer {
                        Some(pacer) => pacer.due(start.elapsed()),
                        None => self.last_seq
                            + window.saturating_sub(self.outbox.len() + self.in_flight) as u64,
                    };
                    self.take_readings(due.min(count))?;
                }
            }
        };

        Ok(reason)
    }

    /// Takes readings until `last_seq` reaches `until`.
    fn take_readings(&mut self, until: u64) -> anyhow::Result<()> {
        if until <= self.last_seq {
            return Ok(());
        }
        let mut dropped = Vec::new();
        let mut history = self
            .history
            .lock()
            .map_err(|_| anyhow::anyhow!("the history lock is poisoned"))?;
        let mut taken = 0;
        while self.last_seq < until {
            let seq = self.last_seq + 1;
            let reading = SensorReading {
                schema: SCHEMA_VERSION,
                sensor_id: self.settings.sensor_id.clone(),
                epoch: self.epoch,
                seq,
                taken_at: unix_nanos(),
                values: (0..self.settings.values)
                    .map(|_| self.rng.random())
                    .collect(),
            };
            let body = reading
                .encode()
                .with_context(|| format!("encoding reading {seq}"))?;
            self.last_seq = seq;
            history.push(reading);
            dropped.extend(self.outbox.push(seq, Bytes::from(body)));
            taken += 1;
        }
        metrics::counter!(m::READINGS_TAKEN).increment(taken);
        metrics::gauge!(m::HISTORY_READINGS).set(history.len() as f64);
        drop(history);
        metrics::gauge!(m::LAST_SEQ).set(self.last_seq as f64);
        self.record_drops(&dropped);
        Ok(())
    }

    /// Starts publishes while there is something to publish and room in flight.
    fn start_publishes(&mut self) {
        while self.retry_at.is_none()
            && self.publishes.len() < MAX_PARALLEL
            && !self.outbox.is_empty()
        {
            let batch = self.outbox.take_bounded(MAX_BATCH, MAX_BATCH_BYTES);
            self.in_flight += batch.len();
            let seqs = batch.iter().map(|(seq, _)| *seq).collect();
            let producer = self.producer.clone();
            let topic = self.settings.topic.to_string();
            let handle = self.publishes.spawn(async move {
                let result = match batch.as_slice() {
                    [(_, body)] => producer.publish(&topic, body.clone()).await,
                    _ => {
                        let bodies = batch.iter().map(|(_, body)| body.clone()).collect();
                        producer.multi_publish(&topic, bodies).await
                    }
                };
                BatchResult { batch, result }
            });
            self.in_flight_seqs.insert(handle.id(), seqs);
        }
        self.update_gauges();
    }

    /// Deals with nsqd's answer to one publish.
    fn on_published(&mut self, joined: Result<(task::Id, BatchResult), JoinError>) {
        let (id, BatchResult { batch, result }) = match joined {
            Ok(done) => done,
            Err(e) => {
                // A publish task cannot panic; should it happen, the readings are not
                // confirmed: report them as failed, loudly.
                let seqs = self.in_flight_seqs.remove(&e.id()).unwrap_or_default();
                self.in_flight -= seqs.len();
                self.failed += seqs.len() as u64;
                tracing::error!(error = %e, seqs = %ranges(&seqs), "a publish task failed");
                return;
            }
        };
        self.in_flight_seqs.remove(&id);
        self.in_flight -= batch.len();
        let topic = &*self.settings.topic;
        let n = batch.len() as u64;
        let (first, last) = seq_span(&batch);
        match result {
            Ok(()) => {
                self.confirmed += n;
                self.confirmed_seq.fetch_max(last, Ordering::Relaxed);
                self.failures_in_a_row = 0;
                metrics::counter!(m::PUBLISHED, "topic" => topic.to_owned()).increment(n);
            }
            Err(e) if e.is_transient() => {
                metrics::counter!(m::PUBLISH_FAILURES, "topic" => topic.to_owned(), "kind" => "transient")
                    .increment(n);
                self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
                let delay = retry_delay(self.failures_in_a_row);
                self.retry_at = Some(Instant::now() + delay);
                if let Some(suppressed) = self.failure_warnings.check() {
                    tracing::warn!(
                        error = %e, first, last, retry_in = ?delay, suppressed,
                        "publish failed, the readings stay in the outbox and will be retried"
                    );
                }
                let dropped = self.outbox.put_back(batch);
                self.record_drops(&dropped);
            }
            Err(e) => {
                self.failed += n;
                metrics::counter!(m::PUBLISH_FAILURES, "topic" => topic.to_owned(), "kind" => "permanent")
                    .increment(n);
                tracing::error!(
                    error = %e, first, last, readings = n,
                    "nsqd rejected readings: they are not published (still in the history)"
                );
            }
        }
        self.update_gauges();
    }

    /// A status announcement of the last seq taken.
    fn status(&self, final_: bool) -> SensorStatus {
        SensorStatus {
            schema: SCHEMA_VERSION,
            sensor_id: self.settings.sensor_id.clone(),
            epoch: self.epoch,
            last_seq: self.last_seq,
            at: unix_nanos(),
            final_,
            oldest_seq: replayable_from(&self.history),
        }
    }

    /// Counts and reports readings dropped from the full outbox.
    fn record_drops(&mut self, dropped: &[u64]) {
        if dropped.is_empty() {
            return;
        }
        metrics::counter!(m::OUTBOX_DROPPED).increment(dropped.len() as u64);
        if let Some(suppressed) = self.drop_warnings.check() {
            tracing::warn!(
                dropped = dropped.len(),
                first = dropped.first().copied().unwrap_or_default(),
                total_dropped = self.outbox.dropped(),
                capacity = self.outbox.capacity(),
                suppressed,
                "outbox full: oldest readings dropped without being published (still in the history)"
            );
        }
    }

    /// Sets the outbox and in-flight gauges.
    fn update_gauges(&self) {
        metrics::gauge!(m::OUTBOX_READINGS).set(self.outbox.len() as f64);
        metrics::gauge!(m::PUBLISH_IN_FLIGHT).set(self.in_flight as f64);
    }

    /// After the loop: report what could not be flushed, announce the final status, close.
    async fn finish(mut self, reason: StopReason) -> anyhow::Result<Report> {
        let mut unflushed: Vec<u64> = Vec::new();
        if reason == StopReason::FlushTimedOut {
            // What is still in flight may or may not reach nsqd: it is not confirmed.
            self.publishes.abort_all();
            while let Some(joined) = self.publishes.join_next_with_id().await {
                match joined {
                    Ok(done) => self.on_published(Ok(done)),
                    Err(e) if e.is_cancelled() => {
                        let seqs = self.in_flight_seqs.remove(&e.id()).unwrap_or_default();
                        self.in_flight -= seqs.len();
                        unflushed.extend(seqs);
                    }
                    Err(e) => self.on_published(Err(e)),
                }
            }
            unflushed.extend(self.outbox.take(usize::MAX).into_iter().map(|(s, _)| s));
        }
        let report = Report {
            epoch: self.epoch,
            reason,
            taken: self.last_seq,
            confirmed: self.confirmed,
            dropped: self.outbox.dropped(),
            failed: self.failed,
            unflushed: unflushed.len() as u64,
        };
        if report.unflushed > 0 {
            unflushed.sort_unstable();
            tracing::error!(
                readings = report.unflushed,
                seqs = %ranges(&unflushed),
                "could not publish these readings before the flush timeout"
            );
        }

        let status = self.status(true);
        match publish_status(
            &self.producer,
            &self.settings.status_topic,
            &status,
            CLOSE_TIMEOUT,
        )
        .await
        {
            Ok(()) => tracing::debug!(last_seq = status.last_seq, "final status announced"),
            Err(e) => tracing::warn!(error = %e, "final status not announced"),
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, self.producer.close())
            .await
            .is_err()
        {
            tracing::warn!("the nsqd connection did not close in time");
        }
        self.update_gauges();
        tracing::info!(
            epoch = report.epoch,
            taken = report.taken,
            confirmed = report.confirmed,
            dropped = report.dropped,
            failed = report.failed,
            unflushed = report.unflushed,
            reason = ?report.reason,
            "sensor stopped"
        );
        Ok(report)
    }
}

/// Publishes one status announcement, within `timeout`.
pub(crate) async fn publish_status(
    producer: &Producer,
    topic: &str,
    status: &SensorStatus,
    timeout: Duration,
) -> anyhow::Result<()> {
    let body = status.encode().context("encoding the status")?;
    let outcome = tokio::time::timeout(timeout, producer.publish(topic, body)).await;
    let result = match outcome {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow::anyhow!("no answer from nsqd within {timeout:?}")),
    };
    match &result {
        Ok(()) => metrics::counter!(m::PUBLISHED, "topic" => topic.to_owned()).increment(1),
        Err(_) => {
            metrics::counter!(m::PUBLISH_FAILURES, "topic" => topic.to_owned(), "kind" => "transient")
                .increment(1);
        }
    }
    result
}

/// Announces the highest confirmed seq on the status topic every `interval`, forever.
pub(crate) async fn announce_status(
    producer: Producer,
    settings: Arc<Config>,
    epoch: u64,
    confirmed_seq: Arc<AtomicU64>,
    history: Arc<Mutex<History>>,
    final_announced: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(settings.status_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = settings.status_interval.get().max(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let status = SensorStatus {
            schema: SCHEMA_VERSION,
            sensor_id: settings.sensor_id.clone(),
            epoch,
            last_seq: confirmed_seq.load(Ordering::Relaxed),
            at: unix_nanos(),
            // Once every reading is confirmed (--count reached), each announcement is final.
            final_: final_announced.load(Ordering::Relaxed),
            oldest_seq: replayable_from(&history),
        };
        if let Err(e) = publish_status(&producer, &settings.status_topic, &status, timeout).await {
            // nsqd being away is already logged by the producer.
            tracing::debug!(error = %e, "status not announced");
        }
    }
}

/// The oldest seq the history can still replay (0 when unknown: the lock is poisoned, which
/// only a panic elsewhere can cause; the logger then falls back to asking).
fn replayable_from(history: &Mutex<History>) -> u64 {
    history.lock().map_or(0, |h| h.replayable_from())
}

/// The pause before retrying after `failures` transient failures in a row.
fn retry_delay(failures: u32) -> Duration {
    nsq::backoff::exponential(RETRY_INITIAL, RETRY_MAX, failures.saturating_sub(1))
}

/// First and last seq of a batch (taken in seq order).
fn seq_span(batch: &[Pending]) -> (u64, u64) {
    let first = batch.first().map(|(s, _)| *s).unwrap_or_default();
    let last = batch.last().map(|(s, _)| *s).unwrap_or_default();
    (first, last)
}

/// Sorted seqs written as ranges, e.g. `1-3,7,9-10`, shortened after 20 ranges.
pub(crate) fn ranges(seqs: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = seqs.iter().copied().peekable();
    let mut total = 0usize;
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        total += 1;
        if parts.len() < 20 {
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
    }
    let mut text = parts.join(",");
    if total > parts.len() {
        text += &format!(",... ({} more ranges)", total - parts.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(4), Duration::from_millis(800));
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        let many: Vec<u64> = (0..30).map(|i| i * 2).collect();
        assert!(ranges(&many).ends_with(",... (10 more ranges)"));
    }
}
