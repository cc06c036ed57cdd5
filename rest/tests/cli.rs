//! The command lines of the three REST binaries: help, healthcheck, usage errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

#[test]
fn command_lines() {
    use test_support::cli::{exits_2, healthcheck_fails_when_nothing_listens, help_mentions};
    // Cargo builds the three binaries for this test (and so for `cargo test --workspace`,
    // whose end-to-end test tests/tests/rest.rs runs them from target/).
    let (sensor, worker, app) = (
        env!("CARGO_BIN_EXE_rest-sensor"),
        env!("CARGO_BIN_EXE_rest-worker"),
        env!("CARGO_BIN_EXE_rest-app"),
    );
    help_mentions(
        sensor,
        &["--push-to", "REST_SENSOR_RATE", "[default: 127.0.0.1:4290]"],
    );
    help_mentions(
        worker,
        &["--push-to", "REST_WORKER_WORK_MS", "[default: 2s]"],
    );
    help_mentions(app, &["--worker-url", "REST_APP_INTERVAL", "[default: 1s]"]);
    for b in [sensor, worker, app] {
        healthcheck_fails_when_nothing_listens(b);
    }
    exits_2(app, &[], &[], Some("--sensor-url"));
    exits_2(
        app,
        &["--sensor-url", "127.0.0.1:1"],
        &[],
        Some("--worker-url"),
    );
    exits_2(
        sensor,
        &["--push-to", "https://h:1"],
        &[],
        Some("--push-to"),
    );
    exits_2(
        worker,
        &[],
        &[("REST_WORKER_WORK_MSS", "1")],
        Some("REST_WORKER_WORK_MS"),
    );
}
