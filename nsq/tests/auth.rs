//! AUTH against nsqd started with `--auth-http-address`, pointing at a small auth server made
//! in the test (the protocol of NSQ's `nsqauthfilter`/`pynsqauthd`: nsqd asks
//! `GET /auth?secret=...` and gets the identity and its authorizations as JSON).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

mod common;

use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use nsq::testkit::Nsqd;
use nsq::{Consumer, Event, Producer};

const SECRET: &str = "s3cret";

async fn auth(
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, Json<serde_json::Value>) {
    if q.get("secret").map(String::as_str) == Some(SECRET) {
        (
            StatusCode::OK,
            Json(serde_json::json!({
                "ttl": 3600,
                "identity": "test-user",
                "identity_url": "http://example.invalid/test-user",
                "authorizations": [
                    {"topic": ".*", "channels": [".*"], "permissions": ["subscribe", "publish"]}
                ]
            })),
        )
    } else {
        (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"message": "NOT_AUTHORIZED"})),
        )
    }
}

/// An auth server on a free loopback port, and an nsqd that asks it.
async fn auth_nsqd() -> (Nsqd, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let app = Router::new().route("/auth", get(auth));
        let _ = axum::serve(listener, app).await;
    });
    let nsqd = Nsqd::builder()
        .arg(format!("--auth-http-address={addr}"))
        .start()
        .await;
    (nsqd, server)
}

#[tokio::test]
async fn the_right_secret_publishes_and_consumes() {
    init_logs();
    let (nsqd, server) = auth_nsqd().await;
    let mut config = producer_config();
    config.connection.auth_secret = Some(SECRET.into());
    let producer = Producer::connect(&nsqd.tcp_address(), config).unwrap();
    producer.publish("authed", body(1, 16)).await.unwrap();

    let mut cc = consumer_config(&[nsqd.tcp_address()], 10);
    cc.connection.auth_secret = Some(SECRET.into());
    let (consumer, mut messages) = Consumer::new("authed", "c", cc).unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(number(m.body()), 1);
    m.finish();
    consumer.close().await;
    producer.close().await;
    server.abort();
}

async fn refusal(secret: Option<&str>) -> String {
    let (nsqd, server) = auth_nsqd().await;
    let mut config = producer_config();
    config.publish_timeout = Duration::from_secs(2);
    config.connection.auth_secret = secret.map(str::to_string);
    let producer = Producer::connect(&nsqd.tcp_address(), config).unwrap();
    let mut events = producer.events();
    assert!(producer.publish("authed", body(1, 16)).await.is_err());
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(Event::Disconnected { reason, .. })) => break reason,
            Ok(Ok(_)) => continue,
            other => panic!("no disconnect event: {other:?}"),
        }
    };
    producer.close().await;
    server.abort();
    reason
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_nsqds_reason() {
    init_logs();
    let reason = refusal(Some("wrong")).await;
    println!("wrong secret: {reason}");
    assert!(
        reason.contains("AUTH") && reason.contains("E_AUTH_FAILED"),
        "{reason}"
    );
}

#[tokio::test]
async fn no_secret_against_an_auth_nsqd_says_what_is_missing() {
    init_logs();
    let reason = refusal(None).await;
    println!("no secret: {reason}");
    assert!(reason.contains("requires AUTH"), "{reason}");
}
