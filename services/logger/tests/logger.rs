//! The logger in-process against a real nsqd (nsq::testkit), and its binary's command line.
//!
//! Every test that builds an [`Application`] uses the logger id [`LOGGER_ID`]: the metrics
//! recorder is process-wide and labelled with the id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::{collections::BTreeMap, path::Path, time::Duration};

use bytes::Bytes;
use logger::{line::LogLine, Application, Config};
use messages::{WorkResult, SCHEMA_VERSION};
use nsq::testkit::Nsqd;
use suite_common::service::Service as _;
use test_support::{cli, init_logs, spawn_service, wait_until};

const LOGGER_ID: &str = "test-logger";
const BIN: &str = env!("CARGO_BIN_EXE_logger");

fn config(nsqd: &Nsqd, output: &Path) -> Config {
    let mut config = Config {
        output: Some(output.to_owned()),
        logger_id: LOGGER_ID.to_owned(),
        http_address: "127.0.0.1:0".parse().unwrap(),
        summary_interval: "200ms".parse().unwrap(),
        ..Config::default()
    };
    config.consumer.nsqd_tcp_address = vec![nsqd.tcp_address().parse().unwrap()];
    config
}

fn result(seq: u64, worker: &str) -> WorkResult {
    WorkResult {
        schema: SCHEMA_VERSION,
        sensor_id: "s1".to_owned(),
        epoch: 5,
        seq,
        taken_at: 1_000 + seq,
        values: vec![seq as u32, 2],
        squares: vec![seq * seq, 4],
        worker_id: worker.to_owned(),
        computed_at: 2_000 + seq,
        stale: seq == 3,
    }
}

fn body(seq: u64, worker: &str) -> Bytes {
    Bytes::from(result(seq, worker).encode().unwrap())
}

/// The output's complete lines, parsed (a last line still being written is left out).
fn lines(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Waits until the channel has nothing left to deliver or in flight.
async fn wait_drained(nsqd: &Nsqd, topic: &str, channel: &str) {
    wait_until("channel drained", Duration::from_secs(10), || async {
        let c = nsqd.channel_stats(topic, channel).await.unwrap();
        c["depth"] == 0 && c["in_flight_count"] == 0 && c["deferred_count"] == 0
    })
    .await;
}

#[tokio::test]
async fn writes_each_result_once() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("results", "logger").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    const N: u64 = 500;

    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let mut bodies: Vec<Bytes> = (1..=N)
        .map(|seq| body(seq, if seq % 2 == 0 { "w-even" } else { "w-odd" }))
        .collect();
    bodies.push(body(7, "w-odd")); // a redelivery, as after a worker crash
    bodies.push(body(7, "w-other")); // the same reading computed twice
    producer.multi_publish("results", bodies).await.unwrap();
    producer
        .publish("results", &b"\x92not a result"[..])
        .await
        .unwrap();

    let (base, stop, run) = spawn_service::<Application>(config(&nsqd, &out)).await;
    wait_until("N lines", Duration::from_secs(10), || async {
        lines(&out).len() as u64 >= N
    })
    .await;
    wait_drained(&nsqd, "results", "logger").await;

    let written = lines(&out);
    assert_eq!(written.len() as u64, N, "each result once");
    let by_seq: BTreeMap<u64, &LogLine> = written.iter().map(|l| (l.seq, l)).collect();
    assert_eq!(by_seq.len() as u64, N);
    let l = by_seq[&3];
    assert_eq!((l.sensor_id.as_str(), l.epoch, l.seq), ("s1", 5, 3));
    assert_eq!(
        (l.values.clone(), l.squares.clone()),
        (vec![3, 2], vec![9, 4])
    );
    assert_eq!(
        (l.worker_id.as_str(), l.taken_at, l.computed_at),
        ("w-odd", 1003, 2003)
    );
    assert!(l.stale);
    assert!(l.written_at > l.computed_at);
    let c = nsqd.channel_stats("results", "logger").await.unwrap();
    assert_eq!(c["requeue_count"], 0, "{c}");

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "nsq_suite_duplicates_suppressed_total{",
        "nsq_suite_decode_errors_total{",
        "nsq_suite_end_to_end_latency_seconds_bucket{",
        "nsq_suite_lines_written_total{",
        "service=\"logger\"",
        "id=\"test-logger\"",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    let duplicates = metrics
        .lines()
        .find(|l| l.starts_with("nsq_suite_duplicates_suppressed_total{"))
        .unwrap();
    // The recorder is shared by the tests of this binary running in parallel: at least the
    // two duplicates of this test.
    let count: u64 = duplicates.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2, "{duplicates}");

    let workers: serde_json::Value = reqwest::get(format!("{base}/workers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(workers["count"], N, "{workers}");
    let ids: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w-even", "w-odd"]);
    // /ready is refreshed every 250 ms; the lines can be written before the first refresh
    // after the connection (nsqd now flushes within 1 ms), so wait for it.
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
async fn rebuilds_its_state_from_the_output_after_a_crash() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("results", "logger").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");

    // What a logger killed in the middle of a write leaves: two complete lines and the
    // beginning of a third, whose message was never finished.
    let mut text = Vec::new();
    for seq in [1, 2] {
        LogLine::new(result(seq, "w"), 9)
            .write_to(&mut text)
            .unwrap();
    }
    let mut third = Vec::new();
    LogLine::new(result(3, "w"), 9)
        .write_to(&mut third)
        .unwrap();
    text.extend_from_slice(&third[..third.len() / 2]);
    std::fs::write(&out, &text).unwrap();

    let app = Application::build(config(&nsqd, &out)).await.unwrap();
    assert_eq!(app.seen().len(), 2, "seqs 1 and 2 are known");
    drop(app);

    // The unfinished messages are delivered again: 1 and 2 (written), 3 (cut off), and 4.
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let bodies = (1..=4).map(|seq| body(seq, "w")).collect();
    producer.multi_publish("results", bodies).await.unwrap();

    let (_base, stop, run) = spawn_service::<Application>(config(&nsqd, &out)).await;
    wait_until("4 lines", Duration::from_secs(10), || async {
        lines(&out).len() >= 4
    })
    .await;
    wait_drained(&nsqd, "results", "logger").await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    let written = lines(&out);
    let seqs: Vec<u64> = written.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "each once, in a file of complete lines");
    assert!(std::fs::read_to_string(&out).unwrap().ends_with('\n'));
    producer.close().await;
}

#[tokio::test]
async fn a_foreign_output_file_is_refused() {
    init_logs();
    let nsqd = Nsqd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notes.txt");
    std::fs::write(&out, "dear diary\n").unwrap();
    let err = Application::build(config(&nsqd, &out)).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("line 1 is not a result line"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "dear diary\n",
        "left alone"
    );
}

// ---- the binary's command line ----

#[test]
fn print_config_shows_flags_over_env_over_file_over_defaults() {
    let printed = cli::print_config(
        BIN,
        "max_in_flight = 10\nchannel = \"from_file\"\nfsync = true\n\
         output = \"/file/out.jsonl\"\nlookupd_http_address = [\"file:4161\"]\n",
        &["--output", "/flag/out.jsonl"],
        &[
            ("LOGGER_CHANNEL", "from_env"),
            ("LOGGER_FSYNC", "false"),
            ("LOGGER_LOOKUPD_HTTP_ADDRESS", "e1:4161,e2:4161"),
        ],
    );
    assert_eq!(printed["output"].as_str(), Some("/flag/out.jsonl"), "flag");
    assert_eq!(
        printed["channel"].as_str(),
        Some("from_env"),
        "env over file"
    );
    assert_eq!(printed["fsync"].as_bool(), Some(false), "env over file");
    assert_eq!(
        printed["max_in_flight"].as_integer(),
        Some(10),
        "file over default"
    );
    let lookupd: Vec<&str> = printed["lookupd_http_address"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(lookupd, ["e1:4161", "e2:4161"], "env list over file");
    assert_eq!(printed["topic"].as_str(), Some("results"), "default");
    assert_eq!(
        printed["http_address"].as_str(),
        Some("127.0.0.1:4192"),
        "default"
    );
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    cli::exits_2(BIN, &[], &[], Some("at least one nsqlookupd or nsqd"));

    cli::exits_2(
        BIN,
        &["--lookupd-http-address", "ftp://x:1"],
        &[],
        Some("`--lookupd-http-address` 'ftp://x:1'"),
    );

    cli::exits_2(BIN, &["--fsync=maybe"], &[], None);
}

#[test]
fn help_documents_flags_and_env_vars() {
    cli::help_mentions(
        BIN,
        &[
            "--output <PATH>",
            "[env: LOGGER_OUTPUT]",
            "--fsync",
            "healthcheck",
        ],
    );
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    cli::healthcheck_fails_when_nothing_listens(BIN);
}

#[tokio::test]
async fn asks_for_gaps_and_records_what_cannot_be_replayed() {
    init_logs();
    let nsqd = Nsqd::start().await;
    for (topic, channel) in [
        ("results", "logger"),
        ("sensor_status", "logger"),
        ("sensor_replay_unavailable", "logger"),
        ("sensor_replay", "check"),
    ] {
        nsqd.create_channel(topic, channel).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    let lost_path = dir.path().join("results.lost.jsonl");
    let gap_config = || Config {
        gap_grace: "200ms".parse().unwrap(),
        replay_backoff: "300ms".parse().unwrap(),
        replay_max_attempts: 2,
        ..config(&nsqd, &out)
    };

    // 1..=10 and 13..=20 arrive; the sensor announces 25 as its last seq.
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let bodies = (1..=10).chain(13..=20).map(|seq| body(seq, "w")).collect();
    producer.multi_publish("results", bodies).await.unwrap();
    let status = messages::SensorStatus {
        schema: SCHEMA_VERSION,
        sensor_id: "s1".to_owned(),
        epoch: 5,
        last_seq: 25,
        at: 1,
        final_: true,
        oldest_seq: 0,
    };
    producer
        .publish("sensor_status", status.encode().unwrap())
        .await
        .unwrap();

    let (base, stop, run) = spawn_service::<Application>(gap_config()).await;

    // One request for 11..=25 (the 8 seqs written in between are not worth two requests).
    let (requests, mut asked) = nsq::Consumer::new(
        "sensor_replay",
        "check",
        nsq::ConsumerConfig {
            nsqd_tcp_addresses: vec![nsqd.tcp_address()],
            max_in_flight: 10,
            ..nsq::ConsumerConfig::default()
        },
    )
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), asked.recv())
        .await
        .expect("a replay request")
        .unwrap();
    let request = messages::ReplayRequest::decode(msg.body()).unwrap();
    msg.finish();
    assert_eq!(
        (
            request.sensor_id.as_str(),
            request.epoch,
            request.from_seq,
            request.to_seq
        ),
        ("s1", 5, 11, 25)
    );
    assert_eq!(request.requested_by, LOGGER_ID);

    // The sensor no longer has 11..=12; it replays 21..=25; 13..=20 are there already.
    let unavailable = messages::ReplayUnavailable {
        schema: SCHEMA_VERSION,
        sensor_id: "s1".to_owned(),
        epoch: 5,
        from_seq: 9,
        to_seq: 12,
        at: 2,
    };
    producer
        .publish("sensor_replay_unavailable", unavailable.encode().unwrap())
        .await
        .unwrap();
    let bodies = (21..=25).map(|seq| body(seq, "w")).collect();
    producer.multi_publish("results", bodies).await.unwrap();
    wait_until("23 lines", Duration::from_secs(10), || async {
        lines(&out).len() >= 23
    })
    .await;
    wait_until("11..=12 reported lost", Duration::from_secs(10), || async {
        std::fs::read_to_string(&lost_path).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let gaps_now = || async {
        reqwest::get(format!("{base}/gaps"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    // /gaps shows the tracker's last look (every 50 ms here).
    wait_until(
        "/gaps shows 23 written",
        Duration::from_secs(10),
        || async { gaps_now().await["epochs"][0]["written"] == 23 },
    )
    .await;
    let gaps = gaps_now().await;
    let epoch = &gaps["epochs"][0];
    assert_eq!(
        (&epoch["written"], &epoch["lost"], &epoch["missing"]),
        (&23.into(), &2.into(), &0.into()),
        "{gaps}"
    );
    assert_eq!(
        epoch["lost_ranges"],
        serde_json::json!([{"from_seq": 11, "to_seq": 12}])
    );
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&lost_path).unwrap().trim()).unwrap();
    assert_eq!(
        (
            &record["from_seq"],
            &record["to_seq"],
            &record["count"],
            &record["reason"]
        ),
        (&11.into(), &12.into(), &2.into(), &"unavailable".into()),
        "9 and 10 are written: only 11 and 12 are lost"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nsq_suite_readings_lost_total{"),
        "{metrics}"
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    // A restart knows the loss from the list: nothing is missing, nothing is asked again.
    let app = Application::build(gap_config()).await.unwrap();
    assert_eq!(app.seen().len(), 23);
    let (base, stop, run) = {
        let base = format!("http://{}", app.http_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        (base, stop, run)
    };
    wait_until(
        "the restarted logger's first look",
        Duration::from_secs(10),
        || async {
            let gaps: serde_json::Value = reqwest::get(format!("{base}/gaps"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            gaps["epochs"][0]["written"] == 23
        },
    )
    .await;
    let gaps: serde_json::Value = reqwest::get(format!("{base}/gaps"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&gaps["lost"], &gaps["missing"]),
        (&2.into(), &0.into()),
        "{gaps}"
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    requests.close().await;
    producer.close().await;
}

#[tokio::test]
async fn a_gap_nobody_answers_is_reported_lost_after_the_last_request() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("results", "logger").await;
    nsqd.create_channel("sensor_replay", "check").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    let lost_path = dir.path().join("elsewhere.jsonl");
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    let bodies = [1, 2, 5].into_iter().map(|seq| body(seq, "w")).collect();
    producer.multi_publish("results", bodies).await.unwrap();

    let (_base, stop, run) = spawn_service::<Application>(Config {
        gap_grace: "100ms".parse().unwrap(),
        replay_backoff: "100ms".parse().unwrap(),
        replay_max_attempts: 3,
        lost_output: Some(lost_path.clone()),
        ..config(&nsqd, &out)
    })
    .await;
    wait_until("3..=4 reported lost", Duration::from_secs(10), || async {
        std::fs::read_to_string(&lost_path).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&lost_path).unwrap().trim()).unwrap();
    assert_eq!(
        (&record["from_seq"], &record["to_seq"], &record["reason"]),
        (&3.into(), &4.into(), &"unanswered".into())
    );
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    // Asked 3 times (the replay topic's channel got every request), then given up.
    let c = nsqd.channel_stats("sensor_replay", "check").await.unwrap();
    assert_eq!(c["message_count"], 3, "{c}");
    producer.close().await;
}
