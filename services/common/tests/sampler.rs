//! `suite_common::http::sample_consumer` against a real nsqd: the order in which `/ready`'s
//! reasons win (no nsqd, then the service's own problem, then ready).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use nsq::{testkit::Nsqd, Consumer, ConsumerConfig};
use suite_common::http::{self, Readiness};
use test_support::wait_until;

/// Bounds: the sampler ticks every 250 ms and a consumer connects to a local nsqd within
/// milliseconds; 20 s is the margin for a loaded 2-core machine, and only a failure waits it.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn ready_only_when_consuming_and_the_service_has_no_problem() {
    test_support::init_logs();
    let mut nsqd = Nsqd::start().await;
    let config = ConsumerConfig {
        nsqd_tcp_addresses: vec![nsqd.tcp_address()],
        ..ConsumerConfig::default()
    };
    let (consumer, _messages) = Consumer::new("sampled", "ch", config).unwrap();
    let readiness = Readiness::not_ready("starting");
    let problem = Arc::new(Mutex::new(Some("the output is full".to_owned())));
    let own = {
        let problem = Arc::clone(&problem);
        move || problem.lock().unwrap().clone()
    };
    let sampler = tokio::spawn(http::sample_consumer(
        consumer.clone(),
        "sampled",
        "ch",
        readiness.clone(),
        None,
        own,
    ));

    // Connected: the service's own problem is the reason.
    wait_until("the own problem as the reason", WAIT, || async {
        readiness.reason().as_deref() == Some("the output is full")
    })
    .await;

    // No problem left: ready.
    *problem.lock().unwrap() = None;
    wait_until("ready", WAIT, || async { readiness.is_ready() }).await;

    // nsqd gone: not consuming wins over the service's own problem.
    *problem.lock().unwrap() = Some("the output is full".to_owned());
    nsqd.kill();
    wait_until("not consuming as the reason", WAIT, || async {
        readiness
            .reason()
            .is_some_and(|r| r.starts_with("not consuming sampled/ch from any nsqd"))
    })
    .await;

    sampler.abort();
    consumer.close().await;
}
