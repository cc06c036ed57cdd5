//! Knowing when nothing can still be asked for: the loggers' [`EpochComplete`]
//! announcements.
//!
//! A sensor with `--count` has confirmed its last reading long before a logger can have
//! noticed every reading lost on the way (a gap is asked for only after `--gap-grace`, and
//! answered again after a growing pause). So it stays, answering replay requests, until a
//! logger announces on `--complete-topic` that the epoch is complete (every seq up to the
//! final one written or reported lost), or until `--linger` has passed, or SIGTERM.
//!
//! The watcher consumes the topic on this epoch's own ephemeral channel (the same name as the
//! replay channel, on another topic), from the start of the run, so that an announcement is
//! not missed. It keeps one number: the highest final seq a logger announced complete for
//! this sensor id and epoch. Every message is finished at once; one that does not decode, or
//! is about another sensor or epoch, costs nothing more.
//!
//! With several loggers (several channels of `results`), the first complete announcement
//! ends the wait: each logger announces only epochs it answers for from seq 1 (one that
//! joined late, without `--backfill`, never does), so the first to announce has everything.
//! A logger still asking would get its answers only until the sensor leaves: run such
//! loggers with the same settings, or give the sensor a `--linger` long enough and stop it
//! with SIGTERM.
//!
//! Announcements are untrusted: a forged one can at worst make the sensor exit early, as it
//! did before it waited at all.

use std::sync::Arc;

use messages::EpochComplete;
use nsq::{Consumer, Message, Messages};
use suite_common::{log_limit::LogLimiter, shutdown::CancellationToken};
use tokio::sync::watch;

use crate::{
    config::Config,
    replay::{channel_name, subscribe},
};

/// Who announced what for this epoch: the highest final seq announced complete, and by which
/// logger (`None` before any announcement).
pub type Completed = Option<(u64, String)>;

/// The watcher of the complete topic; see the module documentation.
pub struct CompleteWatch {
    /// The consumer of `--complete-topic`.
    consumer: Consumer,
    /// Its messages.
    messages: Messages,
    /// This sensor's id.
    sensor_id: String,
    /// This run's epoch.
    epoch: u64,
    /// Where the highest announcement goes.
    completed: watch::Sender<Completed>,
    /// Keeps the error about undecodable messages to one a second.
    reject_warnings: LogLimiter,
}

impl std::fmt::Debug for CompleteWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompleteWatch")
            .field("channel", &self.consumer.channel())
            .finish_non_exhaustive()
    }
}

impl CompleteWatch {
    /// Subscribes to the complete topic on this epoch's ephemeral channel (connecting in the
    /// background); returns the watcher and what it learns.
    pub fn start(
        settings: &Arc<Config>,
        discovery: Option<&suite_common::consul::Discovery>,
        epoch: u64,
        connection: nsq::ConnectionConfig,
    ) -> anyhow::Result<(Self, watch::Receiver<Completed>)> {
        let channel = channel_name(&settings.sensor_id, epoch);
        let (consumer, messages) = subscribe(
            settings,
            discovery,
            &settings.complete_topic,
            &channel,
            connection,
        )?;
        let (completed, rx) = watch::channel(None);
        Ok((
            Self {
                consumer,
                messages,
                sensor_id: settings.sensor_id.clone(),
                epoch,
                completed,
                reject_warnings: LogLimiter::default(),
            },
            rx,
        ))
    }

    /// Reads announcements until `stop` is cancelled, then closes the consumer.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                msg = self.messages.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
            }
        }
        self.consumer.close_and_requeue(self.messages).await;
    }

    /// Notes one announcement if it is about this epoch, and finishes it.
    fn handle(&mut self, msg: Message) {
        match EpochComplete::decode(msg.body()) {
            Ok(c) => {
                if let Some(update) = relevant(&c, &self.sensor_id, self.epoch) {
                    self.completed.send_if_modified(|current| {
                        let higher = current.as_ref().is_none_or(|(seq, _)| update.0 > *seq);
                        if higher {
                            *current = Some(update);
                        }
                        higher
                    });
                }
            }
            Err(e) => {
                if let Some(held_back) = self.reject_warnings.check() {
                    tracing::error!(
                        id = msg.id(),
                        error = %e,
                        held_back,
                        "a message on the complete topic is not an EpochComplete: ignored"
                    );
                }
            }
        }
        msg.finish();
    }
}

/// What an announcement says about this sensor epoch: `(final seq, logger)` when it is about
/// this sensor and epoch and covers it from seq 1.
fn relevant(c: &EpochComplete, sensor_id: &str, epoch: u64) -> Option<(u64, String)> {
    if c.sensor_id != sensor_id || c.epoch != epoch || c.from_seq > 1 {
        return None;
    }
    // The logger id is only logged: keep a bounded prefix of it.
    let logger: String = c.logger_id.chars().take(messages::MAX_ID_BYTES).collect();
    Some((c.to_seq, logger))
}

/// Whether what was announced covers the epoch up to `last_seq`.
pub fn covers(completed: &Completed, last_seq: u64) -> bool {
    completed.as_ref().is_some_and(|(seq, _)| *seq >= last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(sensor_id: &str, epoch: u64, from_seq: u64, to_seq: u64) -> EpochComplete {
        EpochComplete {
            schema: messages::SCHEMA_VERSION,
            sensor_id: sensor_id.to_owned(),
            epoch,
            from_seq,
            to_seq,
            logger_id: "l".repeat(10_000),
            at: 0,
        }
    }

    #[test]
    fn only_this_epoch_from_seq_1_counts() {
        assert_eq!(
            relevant(&announcement("s", 7, 1, 100), "s", 7).map(|(s, l)| (s, l.len())),
            Some((100, messages::MAX_ID_BYTES))
        );
        assert_eq!(relevant(&announcement("other", 7, 1, 100), "s", 7), None);
        assert_eq!(relevant(&announcement("s", 8, 1, 100), "s", 7), None);
        assert_eq!(relevant(&announcement("s", 7, 50, 100), "s", 7), None);
    }

    #[test]
    fn an_announcement_below_the_last_seq_does_not_cover_it() {
        assert!(!covers(&None, 1));
        assert!(!covers(&Some((99, "l".to_owned())), 100));
        assert!(covers(&Some((100, "l".to_owned())), 100));
        assert!(covers(&Some((u64::MAX, "l".to_owned())), 100));
    }
}
