//! The output-buffer timeout a consumer asks nsqd for in IDENTIFY, against real nsqd v1.3.0:
//! granted when nsqd's `--min-output-buffer-timeout` allows it (as on the suite's shipped
//! configuration), refused by an nsqd on NSQ's defaults, in which case the consumer still
//! consumes, on nsqd's default, and says so once.
//!
//! The observable is nsqd's own IDENTIFY answer (`output_buffer_timeout`, shown as
//! [`nsq::NodeStats::output_buffer_timeout`]): what nsqd will use for the connection. No
//! latency is measured here; the benchmark does that.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;
use nsq::testkit::Nsqd;
use nsq::{Consumer, ConsumerConfig, Event, Producer};
use tokio::sync::broadcast;

/// WARN lines logged, with their `nsqd` field, for every test of this binary (each test uses
/// its own nsqd, so the field tells them apart).
static WARNINGS: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();

struct WarnRecorder;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnRecorder {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        #[derive(Default)]
        struct Fields {
            nsqd: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "nsqd" => self.nsqd = format!("{value:?}"),
                    "message" => self.message = format!("{value:?}"),
                    _ => {}
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "nsqd" => self.nsqd = value.to_string(),
                    "message" => self.message = value.to_string(),
                    _ => {}
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if let Ok(mut w) = WARNINGS.get_or_init(Mutex::default).lock() {
            w.push((f.nsqd, f.message));
        }
    }
}

/// Installs the WARN recorder (and, with `RUST_LOG`, the usual test log output).
fn init_recorder() {
    use tracing_subscriber::prelude::*;
    let fmt = std::env::var_os("RUST_LOG").is_some().then(|| {
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    let _ = tracing_subscriber::registry()
        .with(WarnRecorder)
        .with(fmt)
        .try_init();
}

/// WARN lines about a refused output-buffer timeout for `addr`.
fn refusal_warnings(addr: &str) -> Vec<String> {
    WARNINGS
        .get_or_init(Mutex::default)
        .lock()
        .map(|w| {
            w.iter()
                .filter(|(nsqd, msg)| {
                    nsqd == addr && msg.contains("refused the output buffer timeout")
                })
                .map(|(_, msg)| msg.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for the next `Connected` event, collecting the refusals seen on the way.
async fn until_connected(events: &mut broadcast::Receiver<Event>, refusals: &mut Vec<Event>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Ok(Event::Connected { .. })) => return,
            Ok(Ok(e @ Event::OutputBufferTimeoutRefused { .. })) => refusals.push(e),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream failed: {e}"),
            Err(_) => panic!("no connection within 20 s"),
        }
    }
}

/// Publishes the numbered messages `numbers` and consumes until each arrived, finishing
/// everything (a redelivery from before an nsqd restart included); returns once nsqd has no
/// message of the channel in flight, so that a restart after it redelivers nothing.
async fn round_trip(
    nsqd: &Nsqd,
    topic: &str,
    messages: &mut nsq::Messages,
    numbers: std::ops::Range<u64>,
) {
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    let mut missing: std::collections::BTreeSet<u64> = numbers.clone().collect();
    for i in numbers {
        producer.publish(topic, body(i, 50)).await.unwrap();
    }
    while !missing.is_empty() {
        let m = recv(messages, Duration::from_secs(20)).await;
        missing.remove(&number(m.body()));
        m.finish();
    }
    producer.close().await;
    wait_until("nsqd has the FINs", Duration::from_secs(20), || async {
        nsqd.channel_stats(topic, "test")
            .await
            .is_some_and(|c| c["in_flight_count"] == 0)
    })
    .await;
}

/// The output-buffer timeout nsqd reported for the consumer's only connection.
fn effective(consumer: &Consumer) -> Option<Duration> {
    let stats = consumer.stats();
    assert_eq!(stats.nodes.len(), 1, "one nsqd: {stats:?}");
    assert!(stats.nodes[0].connected, "connected: {stats:?}");
    stats.nodes[0].output_buffer_timeout
}

#[tokio::test]
async fn refused_timeout_falls_back_to_nsqds_default_and_warns_once() {
    init_recorder();
    // NSQ's own defaults: --min-output-buffer-timeout 25ms, --output-buffer-timeout 250ms.
    let mut nsqd = Nsqd::builder().stock().start().await;
    nsqd.create_channel("obt_refused", "test").await;
    let config = consumer_config(&[nsqd.tcp_address()], 10);
    assert_eq!(
        config.output_buffer_timeout,
        Some(nsq::DEFAULT_OUTPUT_BUFFER_TIMEOUT),
        "consumers ask for the low-latency timeout by default"
    );
    let (consumer, mut messages) = Consumer::new("obt_refused", "test", config).unwrap();
    let mut events = consumer.events();
    let mut refusals = Vec::new();
    until_connected(&mut events, &mut refusals).await;

    // Still consumes.
    round_trip(&nsqd, "obt_refused", &mut messages, 0..3).await;
    assert_eq!(
        refusals.len(),
        1,
        "one refusal per connection: {refusals:?}"
    );
    match &refusals[0] {
        Event::OutputBufferTimeoutRefused {
            addr,
            requested,
            reason,
        } => {
            assert_eq!(addr, &nsqd.tcp_address());
            assert_eq!(*requested, Duration::from_millis(1));
            assert!(
                reason.contains("E_BAD_BODY IDENTIFY output buffer timeout (1) is invalid"),
                "nsqd's refusal: {reason}"
            );
        }
        other => panic!("not a refusal: {other:?}"),
    }
    // nsqd's default is in effect.
    assert_eq!(effective(&consumer), Some(Duration::from_millis(250)));

    // A reconnect asks again and is refused again: a second event, but no second WARN.
    nsqd.terminate();
    nsqd.restart().await;
    until_connected(&mut events, &mut refusals).await;
    round_trip(&nsqd, "obt_refused", &mut messages, 100..103).await;
    assert_eq!(
        refusals.len(),
        2,
        "asked again after reconnecting: {refusals:?}"
    );
    let warnings = refusal_warnings(&nsqd.tcp_address());
    assert_eq!(warnings.len(), 1, "one WARN per consumer: {warnings:?}");
    assert!(
        warnings[0].contains("--min-output-buffer-timeout"),
        "the WARN names nsqd's flag: {}",
        warnings[0]
    );
    consumer.close().await;
}

#[tokio::test]
async fn granted_timeout_is_in_effect() {
    init_recorder();
    // The suite's shipped nsqd settings (--min-output-buffer-timeout=1ms).
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("obt_granted", "test").await;
    let addr = nsqd.tcp_address();

    for (asked, expected) in [
        (Some(Duration::from_millis(1)), Duration::from_millis(1)),
        (Some(Duration::from_millis(7)), Duration::from_millis(7)),
        // Not asking leaves nsqd's --output-buffer-timeout (250ms by default).
        (None, Duration::from_millis(250)),
    ] {
        let config = ConsumerConfig {
            output_buffer_timeout: asked,
            ..consumer_config(std::slice::from_ref(&addr), 10)
        };
        let (consumer, mut messages) = Consumer::new("obt_granted", "test", config).unwrap();
        let mut events = consumer.events();
        let mut refusals = Vec::new();
        until_connected(&mut events, &mut refusals).await;
        round_trip(&nsqd, "obt_granted", &mut messages, 0..2).await;
        assert!(refusals.is_empty(), "nothing refused: {refusals:?}");
        assert_eq!(effective(&consumer), Some(expected), "asked for {asked:?}");
        consumer.close().await;
    }
    assert!(refusal_warnings(&addr).is_empty());

    // What nsqd cannot take is refused up front, with the reason.
    for bad in [Duration::from_micros(500), Duration::from_micros(1500)] {
        let config = ConsumerConfig {
            output_buffer_timeout: Some(bad),
            ..consumer_config(std::slice::from_ref(&addr), 10)
        };
        let err = Consumer::new("obt_granted", "test", config).unwrap_err();
        assert!(err.to_string().contains("whole milliseconds"), "{err}");
    }
}
