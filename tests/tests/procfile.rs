//! The Procfile's NSQ daemons (what `scripts/run.sh` starts) log their warnings, not their
//! chatter.
//!
//! At nsqd's and nsqlookupd's default level (INFO), nsqlookupd logs every `/lookup` poll and
//! nsqd every client, several lines a second that scroll the logger's summary out of the
//! terminal. This test runs the Procfile's own `nsqlookupd` and `nsqd` lines, with their
//! ports mapped to free loopback ports and the data path to a temporary directory, drives the
//! traffic of a running suite through them (lookups, a producer and a consumer), and checks
//! that neither printed an INFO line. The same lines without `--log-level` do print them, so
//! the check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::path::Path;
use std::time::Duration;

use e2e::{free_port, wait_until, Service};

/// The arguments of the Procfile's process `name`, after `exec <program>`.
fn procfile_args(name: &str) -> Vec<String> {
    let procfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Procfile");
    let text = std::fs::read_to_string(&procfile).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: exec ")))
        .unwrap_or_else(|| panic!("no process {name} in the Procfile"));
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// The two daemons of the Procfile, remapped; `quiet` keeps their `--log-level`.
struct Daemons {
    nsqlookupd: Service,
    nsqd: Service,
    lookupd_http: String,
    nsqd_tcp: String,
    _data: tempfile::TempDir,
}

async fn start(quiet: bool) -> Daemons {
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<(String, String)> = ["4160", "4161", "4150", "4151"]
        .iter()
        .map(|p| {
            (
                format!("127.0.0.1:{p}"),
                format!("127.0.0.1:{}", free_port()),
            )
        })
        .collect();
    let remap = |args: Vec<String>| -> Vec<String> {
        args.into_iter()
            .filter(|a| quiet || !a.starts_with("--log-level"))
            .map(|a| {
                let a = ports.iter().fold(a, |a, (from, to)| a.replace(from, to));
                a.replace(".run/nsqd", data.path().to_str().unwrap())
            })
            .collect()
    };
    let lookupd_args = remap(procfile_args("nsqlookupd"));
    let nsqd_args = remap(procfile_args("nsqd"));
    assert_eq!(
        lookupd_args.iter().any(|a| a == "--log-level=warn"),
        quiet,
        "{lookupd_args:?}"
    );
    let lookupd_http = ports[1].1.clone();
    let nsqd_http = ports[3].1.clone();
    let nsqlookupd = Service::start_program(
        "nsqlookupd",
        &nsq::testkit::bin("nsqlookupd"),
        &lookupd_args,
        &[],
        lookupd_http.clone(),
    );
    let nsqd = Service::start_program(
        "nsqd",
        &nsq::testkit::bin("nsqd"),
        &nsqd_args,
        &[],
        nsqd_http.clone(),
    );
    for http in [&lookupd_http, &nsqd_http] {
        wait_until(&format!("{http}/ping"), Duration::from_secs(20), || async {
            reqwest::get(format!("http://{http}/ping"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
    Daemons {
        nsqlookupd,
        nsqd,
        lookupd_http,
        nsqd_tcp: ports[2].1.clone(),
        _data: data,
    }
}

/// What a running suite does to the daemons: producers and consumers connect, consumers
/// poll nsqlookupd. Returns once the consumer found nsqd through nsqlookupd and got the
/// message, so that every kind of INFO line has had its cause.
async fn traffic(d: &Daemons) {
    let producer = nsq::Producer::connect(&d.nsqd_tcp, nsq::ProducerConfig::default()).unwrap();
    producer.publish("t", b"x".to_vec()).await.unwrap();
    let (consumer, mut messages) = nsq::Consumer::new(
        "t",
        "c",
        nsq::ConsumerConfig {
            lookupd_http_addresses: vec![format!("http://{}", d.lookupd_http)],
            lookupd_poll_interval: Duration::from_millis(100),
            ..nsq::ConsumerConfig::default()
        },
    )
    .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(20), messages.recv())
        .await
        .expect("the consumer got nothing in 20 s")
        .expect("the consumer stopped");
    message.finish();
    // A few more polls of nsqlookupd, as a running consumer makes.
    for _ in 0..5 {
        let url = format!("http://{}/lookup?topic=t", d.lookupd_http);
        assert!(reqwest::get(url).await.unwrap().status().is_success());
    }
    consumer.close().await;
    producer.close().await;
}

fn info_lines(s: &Service) -> Vec<String> {
    s.logs()
        .into_iter()
        .filter(|l| l.contains("INFO:"))
        .collect()
}

#[tokio::test]
async fn the_procfile_daemons_log_no_chatter() {
    let d = start(true).await;
    traffic(&d).await;
    for s in [&d.nsqlookupd, &d.nsqd] {
        let info = info_lines(s);
        assert!(info.is_empty(), "{} logged INFO lines: {info:#?}", s.name);
    }

    // The same lines at the default level do log them: the check above can fail.
    let loud = start(false).await;
    traffic(&loud).await;
    wait_until(
        "INFO lines at the default level",
        Duration::from_secs(10),
        || async { !info_lines(&loud.nsqlookupd).is_empty() && !info_lines(&loud.nsqd).is_empty() },
    )
    .await;
}
