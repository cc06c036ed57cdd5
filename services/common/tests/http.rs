//! The common HTTP routes, served for real on 127.0.0.1:0 and queried with a real client.
//!
//! One test function, because the Prometheus recorder is process-wide: it is installed once
//! here, with the labels the assertions expect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::time::Duration;

use serde_json::{json, Value};
use suite_common::{
    healthcheck::{self, ProbeError},
    http::{self, BaseState, HttpError, HttpServer, Readiness},
    shutdown::CancellationToken,
};

#[tokio::test]
async fn health_ready_metrics_and_probe() {
    let handle = http::install_metrics("testsvc", "test-1").unwrap();
    let readiness = Readiness::not_ready("producer disconnected");
    let state = BaseState::new("testsvc", "test-1", readiness.clone(), handle);
    let own = axum::Router::new().route("/own", axum::routing::get(|| async { "mine" }));
    let router = http::base_router(state).merge(own);

    let server = HttpServer::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0, "the real port is reported");
    let token = CancellationToken::new();
    let serving = tokio::spawn(server.run(router, token.clone().cancelled_owned()));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("http://{addr}{path}");

    // /health
    let response = client.get(url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ok", "service": "testsvc", "id": "test-1"})
    );

    // /ready, not ready
    let response = client.get(url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ready": false, "reason": "producer disconnected"})
    );

    // /ready, ready
    let mut changes = readiness.subscribe();
    readiness.set_ready();
    assert!(changes.has_changed().unwrap());
    assert!(changes.borrow_and_update().is_none());
    let response = client.get(url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"ready": true}));

    // The service's own route is merged in.
    let body = client.get(url("/own")).send().await.unwrap().text().await;
    assert_eq!(body.unwrap(), "mine");

    // /metrics
    metrics::counter!("suite_test_events_total", "kind" => "a").increment(3);
    metrics::gauge!("suite_test_in_flight").set(2.0);
    metrics::histogram!("suite_test_duration_seconds").record(0.003);
    let response = client.get(url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE suite_test_events_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE suite_test_in_flight gauge"), "{text}");
    assert!(
        text.contains("# TYPE suite_test_duration_seconds histogram"),
        "{text}"
    );
    check_exposition_format(&text);
    let counter = sample(&text, "suite_test_events_total");
    assert_eq!(counter.value, 3.0);
    assert_eq!(counter.labels.get("kind").map(String::as_str), Some("a"));
    assert_eq!(
        counter.labels.get("service").map(String::as_str),
        Some("testsvc")
    );
    assert_eq!(counter.labels.get("id").map(String::as_str), Some("test-1"));
    let bucket = samples(&text, "suite_test_duration_seconds_bucket")
        .into_iter()
        .find(|s| s.labels.get("le").map(String::as_str) == Some("0.005"))
        .expect("a 5 ms bucket");
    assert_eq!(bucket.value, 1.0);

    // The probe against the real server.
    let target = addr.to_string();
    tokio::task::spawn_blocking(move || healthcheck::probe(&target))
        .await
        .unwrap()
        .unwrap();
    readiness.set_not_ready("draining");
    let target = addr.to_string();
    let err = tokio::task::spawn_blocking(move || {
        healthcheck::probe_path(&target, "/ready", healthcheck::PROBE_TIMEOUT)
    })
    .await
    .unwrap()
    .unwrap_err();
    match err {
        ProbeError::Status { status_line, .. } => {
            assert_eq!(status_line, "HTTP/1.0 503 Service Unavailable")
        }
        other => panic!("unexpected {other}"),
    }

    // A second installation with the same labels is the same recorder; others are refused.
    assert!(http::install_metrics("testsvc", "test-1").is_ok());
    assert!(matches!(
        http::install_metrics("other", "x"),
        Err(HttpError::Metrics(_))
    ));

    // The port is taken while serving.
    let err = HttpServer::bind(&addr.to_string()).await.unwrap_err();
    assert!(err
        .to_string()
        .starts_with(&format!("cannot listen for HTTP on {addr}: ")));

    // Shutdown resolves `run`.
    token.cancel();
    serving.await.unwrap().unwrap();
    assert!(client.get(url("/health")).send().await.is_err());
}

/// One sample line of the Prometheus text format.
struct Sample {
    name: String,
    labels: std::collections::HashMap<String, String>,
    value: f64,
}

/// Parses `name{label="value",...} number` (labels optional).
fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("name and value");
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line}"));
    let (name, labels) = match series.split_once('{') {
        None => (series, Default::default()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let labels = body
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    (k.to_owned(), v.expect("quoted label value").to_owned())
                })
                .collect();
            (name, labels)
        }
    };
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line}"
    );
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// Every line is a comment (`# HELP`/`# TYPE`), empty, or a well-formed sample.
fn check_exposition_format(text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("TYPE ") || comment.starts_with("HELP "),
                "{line}"
            );
            continue;
        }
        parse_sample(line);
    }
}

fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(parse_sample)
        .filter(|s| s.name == name)
        .collect()
}

fn sample(text: &str, name: &str) -> Sample {
    let mut found = samples(text, name);
    assert_eq!(found.len(), 1, "one sample of {name}");
    found.remove(0)
}
