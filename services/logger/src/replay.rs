//! The logger's side of replay: it listens to the sensors, asks them for what is missing,
//! and records what they can no longer give.
//!
//! [`Replay`] owns
//!
//! * a consumer of `--status-topic` on `--channel`: each [`SensorStatus`] tells the
//!   [`Gaps`] tracker the latest seq of a sensor epoch (this is how readings lost at the tail
//!   of an epoch are noticed);
//! * a consumer of `--replay-unavailable-topic` on `--channel`: each [`ReplayUnavailable`]
//!   makes the range's still-missing seqs lost. They are appended to the loss list and synced
//!   to disk, then logged (WARN) and counted, and only then is the answer finished; if the
//!   list cannot be written, the answer is requeued;
//! * a producer to `--replay-nsqd-tcp-address`, for the [`ReplayRequest`]s and the
//!   [`EpochComplete`] announcements (`--complete-topic`);
//! * a watch on the results consumer ([`Replay::watch_results`]): until it has a connection
//!   with RDY > 0, nothing is asked for (see [`Gaps::start_consuming`]);
//! * a timer: every tick asks the tracker what is due ([`Gaps::tick`]), publishes the
//!   requests (in the background; a failed publish is retried and not counted as an
//!   attempt) and reports the gaps given up on.
//!
//! It runs inside the logger's main loop ([`Replay::next`] then [`Replay::handle`]), because
//! the tracker reads the de-duplication state that the loop owns. Both consumers use the
//! logger's persistent channel: announcements and answers sent while the logger is down wait
//! for it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use suite_common::{log_limit::LogLimiter, unix_nanos};

use anyhow::Context as _;
use messages::{EpochComplete, ReplayRequest, ReplayUnavailable, SensorStatus, SCHEMA_VERSION};
use nsq::{
    ConnectionConfig, Consumer, ConsumerConfig, Message, Messages, Producer, ProducerConfig,
};
use tokio::sync::mpsc;

use crate::{
    config::Config,
    gaps::{Ask, Gaps, Loss, LossReason},
    lost::{LossList, LossRecord},
    metrics as m,
    seen::Seen,
};

/// How long one replay request may take to be published.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Delay before an "unavailable" answer that could not be recorded is delivered again.
const REQUEUE_DELAY: Duration = Duration::from_secs(1);

/// Most status or unavailable messages in flight per consumer.
const MAX_IN_FLIGHT: u32 = 100;

/// Something for [`Replay::handle`] to do.
#[derive(Debug)]
pub enum Event {
    /// A sensor status announcement.
    Status(Message),
    /// A sensor's answer that a range is no longer in its history.
    Unavailable(Message),
    /// Time to look at the gaps.
    Tick,
    /// A replay request could not be published.
    AskFailed(Ask),
}

/// The logger's replay machinery; see the module documentation.
pub struct Replay {
    /// The settings.
    settings: Arc<Config>,
    /// The gap tracker, shared with `GET /gaps`.
    gaps: Arc<Mutex<Gaps>>,
    /// Where losses are recorded.
    losses: LossList,
    /// Publishes the replay requests and the complete announcements.
    producer: Producer,
    /// The results consumer, watched until it consumes.
    results: Option<Consumer>,
    /// Consumer of the status topic.
    status: Consumer,
    /// Its messages; `None` once it has ended.
    status_msgs: Option<Messages>,
    /// Consumer of the unavailable topic.
    unavailable: Consumer,
    /// Its messages; `None` once it has ended.
    unavailable_msgs: Option<Messages>,
    /// Background publishes report their failures here...
    failed_tx: mpsc::UnboundedSender<Ask>,
    /// ... and the loop reads them here.
    failed_rx: mpsc::UnboundedReceiver<Ask>,
    /// The tick of the gap tracker.
    tick: tokio::time::Interval,
    /// Keeps the warning about forgotten epochs to one a second.
    evict_warnings: LogLimiter,
    /// Keeps the warning about deferred requests to one a second.
    defer_warnings: LogLimiter,
    /// Keeps the warning about seqs beyond the window to one a second.
    window_warnings: LogLimiter,
    /// Keeps the error about rejected messages to one a second.
    reject_warnings: LogLimiter,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("replay_topic", &self.settings.replay_topic)
            .field("losses", &self.losses.describe())
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Starts the consumers and the producer (they connect in the background).
    pub fn start(
        settings: Arc<Config>,
        discovery: Option<&suite_common::consul::Discovery>,
        gaps: Arc<Mutex<Gaps>>,
        losses: LossList,
    ) -> anyhow::Result<Self> {
        let connection = settings.nsq.resolve()?.apply(ConnectionConfig {
            client_id: settings.logger_id.clone(),
            user_agent: format!("nsq-suite-logger/{}", env!("CARGO_PKG_VERSION")),
            ..ConnectionConfig::default()
        });
        let consumer_config = ConsumerConfig {
            connection: connection.clone(),
            nsqd_tcp_addresses: settings.consumer.nsqd_addresses(),
            lookupd_http_addresses: settings.consumer.lookupd_urls(),
            lookupd_poll_interval: settings.consumer.lookupd_poll_interval.get(),
            max_in_flight: MAX_IN_FLIGHT,
            max_attempts: 0,
            output_buffer_timeout: settings.consumer.output_buffer_timeout(),
            ..ConsumerConfig::default()
        };
        let (status, status_msgs) = suite_common::consul::consumer(
            discovery,
            &settings.status_topic,
            &settings.channel,
            consumer_config.clone(),
        )
        .context("starting the status consumer")?;
        let (unavailable, unavailable_msgs) = suite_common::consul::consumer(
            discovery,
            &settings.replay_unavailable_topic,
            &settings.channel,
            consumer_config,
        )
        .context("starting the replay-unavailable consumer")?;
        let producer = suite_common::consul::producer(
            discovery,
            settings.fixed_replay_nsqd(),
            crate::config::DEFAULT_REPLAY_NSQD,
            ProducerConfig {
                connection,
                publish_timeout: PUBLISH_TIMEOUT,
                ..ProducerConfig::default()
            },
        )
        .context("starting the replay producer")?;
        let period = (settings.gaps().grace / 4)
            .clamp(Duration::from_millis(50), Duration::from_millis(250));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (failed_tx, failed_rx) = mpsc::unbounded_channel();
        tracing::info!(
            status_topic = %settings.status_topic,
            replay_topic = %settings.replay_topic,
            replay_nsqd = %settings
                .fixed_replay_nsqd()
                .unwrap_or_else(|| "from Consul".to_owned()),
            unavailable_topic = %settings.replay_unavailable_topic,
            grace = ?settings.gaps().grace,
            max_attempts = settings.gaps().max_attempts,
            loss_list = %losses.describe(),
            "gap detection on"
        );
        Ok(Self {
            settings,
            gaps,
            losses,
            producer,
            results: None,
            status,
            status_msgs: Some(status_msgs),
            unavailable,
            unavailable_msgs: Some(unavailable_msgs),
            failed_tx,
            failed_rx,
            tick,
            evict_warnings: LogLimiter::default(),
            defer_warnings: LogLimiter::default(),
            window_warnings: LogLimiter::default(),
            reject_warnings: LogLimiter::default(),
        })
    }

    /// Watches the results consumer: gaps are looked for once it consumes.
    pub fn watch_results(&mut self, consumer: Consumer) {
        self.results = Some(consumer);
    }

    /// Notes when the results consumer first has a connection with RDY > 0.
    fn check_consuming(&mut self, now: Instant) {
        let Some(results) = &self.results else {
            return;
        };
        let consuming = results
            .stats()
            .nodes
            .iter()
            .any(|n| n.connected && n.rdy > 0);
        if !consuming {
            return;
        }
        self.results = None;
        if let Ok(mut gaps) = self.gaps.lock() {
            gaps.start_consuming(now, unix_nanos() / 1_000_000);
        }
        tracing::info!(
            backfill = self.settings.backfill,
            "results flow: missing readings are looked for from now on"
        );
    }

    /// Waits for the next event. Cancel-safe: use it in `select!`.
    pub async fn next(&mut self) -> Event {
        loop {
            tokio::select! {
                msg = recv(&mut self.status_msgs) => match msg {
                    Some(msg) => return Event::Status(msg),
                    None => self.status_msgs = None,
                },
                msg = recv(&mut self.unavailable_msgs) => match msg {
                    Some(msg) => return Event::Unavailable(msg),
                    None => self.unavailable_msgs = None,
                },
                Some(ask) = self.failed_rx.recv() => return Event::AskFailed(ask),
                _ = self.tick.tick() => return Event::Tick,
            }
        }
    }

    /// Handles one event; `seen` is what the output holds.
    pub fn handle(&mut self, event: Event, seen: &Seen) {
        match event {
            Event::Status(msg) => self.on_status(msg),
            Event::Unavailable(msg) => self.on_unavailable(msg, seen),
            Event::Tick => self.on_tick(seen),
            Event::AskFailed(ask) => {
                if let Ok(mut gaps) = self.gaps.lock() {
                    gaps.ask_failed(&ask, Instant::now());
                }
            }
        }
    }

    /// Closes both consumers (CLS); announcements and answers not yet handled are requeued
    /// for the next start. Then closes the producer.
    pub async fn close(mut self) {
        let status = self.status.clone();
        let unavailable = self.unavailable.clone();
        let closing_status = self
            .status_msgs
            .take()
            .map(|msgs| tokio::spawn(async move { status.close_and_requeue(msgs).await }));
        let closing_unavailable = self
            .unavailable_msgs
            .take()
            .map(|msgs| tokio::spawn(async move { unavailable.close_and_requeue(msgs).await }));
        for closing in [closing_status, closing_unavailable].into_iter().flatten() {
            let _ = closing.await;
        }
        if tokio::time::timeout(PUBLISH_TIMEOUT, self.producer.close())
            .await
            .is_err()
        {
            tracing::warn!("the replay producer did not close in time");
        }
    }

    /// A status announcement: note the sensor epoch's latest seq.
    fn on_status(&mut self, msg: Message) {
        let span = message_span(&msg);
        let _entered = span.enter();
        match SensorStatus::decode(msg.body()) {
            Ok(status) => {
                span.record("sensor_id", status.sensor_id.as_str())
                    .record("epoch", status.epoch)
                    .record("to_seq", status.last_seq);
                metrics::counter!(m::STATUS_RECEIVED).increment(1);
                tracing::trace!(
                    sensor_id = %status.sensor_id, epoch = status.epoch,
                    last_seq = status.last_seq, final_ = status.final_,
                    "sensor status"
                );
                if let Err(why) = crate::line::check_id("sensor_id", &status.sensor_id) {
                    let topic = self.settings.status_topic.to_string();
                    self.rejected(&msg, &topic, &why);
                } else if let Ok(mut gaps) = self.gaps.lock() {
                    gaps.on_status(
                        &status.sensor_id,
                        status.epoch,
                        status.last_seq,
                        status.oldest_seq,
                        status.final_,
                        Instant::now(),
                    );
                }
            }
            Err(e) => {
                let topic = self.settings.status_topic.to_string();
                self.rejected(&msg, &topic, &e.to_string());
            }
        }
        msg.finish();
    }

    /// An "unavailable" answer: record the still-missing part of the range as lost.
    fn on_unavailable(&mut self, msg: Message, seen: &Seen) {
        let span = message_span(&msg);
        let _entered = span.enter();
        let answer = match ReplayUnavailable::decode(msg.body()) {
            Ok(answer) => {
                span.record("sensor_id", answer.sensor_id.as_str())
                    .record("epoch", answer.epoch)
                    .record("from_seq", answer.from_seq)
                    .record("to_seq", answer.to_seq);
                answer
            }
            Err(e) => {
                let topic = self.settings.replay_unavailable_topic.to_string();
                self.rejected(&msg, &topic, &e.to_string());
                msg.finish();
                return;
            }
        };
        if let Err(why) = crate::line::check_id("sensor_id", &answer.sensor_id) {
            let topic = self.settings.replay_unavailable_topic.to_string();
            self.rejected(&msg, &topic, &why);
            msg.finish();
            return;
        }
        let ranges = match self.gaps.lock() {
            Ok(gaps) => gaps.unavailable(
                &answer.sensor_id,
                answer.epoch,
                answer.from_seq,
                answer.to_seq,
                seen,
            ),
            Err(_) => {
                tracing::error!("the gap tracker's lock is poisoned");
                msg.requeue_no_backoff(REQUEUE_DELAY);
                return;
            }
        };
        let losses: Vec<Loss> = ranges
            .into_iter()
            .map(|(from, to)| Loss {
                sensor_id: answer.sensor_id.clone(),
                epoch: answer.epoch,
                from,
                to,
                reason: LossReason::Unavailable,
            })
            .collect();
        if losses.is_empty() {
            tracing::debug!(
                sensor_id = %answer.sensor_id, epoch = answer.epoch,
                from_seq = answer.from_seq, to_seq = answer.to_seq,
                "unavailable answer for readings written or already reported lost"
            );
            msg.finish();
            return;
        }
        if self.record_losses(&losses) {
            msg.finish();
        } else {
            msg.requeue_no_backoff(REQUEUE_DELAY);
        }
    }

    /// Persists, marks, logs and counts `losses`; false when they could not be persisted
    /// (nothing is marked then).
    fn record_losses(&mut self, losses: &[Loss]) -> bool {
        let at = unix_nanos();
        let records: Vec<LossRecord> = losses.iter().map(|l| LossRecord::new(l, at)).collect();
        if let Err(e) = self.losses.append(&records) {
            tracing::error!(
                error = %e,
                loss_list = %self.losses.describe(),
                ranges = losses.len(),
                "cannot record lost readings in the loss list; will try again"
            );
            return false;
        }
        if let Ok(mut gaps) = self.gaps.lock() {
            for l in losses {
                gaps.mark_lost(&l.sensor_id, l.epoch, l.from, l.to);
            }
        }
        for l in losses {
            metrics::counter!(m::READINGS_LOST, "reason" => l.reason.as_str()).increment(l.count());
            tracing::warn!(
                sensor_id = %l.sensor_id,
                epoch = l.epoch,
                from_seq = l.from,
                to_seq = l.to,
                count = l.count(),
                reason = l.reason.as_str(),
                loss_list = %self.losses.describe(),
                "readings LOST: they will not be in the output"
            );
        }
        true
    }

    /// Readings reported lost that arrived after all: a `recovered` record cancels the loss
    /// in the list, a WARN and a counter say so.
    fn record_recovered(&mut self, recovered: &[Loss]) {
        let at = unix_nanos();
        let records: Vec<LossRecord> = recovered.iter().map(|l| LossRecord::new(l, at)).collect();
        if let Err(e) = self.losses.append(&records) {
            tracing::error!(
                error = %e,
                loss_list = %self.losses.describe(),
                "cannot record recovered readings in the loss list (they are in this log)"
            );
        }
        for l in recovered {
            metrics::counter!(m::READINGS_RECOVERED).increment(l.count());
            tracing::warn!(
                sensor_id = %l.sensor_id,
                epoch = l.epoch,
                from_seq = l.from,
                to_seq = l.to,
                count = l.count(),
                "readings reported lost arrived after all: they are in the output, no longer lost"
            );
        }
    }

    /// A tick: publish what is due, report what is given up on, refresh the gauges.
    fn on_tick(&mut self, seen: &Seen) {
        let now = Instant::now();
        self.check_consuming(now);
        let (outcome, totals) = match self.gaps.lock() {
            Ok(mut gaps) => {
                let outcome = gaps.tick(now, seen);
                (outcome, gaps.totals())
            }
            Err(_) => {
                tracing::error!("the gap tracker's lock is poisoned");
                return;
            }
        };
        if !outcome.recovered.is_empty() {
            self.record_recovered(&outcome.recovered);
        }
        metrics::gauge!(m::MISSING_READINGS).set(totals.missing as f64);
        metrics::gauge!(m::GAP_READINGS_PENDING).set(totals.pending as f64);
        metrics::gauge!(m::SENSOR_EPOCHS).set(totals.epochs as f64);
        metrics::counter!(m::EPOCHS_DROPPED, "reason" => "complete").increment(outcome.completed);
        if outcome.evicted > 0 {
            metrics::counter!(m::EPOCHS_DROPPED, "reason" => "limit").increment(outcome.evicted);
            if let Some(held_back) = self.evict_warnings.check() {
                let (sensor_id, epoch) = outcome.evicted_example.clone().unwrap_or_default();
                tracing::warn!(
                    evicted = outcome.evicted,
                    held_back,
                    max_sensor_epochs = self.settings.max_sensor_epochs,
                    example_sensor_id = %sensor_id,
                    example_epoch = epoch,
                    "more sensor epochs than --max-sensor-epochs: the least recently active \
                     are no longer checked for gaps (many sensors, or forged announcements)"
                );
            }
        }
        metrics::gauge!(m::EPOCHS_BEYOND_WINDOW).set(outcome.beyond_window as f64);
        if let Some((sensor_id, epoch, highest)) = &outcome.beyond_window_example {
            if let Some(held_back) = self.window_warnings.check() {
                tracing::warn!(
                    epochs = outcome.beyond_window,
                    held_back,
                    example_sensor_id = %sensor_id,
                    example_epoch = epoch,
                    highest_seq = highest,
                    replay_window = self.settings.replay_window,
                    "seqs announced or written beyond --replay-window: gaps are looked at a \
                     window at a time (a long outage, or forged messages)"
                );
            }
        }
        if outcome.deferred > 0 {
            metrics::counter!(m::REPLAY_DEFERRED).increment(outcome.deferred);
            if let Some(held_back) = self.defer_warnings.check() {
                tracing::warn!(
                    deferred = outcome.deferred,
                    held_back,
                    per_tick = self.settings.replay_requests_per_tick,
                    "more replay requests due than one tick may make: the rest follow in \
                     later ticks"
                );
            }
        }
        if !outcome.losses.is_empty() {
            // Already marked lost in the tracker; a failed write is logged and the losses
            // stay reported in the log, the metric and GET /gaps.
            let at = unix_nanos();
            let records: Vec<LossRecord> = outcome
                .losses
                .iter()
                .map(|l| LossRecord::new(l, at))
                .collect();
            if let Err(e) = self.losses.append(&records) {
                tracing::error!(
                    error = %e,
                    loss_list = %self.losses.describe(),
                    "cannot record lost readings in the loss list (they are in this log)"
                );
            }
            for l in &outcome.losses {
                metrics::counter!(m::READINGS_LOST, "reason" => l.reason.as_str())
                    .increment(l.count());
                let why = match l.reason {
                    LossReason::Unanswered => "readings LOST: no answer to the replay requests",
                    _ => "readings LOST: older than the sensor's replay history, not asked for",
                };
                tracing::warn!(
                    sensor_id = %l.sensor_id,
                    epoch = l.epoch,
                    from_seq = l.from,
                    to_seq = l.to,
                    count = l.count(),
                    reason = l.reason.as_str(),
                    requests = self.settings.replay_max_attempts,
                    "{why}"
                );
            }
        }
        for ask in outcome.asks {
            self.publish(ask);
        }
        for (sensor_id, epoch, last_seq) in outcome.complete {
            self.announce_complete(sensor_id, epoch, last_seq);
        }
    }

    /// Publishes that a sensor epoch is complete, in the background; a failure is logged
    /// (the sensor then stays until its `--linger` bound).
    fn announce_complete(&self, sensor_id: String, epoch: u64, last_seq: u64) {
        let announcement = EpochComplete {
            schema: SCHEMA_VERSION,
            sensor_id,
            epoch,
            from_seq: 1,
            to_seq: last_seq,
            logger_id: self.settings.logger_id.clone(),
            at: unix_nanos(),
        };
        let body = match announcement.encode() {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a complete announcement");
                return;
            }
        };
        tracing::info!(
            sensor_id = %announcement.sensor_id,
            epoch,
            last_seq,
            "sensor epoch complete: every reading is written or reported lost"
        );
        let producer = self.producer.clone();
        let topic = self.settings.complete_topic.to_string();
        tokio::spawn(async move {
            match producer.publish(&topic, body).await {
                Ok(()) => metrics::counter!(m::COMPLETE_ANNOUNCED).increment(1),
                Err(e) => tracing::warn!(
                    error = %e, sensor_id = %announcement.sensor_id, epoch,
                    "complete announcement not published: the sensor waits for its --linger bound"
                ),
            }
        });
    }

    /// Publishes one replay request in the background.
    fn publish(&self, ask: Ask) {
        let request = ReplayRequest {
            schema: SCHEMA_VERSION,
            sensor_id: ask.sensor_id.clone(),
            epoch: ask.epoch,
            from_seq: ask.from,
            to_seq: ask.to,
            requested_by: self.settings.logger_id.clone(),
            requested_at: unix_nanos(),
        };
        let body = match request.encode() {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a replay request");
                return;
            }
        };
        let producer = self.producer.clone();
        let topic = self.settings.replay_topic.to_string();
        let failed = self.failed_tx.clone();
        tracing::info!(
            sensor_id = %ask.sensor_id,
            epoch = ask.epoch,
            from_seq = ask.from,
            to_seq = ask.to,
            count = ask.to - ask.from + 1,
            attempt = ask.attempt,
            "readings missing: asking the sensor to replay them"
        );
        tokio::spawn(async move {
            match producer.publish(&topic, body).await {
                Ok(()) => {
                    metrics::counter!(m::REPLAY_REQUESTS).increment(1);
                    metrics::counter!(m::REPLAY_READINGS_REQUESTED)
                        .increment(ask.to - ask.from + 1);
                }
                Err(e) => {
                    metrics::counter!(m::REPLAY_REQUEST_FAILURES).increment(1);
                    tracing::warn!(
                        error = %e, sensor_id = %ask.sensor_id, epoch = ask.epoch,
                        from_seq = ask.from, to_seq = ask.to,
                        "replay request not published; it will be sent again"
                    );
                    let _ = failed.send(ask);
                }
            }
        });
    }

    /// Counts a message that does not decode, or decodes but cannot be real, and logs it
    /// (at most one line a second: a flood of garbage must not flood the log). It is
    /// finished by the caller: retrying cannot help.
    fn rejected(&mut self, msg: &Message, topic: &str, why: &str) {
        metrics::counter!(
            m::DECODE_ERRORS,
            "topic" => topic.to_owned(), "channel" => self.settings.channel.to_string()
        )
        .increment(1);
        if let Some(held_back) = self.reject_warnings.check() {
            tracing::error!(
                id = msg.id(),
                topic,
                bytes = msg.body().len(),
                error = why,
                held_back,
                "message is not a valid announcement or answer: finished without using it"
            );
        }
    }
}

/// The `message` span of a status or unavailable message: its NSQ id and attempt, then the
/// sensor_id, epoch and seqs it is about, recorded once decoded.
fn message_span(msg: &Message) -> tracing::Span {
    tracing::info_span!(
        "message",
        id = msg.id(),
        attempt = msg.attempts(),
        sensor_id = tracing::field::Empty,
        epoch = tracing::field::Empty,
        from_seq = tracing::field::Empty,
        to_seq = tracing::field::Empty,
    )
}

/// The next message of a consumer, or never when it has ended.
async fn recv(msgs: &mut Option<Messages>) -> Option<Message> {
    match msgs {
        Some(msgs) => msgs.recv().await,
        None => std::future::pending().await,
    }
}
