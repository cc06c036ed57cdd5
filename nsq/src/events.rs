//! Connection-state changes, published to every subscriber and logged through `tracing`.
//!
//! Nothing here stays silent: every connect, disconnect (with its reason) and reconnect
//! attempt becomes an [`Event`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

/// A change in a producer's or consumer's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection to nsqd is open and identified (and subscribed, for a consumer).
    Connected {
        /// The nsqd address.
        addr: String,
    },
    /// A connection ended or could not be made.
    Disconnected {
        /// The nsqd address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The next connection attempt is scheduled.
    Reconnecting {
        /// The nsqd address.
        addr: String,
        /// Failed attempts in a row so far.
        attempt: u32,
        /// Delay before the attempt.
        delay: Duration,
    },
    /// A consumer started to use an nsqd (fixed or discovered).
    NodeAdded {
        /// The nsqd address.
        addr: String,
    },
    /// A consumer stopped using an nsqd (lookupd no longer lists it, or close()).
    NodeRemoved {
        /// The nsqd address.
        addr: String,
    },
    /// A round of lookupd queries answered (at least one lookupd did): the nsqd nodes listed.
    Looked {
        /// The nsqd addresses listed, by every lookupd that answered.
        nodes: Vec<String>,
    },
    /// nsqd refused the output-buffer timeout a consumer asked for in IDENTIFY (outside its
    /// `--min-output-buffer-timeout` .. `--max-output-buffer-timeout`); the consumer connected
    /// again without it, so nsqd's own `--output-buffer-timeout` applies to this connection.
    /// Emitted on every such connection; logged as a WARN once per consumer.
    OutputBufferTimeoutRefused {
        /// The nsqd address.
        addr: String,
        /// What the consumer asked for.
        requested: Duration,
        /// nsqd's error text.
        reason: String,
    },
    /// A lookupd query failed; discovery goes on with the others.
    LookupFailed {
        /// The lookupd URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// A sender that logs each event and never fails when nobody listens.
#[derive(Clone, Debug)]
pub(crate) struct Events {
    tx: broadcast::Sender<Event>,
    /// Set once the output-buffer fallback was logged as a WARN: it is a configuration
    /// problem of nsqd, worth one line per consumer, not one per reconnect.
    warned_output_buffer: Arc<AtomicBool>,
}

impl Events {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events {
            tx,
            warned_output_buffer: Arc::default(),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        match &event {
            Event::Connected { addr } => tracing::info!(nsqd = %addr, "connected to nsqd"),
            Event::Disconnected { addr, reason } => {
                tracing::warn!(nsqd = %addr, %reason, "disconnected from nsqd")
            }
            Event::Reconnecting {
                addr,
                attempt,
                delay,
            } => {
                tracing::info!(nsqd = %addr, attempt, ?delay, "reconnecting to nsqd")
            }
            Event::NodeAdded { addr } => tracing::info!(nsqd = %addr, "consuming from nsqd"),
            Event::NodeRemoved { addr } => {
                tracing::info!(nsqd = %addr, "stopped consuming from nsqd")
            }
            Event::Looked { nodes } => tracing::debug!(?nodes, "nsqlookupd answered"),
            Event::OutputBufferTimeoutRefused {
                addr,
                requested,
                reason,
            } => {
                if self.warned_output_buffer.swap(true, Ordering::Relaxed) {
                    tracing::debug!(nsqd = %addr, ?requested, %reason, "nsqd refused the output buffer timeout again: using its default");
                } else {
                    tracing::warn!(
                        nsqd = %addr,
                        ?requested,
                        %reason,
                        "nsqd refused the output buffer timeout this consumer asked for, so it \
                         flushes messages to it on its own --output-buffer-timeout (250ms \
                         unless changed) and a lone message can wait that long. For low \
                         latency start nsqd with --min-output-buffer-timeout at or below the \
                         requested value (e.g. --min-output-buffer-timeout=1ms); to keep nsqd's \
                         default without this warning, ask for none (output buffer timeout 0). \
                         Logged once per consumer; consuming goes on"
                    );
                }
            }
            Event::LookupFailed { url, reason } => {
                tracing::warn!(lookupd = %url, %reason, "nsqlookupd query failed")
            }
        }
        // No receivers is fine: events are also logged.
        let _ = self.tx.send(event);
    }
}
