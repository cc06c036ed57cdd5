//! A channel left behind is seen: a channel of `results` whose consumer went away for good
//! (the compose `archive` logger after an `up` without the profile) keeps every result. The
//! logger's summary line names it with its depth and "no client", a WARN says what to do,
//! and the gauge `nsq_suite_channel_depth` carries it for an alert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::time::Duration;

use e2e::{flag, wait_until, Nsqd, Nsqlookupd, Service};

#[tokio::test]
async fn a_channel_without_client_shows_in_the_summary_and_the_metrics() {
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    // The archive logger came once, then went: its channel stays and fills.
    nsqd.create_channel("results", "archive").await;
    nsqd.create_channel("results", "logger").await;
    const N: usize = 37;
    let producer =
        nsq::Producer::connect(&nsqd.tcp_address(), nsq::ProducerConfig::default()).unwrap();
    for _ in 0..N {
        producer
            .publish("results", b"not a result".to_vec())
            .await
            .unwrap();
    }
    producer.close().await;

    let dir = tempfile::tempdir().unwrap();
    let mut logger = Service::start(
        "logger",
        &[
            flag("lookupd-http-address", lookupd.http_address()),
            flag("lookupd-poll-interval", "200ms"),
            flag("output", dir.path().join("results.jsonl").display()),
            flag("summary-interval", "1s"),
            flag("detect-gaps", "false"),
        ],
    );
    logger.wait_healthy().await;

    // The logger's own channel drains (the bodies are garbage: counted, finished); the
    // archive channel keeps all N with no client.
    let line = format!("archive {N} (no client)");
    wait_until(
        "the summary names the archive channel",
        Duration::from_secs(30),
        || async { logger.logged(&line) && logger.logged("logger 0 (1 client)") },
    )
    .await;
    assert!(
        logger
            .wait_logged(&["a channel with messages and no client"])
            .await,
        "no WARN about the archive channel: {:#?}",
        logger.logs()
    );
    assert_eq!(archive_depth(&logger).await, Some(N.to_string()));

    // Deleting the channel, as the README says, sets its gauge back to 0.
    let delete = reqwest::Client::new()
        .post(format!(
            "http://{}/channel/delete?topic=results&channel=archive",
            nsqd.http_address()
        ))
        .send()
        .await
        .unwrap();
    assert!(delete.status().is_success(), "{}", delete.status());
    wait_until(
        "the archive gauge back at 0",
        Duration::from_secs(30),
        || async { archive_depth(&logger).await.as_deref() == Some("0") },
    )
    .await;
    logger.terminate(Duration::from_secs(10)).await;
}

/// The value of `nsq_suite_channel_depth{topic="results",channel="archive"}` in the logger's
/// `/metrics`.
async fn archive_depth(logger: &Service) -> Option<String> {
    let metrics = reqwest::get(format!("http://{}/metrics", logger.http))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("nsq_suite_channel_depth{")
                && l.contains("channel=\"archive\"")
                && l.contains("topic=\"results\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}
