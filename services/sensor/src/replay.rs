//! Answering replay requests: the sensor's side of "ask the publisher to replay it".
//!
//! Every sensor consumes `--replay-topic` on its own ephemeral channel,
//! `sensor-<id>-<epoch>#ephemeral` (so every sensor sees every request, and the channel
//! disappears with the process). For each [`ReplayRequest`]:
//!
//! | request for | answer |
//! |---|---|
//! | another sensor id | none (finished) |
//! | this sensor, this epoch, readings in the history | the readings re-published to `--topic`, unchanged (same seq, same `taken_at`, same values), in MPUB batches |
//! | this sensor, this epoch, readings taken but evicted from the history | a [`ReplayUnavailable`] for that range on `--replay-unavailable-topic` |
//! | this sensor, this epoch, readings not taken yet | none: nothing is lost there |
//! | this sensor, an older epoch | a [`ReplayUnavailable`] for the whole range: an older epoch's readings are gone with the process that took them |
//! | this sensor, a newer epoch | none (another process with the same id) |
//!
//! The request is finished once every answer was confirmed by nsqd; if a publish fails in
//! a way that may pass, it is requeued and answered again later (the logger drops the
//! readings it then receives twice). Readings re-published this way bypass the outbox.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use suite_common::unix_nanos;

use anyhow::Context as _;
use bytes::Bytes;
use messages::{ReplayRequest, ReplayUnavailable, SensorReading, SCHEMA_VERSION};
use nsq::{Consumer, ConsumerConfig, Message, Messages, Producer, PublishError};
use suite_common::shutdown::CancellationToken;
use tracing::{field::Empty, Instrument as _};

use crate::{
    config::Config,
    engine::{MAX_BATCH, MAX_BATCH_BYTES},
    history::{History, SeqRange},
    metrics as m,
};

/// Delay before a request that could not be answered is delivered again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Messages handled at once by the sensor's consumers of its epoch's topics (replay
/// requests are answered one after the other; complete announcements are finished at once).
const MAX_IN_FLIGHT: u32 = 10;

/// Subscribes to `topic` on the sensor epoch's ephemeral `channel`: through nsqlookupd (fixed,
/// or from Consul with `discovery`), else from the nsqd the readings go to. Connects in the
/// background.
pub(crate) fn subscribe(
    settings: &Config,
    discovery: Option<&suite_common::consul::Discovery>,
    topic: &str,
    channel: &str,
    connection: nsq::ConnectionConfig,
) -> anyhow::Result<(nsq::Consumer, nsq::Messages)> {
    let nsqd = match settings.nsqd() {
        Some(nsqd) if settings.lookupd_http_address.is_empty() => vec![nsqd],
        _ => Vec::new(),
    };
    suite_common::consul::consumer(
        discovery,
        topic,
        channel,
        ConsumerConfig {
            connection,
            nsqd_tcp_addresses: nsqd,
            lookupd_http_addresses: settings.lookupd_urls(),
            lookupd_poll_interval: settings.lookupd_poll_interval.get(),
            max_in_flight: MAX_IN_FLIGHT,
            max_attempts: 0,
            output_buffer_timeout: settings.flush.output_buffer_timeout(),
            ..ConsumerConfig::default()
        },
    )
    .with_context(|| format!("subscribing to {topic} on {channel}"))
}

/// Longest channel name nsqd accepts.
const MAX_CHANNEL_LEN: usize = 64;

/// The ephemeral channel of one sensor epoch on the replay topic: `sensor-<id>-<epoch>#ephemeral`,
/// with characters NSQ does not allow in a channel name replaced by `_` and the id shortened
/// to fit 64 characters.
pub fn channel_name(sensor_id: &str, epoch: u64) -> String {
    let suffix = format!("-{epoch}#ephemeral");
    let room = MAX_CHANNEL_LEN - "sensor-".len() - suffix.len();
    let id: String = sensor_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(room)
        .collect();
    format!("sensor-{id}{suffix}")
}

/// What the responder needs; see the module documentation.
pub struct Responder {
    /// The validated configuration.
    settings: Arc<Config>,
    /// This run's epoch.
    epoch: u64,
    /// The readings to replay from.
    history: Arc<Mutex<History>>,
    /// Publishes the answers.
    producer: Producer,
    /// The replay-topic consumer.
    consumer: Consumer,
    /// Its messages.
    messages: Messages,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("channel", &self.consumer.channel())
            .finish_non_exhaustive()
    }
}

/// The outcome of answering one request.
enum Answered {
    /// Everything answered (or nothing to answer).
    Done,
    /// A publish failed in a way that may pass: ask nsqd to deliver the request again.
    Retry(String),
}

impl Responder {
    /// Subscribes to the replay topic on this epoch's ephemeral channel (connecting in the
    /// background).
    pub fn start(
        settings: Arc<Config>,
        discovery: Option<&suite_common::consul::Discovery>,
        epoch: u64,
        history: Arc<Mutex<History>>,
        producer: Producer,
        connection: nsq::ConnectionConfig,
    ) -> anyhow::Result<Self> {
        let channel = channel_name(&settings.sensor_id, epoch);
        let (consumer, messages) = subscribe(
            &settings,
            discovery,
            &settings.replay_topic,
            &channel,
            connection,
        )?;
        m::describe_replay();
        tracing::info!(
            topic = %settings.replay_topic,
            %channel,
            "answering replay requests"
        );
        Ok(Self {
            settings,
            epoch,
            history,
            producer,
            consumer,
            messages,
        })
    }

    /// Answers requests until `stop` is cancelled, then closes the consumer (requests not
    /// answered yet are requeued).
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                msg = self.messages.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
            }
        }
        self.consumer.close_and_requeue(self.messages).await;
    }

    /// Answers one request and finishes it, or requeues it, inside a `message` span with the
    /// request's identity (NSQ id and attempt, sensor_id, epoch, from_seq, to_seq).
    async fn handle(&self, msg: Message) {
        let span = tracing::info_span!(
            "message",
            id = msg.id(),
            attempt = msg.attempts(),
            sensor_id = Empty,
            epoch = Empty,
            from_seq = Empty,
            to_seq = Empty,
        );
        self.handle_in_span(msg).instrument(span).await;
    }

    /// [`Responder::handle`]'s work, in its span.
    async fn handle_in_span(&self, msg: Message) {
        let request = match ReplayRequest::decode(msg.body()) {
            Ok(request) => {
                tracing::Span::current()
                    .record("sensor_id", request.sensor_id.as_str())
                    .record("epoch", request.epoch)
                    .record("from_seq", request.from_seq)
                    .record("to_seq", request.to_seq);
                request
            }
            Err(e) => {
                tracing::error!(
                    id = msg.id(),
                    error = %e,
                    "a message on the replay topic is not a ReplayRequest: finished unanswered"
                );
                msg.finish();
                return;
            }
        };
        if request.sensor_id != self.settings.sensor_id || request.epoch > self.epoch {
            tracing::trace!(
                sensor_id = %request.sensor_id,
                epoch = request.epoch,
                "replay request for another sensor"
            );
            msg.finish();
            return;
        }
        metrics::counter!(m::REPLAY_REQUESTS).increment(1);
        match self.answer(&request).await {
            Answered::Done => msg.finish(),
            Answered::Retry(error) => {
                metrics::counter!(m::REPLAY_FAILURES).increment(1);
                tracing::warn!(
                    error = %error,
                    from_seq = request.from_seq,
                    to_seq = request.to_seq,
                    retry_in = ?RETRY_DELAY,
                    "replay request not answered: requeued"
                );
                msg.requeue_no_backoff(RETRY_DELAY);
            }
        }
    }

    /// Re-publishes what the history holds of the request's range and answers the rest.
    async fn answer(&self, request: &ReplayRequest) -> Answered {
        let replay = if request.epoch == self.epoch {
            match self.history.lock() {
                Ok(history) => history.replay(request.from_seq, request.to_seq),
                Err(_) => return Answered::Retry("the history lock is poisoned".to_owned()),
            }
        } else {
            // An older epoch of this sensor: its readings went with the process.
            crate::history::Replay {
                evicted: (request.from_seq <= request.to_seq).then_some(SeqRange {
                    from: request.from_seq.max(1),
                    to: request.to_seq,
                }),
                ..Default::default()
            }
        };

        let replayed = replay.readings.len() as u64;
        if let Err(e) = self.republish(&replay.readings).await {
            return Answered::Retry(e);
        }
        if let Some(evicted) = replay.evicted {
            let answer = ReplayUnavailable {
                schema: SCHEMA_VERSION,
                sensor_id: self.settings.sensor_id.clone(),
                epoch: request.epoch,
                from_seq: evicted.from,
                to_seq: evicted.to,
                at: unix_nanos(),
            };
            let body = match answer.encode() {
                Ok(body) => body,
                Err(e) => return Answered::Retry(e.to_string()),
            };
            match self
                .producer
                .publish(&self.settings.replay_unavailable_topic, body)
                .await
            {
                Ok(()) => {
                    let count = evicted.to - evicted.from + 1;
                    metrics::counter!(m::REPLAY_UNAVAILABLE).increment(count);
                    metrics::counter!(
                        m::PUBLISHED,
                        "topic" => self.settings.replay_unavailable_topic.to_string()
                    )
                    .increment(1);
                    tracing::warn!(
                        requested_by = %request.requested_by,
                        epoch = request.epoch,
                        from_seq = evicted.from,
                        to_seq = evicted.to,
                        count,
                        history = self.settings.history,
                        "replay asked for readings no longer in the history: answered unavailable"
                    );
                }
                Err(e) => return retry_or_give_up(e, "the unavailable answer"),
            }
        }
        if let Some(not_taken) = replay.not_taken {
            tracing::warn!(
                requested_by = %request.requested_by,
                from_seq = not_taken.from,
                to_seq = not_taken.to,
                "replay asked for readings not taken yet: ignored"
            );
        }
        tracing::info!(
            requested_by = %request.requested_by,
            epoch = request.epoch,
            from_seq = request.from_seq,
            to_seq = request.to_seq,
            replayed,
            unavailable = replay.evicted.map_or(0, |r| r.to - r.from + 1),
            "replay request answered"
        );
        Answered::Done
    }

    /// Publishes `readings` to the readings topic, in MPUB batches.
    async fn republish(&self, readings: &[SensorReading]) -> Result<(), String> {
        let topic = &self.settings.topic;
        let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH.min(readings.len()));
        let mut bytes = 0usize;
        let mut iter = readings.iter().peekable();
        while let Some(reading) = iter.next() {
            let body = reading.encode().map_err(|e| e.to_string())?;
            bytes += body.len();
            batch.push(Bytes::from(body));
            let full = batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES / 2;
            if full || iter.peek().is_none() {
                let n = batch.len() as u64;
                let sent = std::mem::take(&mut batch);
                bytes = 0;
                let result = match sent.as_slice() {
                    [one] => self.producer.publish(topic, one.clone()).await,
                    _ => self.producer.multi_publish(topic, sent).await,
                };
                match result {
                    Ok(()) => {
                        metrics::counter!(m::REPLAYED_READINGS).increment(n);
                        metrics::counter!(m::PUBLISHED, "topic" => topic.to_string()).increment(n);
                    }
                    Err(e) => {
                        return match retry_or_give_up(e, "replayed readings") {
                            Answered::Retry(e) => Err(e),
                            Answered::Done => Ok(()),
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A transient publish failure means "try the request again"; a permanent one is logged and
/// the request is dropped (trying again cannot help; the logger will ask again and, in the
/// end, report the readings lost).
fn retry_or_give_up(e: PublishError, what: &str) -> Answered {
    if e.is_transient() {
        Answered::Retry(format!("publishing {what}: {e}"))
    } else {
        tracing::error!(error = %e, "nsqd rejected {what} of a replay: request dropped");
        Answered::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_valid_nsq_channels() {
        assert_eq!(
            channel_name("s1", 1_732_712_345_678),
            "sensor-s1-1732712345678#ephemeral"
        );
        let odd = channel_name("host name/with:odd*chars", 1);
        assert_eq!(odd, "sensor-host_name_with_odd_chars-1#ephemeral");
        assert!(nsq::is_valid_channel_name(&odd));
        let long = channel_name(&"x".repeat(100), u64::MAX);
        assert_eq!(long.len(), MAX_CHANNEL_LEN);
        assert!(nsq::is_valid_channel_name(&long), "{long}");
    }
}
