//! The talk's REST version end to end (`rest-sensor`, `rest-worker`, `rest-app` as real
//! processes on free loopback ports): readings flow in pull and in push mode, and a worker
//! that dies loses readings, since nothing in REST keeps or retries them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, path::Path, time::Duration};

use e2e::{flag, read_jsonl, wait_until, Service};

/// Time allowed for a step that takes well under a second on an idle machine: a few hundred
/// requests on loopback. 30 s leaves a wide margin on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(30);

/// A worker with id `id`, forwarding to `app` when given; healthy on return.
async fn worker(id: &str, app: Option<&Service>) -> Service {
    let mut args = vec![flag("worker-id", id)];
    if let Some(app) = app {
        args.push(flag("push-to", &app.http));
    }
    let mut w = Service::start("rest-worker", &args);
    w.wait_healthy().await;
    w
}

/// The push-mode app writing to `out`, and two workers pushing to it; healthy on return.
async fn push_app_and_workers(out: &Path) -> (Service, Service, Service) {
    let mut app = Service::start(
        "rest-app",
        &[flag("mode", "push"), flag("output", out.display())],
    );
    app.wait_healthy().await;
    let w1 = worker("w1", Some(&app)).await;
    let w2 = worker("w2", Some(&app)).await;
    (app, w1, w2)
}

/// A sensor pushing 200 readings/s to `w1` and `w2`, with `extra` flags.
fn push_sensor(w1: &Service, w2: &Service, extra: &[String]) -> Service {
    let mut args = vec![
        flag("push-to", &w1.http),
        flag("push-to", &w2.http),
        flag("rate", 200),
    ];
    args.extend_from_slice(extra);
    Service::start("rest-sensor", &args)
}

/// The seqs of the lines in `out`, with the line count (to tell duplicates).
fn seqs(out: &Path) -> (BTreeSet<u64>, usize) {
    let lines = read_jsonl(out);
    let seqs = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    (seqs, lines.len())
}

/// Checks every line of `out`: squares of its values, from w1 or w2; returns the count per
/// worker.
fn check_lines(out: &Path) -> (usize, usize) {
    let lines = read_jsonl(out);
    for l in &lines {
        let values: Vec<u64> = l["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let squares: Vec<u64> = l["squares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            squares,
            values.iter().map(|v| v * v).collect::<Vec<_>>(),
            "{l}"
        );
        assert!(
            l["written_at"].as_u64().unwrap() >= l["taken_at"].as_u64().unwrap(),
            "{l}"
        );
    }
    let by = |id: &str| lines.iter().filter(|l| l["worker_id"] == id).count();
    assert_eq!(by("w1") + by("w2"), lines.len(), "only w1 and w2 work");
    (by("w1"), by("w2"))
}

/// A counter of a service's `/metrics` (0 when absent or unreachable).
async fn counter(service: &Service, name: &str) -> u64 {
    let url = format!("http://{}/metrics", service.http);
    let Ok(r) = reqwest::get(&url).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn readings_flow_pull_and_push() {
    let dir = tempfile::tempdir().unwrap();

    // Pull (the first version): the app asks the sensor, then w1 and w2 in turn.
    let pull = dir.path().join("pull.jsonl");
    let mut sensor = Service::start("rest-sensor", &[]);
    sensor.wait_healthy().await;
    let (w1, w2) = (worker("w1", None).await, worker("w2", None).await);
    let mut app = Service::start(
        "rest-app",
        &[
            flag("sensor-url", &sensor.http),
            flag("worker-url", &w1.http),
            flag("worker-url", format!("http://{}", w2.http)),
            flag("interval", "5ms"),
            flag("count", 40),
            flag("output", pull.display()),
        ],
    );
    assert!(
        app.wait_exit(STEP).await.success(),
        "{}",
        app.logs().join("\n")
    );
    let (got, lines) = seqs(&pull);
    assert_eq!((got, lines), ((1..=40).collect(), 40), "every pull once");
    assert_eq!(
        check_lines(&pull),
        (20, 20),
        "round robin over the two workers"
    );
    assert!(sensor.terminate(STEP).await.success());

    // Push (the second attempt): sensor → w1/w2 → app.
    let push = dir.path().join("push.jsonl");
    let (mut app, _w1, _w2) = push_app_and_workers(&push).await;
    let mut sensor = push_sensor(&_w1, &_w2, &[flag("count", 100)]);
    assert!(
        sensor.wait_exit(STEP).await.success(),
        "{}",
        sensor.logs().join("\n")
    );
    // Each push returned only after the app wrote the line, so they are all there.
    let (got, lines) = seqs(&push);
    assert_eq!(
        (got, lines),
        ((1..=100).collect(), 100),
        "every reading once"
    );
    assert_eq!(check_lines(&push), (50, 50));
    assert!(app.terminate(STEP).await.success());
}

/// Kills `w2` while readings flow into `out` through w1 and w2 with at most `in_flight`
/// requests at once, waits for 40 readings taken after the kill, and returns how many of
/// those 40 are missing from `out`.
async fn missing_after_kill(out: &Path, w2: &mut Service, in_flight: u64) -> usize {
    let last = |out: &Path| seqs(out).0.last().copied().unwrap_or(0);
    wait_until("20 readings written", STEP, || async { last(out) >= 20 }).await;
    // Readings taken before the kill are written ones (no more than the highest seq) and
    // those in flight: every seq above `after` was taken after the kill.
    let after = last(out) + in_flight;
    w2.kill9();
    wait_until("40 readings after the kill", STEP, || async {
        last(out) > after + 40
    })
    .await;
    let (got, lines) = seqs(out);
    assert_eq!(lines, got.len(), "no reading twice");
    (after + 1..=after + 40)
        .filter(|s| !got.contains(s))
        .count()
}

#[tokio::test]
async fn a_killed_worker_loses_readings() {
    let dir = tempfile::tempdir().unwrap();

    // Push: every second reading goes to the dead worker, and nothing retries it elsewhere.
    let out = dir.path().join("push.jsonl");
    let (_app, w1, mut w2) = push_app_and_workers(&out).await;
    let mut sensor = push_sensor(
        &w1,
        &w2,
        &[flag("concurrency", 8), flag("log-format", "json")],
    );
    let missing = missing_after_kill(&out, &mut w2, 8).await;
    // Round robin sends 20 of the 40 to w2; 10 leaves room for requests reordered between
    // being taken and being sent.
    assert!(
        missing >= 10,
        "{missing} of 40 readings lost after the kill"
    );
    assert!(sensor.terminate(STEP).await.success());
    let summary = sensor
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("pushing stopped"))
        })
        .expect("the sensor's summary line");
    let (taken, lost) = (
        summary["taken"].as_u64().unwrap(),
        summary["lost"].as_u64().unwrap(),
    );
    let (got, _) = seqs(&out);
    let missing = (1..=taken).filter(|s| !got.contains(s)).count() as u64;
    // A request in flight when w2 died may have been written and still failed, so missing may
    // be below lost; every missing reading was counted as lost.
    assert!(
        missing <= lost && lost >= 10,
        "missing {missing}, lost {lost}: {summary}"
    );

    // Pull: the app's requests to the dead worker fail the same way; the readings the sensor
    // took for them never reach the output.
    let mut w2 = worker("w2", None).await;
    let w1 = worker("w1", None).await;
    let pull = dir.path().join("pull.jsonl");
    let mut source = Service::start("rest-sensor", &[]);
    source.wait_healthy().await;
    let mut app = Service::start(
        "rest-app",
        &[
            flag("sensor-url", &source.http),
            flag("worker-url", &w1.http),
            flag("worker-url", &w2.http),
            flag("interval", "5ms"),
            flag("output", pull.display()),
        ],
    );
    let missing = missing_after_kill(&pull, &mut w2, 1).await;
    // One pull at a time, strictly alternating: exactly every second one fails; 10 leaves
    // the same margin as above.
    assert!(
        missing >= 10,
        "{missing} of 40 readings lost after the kill"
    );
    assert!(counter(&app, "rest_requests_failed_total").await >= 10);
    assert!(app.terminate(STEP).await.success());
}
