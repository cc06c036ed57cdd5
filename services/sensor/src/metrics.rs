//! Names of the sensor's Prometheus metrics.
//!
//! Every series also carries the labels `service="sensor"` and `id="<sensor id>"`, added by
//! the recorder that `suite_common::http::install_metrics` installs.

pub use suite_common::nsq_metrics::CONNECTIONS;

/// Counter: readings taken (generated), whether or not published yet.
pub const READINGS_TAKEN: &str = "nsq_suite_readings_taken_total";
/// Counter, label `topic`: messages nsqd confirmed (readings and status announcements).
pub const PUBLISHED: &str = "nsq_suite_messages_published_total";
/// Counter, labels `topic`, `kind` (`transient` or `permanent`): messages whose publish
/// failed. Transient failures are retried; permanent ones are lost and logged as errors.
pub const PUBLISH_FAILURES: &str = "nsq_suite_publish_failures_total";
/// Counter: readings dropped because the outbox was full (still in the history).
pub const OUTBOX_DROPPED: &str = "nsq_suite_outbox_dropped_total";
/// Gauge: readings waiting in the outbox.
pub const OUTBOX_READINGS: &str = "nsq_suite_outbox_readings";
/// Gauge: readings in publishes sent and not yet answered by nsqd.
pub const PUBLISH_IN_FLIGHT: &str = "nsq_suite_publish_in_flight";
/// Gauge: readings held in the history.
pub const HISTORY_READINGS: &str = "nsq_suite_history_readings";
/// Gauge: seq of the newest reading taken in the current epoch.
pub const LAST_SEQ: &str = "nsq_suite_last_seq";
/// Counter: `GET /readings` requests answered with readings.
pub const READINGS_SERVED: &str = "nsq_suite_readings_served_total";

/// Registers the help text of every metric (shown by `/metrics`).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        READINGS_TAKEN,
        "Readings taken (generated), published or not"
    );
    describe_counter!(PUBLISHED, "Messages confirmed by nsqd, by topic");
    describe_counter!(
        PUBLISH_FAILURES,
        "Messages whose publish failed, by topic and kind (transient ones are retried)"
    );
    describe_counter!(
        OUTBOX_DROPPED,
        "Readings dropped from the full outbox (still in the history for replay)"
    );
    describe_gauge!(OUTBOX_READINGS, "Readings waiting in the outbox");
    describe_gauge!(
        PUBLISH_IN_FLIGHT,
        "Readings sent to nsqd and not yet confirmed"
    );
    describe_gauge!(HISTORY_READINGS, "Readings held in the replay history");
    describe_gauge!(LAST_SEQ, "Seq of the newest reading taken in this epoch");
    suite_common::nsq_metrics::describe_connections();
    describe_counter!(READINGS_SERVED, "Readings returned by GET /readings");
}

/// Creates the counters at zero, so that they are scraped (and `rate()` works) before the
/// first event of each kind.
pub fn register(topic: &str, status_topic: &str) {
    metrics::counter!(READINGS_TAKEN).increment(0);
    metrics::counter!(OUTBOX_DROPPED).increment(0);
    for topic in [topic, status_topic] {
        metrics::counter!(PUBLISHED, "topic" => topic.to_owned()).increment(0);
    }
    metrics::gauge!(OUTBOX_READINGS).set(0.0);
    metrics::gauge!(PUBLISH_IN_FLIGHT).set(0.0);
}

/// Counter: replay requests received for this sensor (its id, this or an older epoch).
pub const REPLAY_REQUESTS: &str = "nsq_suite_replay_requests_received_total";
/// Counter: readings re-published to answer replay requests.
pub const REPLAYED_READINGS: &str = "nsq_suite_replayed_readings_total";
/// Counter: readings asked for that the history no longer holds (answered unavailable).
pub const REPLAY_UNAVAILABLE: &str = "nsq_suite_replay_unavailable_readings_total";
/// Counter: replay requests that could not be answered now (requeued).
pub const REPLAY_FAILURES: &str = "nsq_suite_replay_failures_total";

/// Registers the help text of the replay metrics and creates them at zero.
pub fn describe_replay() {
    use metrics::describe_counter;
    describe_counter!(REPLAY_REQUESTS, "Replay requests received for this sensor");
    describe_counter!(
        REPLAYED_READINGS,
        "Readings re-published to answer replay requests"
    );
    describe_counter!(
        REPLAY_UNAVAILABLE,
        "Readings asked for that the history no longer holds (answered unavailable)"
    );
    describe_counter!(
        REPLAY_FAILURES,
        "Replay requests that could not be answered now (requeued)"
    );
    for name in [
        REPLAY_REQUESTS,
        REPLAYED_READINGS,
        REPLAY_UNAVAILABLE,
        REPLAY_FAILURES,
    ] {
        metrics::counter!(name).increment(0);
    }
}
