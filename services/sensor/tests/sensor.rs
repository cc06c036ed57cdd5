//! The sensor in-process against a real nsqd (nsq::testkit), and its binary's command line.
//!
//! Every test that builds an [`Application`] uses the sensor id [`SENSOR_ID`]: the metrics
//! recorder is process-wide and labelled with the id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::{collections::BTreeSet, time::Duration};

use messages::{SensorReading, SensorStatus};
use nsq::testkit::{free_port, Nsqd};
use sensor::{Application, Config, StopReason};
use suite_common::service::Service as _;
use test_support::{cli, consume, init_logs, wait_until};

const SENSOR_ID: &str = "test-sensor";
const BIN: &str = env!("CARGO_BIN_EXE_sensor");

fn config(nsqd: &str) -> Config {
    Config {
        nsqd_tcp_address: Some(nsqd.parse().unwrap()),
        sensor_id: SENSOR_ID.to_owned(),
        http_address: "127.0.0.1:0".parse().unwrap(),
        status_interval: "100ms".parse().unwrap(),
        // No logger in these tests announces an epoch complete: a test that wants the sensor
        // to stay after its last reading says so.
        linger: "0s".parse().unwrap(),
        ..Config::default()
    }
}

/// `message_count` of a channel: how many messages nsqd ever put on it.
async fn message_count(nsqd: &Nsqd, topic: &str, channel: &str) -> u64 {
    nsqd.channel_stats(topic, channel).await.unwrap()["message_count"]
        .as_u64()
        .unwrap()
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn publishes_exactly_count_readings_with_seq_1_to_n() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "check").await;
    nsqd.create_channel("sensor_status", "check").await;
    const N: u64 = 3000;

    let app = Application::build(Config {
        count: Some(N),
        rate: 0,
        values: 4,
        ..config(&nsqd.tcp_address())
    })
    .await
    .unwrap();
    let epoch = app.epoch();
    let http = app.http_addr();
    let report = app.run_until_stopped(std::future::pending()).await.unwrap();
    assert_eq!(report.reason, StopReason::CountReached);
    assert_eq!((report.taken, report.confirmed), (N, N));
    assert_eq!((report.dropped, report.failed, report.unflushed), (0, 0, 0));

    let readings = consume(&nsqd, "sensor_data", "check", N as usize, |b| {
        SensorReading::decode(b).unwrap()
    })
    .await;
    let seqs: BTreeSet<u64> = readings.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=N).collect::<BTreeSet<_>>(),
        "each seq 1..=N once"
    );
    for r in &readings {
        assert_eq!(
            (r.sensor_id.as_str(), r.epoch, r.values.len()),
            (SENSOR_ID, epoch, 4)
        );
    }
    assert_eq!(
        message_count(&nsqd, "sensor_data", "check").await,
        N,
        "no extra message"
    );

    // The last status announcement is the final one, with the last seq.
    let count = message_count(&nsqd, "sensor_status", "check").await as usize;
    let statuses = consume(&nsqd, "sensor_status", "check", count, |b| {
        SensorStatus::decode(b).unwrap()
    })
    .await;
    let last = statuses.iter().max_by_key(|s| s.at).unwrap();
    assert!(last.final_, "{statuses:?}");
    assert_eq!((last.last_seq, last.epoch), (N, epoch));
    assert_eq!(statuses.iter().filter(|s| s.final_).count(), 1);

    // The HTTP port is closed once the run is over.
    assert!(reqwest::get(format!("http://{http}/health")).await.is_err());
}

#[tokio::test]
async fn serves_history_and_flushes_on_shutdown() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "check").await;

    let app = Application::build(Config {
        rate: 200,
        ..config(&nsqd.tcp_address())
    })
    .await
    .unwrap();
    let base = format!("http://{}", app.http_addr());
    let epoch = app.epoch();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    wait_until("ready", Duration::from_secs(10), || async {
        get(&format!("{base}/ready")).await.0 == 200
    })
    .await;
    wait_until(
        "20 readings in the history",
        Duration::from_secs(10),
        || async {
            let (status, body) = get(&format!("{base}/readings?from=1&to=20")).await;
            status == 200 && body["readings"].as_array().map_or(0, Vec::len) == 20
        },
    )
    .await;
    let (status, body) = get(&format!("{base}/readings?epoch={epoch}&from=5&to=6")).await;
    assert_eq!(status, 200);
    assert_eq!(body["readings"][0]["seq"], 5);
    assert_eq!(body["readings"][1]["seq"], 6);
    assert_eq!(body["readings"][0]["sensor_id"], SENSOR_ID);
    let (status, body) = get(&format!("{base}/readings?from=10&to=1")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("'to' (1)"),
        "{body}"
    );
    let (status, _) = get(&format!("{base}/readings?epoch=1&from=1&to=2")).await;
    assert_eq!(status, 404);

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nsq_suite_messages_published_total{")
            && metrics.contains("service=\"sensor\"")
            && metrics.contains(&format!("id=\"{SENSOR_ID}\"")),
        "{metrics}"
    );

    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.reason, StopReason::Flushed);
    assert!(report.taken >= 20);
    assert!(report.all_confirmed(), "{report:?}");
    assert_eq!(
        message_count(&nsqd, "sensor_data", "check").await,
        report.taken
    );
}

#[tokio::test]
async fn outbox_delivers_what_was_taken_while_nsqd_was_away() {
    init_logs();
    let (tcp, http) = (free_port(), free_port());
    let app = Application::build(Config {
        rate: 100,
        ..config(&format!("127.0.0.1:{tcp}"))
    })
    .await
    .unwrap();
    let base = format!("http://{}", app.http_addr());
    let ready = app.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    // nsqd is not there: readings are taken and wait in the outbox; the sensor is not ready.
    wait_until("30 readings taken", Duration::from_secs(10), || async {
        let (_, body) = get(&format!("{base}/readings?from=30&to=30")).await;
        body["readings"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    assert!(!ready.is_ready());
    let (status, body) = get(&format!("{base}/ready")).await;
    assert_eq!(status, 503, "{body}");

    let nsqd = Nsqd::builder().ports(tcp, http).start().await;
    nsqd.create_channel("sensor_data", "check").await;
    wait_until("ready", Duration::from_secs(15), || async {
        ready.is_ready()
    })
    .await;
    // The channel was created after the first publishes: wait for a few new readings.
    wait_until("readings flowing", Duration::from_secs(10), || async {
        message_count(&nsqd, "sensor_data", "check").await > 10
    })
    .await;

    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.reason, StopReason::Flushed);
    assert!(report.taken >= 30);
    assert!(report.all_confirmed(), "{report:?}");
    // Everything taken reached the topic (the channel only sees what came after it).
    let topic_count = nsqd.stats().await["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic_name"] == "sensor_data")
        .unwrap()["message_count"]
        .as_u64()
        .unwrap();
    assert_eq!(topic_count, report.taken);
}

// ---- the binary's command line ----

#[test]
fn print_config_shows_flags_over_env_over_file_over_defaults() {
    let printed = cli::print_config(
        BIN,
        "rate = 1\ntopic = \"from_file\"\nvalues = 7\ncount = 9\n",
        &["--rate", "5"],
        &[("SENSOR_TOPIC", "from_env"), ("SENSOR_RATE", "2")],
    );
    assert_eq!(printed["rate"].as_integer(), Some(5), "flag");
    assert_eq!(printed["topic"].as_str(), Some("from_env"), "env over file");
    assert_eq!(printed["values"].as_integer(), Some(7), "file over default");
    assert_eq!(printed["count"].as_integer(), Some(9), "file");
    assert!(
        !printed.contains_key("nsqd_tcp_address"),
        "unset by default (127.0.0.1:4150 is used, or Consul's nsqd)"
    );
    assert_eq!(
        printed["http_address"].as_str(),
        Some("127.0.0.1:4190"),
        "default"
    );
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    cli::exits_2(
        BIN,
        &["--nsqd-tcp-address", "nsqd"],
        &[],
        Some("`--nsqd-tcp-address` 'nsqd' is not host:port"),
    );

    cli::exits_2(BIN, &["--no-such-flag"], &[], None);

    cli::exits_2(
        BIN,
        &["--print-config"],
        &[("SENSOR_RAET", "5")],
        Some("did you mean `SENSOR_RATE`"),
    );
}

#[test]
fn help_documents_flags_and_env_vars() {
    cli::help_mentions(
        BIN,
        &[
            "--rate <N>",
            "[env: SENSOR_RATE]",
            "--outbox-size",
            "healthcheck",
        ],
    );
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    cli::healthcheck_fails_when_nothing_listens(BIN);
}

#[tokio::test]
async fn answers_replay_requests_from_its_history() {
    init_logs();
    let nsqd = Nsqd::start().await;
    for (topic, channel) in [
        ("sensor_data", "check"),
        ("sensor_replay_unavailable", "check"),
    ] {
        nsqd.create_channel(topic, channel).await;
    }
    const N: u64 = 100;

    // 100 readings, a history of the last 50; then the sensor lingers, answering requests.
    let app = Application::build(Config {
        count: Some(N),
        rate: 0,
        history: 50,
        linger: "1m".parse().unwrap(),
        ..config(&nsqd.tcp_address())
    })
    .await
    .unwrap();
    let epoch = app.epoch();
    let base = format!("http://{}", app.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = sensor::replay::channel_name(SENSOR_ID, epoch);
    wait_until(
        "the sensor listens on its replay channel",
        Duration::from_secs(10),
        || async {
            nsqd.channel_stats("sensor_replay", &channel)
                .await
                .is_some()
        },
    )
    .await;
    wait_until("N readings published", Duration::from_secs(10), || async {
        message_count(&nsqd, "sensor_data", "check").await >= N
    })
    .await;

    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let request = |sensor_id: &str, epoch: u64, from_seq: u64, to_seq: u64| {
        messages::ReplayRequest {
            schema: messages::SCHEMA_VERSION,
            sensor_id: sensor_id.to_owned(),
            epoch,
            from_seq,
            to_seq,
            requested_by: "test".to_owned(),
            requested_at: 1,
        }
        .encode()
        .unwrap()
    };
    // Another sensor's request is not this sensor's business; a request reaching past the
    // last reading only gets what exists.
    producer
        .publish("sensor_replay", request("other", epoch, 1, 100))
        .await
        .unwrap();
    producer
        .publish("sensor_replay", request(SENSOR_ID, epoch, 40, 120))
        .await
        .unwrap();
    // An older epoch of this sensor is gone with its process.
    producer
        .publish("sensor_replay", request(SENSOR_ID, epoch - 1, 1, 5))
        .await
        .unwrap();

    // 51..=100 again, unchanged; 40..=50 answered unavailable; nothing for 101..=120.
    let readings = consume(&nsqd, "sensor_data", "check", (N + 50) as usize, |b| {
        SensorReading::decode(b).unwrap()
    })
    .await;
    let mut by_seq: std::collections::BTreeMap<u64, Vec<&SensorReading>> = Default::default();
    for r in &readings {
        by_seq.entry(r.seq).or_default().push(r);
    }
    assert_eq!(by_seq.len() as u64, N);
    let twice: Vec<u64> = by_seq
        .iter()
        .filter(|(_, rs)| rs.len() == 2)
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(
        twice,
        (51..=N).collect::<Vec<_>>(),
        "51..=100 replayed once"
    );
    assert!(
        by_seq.values().all(|rs| rs.iter().all(|r| *r == rs[0])),
        "a replayed reading is the original: same seq, same taken_at, same values"
    );
    let mut answers = consume(&nsqd, "sensor_replay_unavailable", "check", 2, |b| {
        messages::ReplayUnavailable::decode(b).unwrap()
    })
    .await;
    answers.sort_by_key(|a| a.epoch);
    assert_eq!(
        answers
            .iter()
            .map(|a| (a.sensor_id.as_str(), a.epoch, a.from_seq, a.to_seq))
            .collect::<Vec<_>>(),
        [(SENSOR_ID, epoch - 1, 1, 5), (SENSOR_ID, epoch, 40, 50)]
    );
    assert_eq!(message_count(&nsqd, "sensor_data", "check").await, N + 50);

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "nsq_suite_replay_requests_received_total{",
        "nsq_suite_replayed_readings_total{",
        "nsq_suite_replay_unavailable_readings_total{",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }

    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.reason, StopReason::CountReached);
    producer.close().await;
}

/// With `--count` and `--linger`, the sensor stays after its last reading until a logger
/// announces its epoch complete: announcements for another sensor, another epoch, from a
/// logger that answers for part of the epoch only, or below its last seq, or that are not
/// announcements at all, do not end the stay; the right one does, long before `--linger`.
#[tokio::test]
async fn stays_until_a_logger_announces_the_epoch_complete() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_status", "check").await;
    const N: u64 = 100;
    let app = Application::build(Config {
        count: Some(N),
        rate: 0,
        linger: "5m".parse().unwrap(),
        ..config(&nsqd.tcp_address())
    })
    .await
    .unwrap();
    let epoch = app.epoch();
    let run = tokio::spawn(app.run_until_stopped(std::future::pending()));
    let channel = sensor::replay::channel_name(SENSOR_ID, epoch);
    wait_until(
        "the sensor listens on its complete channel",
        Duration::from_secs(10),
        || async {
            nsqd.channel_stats("sensor_complete", &channel)
                .await
                .is_some()
        },
    )
    .await;
    // Its last reading confirmed, it announces a final status at once.
    let final_status = wait_until("a final status", Duration::from_secs(10), || async {
        let count = message_count(&nsqd, "sensor_status", "check").await as usize;
        consume(&nsqd, "sensor_status", "check", count, |b| {
            SensorStatus::decode(b).unwrap()
        })
        .await
        .iter()
        .any(|s| s.final_ && s.last_seq == N)
    });
    final_status.await;

    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let complete = |sensor_id: &str, epoch: u64, from_seq: u64, to_seq: u64| {
        messages::EpochComplete {
            schema: messages::SCHEMA_VERSION,
            sensor_id: sensor_id.to_owned(),
            epoch,
            from_seq,
            to_seq,
            logger_id: "test-logger".to_owned(),
            at: 1,
        }
        .encode()
        .unwrap()
    };
    for body in [
        complete("other", epoch, 1, N),
        complete(SENSOR_ID, epoch - 1, 1, N),
        complete(SENSOR_ID, epoch, 2, N),
        complete(SENSOR_ID, epoch, 1, N - 1),
        b"not an announcement".to_vec(),
    ] {
        producer.publish("sensor_complete", body).await.unwrap();
    }
    // They are read (finished), and the sensor stays.
    wait_until(
        "the announcements read",
        Duration::from_secs(10),
        || async {
            nsqd.channel_stats("sensor_complete", &channel)
                .await
                .and_then(|c| {
                    Some(
                        c["message_count"].as_u64()? >= 5
                            && c["depth"].as_u64()? == 0
                            && c["in_flight_count"].as_u64()? == 0,
                    )
                })
                .unwrap_or(false)
        },
    )
    .await;
    assert!(
        !run.is_finished(),
        "the sensor left on a wrong announcement"
    );

    let announced = std::time::Instant::now();
    producer
        .publish("sensor_complete", complete(SENSOR_ID, epoch, 1, N))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the sensor leaves once its epoch is announced complete")
        .unwrap()
        .unwrap();
    assert_eq!(report.reason, StopReason::CountReached);
    assert_eq!((report.taken, report.confirmed), (N, N));
    println!(
        "the sensor left {:?} after the announcement",
        announced.elapsed()
    );
    producer.close().await;
}
