//! The client under faults, against real nsqd v1.3.0: nsqd restarts, a consumer killed with
//! messages in flight, dropped messages, bad input, nsqd absent at start-up, CLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nsq::testkit::{free_port, Nsqd};
use nsq::{Consumer, Event, InvalidInput, Producer, PublishError};

#[tokio::test]
async fn restart_nsqd_mid_stream_loses_no_confirmed_publish() {
    init_logs();
    let mut nsqd = Nsqd::start().await;
    let topic = "restart";
    nsqd.create_channel(topic, "c").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    let (consumer, mut messages) =
        Consumer::new(topic, "c", consumer_config(&[nsqd.tcp_address()], 100)).unwrap();
    let mut producer_events = producer.events();

    // Publisher: 20,000 publishes in windows of 100; records which were confirmed.
    let confirmed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let pub_task = {
        let producer = producer.clone();
        let confirmed = Arc::clone(&confirmed);
        let failed = Arc::clone(&failed);
        tokio::spawn(async move {
            let mut next = 0u64;
            while next < 20_000 {
                let mut set = tokio::task::JoinSet::new();
                for i in next..next + 100 {
                    let p = producer.clone();
                    set.spawn(async move { (i, p.publish("restart", body(i, 64)).await) });
                }
                next += 100;
                while let Some(Ok((i, r))) = set.join_next().await {
                    match r {
                        Ok(()) => confirmed.lock().unwrap().push(i),
                        Err(e) => {
                            assert!(e.is_transient(), "unexpected error: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Consume while it runs; restart nsqd once a third is through.
    let mut counts: HashMap<u64, u32> = HashMap::new();
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = pub_task.is_finished();
        if done {
            let want = confirmed.lock().unwrap().clone();
            if want.iter().all(|i| counts.contains_key(i)) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "did not converge");
        if !restarted && counts.len() > 6_000 {
            nsqd.terminate();
            nsqd.restart().await;
            restarted = true;
        }
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), messages.recv()).await
        {
            *counts.entry(number(m.body())).or_default() += 1;
            m.finish();
        }
    }
    pub_task.await.unwrap();
    assert!(restarted);
    let confirmed = confirmed.lock().unwrap().clone();
    let dups: u32 = counts.values().map(|c| c - 1).sum();
    println!(
        "restart: {} confirmed, {} failed (reported to caller), {} consumed distinct, {} duplicates",
        confirmed.len(),
        failed.load(Ordering::Relaxed),
        counts.len(),
        dups
    );
    for i in &confirmed {
        assert!(
            counts.contains_key(i),
            "confirmed publish {i} was never consumed"
        );
    }
    // A clean nsqd restart persists its queues, so redelivery is limited to what was in flight
    // to the consumer (at most max_in_flight) plus publishes whose OK was lost.
    assert!(
        dups <= 100 + failed.load(Ordering::Relaxed) as u32,
        "{dups} duplicates"
    );
    // Both sides saw the outage and came back without a process restart.
    let mut saw = (false, false);
    while let Ok(ev) = producer_events.try_recv() {
        match ev {
            Event::Disconnected { .. } => saw.0 = true,
            Event::Connected { .. } => saw.1 = true,
            _ => {}
        }
    }
    assert!(
        saw.0 && saw.1,
        "producer reported disconnect and reconnect: {saw:?}"
    );
    assert!(producer.is_connected());
    assert_eq!(consumer.stats().connections(), 1);
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn kill_9_consumer_holding_messages_redelivers_with_attempts_2() {
    init_logs();
    let nsqd = Nsqd::builder()
        .msg_timeout(Duration::from_secs(2))
        .start()
        .await;
    let topic = "killed";
    nsqd.create_channel(topic, "c").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    for i in 0..10 {
        producer.publish(topic, body(i, 32)).await.unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_nsq-hold"))
        .args([&nsqd.tcp_address(), topic, "c", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let held = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut n = 0;
        while n < 10 {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("held ") => n += 1,
                _ => break,
            }
        }
        n
    })
    .await
    .unwrap();
    assert_eq!(held, 10, "the holding consumer got all 10 messages");
    let stats = nsqd.channel_stats(topic, "c").await.unwrap();
    assert_eq!(stats["in_flight_count"], 10);

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (consumer, mut messages) =
        Consumer::new(topic, "c", consumer_config(&[nsqd.tcp_address()], 10)).unwrap();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 10 {
        let m = recv(&mut messages, Duration::from_secs(10)).await;
        assert_eq!(m.attempts(), 2, "redelivered after the crash");
        seen.insert(number(m.body()));
        m.finish();
    }
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn dropping_an_unfinished_message_requeues_it_at_once() {
    init_logs();
    // A long msg-timeout: redelivery within the test can only come from the REQ.
    let nsqd = Nsqd::builder()
        .msg_timeout(Duration::from_secs(300))
        .start()
        .await;
    let topic = "dropped";
    nsqd.create_channel(topic, "c").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    producer.publish(topic, body(7, 32)).await.unwrap();
    let (consumer, mut messages) =
        Consumer::new(topic, "c", consumer_config(&[nsqd.tcp_address()], 1)).unwrap();
    let m = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(m.attempts(), 1);
    let started = Instant::now();
    drop(m);
    let again = recv(&mut messages, Duration::from_secs(5)).await;
    assert_eq!(again.attempts(), 2);
    assert_eq!(number(again.body()), 7);
    println!("dropped message redelivered after {:?}", started.elapsed());
    let stats = nsqd.channel_stats(topic, "c").await.unwrap();
    assert_eq!(stats["requeue_count"], 1, "nsqd counted the REQ: {stats}");
    assert_eq!(
        stats["timeout_count"], 0,
        "nothing waited for msg-timeout: {stats}"
    );
    again.finish();
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn bad_input_is_rejected_before_sending_and_the_producer_keeps_working() {
    init_logs();
    let nsqd = Nsqd::builder().arg("--max-msg-size=1024").start().await;
    let mut config = producer_config();
    config.max_msg_size = 1024;
    let producer = Producer::connect(&nsqd.tcp_address(), config).unwrap();
    producer.publish("ok", &b"first"[..]).await.unwrap();

    let e = producer.publish("ok", &b""[..]).await.unwrap_err();
    assert!(
        matches!(e, PublishError::Invalid(InvalidInput::EmptyBody)),
        "{e}"
    );
    println!("empty body: {e}");
    let e = producer.publish("ok", vec![b'x'; 1025]).await.unwrap_err();
    assert!(
        matches!(
            e,
            PublishError::Invalid(InvalidInput::BodyTooLarge {
                size: 1025,
                max: 1024
            })
        ),
        "{e}"
    );
    println!("oversized body: {e}");
    let e = producer.publish("bad topic!", &b"x"[..]).await.unwrap_err();
    assert!(
        matches!(e, PublishError::Invalid(InvalidInput::TopicName(_))),
        "{e}"
    );
    println!("invalid topic: {e}");
    let e = producer.multi_publish("ok", vec![]).await.unwrap_err();
    assert!(
        matches!(e, PublishError::Invalid(InvalidInput::EmptyBatch)),
        "{e}"
    );
    assert!(!e.is_transient());

    producer.publish("ok", &b"after"[..]).await.unwrap();
    let topic = &nsqd.stats().await["topics"][0];
    assert_eq!(topic["topic_name"], "ok");
    assert_eq!(topic["message_count"], 2, "both valid publishes landed");
    // The connection never dropped.
    assert!(producer.is_connected());
    producer.close().await;
}

#[tokio::test]
async fn nsqd_down_at_start_up_then_both_sides_connect_when_it_appears() {
    init_logs();
    let (tcp, http) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{tcp}");
    let producer = Producer::connect(&addr, producer_config()).unwrap();
    let mut events = producer.events();
    let (consumer, mut messages) = Consumer::new(
        "late",
        "c",
        consumer_config(std::slice::from_ref(&addr), 10),
    )
    .unwrap();

    // The producer reports failed attempts and keeps retrying.
    let mut attempts = 0;
    while attempts < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(Event::Reconnecting { .. })) => attempts += 1,
            Ok(Ok(_)) => {}
            other => panic!("expected reconnect attempts, got {other:?}"),
        }
    }
    assert!(!producer.is_connected());

    let publish = {
        let p = producer.clone();
        tokio::spawn(async move { p.publish("late", body(1, 16)).await })
    };
    let _nsqd = Nsqd::builder().ports(tcp, http).start().await;
    publish.await.unwrap().unwrap();
    let m = recv(&mut messages, Duration::from_secs(10)).await;
    assert_eq!(number(m.body()), 1);
    m.finish();
    consumer.close().await;
    producer.close().await;
}

#[tokio::test]
async fn close_sends_cls_and_leaves_nothing_in_flight() {
    init_logs();
    // msg-timeout 60 s: if close() left messages in flight, nsqd would show them.
    let nsqd = Nsqd::builder()
        .msg_timeout(Duration::from_secs(60))
        .start()
        .await;
    let topic = "cls";
    nsqd.create_channel(topic, "c").await;
    let producer = Producer::connect(&nsqd.tcp_address(), producer_config()).unwrap();
    for batch in 0..50u64 {
        let bodies = (0..100).map(|i| body(batch * 100 + i, 32)).collect();
        producer.multi_publish(topic, bodies).await.unwrap();
    }
    let (consumer, mut messages) =
        Consumer::new(topic, "c", consumer_config(&[nsqd.tcp_address()], 50)).unwrap();
    // Handle a few hundred, with a slow handler so that messages are in flight at close.
    let mut handled = 0;
    while handled < 300 {
        let m = recv(&mut messages, Duration::from_secs(5)).await;
        m.finish();
        handled += 1;
    }
    // The test now stops taking messages, so nsqd fills the consumer's RDY (50) and they stay
    // in flight. One /stats read right after the loop could see 0 on a loaded machine: the
    // loop above finishes each message as it arrives, so while nsqd is the slower side it
    // has nothing outstanding between two sends. 10 s is far more than nsqd needs to send 50.
    wait_until(
        "messages in flight before close",
        Duration::from_secs(10),
        || async {
            nsqd.channel_stats(topic, "c").await.unwrap()["in_flight_count"]
                .as_u64()
                .is_some_and(|n| n > 0)
        },
    )
    .await;
    let started = Instant::now();
    let closer = {
        let c = consumer.clone();
        tokio::spawn(async move { c.close().await })
    };
    // Keep handling what is still delivered until the stream ends.
    while let Some(m) = messages.recv().await {
        tokio::time::sleep(Duration::from_millis(1)).await; // a handler doing work
        m.finish();
        handled += 1;
    }
    closer.await.unwrap();
    let took = started.elapsed();
    println!("close took {took:?}; {handled} handled in total");
    assert!(took < Duration::from_secs(10), "close waited {took:?}");
    // nsqd handles our FINs before it sees the connection end, so once the client is gone
    // every count is final.
    wait_until(
        "nsqd saw the client leave",
        Duration::from_secs(5),
        || async { nsqd.channel_stats(topic, "c").await.unwrap()["client_count"] == 0 },
    )
    .await;
    let stats = nsqd.channel_stats(topic, "c").await.unwrap();
    assert_eq!(stats["in_flight_count"], 0, "{stats}");
    assert_eq!(
        stats["requeue_count"], 0,
        "nothing handed out was left unfinished: {stats}"
    );
    assert_eq!(stats["timeout_count"], 0, "{stats}");
    assert_eq!(stats["client_count"], 0, "{stats}");
    assert_eq!(
        stats["depth"].as_u64().unwrap() + handled,
        5000,
        "every message is either finished or back in the queue"
    );
    producer.close().await;
}

/// `Producer::connect_any` follows a changing set: it waits while the set is empty, skips an
/// address that refuses connections for the next one, and after its nsqd dies moves to an
/// address of the set as it is then. Every publish that succeeded is on one of the nsqd.
#[tokio::test]
async fn connect_any_moves_to_a_listed_nsqd() {
    init_logs();
    let mut n1 = Nsqd::start().await;
    let n2 = Nsqd::start().await;
    for n in [&n1, &n2] {
        n.create_channel("any", "c").await;
    }
    // A port nobody listens on: the first address refuses connections.
    let dead = format!("127.0.0.1:{}", free_port());
    let (set, addrs) = tokio::sync::watch::channel(Vec::<String>::new());
    let producer = Producer::connect_any(addrs, producer_config()).unwrap();
    assert_eq!(producer.addr(), "", "no address yet");
    set.send_replace(vec![dead.clone(), n1.tcp_address()]);
    producer.publish("any", &b"one"[..]).await.unwrap();
    assert_eq!(producer.addr(), n1.tcp_address());
    let (_c1, mut m1) =
        Consumer::new("any", "c", consumer_config(&[n1.tcp_address()], 10)).unwrap();
    assert_eq!(
        recv(&mut m1, Duration::from_secs(20)).await.body().as_ref(),
        b"one"
    );

    // nsqd 1 dies and the set now lists nsqd 2 only.
    set.send_replace(vec![n2.tcp_address()]);
    n1.kill();
    let (_c2, mut m2) =
        Consumer::new("any", "c", consumer_config(&[n2.tcp_address()], 10)).unwrap();
    // The publish that meets the dead connection may fail (ConnectionLost): publish until
    // one succeeds. 30 s: the reconnect backoff is capped (see producer_config), so the
    // producer reaches nsqd 2 in a few seconds even on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match producer.publish("any", &b"two"[..]).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "not republished in 30 s: {e}"),
        }
    }
    assert_eq!(producer.addr(), n2.tcp_address());
    assert_eq!(
        recv(&mut m2, Duration::from_secs(20)).await.body().as_ref(),
        b"two"
    );
    producer.close().await;
}
