//! Names of the REST services' Prometheus metrics (besides what `suite-common` records).

/// Readings the sensor took (`GET /reading` answered, or pushed).
pub const READINGS_TAKEN: &str = "rest_readings_taken_total";
/// Readings a worker squared.
pub const READINGS_SQUARED: &str = "rest_readings_squared_total";
/// Results the app wrote.
pub const RESULTS_WRITTEN: &str = "rest_results_written_total";
/// Calls to another service that failed, by `call` (`sensor`, `worker`, `app`); each one
/// lost its reading.
pub const REQUESTS_FAILED: &str = "rest_requests_failed_total";

/// Describes the metrics and registers the counters at 0, so that they are in `/metrics`
/// from the start.
pub fn describe() {
    metrics::describe_counter!(READINGS_TAKEN, "Readings the sensor took");
    metrics::describe_counter!(READINGS_SQUARED, "Readings a worker squared");
    metrics::describe_counter!(RESULTS_WRITTEN, "Results the app wrote");
    metrics::describe_counter!(
        REQUESTS_FAILED,
        "Calls to another service that failed; each lost its reading"
    );
}
