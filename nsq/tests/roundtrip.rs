//! Publish/consume round trips against real nsqd v1.3.0: PUB, MPUB, DPUB with 100,000
//! messages each, load balancing on one channel, fan-out over two channels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use nsq::testkit::Nsqd;
use nsq::{Consumer, Producer};

const N: u64 = 100_000;

/// Consumes until `n` distinct numbered messages arrived; returns (distinct, duplicates).
async fn consume_all(nsqd: &Nsqd, topic: &str, n: u64) -> (HashSet<u64>, u64) {
    let (consumer, mut messages) =
        Consumer::new(topic, "test", consumer_config(&[nsqd.tcp_address()], 2500)).unwrap();
    let mut seen = HashSet::new();
    let mut dups = 0;
    while (seen.len() as u64) < n {
        let m = recv(&mut messages, Duration::from_secs(20)).await;
        if !seen.insert(number(m.body())) {
            dups += 1;
        }
        m.finish();
    }
    consumer.close().await;
    (seen, dups)
}

#[tokio::test]
async fn pub_round_trip_100k() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("pub_rt", "test").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    // A window of 1,000 publishes in flight on one connection.
    let sem = Arc::new(tokio::sync::Semaphore::new(1000));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        let p = producer.clone();
        tasks.spawn(async move {
            let r = p.publish("pub_rt", body(i, 100)).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let (seen, dups) = consume_all(&nsqd, "pub_rt", N).await;
    assert_eq!(seen.len() as u64, N);
    assert_eq!(dups, 0, "no redelivery expected without faults");
    let stats = nsqd.channel_stats("pub_rt", "test").await.unwrap();
    assert_eq!(stats["message_count"], N);
    producer.close().await;
}

#[tokio::test]
async fn mpub_round_trip_100k() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("mpub_rt", "test").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..(N / 100) {
        let p = producer.clone();
        tasks.spawn(async move {
            let bodies: Vec<Bytes> = (0..100).map(|i| body(batch * 100 + i, 200)).collect();
            p.multi_publish("mpub_rt", bodies).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let (seen, dups) = consume_all(&nsqd, "mpub_rt", N).await;
    assert_eq!(seen.len() as u64, N);
    assert_eq!(dups, 0);
    producer.close().await;
}

#[tokio::test]
async fn dpub_round_trip_100k_and_defer_is_honoured() {
    init_logs();
    let nsqd = Nsqd::start().await;
    nsqd.create_channel("dpub_rt", "test").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();

    // One message with a visible defer: it must not arrive before its time.
    let (consumer, mut messages) = Consumer::new(
        "dpub_rt",
        "test",
        consumer_config(&[nsqd.tcp_address()], 2500),
    )
    .unwrap();
    let sent = std::time::Instant::now();
    producer
        .deferred_publish(
            "dpub_rt",
            body(u64::MAX / 2, 50),
            Duration::from_millis(700),
        )
        .await
        .unwrap();
    let m = recv(&mut messages, Duration::from_secs(10)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(650),
        "deferred message arrived after {:?}",
        sent.elapsed()
    );
    m.finish();

    let sem = Arc::new(tokio::sync::Semaphore::new(1000));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        let p = producer.clone();
        tasks.spawn(async move {
            let r = p
                .deferred_publish("dpub_rt", body(i, 100), Duration::from_millis(1 + i % 50))
                .await;
            drop(permit);
            r
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let mut seen = HashSet::new();
    while (seen.len() as u64) < N {
        let m = recv(&mut messages, Duration::from_secs(20)).await;
        assert!(seen.insert(number(m.body())), "duplicate");
        m.finish();
    }
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn two_consumers_on_one_channel_split_and_two_channels_each_get_all() {
    init_logs();
    let nsqd = Nsqd::start().await;
    let topic = "split";
    for ch in ["shared", "copy"] {
        nsqd.create_channel(topic, ch).await;
    }
    let n = 20_000u64;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    for batch in 0..(n / 100) {
        let bodies: Vec<Bytes> = (0..100).map(|i| body(batch * 100 + i, 64)).collect();
        producer.multi_publish(topic, bodies).await.unwrap();
    }

    let addr = vec![nsqd.tcp_address()];
    let (c1, mut m1) = Consumer::new(topic, "shared", consumer_config(&addr, 50)).unwrap();
    let (c2, mut m2) = Consumer::new(topic, "shared", consumer_config(&addr, 50)).unwrap();
    let (c3, mut m3) = Consumer::new(topic, "copy", consumer_config(&addr, 200)).unwrap();

    let mut shared_seen = HashSet::new();
    let (mut from1, mut from2) = (0u64, 0u64);
    let mut copy_seen = HashSet::new();
    while (shared_seen.len() as u64) < n || (copy_seen.len() as u64) < n {
        tokio::select! {
            Some(m) = m1.recv() => { shared_seen.insert(number(m.body())); from1 += 1; m.finish(); }
            Some(m) = m2.recv() => { shared_seen.insert(number(m.body())); from2 += 1; m.finish(); }
            Some(m) = m3.recv() => { copy_seen.insert(number(m.body())); m.finish(); }
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!(
                "stalled: shared {} copy {}", shared_seen.len(), copy_seen.len()),
        }
    }
    println!("split: consumer 1 got {from1}, consumer 2 got {from2} of {n}");
    assert_eq!(
        from1 + from2,
        n,
        "one channel: each message to exactly one consumer"
    );
    assert!(
        from1 > n / 10 && from2 > n / 10,
        "both consumers got a share: {from1} / {from2}"
    );
    assert_eq!(
        copy_seen.len() as u64,
        n,
        "the second channel got every message"
    );
    for c in [c1, c2, c3] {
        c.close().await;
    }
}
