//! Names of the worker's Prometheus metrics.
//!
//! Every series also carries the labels `service="worker"` and `id="<worker id>"`, added by
//! the recorder that `suite_common::http::install_metrics` installs. The consumer's metrics
//! and the connection gauge are named in `suite_common::nsq_metrics`.

pub use suite_common::nsq_metrics::{
    CONNECTIONS, CONSUMED, DECODE_ERRORS, FINISHED, IN_FLIGHT, REQUEUED,
};

/// Counter, labels `topic`, `channel`, `reason` (`decode`, `max_attempts`,
/// `publish_rejected`): messages published to the dead-letter topic, then finished.
pub const DEAD_LETTERED: &str = "nsq_suite_messages_dead_lettered_total";
/// Counter, labels `topic`, `channel`, `policy` (`drop`, `flag`): readings older than
/// `--max-age`.
pub const STALE: &str = "nsq_suite_stale_readings_total";
/// Counter, label `topic`: messages nsqd confirmed (results and dead letters).
pub const PUBLISHED: &str = "nsq_suite_messages_published_total";
/// Counter, labels `topic`, `kind` (`transient`, `permanent`): failed publishes.
pub const PUBLISH_FAILURES: &str = "nsq_suite_publish_failures_total";
/// Histogram (seconds), labels `topic`, `channel`: time from delivery to FIN or REQ.
pub const HANDLER_SECONDS: &str = "nsq_suite_handler_seconds";

/// Registers the help text of every metric (shown by `/metrics`).
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    suite_common::nsq_metrics::describe_consumer("SensorReading");
    describe_counter!(
        DEAD_LETTERED,
        "Messages published to the dead-letter topic then finished, by reason"
    );
    describe_counter!(STALE, "Readings older than --max-age, by policy");
    describe_counter!(PUBLISHED, "Messages confirmed by nsqd, by topic");
    describe_counter!(PUBLISH_FAILURES, "Failed publishes, by topic and kind");
    describe_histogram!(
        HANDLER_SECONDS,
        Unit::Seconds,
        "Time from delivery to FIN or REQ, work included"
    );
}

/// Creates the counters of every outcome at zero, so that they are scraped (and `rate()`
/// works) before the first message of each kind.
pub fn register(topic: &str, channel: &str, destination_topic: &str) {
    suite_common::nsq_metrics::register_consumer(topic, channel);
    let labels = suite_common::nsq_metrics::consumer_labels(topic, channel);
    for reason in ["decode", "max_attempts", "publish_rejected"] {
        let mut labels = labels.to_vec();
        labels.push(("reason", reason.to_owned()));
        metrics::counter!(DEAD_LETTERED, &labels).increment(0);
    }
    metrics::counter!(PUBLISHED, "topic" => destination_topic.to_owned()).increment(0);
}

/// Handles of the metrics every message touches, looked up once. Looking a metric up by name
/// and labels (what `metrics::counter!` does on each call) hashes the key and clones the label
/// strings: on the hot path that cost more than the worker's own computation.
#[derive(Debug, Clone)]
pub struct Hot {
    /// [`CONSUMED`] for the worker's topic and channel.
    pub consumed: metrics::Counter,
    /// [`FINISHED`] for the worker's topic and channel.
    pub finished: metrics::Counter,
    /// [`PUBLISHED`] for the results topic.
    pub published: metrics::Counter,
    /// [`HANDLER_SECONDS`] for the worker's topic and channel.
    pub handler_seconds: metrics::Histogram,
}

impl Hot {
    /// The handles for `topic` and `channel`, results going to `destination_topic`.
    pub fn new(topic: &str, channel: &str, destination_topic: &str) -> Self {
        let labels = suite_common::nsq_metrics::consumer_labels(topic, channel);
        Hot {
            consumed: metrics::counter!(CONSUMED, &labels),
            finished: metrics::counter!(FINISHED, &labels),
            published: metrics::counter!(PUBLISHED, "topic" => destination_topic.to_owned()),
            handler_seconds: metrics::histogram!(HANDLER_SECONDS, &labels),
        }
    }
}
