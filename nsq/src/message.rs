//! A delivered message and its explicit outcome: finish, requeue or touch.
//!
//! A [`Message`] that is dropped without an outcome is requeued at once (REQ with no delay):
//! nothing a handler forgets waits for nsqd's message timeout, and nothing is finished by
//! accident.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::{MessageId, RawMessage};

/// Commands a connection's writer sends for its messages and its manager.
#[derive(Debug)]
pub(crate) enum ConnCommand {
    Fin(MessageId),
    Req(MessageId, u64),
    Touch(MessageId),
    Rdy(u32),
    Cls,
}

/// What a physical connection shares with the messages it delivered. A new connection gets a
/// new one, so an outcome for a message of a dead connection goes nowhere (nsqd has already
/// requeued it) and never touches the new connection's count.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(crate) addr: String,
    pub(crate) tx: mpsc::UnboundedSender<ConnCommand>,
    /// Messages delivered and not yet finished or requeued on the wire.
    pub(crate) in_flight: AtomicU32,
    /// Set by the consumer while backing off, so that successes are reported to it.
    pub(crate) report_success: Arc<AtomicBool>,
    /// Where outcomes that matter for backoff are reported.
    pub(crate) outcomes: mpsc::UnboundedSender<Outcome>,
}

/// An outcome the consumer's backoff logic needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

/// A message delivered by nsqd. Finish it, requeue it or let it drop (which requeues it).
#[derive(Debug)]
pub struct Message {
    raw: RawMessage,
    conn: Arc<ConnHandle>,
    max_attempts: u16,
    responded: bool,
}

impl Message {
    pub(crate) fn new(raw: RawMessage, conn: Arc<ConnHandle>, max_attempts: u16) -> Self {
        Message {
            raw,
            conn,
            max_attempts,
            responded: false,
        }
    }

    /// The payload.
    pub fn body(&self) -> &Bytes {
        &self.raw.body
    }

    /// nsqd's ID of the message (16 ASCII characters).
    pub fn id(&self) -> &str {
        self.raw.id.as_str()
    }

    /// How many times nsqd has delivered it, this delivery included (1 on first delivery).
    pub fn attempts(&self) -> u16 {
        self.raw.attempts
    }

    /// When nsqd first received the message (unix nanoseconds).
    pub fn timestamp(&self) -> i64 {
        self.raw.timestamp
    }

    /// The nsqd this message came from.
    pub fn nsqd_address(&self) -> &str {
        &self.conn.addr
    }

    /// The max-attempts policy hook: true when this delivery is past the consumer's
    /// `max_attempts` (never when that is 0). The caller decides where such a message goes
    /// (for example a dead-letter topic) and then finishes it.
    pub fn over_max_attempts(&self) -> bool {
        self.max_attempts > 0 && self.raw.attempts > self.max_attempts
    }

    /// Tells nsqd the message is done (FIN).
    pub fn finish(mut self) {
        self.responded = true;
        let _ = self.conn.tx.send(ConnCommand::Fin(self.raw.id));
        if self.conn.report_success.load(Ordering::Relaxed) {
            let _ = self.conn.outcomes.send(Outcome::Success);
        }
    }

    /// Gives the message back to nsqd for redelivery after `delay` (REQ), and tells the
    /// consumer to back off (RDY 0 for a growing time), as go-nsq does after a failure.
    pub fn requeue(mut self, delay: Duration) {
        self.responded = true;
        let _ = self
            .conn
            .tx
            .send(ConnCommand::Req(self.raw.id, delay.as_millis() as u64));
        let _ = self.conn.outcomes.send(Outcome::Failure);
    }

    /// Like [`Message::requeue`] but without backing off the consumer (the failure is about
    /// this message, not about a downstream).
    pub fn requeue_no_backoff(mut self, delay: Duration) {
        self.responded = true;
        let _ = self
            .conn
            .tx
            .send(ConnCommand::Req(self.raw.id, delay.as_millis() as u64));
    }

    /// Resets nsqd's timeout for this message (TOUCH), for handlers that need longer.
    pub fn touch(&self) {
        let _ = self.conn.tx.send(ConnCommand::Touch(self.raw.id));
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if !self.responded {
            tracing::debug!(id = %self.raw.id, "message dropped unhandled: requeued");
            let _ = self.conn.tx.send(ConnCommand::Req(self.raw.id, 0));
        }
    }
}
