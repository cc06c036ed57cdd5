//! Names of the logger's Prometheus metrics.
//!
//! Every series also carries the labels `service="logger"` and `id="<logger id>"`, added by
//! the recorder that `suite_common::http::install_metrics` installs.

/// Counter, labels `topic`, `channel`: messages delivered to the logger.
pub const CONSUMED: &str = "nsq_suite_messages_consumed_total";
/// Counter, labels `topic`, `channel`: messages finished (FIN): written, duplicate or
/// undecodable.
pub const FINISHED: &str = "nsq_suite_messages_finished_total";
/// Counter, labels `topic`, `channel`: messages requeued (REQ) after a failed write.
pub const REQUEUED: &str = "nsq_suite_messages_requeued_total";
/// Counter, labels `topic`, `channel`: bodies that are not a `WorkResult` (finished, logged).
pub const DECODE_ERRORS: &str = "nsq_suite_decode_errors_total";
/// Counter, labels `topic`, `channel`: results already in the output, finished unwritten.
pub const DUPLICATES: &str = "nsq_suite_duplicates_suppressed_total";
/// Counter: lines appended to the output.
pub const LINES_WRITTEN: &str = "nsq_suite_lines_written_total";
/// Counter: batches that could not be written.
pub const WRITE_ERRORS: &str = "nsq_suite_write_errors_total";
/// Gauge, labels `role` (`consumer`), `nsqd` (its TCP address): 1 while the connection to
/// that nsqd is open, else 0.
pub const CONNECTIONS: &str = "nsq_suite_nsq_connections";
/// Gauge, labels `topic`, `channel`: messages delivered and not yet finished or requeued.
pub const IN_FLIGHT: &str = "nsq_suite_messages_in_flight";
/// Gauge: distinct readings in the output (the de-duplication state).
pub const KNOWN_READINGS: &str = "nsq_suite_known_readings";
/// Histogram (seconds): from the reading's `taken_at` to its line being written.
pub const END_TO_END_SECONDS: &str = "nsq_suite_end_to_end_latency_seconds";
/// Counter: batches appended to the output (lines / batches = mean batch size).
pub const WRITE_BATCHES: &str = "nsq_suite_write_batches_total";

/// Registers the help text of every metric (shown by `/metrics`).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CONSUMED, "Messages delivered, by topic and channel");
    describe_counter!(FINISHED, "Messages finished (FIN), by topic and channel");
    describe_counter!(REQUEUED, "Messages requeued (REQ) after a failed write");
    describe_counter!(DECODE_ERRORS, "Message bodies that are not a WorkResult");
    describe_counter!(
        DUPLICATES,
        "Results already in the output, finished unwritten"
    );
    describe_counter!(LINES_WRITTEN, "Lines appended to the output");
    describe_counter!(WRITE_ERRORS, "Batches that could not be written");
    describe_gauge!(
        CONNECTIONS,
        "1 while the connection to an nsqd is open, by role and nsqd"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Messages delivered and not yet finished or requeued"
    );
    describe_gauge!(KNOWN_READINGS, "Distinct readings in the output");
    describe_histogram!(
        END_TO_END_SECONDS,
        Unit::Seconds,
        "From the reading being taken to its line being written"
    );
    describe_counter!(WRITE_BATCHES, "Batches appended to the output");
}

/// Creates the counters at zero, so that they are scraped (and `rate()` works) before the
/// first event of each kind.
pub fn register(topic: &str, channel: &str) {
    let labels = [("topic", topic.to_owned()), ("channel", channel.to_owned())];
    for name in [CONSUMED, FINISHED, REQUEUED, DECODE_ERRORS, DUPLICATES] {
        metrics::counter!(name, &labels).increment(0);
    }
    for name in [LINES_WRITTEN, WRITE_ERRORS, WRITE_BATCHES] {
        metrics::counter!(name).increment(0);
    }
}
