//! Names of the logger's Prometheus metrics.
//!
//! Every series also carries the labels `service="logger"` and `id="<logger id>"`, added by
//! the recorder that `suite_common::http::install_metrics` installs. The consumer's metrics
//! and the connection gauge are named in `suite_common::nsq_metrics`.

pub use suite_common::nsq_metrics::{
    CONNECTIONS, CONSUMED, DECODE_ERRORS, FINISHED, IN_FLIGHT, REQUEUED,
};

/// Counter, labels `topic`, `channel`: results already in the output, finished unwritten.
pub const DUPLICATES: &str = "nsq_suite_duplicates_suppressed_total";
/// Counter: lines appended to the output.
pub const LINES_WRITTEN: &str = "nsq_suite_lines_written_total";
/// Counter: batches that could not be written.
pub const WRITE_ERRORS: &str = "nsq_suite_write_errors_total";
/// Gauge: distinct readings in the output (the de-duplication state).
pub const KNOWN_READINGS: &str = "nsq_suite_known_readings";
/// Histogram (seconds): from the reading's `taken_at` to its line being written.
pub const END_TO_END_SECONDS: &str = "nsq_suite_end_to_end_latency_seconds";
/// Counter: batches appended to the output (lines / batches = mean batch size).
pub const WRITE_BATCHES: &str = "nsq_suite_write_batches_total";
/// Counter: rotations of the output (`--rotate-size`, `--rotate-interval`).
pub const ROTATIONS: &str = "nsq_suite_output_rotations_total";
/// Counter: rotations that failed (tried again 10 s later).
pub const ROTATION_ERRORS: &str = "nsq_suite_output_rotation_errors_total";
/// Counter: complete sensor epochs dropped from the de-duplication state after
/// `--epoch-retention`.
pub const EPOCHS_RETIRED: &str = "nsq_suite_dedup_epochs_retired_total";

/// Registers the help text of every metric (shown by `/metrics`).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    suite_common::nsq_metrics::describe_consumer("WorkResult");
    describe_counter!(
        DUPLICATES,
        "Results already in the output, finished unwritten"
    );
    describe_counter!(LINES_WRITTEN, "Lines appended to the output");
    describe_counter!(WRITE_ERRORS, "Batches that could not be written");
    describe_gauge!(KNOWN_READINGS, "Distinct readings in the output");
    describe_histogram!(
        END_TO_END_SECONDS,
        Unit::Seconds,
        "From the reading being taken to its line being written"
    );
    describe_counter!(WRITE_BATCHES, "Batches appended to the output");
    describe_counter!(ROTATIONS, "Rotations of the output");
    describe_counter!(ROTATION_ERRORS, "Rotations of the output that failed");
    describe_counter!(
        EPOCHS_RETIRED,
        "Complete sensor epochs dropped from the de-duplication state after --epoch-retention"
    );
    describe_counter!(
        SEEN_FORGOTTEN,
        "Sensor epochs whose de-duplication state was forgotten at a limit, by reason"
    );
}

/// Counter, label `reason` (`max_sensor_epochs`, `max_seq_ranges`): sensor epochs whose
/// de-duplication state was forgotten at a limit.
pub const SEEN_FORGOTTEN: &str = "nsq_suite_dedup_epochs_forgotten_total";

/// Creates the counters at zero, so that they are scraped (and `rate()` works) before the
/// first event of each kind.
pub fn register(topic: &str, channel: &str) {
    suite_common::nsq_metrics::register_consumer(topic, channel);
    let labels = suite_common::nsq_metrics::consumer_labels(topic, channel);
    metrics::counter!(DUPLICATES, &labels).increment(0);
    for name in [
        LINES_WRITTEN,
        WRITE_ERRORS,
        WRITE_BATCHES,
        ROTATIONS,
        ROTATION_ERRORS,
        EPOCHS_RETIRED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["max_sensor_epochs", "max_seq_ranges"] {
        metrics::counter!(SEEN_FORGOTTEN, "reason" => reason).increment(0);
    }
}

/// Counter, label `reason` (`unavailable`, `unanswered`): readings reported lost.
pub const READINGS_LOST: &str = "nsq_suite_readings_lost_total";
/// Counter: readings reported lost that arrived after all (a `recovered` record).
pub const READINGS_RECOVERED: &str = "nsq_suite_readings_recovered_total";
/// Counter: replay requests published (one per requested range).
pub const REPLAY_REQUESTS: &str = "nsq_suite_replay_requests_total";
/// Counter: sensor epochs announced complete on `--complete-topic`.
pub const COMPLETE_ANNOUNCED: &str = "nsq_suite_epochs_complete_announced_total";
/// Counter: readings asked for in replay requests (the sum of the ranges' lengths).
pub const REPLAY_READINGS_REQUESTED: &str = "nsq_suite_replay_readings_requested_total";
/// Counter: replay requests that could not be published (retried, not counted as attempts).
pub const REPLAY_REQUEST_FAILURES: &str = "nsq_suite_replay_request_failures_total";
/// Counter: sensor status announcements received.
pub const STATUS_RECEIVED: &str = "nsq_suite_sensor_status_received_total";
/// Gauge: seqs missing now (neither written nor lost), within the grace period or not.
pub const MISSING_READINGS: &str = "nsq_suite_missing_readings";
/// Gauge: missing seqs past the grace period, being asked for.
pub const GAP_READINGS_PENDING: &str = "nsq_suite_gap_readings_pending";

/// Gauge: sensor epochs tracked by the gap detection.
pub const SENSOR_EPOCHS: &str = "nsq_suite_sensor_epochs_tracked";
/// Counter, label `reason` (`complete`, `limit`): sensor epochs the gap detection stopped
/// tracking: complete ones, and the least recently active ones at `--max-sensor-epochs`.
pub const EPOCHS_DROPPED: &str = "nsq_suite_sensor_epochs_dropped_total";
/// Gauge: sensor epochs whose written or announced seqs reach beyond `--replay-window`.
pub const EPOCHS_BEYOND_WINDOW: &str = "nsq_suite_sensor_epochs_beyond_window";
/// Counter: due replay requests left for a later tick at the per-tick limit.
pub const REPLAY_DEFERRED: &str = "nsq_suite_replay_requests_deferred_total";

/// Registers the help text of the gap-detection metrics and creates them at zero.
pub fn describe_gaps() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        READINGS_LOST,
        "Readings reported lost, by reason (unavailable: not in the sensor's history; \
         unanswered: no answer to the replay requests)"
    );
    describe_counter!(
        READINGS_RECOVERED,
        "Readings reported lost that arrived after all"
    );
    describe_counter!(REPLAY_REQUESTS, "Replay requests published");
    describe_counter!(
        COMPLETE_ANNOUNCED,
        "Sensor epochs announced complete (final seq came, nothing missing)"
    );
    describe_counter!(
        REPLAY_READINGS_REQUESTED,
        "Readings asked for in replay requests"
    );
    describe_counter!(
        REPLAY_REQUEST_FAILURES,
        "Replay requests that could not be published"
    );
    describe_counter!(STATUS_RECEIVED, "Sensor status announcements received");
    describe_gauge!(
        MISSING_READINGS,
        "Seqs missing (neither written nor lost), within the grace period or not"
    );
    describe_gauge!(
        GAP_READINGS_PENDING,
        "Missing seqs past the grace period, being asked for"
    );
    describe_gauge!(SENSOR_EPOCHS, "Sensor epochs tracked by the gap detection");
    describe_gauge!(
        EPOCHS_BEYOND_WINDOW,
        "Sensor epochs whose seqs reach beyond --replay-window (looked at a window at a time)"
    );
    describe_counter!(
        EPOCHS_DROPPED,
        "Sensor epochs no longer tracked, by reason (complete; limit: --max-sensor-epochs)"
    );
    describe_counter!(
        REPLAY_DEFERRED,
        "Due replay requests left for a later tick at the per-tick limit"
    );
    for reason in ["unavailable", "unanswered"] {
        metrics::counter!(READINGS_LOST, "reason" => reason).increment(0);
    }
    for reason in ["complete", "limit"] {
        metrics::counter!(EPOCHS_DROPPED, "reason" => reason).increment(0);
    }
    metrics::counter!(REPLAY_DEFERRED).increment(0);
    metrics::gauge!(SENSOR_EPOCHS).set(0.0);
    metrics::gauge!(EPOCHS_BEYOND_WINDOW).set(0.0);
    for name in [
        READINGS_RECOVERED,
        REPLAY_REQUESTS,
        COMPLETE_ANNOUNCED,
        REPLAY_READINGS_REQUESTED,
        REPLAY_REQUEST_FAILURES,
        STATUS_RECEIVED,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(MISSING_READINGS).set(0.0);
    metrics::gauge!(GAP_READINGS_PENDING).set(0.0);
}
