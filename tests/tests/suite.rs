//! The suite end to end: real nsqlookupd + nsqd, the real sensor, worker and logger binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::*;
use nsq::{Consumer, ConsumerConfig};

/// nsqlookupd + nsqd registered with it.
async fn nsq_pair() -> (Nsqlookupd, Nsqd) {
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    (lookupd, nsqd)
}

fn worker_args(lookupd: &Nsqlookupd, nsqd: &Nsqd, id: &str) -> Vec<String> {
    vec![
        flag("lookupd-http-address", lookupd.http_address()),
        flag("lookupd-poll-interval", "250ms"),
        flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
        flag("worker-id", id),
    ]
}

fn logger_args(lookupd: &Nsqlookupd, output: &std::path::Path) -> Vec<String> {
    vec![
        flag("lookupd-http-address", lookupd.http_address()),
        flag("lookupd-poll-interval", "250ms"),
        flag("output", output.display()),
    ]
}

#[tokio::test]
async fn twenty_thousand_readings_through_two_workers_exactly_once_with_fan_out() {
    let started = Instant::now();
    let (lookupd, nsqd) = nsq_pair().await;
    // The channels exist before the first reading, so they see every one (NSQ semantics).
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("sensor_data", "audit").await;
    nsqd.create_channel("results", "logger").await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");

    let mut logger = Service::start("logger", &logger_args(&lookupd, &output));
    let mut w1 = Service::start("worker", &worker_args(&lookupd, &nsqd, "w1"));
    let mut w2 = Service::start("worker", &worker_args(&lookupd, &nsqd, "w2"));
    for s in [&mut logger, &mut w1, &mut w2] {
        s.wait_healthy().await;
    }

    // A second consumer on another channel of sensor_data: pub/sub fan-out.
    let (audit, mut audit_msgs) = Consumer::new(
        "sensor_data",
        "audit",
        ConsumerConfig {
            nsqd_tcp_addresses: vec![nsqd.tcp_address()],
            max_in_flight: 500,
            ..Default::default()
        },
    )
    .unwrap();
    let audit_task = tokio::spawn(async move {
        let mut seqs = HashSet::new();
        while seqs.len() < 20_000 {
            let Some(m) = audit_msgs.recv().await else {
                break;
            };
            let r = messages::SensorReading::decode(m.body()).expect("a reading");
            seqs.insert(r.seq);
            m.finish();
        }
        seqs
    });

    let mut sensor = Service::start(
        "sensor",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("sensor-id", "s1"),
            flag("count", 20_000),
            flag("rate", 0),
        ],
    );
    let status = sensor.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "sensor exit: {status}\n{}",
        sensor.logs().join("\n")
    );

    wait_until("20,000 lines in the log", Duration::from_secs(60), || {
        let n = count_lines(&output);
        async move { n >= 20_000 }
    })
    .await;
    let elapsed = started.elapsed();

    let lines = read_jsonl(&output);
    assert_eq!(lines.len(), 20_000, "exactly one line per reading");
    let mut seen = HashMap::new();
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    let mut epochs = HashSet::new();
    for l in &lines {
        assert_eq!(l["sensor_id"], "s1");
        epochs.insert(l["epoch"].as_u64().unwrap());
        let seq = l["seq"].as_u64().unwrap();
        *seen.entry(seq).or_insert(0) += 1;
        let values = l["values"].as_array().unwrap();
        let squares = l["squares"].as_array().unwrap();
        assert_eq!(values.len(), 3, "default --values 3");
        for (v, s) in values.iter().zip(squares) {
            let v = v.as_u64().unwrap();
            assert_eq!(s.as_u64().unwrap(), v * v, "square of {v} in {l}");
        }
        *by_worker
            .entry(l["worker_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(epochs.len(), 1);
    for seq in 1..=20_000u64 {
        assert_eq!(seen.get(&seq), Some(&1), "seq {seq}");
    }
    println!("20,000 readings: logged in {elapsed:?}; per worker {by_worker:?}");
    assert_eq!(
        by_worker.len(),
        2,
        "both workers did part of the work: {by_worker:?}"
    );
    assert!(by_worker.values().all(|n| *n > 1_000), "{by_worker:?}");

    let audited = tokio::time::timeout(Duration::from_secs(30), audit_task)
        .await
        .expect("fan-out consumer finished")
        .unwrap();
    assert_eq!(audited.len(), 20_000, "the audit channel got every reading");
    audit.close().await;

    // SIGTERM: every service stops cleanly.
    for s in [&mut w1, &mut w2, &mut logger] {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(
            status.success(),
            "{} exit: {status}\n{}",
            s.name,
            s.logs().join("\n")
        );
    }
}

#[tokio::test]
async fn a_poison_message_is_logged_dead_lettered_and_does_not_stop_the_worker() {
    let (lookupd, nsqd) = nsq_pair().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("sensor_data.dead", "inspect").await;
    nsqd.create_channel("results", "check").await;
    let mut worker = Service::start("worker", &worker_args(&lookupd, &nsqd, "w1"));
    worker.wait_healthy().await;

    let producer = nsq::Producer::connect(&nsqd.tcp_address(), Default::default()).unwrap();
    producer
        .publish("sensor_data", &b"this is not messagepack"[..])
        .await
        .unwrap();
    let good = messages::SensorReading {
        schema: messages::SCHEMA_VERSION,
        sensor_id: "s1".into(),
        epoch: 1,
        seq: 1,
        taken_at: 1,
        values: vec![2, 3],
    };
    producer
        .publish("sensor_data", good.encode().unwrap())
        .await
        .unwrap();

    // The poison message lands in the dead-letter topic with its error; it is not retried.
    let (dead, mut dead_msgs) = Consumer::new(
        "sensor_data.dead",
        "inspect",
        ConsumerConfig {
            nsqd_tcp_addresses: vec![nsqd.tcp_address()],
            ..Default::default()
        },
    )
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(15), dead_msgs.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    let letter = messages::DeadLetter::decode(m.body()).unwrap();
    m.finish();
    assert_eq!(letter.original, b"this is not messagepack");
    assert_eq!(letter.topic, "sensor_data");
    assert_eq!(letter.channel, "worker");
    assert_eq!(
        letter.attempts, 1,
        "dead-lettered on the first attempt, not retried"
    );
    assert!(!letter.error.is_empty());
    println!("dead letter error: {}", letter.error);

    // The good reading behind it was processed.
    let (results, mut result_msgs) = Consumer::new(
        "results",
        "check",
        ConsumerConfig {
            nsqd_tcp_addresses: vec![nsqd.tcp_address()],
            ..Default::default()
        },
    )
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(15), result_msgs.recv())
        .await
        .expect("a result")
        .unwrap();
    let r = messages::WorkResult::decode(m.body()).unwrap();
    m.finish();
    assert_eq!(r.squares, vec![4, 9]);

    wait_until(
        "the worker logged the decode error",
        Duration::from_secs(5),
        || {
            let logged = worker.logs().iter().any(|l| {
                (l.contains("ERROR") || l.contains("error") || l.contains("WARN"))
                    && (l.contains("decode") || l.contains("dead"))
            });
            async move { logged }
        },
    )
    .await;
    let stats = nsqd.channel_stats("sensor_data", "worker").await.unwrap();
    assert_eq!(
        stats["requeue_count"], 0,
        "the poison message was never requeued: {stats}"
    );
    assert!(worker.try_exit().is_none(), "the worker is still running");
    dead.close().await;
    results.close().await;
    producer.close().await;
}

#[tokio::test]
async fn unreachable_nsqd_at_start_is_retried_with_a_clear_log_and_no_crash() {
    let port = free_port(); // nobody listens here
    let mut worker = Service::start(
        "worker",
        &[
            flag("nsqd-tcp-address", format!("127.0.0.1:{port}")),
            flag("destination-nsqd-tcp-address", format!("127.0.0.1:{port}")),
        ],
    );
    worker.wait_healthy().await;
    wait_until(
        "two reconnect attempts logged",
        Duration::from_secs(15),
        || {
            let n = worker
                .logs()
                .iter()
                .filter(|l| l.contains(&port.to_string()) && l.contains("reconnect"))
                .count();
            async move { n >= 2 }
        },
    )
    .await;
    assert!(
        worker.logged("Connection refused") || worker.logged("connection refused"),
        "the reason is in the log:\n{}",
        worker.logs().join("\n")
    );
    assert!(worker.try_exit().is_none(), "still running");
    let ready = reqwest::get(format!("http://{}/ready", worker.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready without nsqd");
    let status = worker.terminate(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "clean exit on SIGTERM while disconnected: {status}"
    );
}

#[tokio::test]
async fn malformed_address_and_unknown_flag_exit_2_with_a_clear_error() {
    for (name, args, expect) in [
        (
            "sensor",
            vec![flag("nsqd-tcp-address", "not-an-address")],
            "not-an-address",
        ),
        (
            "worker",
            vec![flag("lookupd-http-address", "http://")],
            "lookupd",
        ),
        (
            "logger",
            vec![flag("nsqd-tcp-address", "host:99999")],
            "99999",
        ),
        (
            "worker",
            vec!["--no-such-flag".to_string()],
            "--no-such-flag",
        ),
        ("worker", vec![], "nsqd"),
    ] {
        let mut s = Service::start_raw(name, &args, &[], String::new());
        let status = s.wait_exit(Duration::from_secs(10)).await;
        let logs = s.logs().join("\n");
        assert_eq!(status.code(), Some(2), "{name} {args:?}: {status}\n{logs}");
        assert!(
            logs.contains(expect),
            "{name} {args:?} names the problem ({expect}):\n{logs}"
        );
        println!(
            "{name} {args:?} -> exit 2: {}",
            logs.lines().next().unwrap_or("")
        );
    }
}
