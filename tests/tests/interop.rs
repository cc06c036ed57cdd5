//! The contract from another language: pynsq (NSQ's official Python client) consumes the
//! results the real worker published and decodes them with msgpack to the same values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::process::Command;
use std::time::Duration;

use e2e::*;

#[tokio::test]
async fn interop_python_decodes_results() {
    let python = std::env::var("NSQ_SUITE_PYTHON").unwrap_or_else(|_| {
        panic!("NSQ_SUITE_PYTHON is not set: run scripts/test.sh, or export NSQ_SUITE_PYTHON=$(scripts/python-env.sh)")
    });
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "python").await;
    let mut worker = Service::start(
        "worker",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
            flag("worker-id", "w-interop"),
        ],
    );
    worker.wait_healthy().await;
    let mut sensor = Service::start(
        "sensor",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("sensor-id", "s-interop"),
            flag("count", 200),
            flag("rate", 0),
            flag("values", 4),
            // No logger here to announce the epoch complete: nothing to stay for.
            flag("linger", "0s"),
        ],
    );
    assert!(sensor.wait_exit(Duration::from_secs(30)).await.success());

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/consume_results.py");
    let nsqd_addr = nsqd.tcp_address();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([
                "--nsqd-tcp-address",
                &nsqd_addr,
                "--count",
                "200",
                "--timeout",
                "30",
            ])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pynsq consumer failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON from python"))
        .collect();
    assert_eq!(docs.len(), 200);
    let mut seqs = std::collections::BTreeSet::new();
    for d in &docs {
        assert_eq!(d["schema"], 1);
        assert_eq!(d["sensor_id"], "s-interop");
        assert_eq!(d["worker_id"], "w-interop");
        let values = d["values"].as_array().unwrap();
        let squares = d["squares"].as_array().unwrap();
        assert_eq!(values.len(), 4);
        for (v, s) in values.iter().zip(squares) {
            let v = v.as_u64().unwrap();
            assert_eq!(s.as_u64().unwrap(), v * v);
        }
        assert!(d["computed_at"].as_u64().unwrap() >= d["taken_at"].as_u64().unwrap());
        seqs.insert(d["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=200).collect(), "every reading decoded in Python");
    let status = worker.terminate(Duration::from_secs(20)).await;
    assert!(status.success());
}
