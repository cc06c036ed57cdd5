//! What the worker does with one message, and the rule that nothing is finished silently.
//!
//! | case | action | outcome |
//! |---|---|---|
//! | delivered more than `--max-attempts` times | dead letter, then FIN | [`Outcome::DeadLettered`] (`max_attempts`) |
//! | body is not a `SensorReading` | dead letter at once (never retried), then FIN | [`Outcome::DeadLettered`] (`decode`) |
//! | stale under `--stale-policy drop` | FIN without a result | [`Outcome::DroppedStale`] |
//! | result published (nsqd said OK) | FIN | [`Outcome::Finished`] |
//! | result publish failed, may pass | REQ after 100 ms × attempts (consumer backs off) | [`Outcome::Requeued`] |
//! | result publish rejected for good | dead letter, then FIN | [`Outcome::DeadLettered`] (`publish_rejected`) |
//! | the dead-letter publish itself failed | REQ, as above | [`Outcome::Requeued`] |
//!
//! Every outcome is counted, and every one but a plain success is logged (a success at
//! `debug`). Every warning and error about a message names its NSQ `id` (the delivery) and,
//! once the body is decoded, the reading's `epoch` and `seq`. At `debug`, each message is also
//! handled inside a `message` span with its `id`, `attempt` and the reading's `sensor_id`,
//! `epoch` and `seq` (a span per message at INFO cost more than the work itself).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use messages::SensorReading;
use nsq::{Message, Producer};
use suite_common::log_limit::LogLimiter;
use tracing::Instrument as _;

use crate::{
    config::Config,
    metrics as m,
    process::{self, Verdict},
};

/// Why a message went to the dead-letter topic (the `reason` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The body is not a `SensorReading`.
    Decode,
    /// Delivered more than `--max-attempts` times.
    MaxAttempts,
    /// nsqd rejected the result for good (or it could not be encoded).
    PublishRejected,
}

impl DeadLetterReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::PublishRejected => "publish_rejected",
        }
    }
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its result was published and it was finished.
    Finished,
    /// It was stale under the drop policy and finished without a result.
    DroppedStale,
    /// It was published to the dead-letter topic and finished.
    DeadLettered(DeadLetterReason),
    /// It was given back to nsqd for a later attempt.
    Requeued,
}

/// Handles messages; cheap to clone (one per message task).
#[derive(Debug, Clone)]
pub struct Handler {
    /// The validated configuration.
    settings: Arc<Config>,
    /// Publishes results and dead letters to `--destination-nsqd-tcp-address`.
    producer: Producer,
    /// The metrics of the common path, looked up once.
    hot: m::Hot,
    /// First deliveries seen, for the `--slow-every` fault injection.
    first_deliveries: Arc<AtomicU64>,
    /// Keeps the error about bodies that are not readings to one line a second: anyone can
    /// publish garbage to the topic, and the log must not grow with it.
    decode_warnings: Arc<std::sync::Mutex<LogLimiter>>,
    /// The same for the line each dead letter gets.
    dead_letter_warnings: Arc<std::sync::Mutex<LogLimiter>>,
}

impl Handler {
    /// A handler publishing with `producer`.
    pub fn new(settings: Arc<Config>, producer: Producer) -> Self {
        let hot = m::Hot::new(
            &settings.topic,
            &settings.channel,
            &settings.destination_topic,
        );
        Self {
            settings,
            producer,
            hot,
            first_deliveries: Arc::new(AtomicU64::new(0)),
            decode_warnings: Arc::default(),
            dead_letter_warnings: Arc::default(),
        }
    }

    /// The `--slow-every`/`--slow-ms` fault injection: every N-th first delivery waits
    /// `--slow-ms` before being handled (for example past nsqd's `--msg-timeout`, so that nsqd
    /// delivers it again elsewhere and both deliveries publish a result).
    async fn maybe_slow(&self, msg: &Message) {
        let s = &*self.settings;
        if s.slow_every == 0 || s.slow().is_zero() || msg.attempts() != 1 {
            return;
        }
        let n = self.first_deliveries.fetch_add(1, Ordering::Relaxed) + 1;
        if n % s.slow_every == 0 {
            tracing::debug!(slow = ?s.slow(), "fault injection (--slow-every): handling slowly");
            tokio::time::sleep(s.slow()).await;
        }
    }

    /// Handles one message to its end: it is finished or requeued when this returns.
    pub async fn handle(&self, msg: Message) -> Outcome {
        let started = Instant::now();
        let s = &*self.settings;
        self.hot.consumed.increment(1);

        // Decoded before the span is made, so that the span is created once with every field.
        // The span is at DEBUG: at INFO, creating it (the log formatter formats its fields at
        // once) cost more than the computation; the warnings and errors about a message carry
        // its id (and the reading's epoch and seq once decoded) themselves.
        let decoded = SensorReading::decode(msg.body());
        let span = match &decoded {
            Ok(r) => tracing::debug_span!(
                "message",
                id = msg.id(),
                attempt = msg.attempts(),
                sensor_id = r.sensor_id.as_str(),
                epoch = r.epoch,
                seq = r.seq,
            ),
            Err(_) => tracing::debug_span!("message", id = msg.id(), attempt = msg.attempts()),
        };
        let outcome = self.process(msg, decoded).instrument(span).await;

        match outcome {
            Outcome::Finished | Outcome::DroppedStale => self.hot.finished.increment(1),
            Outcome::DeadLettered(reason) => {
                self.hot.finished.increment(1);
                metrics::counter!(
                    m::DEAD_LETTERED,
                    "topic" => s.topic.to_string(), "channel" => s.channel.to_string(), "reason" => reason.as_str()
                )
                .increment(1);
            }
            Outcome::Requeued => {
                metrics::counter!(m::REQUEUED, "topic" => s.topic.to_string(), "channel" => s.channel.to_string())
                    .increment(1)
            }
        }
        self.hot
            .handler_seconds
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Takes the message to its outcome (see the table in the module documentation).
    async fn process(
        &self,
        msg: Message,
        decoded: Result<SensorReading, messages::CodecError>,
    ) -> Outcome {
        let s = &*self.settings;
        if msg.over_max_attempts() {
            let error = format!(
                "gave up after {} delivery attempts (--max-attempts {})",
                msg.attempts(),
                s.max_attempts
            );
            tracing::warn!(
                id = msg.id(),
                attempts = msg.attempts(),
                "{error}: dead-lettering"
            );
            return self
                .dead_letter(msg, DeadLetterReason::MaxAttempts, error)
                .await;
        }

        let reading = match decoded {
            Ok(reading) => reading,
            Err(e) => {
                metrics::counter!(m::DECODE_ERRORS, "topic" => s.topic.to_string(), "channel" => s.channel.to_string())
                    .increment(1);
                let held_back = self
                    .decode_warnings
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .check();
                if let Some(held_back) = held_back {
                    tracing::error!(
                        id = msg.id(),
                        attempts = msg.attempts(),
                        bytes = msg.body().len(),
                        nsqd = msg.nsqd_address(),
                        error = %e,
                        held_back,
                        "message is not a SensorReading: dead-lettering it, it will not be \
                         retried"
                    );
                }
                return self
                    .dead_letter(msg, DeadLetterReason::Decode, e.to_string())
                    .await;
            }
        };

        self.maybe_slow(&msg).await;
        if !s.work().is_zero() {
            tokio::time::sleep(s.work()).await;
        }

        let (sensor_epoch, seq) = (reading.epoch, reading.seq);
        let verdict = process::compute(
            reading,
            &s.worker_id,
            suite_common::unix_nanos(),
            s.max_age(),
            s.stale_policy,
        );
        let result = match verdict {
            Verdict::DropStale { age } => {
                metrics::counter!(
                    m::STALE,
                    "topic" => s.topic.to_string(), "channel" => s.channel.to_string(), "policy" => "drop"
                )
                .increment(1);
                tracing::warn!(
                    id = msg.id(),
                    epoch = sensor_epoch,
                    seq,
                    age = ?age,
                    max_age = ?s.max_age(),
                    "stale reading dropped (--stale-policy drop): finished without a result"
                );
                msg.finish();
                return Outcome::DroppedStale;
            }
            Verdict::Publish(result) => result,
        };
        if result.stale {
            metrics::counter!(
                m::STALE,
                "topic" => s.topic.to_string(), "channel" => s.channel.to_string(), "policy" => "flag"
            )
            .increment(1);
            tracing::debug!(seq = result.seq, "stale reading processed and flagged");
        }

        let body = match result.encode() {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(id = msg.id(), epoch = sensor_epoch, seq, error = %e, "cannot encode the result");
                return self
                    .dead_letter(msg, DeadLetterReason::PublishRejected, e.to_string())
                    .await;
            }
        };
        match self.producer.publish(&s.destination_topic, body).await {
            Ok(()) => {
                self.hot.published.increment(1);
                tracing::debug!("result published");
                msg.finish();
                Outcome::Finished
            }
            Err(e) if e.is_transient() => {
                self.publish_failed(&s.destination_topic, "transient");
                let delay = process::requeue_delay(msg.attempts());
                tracing::warn!(
                    id = msg.id(), attempts = msg.attempts(), epoch = sensor_epoch, seq,
                    error = %e, retry_in = ?delay,
                    "result not published: message requeued"
                );
                msg.requeue(delay);
                Outcome::Requeued
            }
            Err(e) => {
                self.publish_failed(&s.destination_topic, "permanent");
                tracing::error!(id = msg.id(), epoch = sensor_epoch, seq, error = %e, "nsqd rejected the result");
                self.dead_letter(msg, DeadLetterReason::PublishRejected, e.to_string())
                    .await
            }
        }
    }

    /// Publishes the message to the dead-letter topic, then finishes it; requeues it when the
    /// dead letter could not be published.
    async fn dead_letter(&self, msg: Message, reason: DeadLetterReason, error: String) -> Outcome {
        let s = &*self.settings;
        let letter = process::dead_letter(
            msg.body(),
            &s.topic,
            &s.channel,
            msg.attempts(),
            error,
            suite_common::unix_nanos(),
        );
        let published = match letter.encode() {
            Ok(body) => self
                .producer
                .publish(&s.dead_letter_topic(), body)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            Ok(()) => {
                metrics::counter!(m::PUBLISHED, "topic" => s.dead_letter_topic()).increment(1);
                let held_back = self
                    .dead_letter_warnings
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .check();
                if let Some(held_back) = held_back {
                    tracing::warn!(
                        id = msg.id(),
                        reason = reason.as_str(),
                        dead_letter_topic = %s.dead_letter_topic(),
                        error = %letter.error,
                        held_back,
                        "message dead-lettered and finished"
                    );
                }
                msg.finish();
                Outcome::DeadLettered(reason)
            }
            Err(e) => {
                self.publish_failed(&s.dead_letter_topic(), "transient");
                let delay = process::requeue_delay(msg.attempts());
                tracing::warn!(
                    id = msg.id(), error = %e, retry_in = ?delay,
                    "dead letter not published: message requeued"
                );
                msg.requeue(delay);
                Outcome::Requeued
            }
        }
    }

    /// Counts a failed publish to `topic` (`kind`: `transient` or `permanent`).
    fn publish_failed(&self, topic: &str, kind: &'static str) {
        metrics::counter!(m::PUBLISH_FAILURES, "topic" => topic.to_owned(), "kind" => kind)
            .increment(1);
    }
}
