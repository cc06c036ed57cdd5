//! Discovery through real nsqlookupd v1.3.0, and the RDY budget across several nsqd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use nsq::testkit::{Nsqd, Nsqlookupd};
use nsq::{Consumer, ConsumerConfig, Producer};

fn lookupd_config(lookupds: &[&Nsqlookupd], max_in_flight: u32) -> ConsumerConfig {
    let mut c = consumer_config(&[], max_in_flight);
    c.lookupd_http_addresses = lookupds.iter().map(|l| l.http_address()).collect();
    c.lookupd_poll_interval = Duration::from_millis(250);
    c
}

#[tokio::test]
async fn consumer_started_before_the_topic_exists_gets_the_first_message() {
    init_logs();
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    let (consumer, mut messages) =
        Consumer::new("fresh", "c", lookupd_config(&[&lookupd], 10)).unwrap();
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    let started = Instant::now();
    producer.publish("fresh", body(1, 16)).await.unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    println!("first message after {:?}", started.elapsed());
    assert_eq!(number(m.body()), 1);
    m.finish();
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn a_live_nsqd_stays_listed_between_its_pings() {
    // nsqd PINGs nsqlookupd every 15 s; the testkit's nsqlookupd must not call it inactive
    // in between (it did with --inactive-producer-timeout=5s: consumers dropped a live nsqd
    // 5 s after it started and came back only at its next PING).
    init_logs();
    let lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    producer.publish("stay", body(1, 16)).await.unwrap();
    let (consumer, mut messages) =
        Consumer::new("stay", "c", lookupd_config(&[&lookupd], 10)).unwrap();
    recv(&mut messages, Duration::from_secs(5)).await.finish();
    // The time passing is what is tested: past the old 5 s, before nsqd's next PING.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let url = format!("http://{}/lookup?topic=stay", lookupd.http_address());
    let lookup: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(
        lookup["producers"].as_array().map(Vec::len),
        Some(1),
        "{lookup}"
    );
    assert_eq!(consumer.stats().connections(), 1, "still consuming");
    producer.publish("stay", body(2, 16)).await.unwrap();
    assert_eq!(
        number(recv(&mut messages, Duration::from_secs(5)).await.body()),
        2
    );
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn a_later_nsqd_is_picked_up_and_a_vanished_one_is_dropped() {
    init_logs();
    let lookupd = Nsqlookupd::start().await;
    let a = Nsqd::builder().lookupd(&lookupd).start().await;
    let pa = Producer::connect(&a.tcp_address(), producer_config()).unwrap();
    pa.publish("grow", body(1, 16)).await.unwrap();
    let (consumer, mut messages) =
        Consumer::new("grow", "c", lookupd_config(&[&lookupd], 10)).unwrap();
    recv(&mut messages, Duration::from_secs(5)).await.finish();
    assert_eq!(consumer.stats().connections(), 1);

    // A second nsqd registers the topic later.
    let mut b = Nsqd::builder().lookupd(&lookupd).start().await;
    let pb = Producer::connect(&b.tcp_address(), producer_config()).unwrap();
    pb.publish("grow", body(2, 16)).await.unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(number(m.body()), 2, "message from the second nsqd");
    m.finish();
    wait_until("two connections", Duration::from_secs(5), || async {
        consumer.stats().connections() == 2
    })
    .await;

    // b goes away for good: it unregisters from lookupd and the consumer drops it.
    pb.close().await;
    b.terminate();
    let b_addr = b.tcp_address();
    wait_until(
        "the vanished nsqd is dropped",
        Duration::from_secs(10),
        || {
            let gone = consumer.stats().nodes.iter().all(|n| n.addr != b_addr);
            async move { gone }
        },
    )
    .await;
    // Consumption from a goes on.
    pa.publish("grow", body(3, 16)).await.unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(number(m.body()), 3);
    m.finish();
    consumer.close().await;
    pa.close().await;
}

#[tokio::test]
async fn discovery_survives_losing_one_of_two_lookupds() {
    init_logs();
    let l1 = Nsqlookupd::start().await;
    let mut l2 = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&l1).lookupd(&l2).start().await;
    let p = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    p.publish("two_l", body(1, 16)).await.unwrap();
    let (consumer, mut messages) =
        Consumer::new("two_l", "c", lookupd_config(&[&l1, &l2], 10)).unwrap();
    recv(&mut messages, Duration::from_secs(5)).await.finish();
    l2.kill();
    let mut events = consumer.events();
    // Several poll rounds later, with one lookupd failing, the node is still in use.
    let mut failures = 0;
    while failures < 3 {
        if let Ok(Ok(nsq::Event::LookupFailed { .. })) =
            tokio::time::timeout(Duration::from_secs(5), events.recv()).await
        {
            failures += 1;
        }
    }
    assert_eq!(consumer.stats().connections(), 1);
    p.publish("two_l", body(2, 16)).await.unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(number(m.body()), 2);
    // Dropped unhandled: requeued and redelivered; close_and_requeue gives it back at close
    // instead of waiting for close_timeout.
    drop(m);
    let started = std::time::Instant::now();
    consumer.close_and_requeue(messages).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close took {:?}",
        started.elapsed()
    );
    p.close().await;
}

#[tokio::test]
async fn rdy_budget_holds_across_three_nsqd() {
    init_logs();
    let lookupd = Nsqlookupd::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Nsqd::builder().lookupd(&lookupd).start().await);
    }
    let per_node = 300u64;
    for (k, n) in nodes.iter().enumerate() {
        let p = Producer::connect(&n.tcp_address(), producer_config()).unwrap();
        let bodies = (0..per_node)
            .map(|i| body(k as u64 * 1000 + i, 32))
            .collect();
        p.multi_publish("rdy", bodies).await.unwrap();
        p.close().await;
    }
    let (consumer, mut messages) =
        Consumer::new("rdy", "c", lookupd_config(&[&lookupd], 10)).unwrap();

    // A slow handler keeps messages in flight; a watcher samples the consumer's RDY and
    // nsqd's /stats meanwhile.
    //
    // What is guaranteed, and so asserted: the RDY the consumer has given out sums to at most
    // max_in_flight (its planner's budget, read in one snapshot under its lock), and each
    // nsqd never has more in flight for it than that (one /stats read is one snapshot).
    // The sum of three /stats reads is not a snapshot, and nsqd may count a message the
    // client already finished (FIN not yet processed) while another nsqd sends the message
    // that FIN made room for: that sum is printed, not asserted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let addrs: Vec<String> = nodes.iter().map(|n| n.http_address()).collect();
        let stop = stop.clone();
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut max_sum, mut max_node, mut max_rdy, mut samples) = (0u64, 0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rdy: u64 = consumer
                    .stats()
                    .nodes
                    .iter()
                    .map(|n| u64::from(n.rdy))
                    .sum();
                max_rdy = max_rdy.max(rdy);
                let mut total = 0;
                for a in &addrs {
                    let s: serde_json::Value = client
                        .get(format!("http://{a}/stats?format=json&topic=rdy"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let mut node = 0;
                    for t in s["topics"].as_array().into_iter().flatten() {
                        for c in t["channels"].as_array().into_iter().flatten() {
                            node += c["in_flight_count"].as_u64().unwrap_or(0);
                        }
                    }
                    max_node = max_node.max(node);
                    total += node;
                }
                max_sum = max_sum.max(total);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (max_sum, max_node, max_rdy, samples)
        })
    };
    let mut seen = HashSet::new();
    while (seen.len() as u64) < 3 * per_node {
        let m = recv(&mut messages, Duration::from_secs(10)).await;
        seen.insert(number(m.body()));
        tokio::time::sleep(Duration::from_millis(2)).await;
        m.finish();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max_sum, max_node, max_rdy, samples) = watcher.await.unwrap();
    println!(
        "RDY: max given out {max_rdy}, max in flight on one nsqd {max_node}, max of the summed \
         /stats {max_sum} (max_in_flight 10), {samples} samples"
    );
    assert!(max_rdy <= 10, "RDY {max_rdy} given out > max_in_flight 10");
    assert!(
        max_node <= 10,
        "in flight on one nsqd {max_node} > max_in_flight 10"
    );
    assert!(max_sum >= 5, "the budget was used ({max_sum})");
    assert_eq!(consumer.stats().connections(), 3);
    consumer.close().await;
}

#[tokio::test]
async fn more_nsqd_than_max_in_flight_all_get_served() {
    init_logs();
    let lookupd = Nsqlookupd::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Nsqd::builder().lookupd(&lookupd).start().await);
    }
    for (k, n) in nodes.iter().enumerate() {
        let p = Producer::connect(&n.tcp_address(), producer_config()).unwrap();
        let bodies = (0..20).map(|i| body(k as u64 * 1000 + i, 32)).collect();
        p.multi_publish("starve", bodies).await.unwrap();
        p.close().await;
    }
    let mut config = lookupd_config(&[&lookupd], 1);
    config.rdy_redistribute_interval = Duration::from_millis(100);
    let (consumer, mut messages) = Consumer::new("starve", "c", config).unwrap();
    let mut seen = HashSet::new();
    while seen.len() < 60 {
        let m = recv(&mut messages, Duration::from_secs(10)).await;
        seen.insert(number(m.body()));
        m.finish();
    }
    for k in 0..3u64 {
        assert_eq!(
            seen.iter().filter(|n| **n / 1000 == k).count(),
            20,
            "node {k} served"
        );
    }
    consumer.close().await;
}

#[tokio::test]
async fn a_connected_nsqd_is_kept_while_a_restarted_lookupd_does_not_list_it_yet() {
    init_logs();
    let mut lookupd = Nsqlookupd::start().await;
    let nsqd = Nsqd::builder().lookupd(&lookupd).start().await;
    let p = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    p.publish("kept", body(1, 16)).await.unwrap();
    let (consumer, mut messages) =
        Consumer::new("kept", "c", lookupd_config(&[&lookupd], 10)).unwrap();
    recv(&mut messages, Duration::from_secs(5)).await.finish();

    // A fresh lookupd knows nothing until nsqd registers again (up to its 15 s ping).
    let mut events = consumer.events();
    lookupd.restart().await;
    let mut empty_rounds = 0;
    while empty_rounds < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(nsq::Event::Looked { nodes })) if nodes.is_empty() => empty_rounds += 1,
            Ok(Ok(nsq::Event::Looked { .. })) => break, // nsqd registered again already
            Ok(Ok(_)) => {}
            other => panic!("no lookup round: {other:?}"),
        }
    }
    // The healthy connection was not dropped meanwhile: messages keep coming.
    assert_eq!(
        consumer.stats().connections(),
        1,
        "after {empty_rounds} empty lookups"
    );
    p.publish("kept", body(2, 16)).await.unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(number(m.body()), 2);
    m.finish();
    consumer.close().await;
    p.close().await;
}
