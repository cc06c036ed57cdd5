//! The worker in-process against a real nsqd (nsq::testkit), and its binary's command line.
//!
//! Every test that builds an [`Application`] uses the worker id [`WORKER_ID`]: the metrics
//! recorder is process-wide and labelled with the id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use messages::{DeadLetter, SensorReading, WorkResult, SCHEMA_VERSION};
use nsq::testkit::Nsqd;
use test_support::{cli, consume, init_logs, spawn_service, wait_until};
use worker::{Application, Config};

const WORKER_ID: &str = "test-worker";
const BIN: &str = env!("CARGO_BIN_EXE_worker");

fn config(nsqd: &Nsqd) -> Config {
    let mut config = Config {
        destination_nsqd_tcp_address: Some(nsqd.tcp_address().parse().unwrap()),
        worker_id: WORKER_ID.to_owned(),
        http_address: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.consumer.nsqd_tcp_address = vec![nsqd.tcp_address().parse().unwrap()];
    config
}

fn reading(seq: u64, taken_at: u64) -> SensorReading {
    SensorReading {
        schema: SCHEMA_VERSION,
        sensor_id: "s1".to_owned(),
        epoch: 99,
        seq,
        taken_at,
        values: vec![seq as u32, 3, u32::MAX],
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test]
async fn readings_become_results_and_garbage_is_dead_lettered() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "check").await;
    nsqd.create_channel("sensor_data.dead", "check").await;
    const N: u64 = 1000;

    // Readings (one of them an hour old) and one poison message, published before the
    // worker starts.
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let now = now_nanos();
    let bodies: Vec<Bytes> = (1..=N)
        .map(|seq| {
            let taken_at = if seq == 7 {
                now - 3_600_000_000_000
            } else {
                now
            };
            Bytes::from(reading(seq, taken_at).encode().unwrap())
        })
        .collect();
    producer.multi_publish("sensor_data", bodies).await.unwrap();
    let garbage = Bytes::from_static(b"\xc1 this is not msgpack");
    producer
        .publish("sensor_data", garbage.clone())
        .await
        .unwrap();

    let (base, stop, run) = spawn_service::<Application>({
        let mut config = Config {
            max_age: Some("10m".parse().unwrap()),
            ..config(&nsqd)
        };
        config.consumer.max_in_flight = 50;
        config
    })
    .await;

    let results = consume(&nsqd, "results", "check", N as usize, |b| {
        WorkResult::decode(b).unwrap()
    })
    .await;
    let by_seq: BTreeMap<u64, WorkResult> = results.into_iter().map(|r| (r.seq, r)).collect();
    assert_eq!(by_seq.len() as u64, N, "one result per reading");
    for (seq, r) in &by_seq {
        assert_eq!((r.sensor_id.as_str(), r.epoch), ("s1", 99));
        assert_eq!(r.values, [*seq as u32, 3, u32::MAX]);
        assert_eq!(
            r.squares,
            [seq * seq, 9, u64::from(u32::MAX) * u64::from(u32::MAX)]
        );
        assert_eq!(r.worker_id, WORKER_ID);
        assert_eq!(
            r.stale,
            *seq == 7,
            "seq {seq}: only the old reading is stale"
        );
        assert!(r.computed_at >= r.taken_at);
    }

    let letters = consume(&nsqd, "sensor_data.dead", "check", 1, |b| {
        DeadLetter::decode(b).unwrap()
    })
    .await;
    let letter = &letters[0];
    assert_eq!(letter.original, garbage);
    assert_eq!(
        (letter.topic.as_str(), letter.channel.as_str()),
        ("sensor_data", "worker")
    );
    assert_eq!(letter.attempts, 1, "never retried");
    assert!(
        letter.error.contains("not a SensorReading"),
        "{}",
        letter.error
    );

    // Everything was finished, nothing requeued.
    wait_until(
        "worker channel drained",
        Duration::from_secs(10),
        || async {
            let c = nsqd.channel_stats("sensor_data", "worker").await.unwrap();
            c["depth"] == 0 && c["in_flight_count"] == 0
        },
    )
    .await;
    let c = nsqd.channel_stats("sensor_data", "worker").await.unwrap();
    assert_eq!(c["requeue_count"], 0, "{c}");
    assert_eq!(c["timeout_count"], 0, "{c}");

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "nsq_suite_messages_consumed_total{",
        "nsq_suite_messages_dead_lettered_total{",
        "reason=\"decode\"",
        "nsq_suite_decode_errors_total{",
        "nsq_suite_handler_seconds_bucket{",
        "service=\"worker\"",
        "id=\"test-worker\"",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    // /ready is refreshed on a timer; the results can be out before its first refresh after
    // the connection (nsqd now flushes within 1 ms), so wait for it.
    wait_until("/ready is 200", Duration::from_secs(10), || async {
        reqwest::get(format!("{base}/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    producer.close().await;
}

#[tokio::test]
async fn over_max_attempts_is_dead_lettered_with_the_reason() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("sensor_data.dead", "check").await;
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let body = reading(1, now_nanos()).encode().unwrap();
    producer.publish("sensor_data", body.clone()).await.unwrap();

    // Another consumer on the worker channel fails the message (REQ without delay, as
    // nsqd scans a new channel's deferred messages only every 5 s) until it has closed:
    // the message has been delivered at least twice when the worker gets it.
    {
        let (consumer, mut messages) = nsq::Consumer::new(
            "sensor_data",
            "worker",
            nsq::ConsumerConfig {
                nsqd_tcp_addresses: vec![nsqd.tcp_address()],
                ..nsq::ConsumerConfig::default()
            },
        )
        .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .unwrap()
            .unwrap();
        msg.requeue_no_backoff(Duration::ZERO);
        let closing = tokio::spawn(async move { consumer.close().await });
        while let Some(msg) = messages.recv().await {
            msg.requeue_no_backoff(Duration::ZERO);
        }
        closing.await.unwrap();
    }

    let (_base, stop, run) = spawn_service::<Application>(Config {
        max_attempts: 1,
        ..config(&nsqd)
    })
    .await;
    let letters = consume(&nsqd, "sensor_data.dead", "check", 1, |b| {
        DeadLetter::decode(b).unwrap()
    })
    .await;
    assert_eq!(letters[0].original, body);
    // The other consumer may have got it more than once before it closed.
    let attempts = letters[0].attempts;
    assert!(attempts >= 2, "{attempts}");
    assert!(
        letters[0].error.contains(&format!(
            "gave up after {attempts} delivery attempts (--max-attempts 1)"
        )),
        "{}",
        letters[0].error
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    producer.close().await;
}

#[tokio::test]
async fn stops_cleanly_while_busy() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "check").await;
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let bodies: Vec<Bytes> = (1..=200)
        .map(|seq| Bytes::from(reading(seq, now_nanos()).encode().unwrap()))
        .collect();
    producer.multi_publish("sensor_data", bodies).await.unwrap();

    // 20 ms of work each, 20 at a time: about 200 ms of work in total.
    let (_base, stop, run) = spawn_service::<Application>({
        let mut config = Config {
            work_ms: 20,
            ..config(&nsqd)
        };
        config.consumer.max_in_flight = 20;
        config
    })
    .await;
    wait_until("some results", Duration::from_secs(10), || async {
        nsqd.channel_stats("results", "check").await.unwrap()["message_count"]
            .as_u64()
            .unwrap()
            > 0
    })
    .await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the worker stops within 10 s")
        .unwrap()
        .unwrap();

    // Whatever was delivered was finished (a result exists) or requeued: nothing in flight,
    // and every reading is either done or back in the channel.
    let c = nsqd.channel_stats("sensor_data", "worker").await.unwrap();
    assert_eq!(c["in_flight_count"], 0, "{c}");
    let done = nsqd.channel_stats("results", "check").await.unwrap()["message_count"]
        .as_u64()
        .unwrap();
    let left = c["depth"].as_u64().unwrap() + c["deferred_count"].as_u64().unwrap();
    assert_eq!(done + left, 200, "{c}");
    producer.close().await;
}

// ---- the binary's command line ----

#[test]
fn print_config_shows_flags_over_env_over_file_over_defaults() {
    let printed = cli::print_config(
        BIN,
        "max_in_flight = 10\nchannel = \"from_file\"\nwork_ms = 3\n\
         nsqd_tcp_address = [\"file:4150\"]\nmax_age = \"30s\"\n",
        &[
            "--max-in-flight",
            "30",
            "--lookupd-http-address",
            "l1:4161",
            "--lookupd-http-address",
            "l2:4161",
        ],
        &[
            ("WORKER_MAX_IN_FLIGHT", "20"),
            ("WORKER_CHANNEL", "from_env"),
            ("WORKER_NSQD_TCP_ADDRESS", "e1:4150,e2:4150"),
        ],
    );
    assert_eq!(printed["max_in_flight"].as_integer(), Some(30), "flag");
    assert_eq!(
        printed["channel"].as_str(),
        Some("from_env"),
        "env over file"
    );
    assert_eq!(
        printed["work_ms"].as_integer(),
        Some(3),
        "file over default"
    );
    assert_eq!(printed["max_age"].as_str(), Some("30s"), "file");
    let list = |key: &str| -> Vec<String> {
        printed[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        list("nsqd_tcp_address"),
        ["e1:4150", "e2:4150"],
        "env list over file"
    );
    assert_eq!(
        list("lookupd_http_address"),
        ["l1:4161", "l2:4161"],
        "repeated flag"
    );
    assert_eq!(printed["topic"].as_str(), Some("sensor_data"), "default");
    assert_eq!(printed["stale_policy"].as_str(), Some("flag"), "default");
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    cli::exits_2(BIN, &[], &[], Some("at least one nsqlookupd or nsqd"));

    cli::exits_2(
        BIN,
        &["--nsqd-tcp-address", "127.0.0.1:99999"],
        &[],
        Some("`--nsqd-tcp-address` '127.0.0.1:99999'"),
    );

    cli::exits_2(BIN, &["--bogus"], &[], None);
}

#[test]
fn help_documents_flags_and_env_vars() {
    cli::help_mentions(
        BIN,
        &[
            "--lookupd-http-address <ADDR>",
            "[env: WORKER_LOOKUPD_HTTP_ADDRESS]",
            "--stale-policy",
            "--dead-letter-topic",
            "healthcheck",
        ],
    );
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    cli::healthcheck_fails_when_nothing_listens(BIN);
}
