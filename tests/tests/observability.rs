//! Seeing inside the running services: `/ready` follows nsqd, `/metrics` is valid Prometheus
//! text with the required series, and `--log-format json` gives one JSON object per line.
//!
//! `/metrics` is parsed by Prometheus' own Python client (`prometheus_client.parser`, run
//! through `tests/python/parse_metrics.py` with `$NSQ_SUITE_PYTHON`), which rejects a
//! malformed exposition; the first test proves that it does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// The Python with `prometheus_client`: `$NSQ_SUITE_PYTHON`, or the project's `.venv`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NSQ_SUITE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.is_file(),
        "NSQ_SUITE_PYTHON is not set and there is no .venv: run scripts/test.sh, or export \
         NSQ_SUITE_PYTHON=$(scripts/python-env.sh)"
    );
    venv
}

/// One sample of a parsed exposition.
#[derive(Debug, Clone)]
struct Sample {
    /// Family type: counter, gauge, histogram...
    kind: String,
    /// Sample name (`..._total`, `..._bucket`, ...).
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses a Prometheus text exposition with `prometheus_client`; `Err` with the parser's
/// message when it is malformed.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/parse_metrics.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Python parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser output");
    Ok(samples
        .into_iter()
        .map(|s| Sample {
            kind: s["type"].as_str().unwrap_or_default().to_owned(),
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            labels: s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect())
}

async fn scrape(service: &Service) -> Vec<Sample> {
    let url = format!("http://{}/metrics", service.http);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    parse_exposition(&text).unwrap_or_else(|e| {
        panic!(
            "{} /metrics is not valid Prometheus text: {e}\n{text}",
            service.name
        )
    })
}

/// The samples named `name` whose labels include every `(key, value)` of `labels`.
fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample `name{labels}`; panics, listing what there is, when absent.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, labels);
    assert!(
        found.len() == 1,
        "expected one sample {name}{labels:?}, found {}: {found:?}\nall names: {:?}",
        found.len(),
        samples
            .iter()
            .map(|s| &s.name)
            .collect::<std::collections::BTreeSet<_>>()
    );
    found[0].value
}

/// Polls until the metric (summed over the matching series) is exactly `expected`. The
/// gauges this waits for move with the services' traffic; they pass through `expected` in
/// normal operation within milliseconds, and 30 s bounds only a stalled machine.
async fn wait_metric_eq(service: &Service, name: &str, labels: &[(&str, &str)], expected: f64) {
    wait_until(
        &format!("{} {name}{labels:?} == {expected}", service.name),
        Duration::from_secs(30),
        || async {
            let samples = scrape(service).await;
            let found = find(&samples, name, labels);
            !found.is_empty() && found.iter().map(|s| s.value).sum::<f64>() == expected
        },
    )
    .await;
}

/// Polls until the metric reaches `at_least`.
async fn wait_metric(service: &Service, name: &str, labels: &[(&str, &str)], at_least: f64) {
    wait_until(
        &format!("{} {name}{labels:?} >= {at_least}", service.name),
        Duration::from_secs(30),
        || async {
            let samples = scrape(service).await;
            find(&samples, name, labels)
                .iter()
                .map(|s| s.value)
                .sum::<f64>()
                >= at_least
        },
    )
    .await;
}

#[test]
fn the_prometheus_parser_rejects_a_malformed_exposition() {
    let good = "# TYPE x_total counter\nx_total{service=\"s\",id=\"a\"} 3\n";
    let parsed = parse_exposition(good).expect("a valid exposition parses");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].value, 3.0);
    for bad in [
        "x_total{service=s} 1\n",
        "x_total{id=\"a\"} three\n",
        "garbage line\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

#[tokio::test]
async fn metrics_of_the_three_services_parse_and_carry_their_id() {
    let started = Instant::now();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "logger").await;
    let dir = tempfile::tempdir().unwrap();
    let direct = || flag("nsqd-tcp-address", nsqd.tcp_address());
    let mut logger = Service::start(
        "logger",
        &[
            direct(),
            flag("logger-id", "logger-m"),
            flag("output", dir.path().join("out.jsonl").display()),
        ],
    );
    let mut worker = Service::start(
        "worker",
        &[
            direct(),
            flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
            flag("worker-id", "worker-m"),
        ],
    );
    let mut sensor = Service::start(
        "sensor",
        &[direct(), flag("sensor-id", "sensor-m"), flag("rate", 200)],
    );
    for s in [&mut logger, &mut worker, &mut sensor] {
        s.wait_healthy().await;
    }

    // Something for every counter to count: a body that is no reading (worker: decode error,
    // dead letter), one that is no result (logger: decode error), and a result published twice
    // (logger: a duplicate suppressed).
    let producer = nsq::Producer::connect(&nsqd.tcp_address(), Default::default()).unwrap();
    producer
        .publish("sensor_data", &b"not a reading"[..])
        .await
        .unwrap();
    producer
        .publish("results", &b"not a result"[..])
        .await
        .unwrap();
    let result = messages::WorkResult {
        schema: messages::SCHEMA_VERSION,
        sensor_id: "manual".into(),
        epoch: 1,
        seq: 1,
        taken_at: 1,
        values: vec![3],
        squares: vec![9],
        worker_id: "by-hand".into(),
        computed_at: 2,
        stale: false,
    };
    for _ in 0..2 {
        producer
            .publish("results", result.encode().unwrap())
            .await
            .unwrap();
    }
    producer.close().await;

    let sd = [("topic", "sensor_data"), ("channel", "worker")];
    let rl = [("topic", "results"), ("channel", "logger")];
    wait_metric(&logger, "nsq_suite_lines_written_total", &[], 300.0).await;
    wait_metric(&logger, "nsq_suite_duplicates_suppressed_total", &rl, 1.0).await;
    wait_metric(&worker, "nsq_suite_messages_dead_lettered_total", &sd, 1.0).await;
    // Histograms are drained into the exposition by the recorder's upkeep (every 5 s).
    wait_metric(&worker, "nsq_suite_handler_seconds_count", &sd, 100.0).await;
    wait_metric(
        &logger,
        "nsq_suite_end_to_end_latency_seconds_count",
        &[],
        100.0,
    )
    .await;

    let mut report = Vec::new();
    for (service, id) in [
        (&sensor, "sensor-m"),
        (&worker, "worker-m"),
        (&logger, "logger-m"),
    ] {
        let samples = scrape(service).await;
        for s in &samples {
            assert_eq!(
                (
                    s.labels.get("service").map(String::as_str),
                    s.labels.get("id").map(String::as_str)
                ),
                (Some(service.name.as_str()), Some(id)),
                "every series is labelled with the service and its id: {s:?}"
            );
            assert!(s.value.is_finite() && s.value >= 0.0, "implausible {s:?}");
        }
        let names: std::collections::BTreeSet<&str> =
            samples.iter().map(|s| s.name.as_str()).collect();
        report.push(format!(
            "{}: {} series, {names:?}",
            service.name,
            samples.len()
        ));
    }

    let s = scrape(&sensor).await;
    let published = value(
        &s,
        "nsq_suite_messages_published_total",
        &[("topic", "sensor_data")],
    );
    let taken = value(&s, "nsq_suite_readings_taken_total", &[]);
    assert!(
        published >= 300.0 && published <= taken,
        "published {published}, taken {taken}"
    );
    assert_eq!(value(&s, "nsq_suite_outbox_dropped_total", &[]), 0.0);
    // The readings the test caused pass through the outbox and the publishes in flight in
    // milliseconds (200/s to a local nsqd): both gauges come back to 0, which a gauge that
    // misses a decrement never does.
    wait_metric_eq(&sensor, "nsq_suite_outbox_readings", &[], 0.0).await;
    wait_metric_eq(&sensor, "nsq_suite_publish_in_flight", &[], 0.0).await;
    let nsqd_label = nsqd.tcp_address();
    let producer_up = [("role", "producer"), ("nsqd", nsqd_label.as_str())];
    assert_eq!(value(&s, "nsq_suite_nsq_connections", &producer_up), 1.0);
    // Replays served: none asked for in a run without gaps, but the series exist.
    for name in [
        "nsq_suite_replay_requests_received_total",
        "nsq_suite_replayed_readings_total",
        "nsq_suite_replay_unavailable_readings_total",
    ] {
        assert_eq!(value(&s, name, &[]), 0.0, "{name}");
    }

    let w = scrape(&worker).await;
    let consumed = value(&w, "nsq_suite_messages_consumed_total", &sd);
    let finished = value(&w, "nsq_suite_messages_finished_total", &sd);
    assert!(
        consumed >= 300.0 && finished <= consumed,
        "consumed {consumed}, finished {finished}"
    );
    assert_eq!(value(&w, "nsq_suite_messages_requeued_total", &sd), 0.0);
    let decode = [sd[0], sd[1], ("reason", "decode")];
    assert_eq!(
        value(&w, "nsq_suite_messages_dead_lettered_total", &decode),
        1.0
    );
    assert_eq!(value(&w, "nsq_suite_decode_errors_total", &sd), 1.0);
    assert!(
        value(
            &w,
            "nsq_suite_messages_published_total",
            &[("topic", "results")]
        ) >= 300.0
    );
    // Each reading is handled in about a millisecond: the worker's in-flight gauge returns to
    // 0 between readings (it held 300 or more so far: a leak would keep it above 0).
    wait_metric_eq(&worker, "nsq_suite_messages_in_flight", &sd, 0.0).await;
    let consumer_up = [("role", "consumer"), ("nsqd", nsqd_label.as_str())];
    assert_eq!(value(&w, "nsq_suite_nsq_connections", &consumer_up), 1.0);
    assert_eq!(value(&w, "nsq_suite_nsq_connections", &producer_up), 1.0);
    let handled = value(&w, "nsq_suite_handler_seconds_count", &sd);
    let buckets = find(&w, "nsq_suite_handler_seconds_bucket", &sd);
    assert!(
        buckets.len() > 5 && buckets.iter().all(|b| b.kind == "histogram"),
        "{buckets:?}"
    );
    let inf = find(
        &w,
        "nsq_suite_handler_seconds_bucket",
        &[sd[0], sd[1], ("le", "+Inf")],
    );
    assert_eq!(
        inf.first().map(|b| b.value),
        Some(handled),
        "+Inf bucket = count"
    );
    let mean = value(&w, "nsq_suite_handler_seconds_sum", &sd) / handled;
    assert!(mean > 0.0 && mean < 1.0, "mean handler time {mean} s");

    let l = scrape(&logger).await;
    let consumed = value(&l, "nsq_suite_messages_consumed_total", &rl);
    assert!(consumed >= 300.0, "logger consumed {consumed}");
    assert!(value(&l, "nsq_suite_messages_finished_total", &rl) <= consumed);
    assert_eq!(value(&l, "nsq_suite_messages_requeued_total", &rl), 0.0);
    assert_eq!(value(&l, "nsq_suite_decode_errors_total", &rl), 1.0);
    assert_eq!(value(&l, "nsq_suite_duplicates_suppressed_total", &rl), 1.0);
    wait_metric_eq(&logger, "nsq_suite_messages_in_flight", &rl, 0.0).await;
    assert_eq!(value(&l, "nsq_suite_nsq_connections", &consumer_up), 1.0);
    // Replays requested and readings lost: none in a run without gaps, but the series exist.
    assert_eq!(value(&l, "nsq_suite_replay_requests_total", &[]), 0.0);
    for reason in ["unavailable", "unanswered"] {
        let lost = value(&l, "nsq_suite_readings_lost_total", &[("reason", reason)]);
        assert_eq!(lost, 0.0, "readings lost ({reason})");
    }
    // No reading of this run goes missing (no replay was asked for, none lost): once the
    // results in flight are written, no gap is open.
    wait_metric_eq(&logger, "nsq_suite_missing_readings", &[], 0.0).await;
    let latencies = value(&l, "nsq_suite_end_to_end_latency_seconds_count", &[]);
    // The hand-made result was "taken" in 1970: its latency is huge, the others are short.
    let big = find(
        &l,
        "nsq_suite_end_to_end_latency_seconds_bucket",
        &[("le", "10")],
    );
    assert_eq!(
        big.first().map(|b| latencies - b.value),
        Some(1.0),
        "one result from 1970"
    );
    let fast = find(
        &l,
        "nsq_suite_end_to_end_latency_seconds_bucket",
        &[("le", "5")],
    );
    // Loose on purpose (debug builds on a busy machine); idle, p99 is about 0.5 s.
    assert!(
        fast.first()
            .is_some_and(|b| b.value >= 0.9 * (latencies - 1.0)),
        "most results are written within 5 s of being taken: {fast:?} of {latencies}"
    );

    for s in [&mut sensor, &mut worker, &mut logger] {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", s.name);
    }
    for line in report {
        eprintln!("{line}");
    }
    eprintln!("metrics test took {:?}", started.elapsed());
}

/// `GET /ready`: the status code and the JSON body.
async fn readiness(client: &reqwest::Client, service: &Service) -> Option<(u16, Value)> {
    let r = client
        .get(format!("http://{}/ready", service.http))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Waits until every service's `/ready` answers `want` (200 or 503, with a reason for 503)
/// and returns how long each took.
async fn wait_readiness(
    client: &reqwest::Client,
    services: &[&Service],
    want: u16,
    within: Duration,
) -> HashMap<String, Duration> {
    let since = Instant::now();
    let mut took = HashMap::new();
    for s in services {
        wait_until(&format!("{} /ready {want}", s.name), within, || async {
            match readiness(client, s).await {
                Some((200, body)) if want == 200 => body["ready"] == true,
                Some((503, body)) if want == 503 => {
                    body["ready"] == false && body["reason"].as_str().is_some_and(|r| !r.is_empty())
                }
                _ => false,
            }
        })
        .await;
        took.insert(s.name.clone(), since.elapsed());
    }
    took
}

#[tokio::test]
async fn readiness_follows_nsqd_going_away_and_coming_back() {
    let started = Instant::now();
    let lookupd = Nsqlookupd::start().await;
    let mut nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    let dir = tempfile::tempdir().unwrap();
    let discovery = [
        flag("lookupd-http-address", lookupd.http_address()),
        flag("lookupd-poll-interval", "250ms"),
    ];
    let mut sensor = Service::start(
        "sensor",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("rate", 20),
        ],
    );
    let mut worker_args = discovery.to_vec();
    worker_args.push(flag("destination-nsqd-tcp-address", nsqd.tcp_address()));
    let mut worker = Service::start("worker", &worker_args);
    let mut logger_args = discovery.to_vec();
    logger_args.push(flag("output", dir.path().join("out.jsonl").display()));
    let mut logger = Service::start("logger", &logger_args);
    for s in [&mut sensor, &mut worker, &mut logger] {
        s.wait_healthy().await;
    }
    let client = reqwest::Client::new();
    let all = [&sensor, &worker, &logger];
    wait_readiness(&client, &all, 200, Duration::from_secs(20)).await;

    for (how, stop) in [
        ("SIGTERM", Nsqd::terminate as fn(&mut Nsqd)),
        ("SIGKILL", Nsqd::kill),
    ] {
        stop(&mut nsqd);
        let down = wait_readiness(&client, &all, 503, Duration::from_secs(5)).await;
        for s in all {
            let (_, body) = readiness(&client, s).await.unwrap();
            eprintln!(
                "nsqd {how}: {} not ready within {:?}: {}",
                s.name, down[&s.name], body["reason"]
            );
        }
        nsqd.restart().await;
        let up = wait_readiness(&client, &all, 200, Duration::from_secs(20)).await;
        eprintln!("nsqd back after {how}: ready again within {up:?}");
    }

    for s in [&mut sensor, &mut worker, &mut logger] {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", s.name);
    }
    eprintln!("readiness test took {:?}", started.elapsed());
}

/// The JSON objects of a service's log, asserting that every line is one.
fn json_lines(service: &Service) -> Vec<Value> {
    service
        .logs()
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line}", service.name));
            assert!(v.is_object(), "{}: not an object: {line}", service.name);
            for key in ["timestamp", "level", "target"] {
                assert!(v.get(key).is_some(), "{}: no {key} in {line}", service.name);
            }
            v
        })
        .collect()
}

/// The first event whose message is `message`.
fn event<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == message)
        .unwrap_or_else(|| panic!("no event '{message}' in {lines:#?}"))
}

/// The first event that happened in a span carrying the message's identity.
fn in_message_span(lines: &[Value], sensor_id: &str) -> Option<Value> {
    lines.iter().find_map(|l| {
        let span = l.get("span")?;
        (span["sensor_id"] == sensor_id
            && span["epoch"].as_u64().is_some()
            && span["seq"].as_u64().is_some()
            && span["attempt"].as_u64().is_some())
        .then(|| l.clone())
    })
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_start_up_facts_and_message_spans() {
    let started = Instant::now();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "logger").await;
    let dir = tempfile::tempdir().unwrap();
    let json = || flag("log-format", "json");
    // debug for the services' own modules: the per-message events live there.
    let mut worker = Service::start(
        "worker",
        &[
            json(),
            flag("log-level", "info,worker=debug"),
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("destination-nsqd-tcp-address", nsqd.tcp_address()),
            flag("worker-id", "worker-j"),
        ],
    );
    let mut logger = Service::start(
        "logger",
        &[
            json(),
            flag("log-level", "info,logger=debug"),
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("logger-id", "logger-j"),
            flag("output", dir.path().join("out.jsonl").display()),
        ],
    );
    worker.wait_healthy().await;
    logger.wait_healthy().await;
    let mut sensor = Service::start(
        "sensor",
        &[
            json(),
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("sensor-id", "sensor-j"),
            flag("count", 50),
            flag("rate", 0),
        ],
    );
    let status = sensor.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "sensor: {status}\n{}",
        sensor.logs().join("\n")
    );
    let out = dir.path().join("out.jsonl");
    wait_until("50 lines written", Duration::from_secs(30), || {
        let n = count_lines(&out);
        async move { n >= 50 }
    })
    .await;
    for s in [&mut worker, &mut logger] {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", s.name);
    }

    let version = env!("CARGO_PKG_VERSION");
    for (service, id_key, id) in [
        (&sensor, "sensor_id", "sensor-j"),
        (&worker, "worker_id", "worker-j"),
        (&logger, "logger_id", "logger-j"),
    ] {
        let lines = json_lines(service);
        let name = &service.name;
        let start = event(&lines, &format!("starting {name}"));
        assert_eq!(start["version"], version, "{start}");
        let config = start["config"].as_str().unwrap_or_default();
        assert!(
            config.contains(&format!("{id_key} = \"{id}\"")),
            "effective config: {config}"
        );
        assert!(
            config.contains("nsqd_tcp_address"),
            "effective config: {config}"
        );
        let listening = event(&lines, "http server listening");
        assert_eq!(listening["addr"], service.http.as_str(), "{listening}");
        let levels: std::collections::BTreeSet<&str> =
            lines.iter().filter_map(|l| l["level"].as_str()).collect();
        eprintln!("{name}: {} JSON lines, levels {levels:?}", lines.len());
    }
    for service in [&worker, &logger] {
        let lines = json_lines(service);
        let line = in_message_span(&lines, "sensor-j").unwrap_or_else(|| {
            panic!(
                "{}: no event inside a message span (sensor_id, epoch, seq, attempt)",
                service.name
            )
        });
        eprintln!("{}: {line}", service.name);
    }
    eprintln!("json logs test took {:?}", started.elapsed());
}
