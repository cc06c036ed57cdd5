//! What the logger does with a batch of messages: write each new result once, then FIN.
//!
//! A batch is whatever the consumer has delivered when the logger is ready for more (at
//! most `--max-in-flight`). For each message:
//!
//! | case | action |
//! |---|---|
//! | not a `WorkResult` | FIN at once; logged as an error and counted (retrying cannot help) |
//! | key already in the output | FIN at once, not written; counted as a duplicate |
//! | key earlier in the same batch | FIN after the batch is written; counted as a duplicate |
//! | new key | line appended; FIN after the whole batch is written and flushed |
//!
//! When the batch cannot be written, nothing of it is in the output (see
//! [`Output::write_batch`]): its messages are requeued, `/ready` reports the output as not
//! writable, and the consumer backs off. If the output may hold part of the batch and cannot
//! be cut back, [`Sink::handle_batch`] returns an error and the logger stops.
//!
//! Each message is handled inside a `message` span with its NSQ `id` and `attempt` and, once
//! decoded, the result's `sensor_id`, `epoch` and `seq`; a written result is logged at
//! `debug` in its span with its end-to-end latency.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use suite_common::{log_limit::LogLimiter, unix_nanos};

use anyhow::Context as _;
use messages::WorkResult;
use nsq::Message;
use tracing::field::Empty;

use crate::{
    config::Config,
    line::{check_result, Key, LogLine},
    metrics as m,
    output::{Output, RotateError, WriteError},
    seen::{unix_secs, Seen},
    workers::WorkerWindow,
};

/// Results handled between two yields to the runtime.
const YIELD_EVERY: usize = 128;

/// Delay before a message whose batch could not be written is delivered again.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// The output and the state derived from it.
#[derive(Debug)]
pub struct Sink {
    /// The settings.
    settings: Arc<Config>,
    /// The output; `None` only while a write runs on the blocking pool.
    output: Option<Output>,
    /// Keys of the lines in the output.
    seen: Seen,
    /// Per-worker counts, shared with `GET /workers`.
    workers: Arc<Mutex<WorkerWindow>>,
    /// Whether the last write succeeded (for `/ready`).
    writable: Arc<AtomicBool>,
    /// Start of the worker window's clock.
    started: Instant,
    /// Keeps the warning about forgotten epochs to one a second.
    forget_warnings: LogLimiter,
    /// Keeps the error about bodies that are not results to one a second.
    decode_warnings: LogLimiter,
}

/// A message whose line is in the batch being written.
struct Fresh {
    /// The message, finished once the batch is written.
    msg: Message,
    /// Its key, recorded as seen once the batch is written.
    key: Key,
    /// When the reading was taken (for the end-to-end latency).
    taken_at: u64,
    /// Which worker computed it (for the per-worker counts).
    worker_id: String,
    /// Its `message` span, for the log line once it is written.
    span: tracing::Span,
}

impl Sink {
    /// A sink writing to `output`, whose existing lines' keys are `seen`.
    pub fn new(
        settings: Arc<Config>,
        output: Output,
        seen: Seen,
        workers: Arc<Mutex<WorkerWindow>>,
        writable: Arc<AtomicBool>,
        started: Instant,
    ) -> Self {
        let mut seen = seen;
        seen.set_limits(settings.seen_limits());
        metrics::gauge!(m::KNOWN_READINGS).set(seen.len() as f64);
        let mut sink = Self {
            settings,
            output: Some(output),
            seen,
            workers,
            writable,
            started,
            forget_warnings: LogLimiter::default(),
            decode_warnings: LogLimiter::default(),
        };
        sink.report_forgotten();
        sink
    }

    /// The keys written so far.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Writes the new results of `batch` and finishes or requeues every message in it.
    ///
    /// Returns an error only when the output can no longer be trusted; the batch's messages
    /// are then requeued and the logger must stop.
    pub async fn handle_batch(&mut self, batch: Vec<Message>) -> anyhow::Result<()> {
        let s = Arc::clone(&self.settings);
        let labels = [
            ("topic", s.topic.to_string()),
            ("channel", s.channel.to_string()),
        ];
        metrics::counter!(m::CONSUMED, &labels).increment(batch.len() as u64);

        let written_at = unix_nanos();
        let mut bytes = Vec::with_capacity(batch.len() * 256);
        let mut fresh: Vec<Fresh> = Vec::with_capacity(batch.len());
        let mut in_batch: HashSet<Key> = HashSet::new();
        let mut repeated: Vec<Message> = Vec::new();
        let mut finished_now = 0u64;
        let mut duplicates = 0u64;
        for (n, msg) in batch.into_iter().enumerate() {
            // A batch is up to --max-in-flight results on a single-threaded runtime: let the
            // HTTP port (/health, /metrics) answer between slices of it.
            if n % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
            // At DEBUG: a span per message at INFO (its fields formatted at creation and at
            // each record) cost more than writing the line; the warnings carry the id.
            let span = tracing::debug_span!(
                "message",
                id = msg.id(),
                attempt = msg.attempts(),
                sensor_id = Empty,
                epoch = Empty,
                seq = Empty,
            );
            let _entered = span.enter();
            let checked = WorkResult::decode(msg.body())
                .map_err(|e| e.to_string())
                .and_then(|r| check_result(&r).map(|()| r));
            let result = match checked {
                Ok(result) => result,
                Err(e) => {
                    metrics::counter!(m::DECODE_ERRORS, &labels).increment(1);
                    // At most a line a second: a flood of garbage must not flood the log.
                    if let Some(held_back) = self.decode_warnings.check() {
                        tracing::error!(
                            id = msg.id(),
                            attempts = msg.attempts(),
                            nsqd = msg.nsqd_address(),
                            bytes = msg.body().len(),
                            head = %hex_head(msg.body()),
                            error = %e,
                            held_back,
                            "message is not a WorkResult: finished without writing it"
                        );
                    }
                    msg.finish();
                    finished_now += 1;
                    continue;
                }
            };
            span.record("sensor_id", result.sensor_id.as_str())
                .record("epoch", result.epoch)
                .record("seq", result.seq);
            let line = LogLine::new(result, written_at);
            let key = line.key();
            if self.seen.contains(&key) {
                duplicates += 1;
                tracing::debug!(?key, attempts = msg.attempts(), "duplicate result finished");
                msg.finish();
                finished_now += 1;
                continue;
            }
            if in_batch.contains(&key) {
                duplicates += 1;
                repeated.push(msg);
                continue;
            }
            line.write_to(&mut bytes)
                .context("serializing an output line")?;
            in_batch.insert(key.clone());
            fresh.push(Fresh {
                msg,
                key,
                taken_at: line.taken_at,
                worker_id: line.worker_id,
                span: span.clone(),
            });
        }
        metrics::counter!(m::FINISHED, &labels).increment(finished_now);
        metrics::counter!(m::DUPLICATES, &labels).increment(duplicates);
        if fresh.is_empty() {
            for msg in repeated {
                // Cannot happen (a repeat needs a first in the batch); finish it anyway.
                msg.finish();
            }
            return Ok(());
        }

        let Some(mut output) = self.output.take() else {
            anyhow::bail!("the output is gone (an earlier write task failed)");
        };
        let (output, written) = tokio::task::spawn_blocking(move || {
            let written = output.write_batch(&bytes);
            (output, written)
        })
        .await
        .context("the write task failed")?;
        self.output = Some(output);

        match written {
            Ok(()) => {
                self.writable.store(true, Ordering::Relaxed);
                if !self.settings.fin_delay.get().is_zero() {
                    // Fault injection (--fin-delay): the lines are in the output, their
                    // messages not yet finished.
                    tokio::time::sleep(self.settings.fin_delay.get()).await;
                }
                let lines = fresh.len() as u64;
                let mut per_worker: HashMap<String, u64> = HashMap::new();
                // Looked up once per batch, not once per line.
                let end_to_end = metrics::histogram!(m::END_TO_END_SECONDS);
                let now = unix_secs();
                for f in fresh {
                    self.seen.insert_at(&f.key, now);
                    f.msg.finish();
                    let latency = Duration::from_nanos(written_at.saturating_sub(f.taken_at));
                    end_to_end.record(latency.as_secs_f64());
                    f.span
                        .in_scope(|| tracing::debug!(latency = ?latency, "result written"));
                    *per_worker.entry(f.worker_id).or_default() += 1;
                }
                let repeats = repeated.len() as u64;
                for msg in repeated {
                    msg.finish();
                }
                metrics::counter!(m::FINISHED, &labels).increment(lines + repeats);
                metrics::counter!(m::LINES_WRITTEN).increment(lines);
                metrics::counter!(m::WRITE_BATCHES).increment(1);
                metrics::gauge!(m::KNOWN_READINGS).set(self.seen.len() as f64);
                self.report_forgotten();
                let now = self.started.elapsed().as_secs();
                if let Ok(mut window) = self.workers.lock() {
                    for (worker, n) in per_worker {
                        window.record(&worker, n, now);
                    }
                }
                self.rotate_if_due().await
            }
            Err(e) => {
                self.writable.store(false, Ordering::Relaxed);
                metrics::counter!(m::WRITE_ERRORS).increment(1);
                let n = (fresh.len() + repeated.len()) as u64;
                for msg in fresh.into_iter().map(|f| f.msg).chain(repeated) {
                    msg.requeue(REQUEUE_DELAY);
                }
                metrics::counter!(m::REQUEUED, &labels).increment(n);
                match e {
                    WriteError::Failed { .. } => {
                        tracing::error!(error = %e, messages = n, "batch not written: requeued");
                        Ok(())
                    }
                    WriteError::Corrupt { .. } => Err(anyhow::Error::new(e)
                        .context("the output may hold a partial batch; stopping (a restart rebuilds the state from the file)")),
                }
            }
        }
    }
}

impl Sink {
    /// Rotates the output when it is due (`--rotate-size`, `--rotate-interval`): the state
    /// file is written first, then the current file is closed (see [`Output::rotate`]).
    ///
    /// A failed rotation is logged and tried again later; an error means the output has no
    /// current file any more and the logger must stop.
    pub async fn rotate_if_due(&mut self) -> anyhow::Result<()> {
        if !self.output.as_ref().is_some_and(Output::rotation_due) {
            return Ok(());
        }
        self.retire();
        let snapshot = self.seen.snapshot();
        let Some(mut output) = self.output.take() else {
            anyhow::bail!("the output is gone (an earlier write task failed)");
        };
        let started = Instant::now();
        let (output, rotated) = tokio::task::spawn_blocking(move || {
            let rotated = output.rotate(snapshot);
            (output, rotated)
        })
        .await
        .context("the rotation task failed")?;
        self.output = Some(output);
        match rotated {
            Ok(Some(closed)) => {
                metrics::counter!(m::ROTATIONS).increment(1);
                tracing::info!(
                    closed = %closed.display(),
                    readings = self.seen.len(),
                    sensor_epochs = self.seen.epochs(),
                    seq_ranges = self.seen.range_count(),
                    took = ?started.elapsed(),
                    "output rotated (state file written first)"
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e @ RotateError::Failed { .. }) => {
                metrics::counter!(m::ROTATION_ERRORS).increment(1);
                tracing::warn!(error = %e, "rotation failed: still writing to the current file, trying again in 10s");
                Ok(())
            }
            Err(e @ RotateError::NoCurrentFile { .. }) => {
                metrics::counter!(m::ROTATION_ERRORS).increment(1);
                Err(anyhow::Error::new(e).context("stopping: no current output file"))
            }
        }
    }

    /// Drops the complete epochs older than `--epoch-retention` from the de-duplication
    /// state (see [`Seen::retire`]).
    pub fn retire(&mut self) {
        let dropped = self
            .seen
            .retire(unix_secs(), self.settings.epoch_retention.get());
        if dropped > 0 {
            metrics::counter!(m::EPOCHS_RETIRED).increment(dropped as u64);
            metrics::gauge!(m::KNOWN_READINGS).set(self.seen.len() as f64);
            tracing::info!(
                sensor_epochs = dropped,
                retention = %self.settings.epoch_retention,
                "dropped complete sensor epochs from the de-duplication state (their late \
                 results still count as written)"
            );
        }
    }

    /// At a clean shutdown: saves the state file covering the whole output, so that the
    /// next start reads nothing else. A failure only costs that start some reading.
    pub async fn close(&mut self) {
        let Some(mut output) = self.output.take() else {
            return;
        };
        if !output.is_durable() {
            self.output = Some(output);
            return;
        }
        let snapshot = self.seen.snapshot();
        let saved = tokio::task::spawn_blocking(move || {
            let saved = output.save_state(snapshot);
            (output, saved)
        })
        .await;
        match saved {
            Ok((output, Ok(()))) => {
                tracing::info!(output = %output.describe(), "state file saved");
                self.output = Some(output);
            }
            Ok((output, Err(e))) => {
                tracing::warn!(output = %output.describe(), error = %e, "cannot save the state file: the next start reads the output instead");
                self.output = Some(output);
            }
            Err(e) => tracing::warn!(error = %e, "the task saving the state file failed"),
        }
    }

    /// Counts and logs (at most once a second) the epochs the de-duplication state forgot
    /// at its limits.
    fn report_forgotten(&mut self) {
        let forgotten = self.seen.take_forgotten();
        if forgotten.epochs + forgotten.ranges == 0 {
            return;
        }
        metrics::counter!(m::SEEN_FORGOTTEN, "reason" => "max_sensor_epochs")
            .increment(forgotten.epochs);
        metrics::counter!(m::SEEN_FORGOTTEN, "reason" => "max_seq_ranges")
            .increment(forgotten.ranges);
        if let Some(held_back) = self.forget_warnings.check() {
            let (sensor_id, epoch) = forgotten.example.unwrap_or_default();
            tracing::warn!(
                at_max_sensor_epochs = forgotten.epochs,
                at_max_seq_ranges = forgotten.ranges,
                held_back,
                example_sensor_id = %sensor_id,
                example_epoch = epoch,
                "de-duplication state full: forgot sensor epochs (a result of theirs delivered \
                 again would be written again); many sensors, or forged results"
            );
        }
    }
}

/// The first bytes of a body in hex, for logging a message that does not decode.
fn hex_head(body: &[u8]) -> String {
    let mut text: String = body.iter().take(32).map(|b| format!("{b:02x}")).collect();
    if body.len() > 32 {
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_head_is_bounded() {
        assert_eq!(hex_head(b"\x01\xff"), "01ff");
        let long = hex_head(&[0u8; 40]);
        assert_eq!(long.len(), 64 + 3);
        assert!(long.ends_with("..."));
    }
}
