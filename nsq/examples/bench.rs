//! Client benchmark against one real nsqd, side by side with NSQ's own `bench_writer` and
//! `bench_reader` in the same run. Prints figures; asserts nothing.
//!
//! ```text
//! scripts/build-nsq.sh
//! cargo run --release -p nsq --example bench --features testkit [-- --seconds 5]
//! ```
//!
//! Phases (200-byte bodies): our PUB with a window of 1,000 publishes in flight; our MPUB with
//! batches of 100 (8 batches in flight); `bench_writer` (MPUB 200); our consumer with
//! max_in_flight 2,500 on what our MPUB phase wrote; `bench_reader` (RDY 2,500) on what
//! `bench_writer` wrote; then the latency of a lone confirmed PUB (sequential round trips).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nsq::testkit::{bin, Nsqd};
use nsq::{Consumer, ConsumerConfig, Producer, ProducerConfig};

const SIZE: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let run = Duration::from_secs(seconds);
    let nsqd = Nsqd::start().await;
    let addr = nsqd.tcp_address();
    println!(
        "nsqd v1.3.0 at {addr}, {} cores, {SIZE}-byte messages, {seconds} s per phase",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let body = Bytes::from(vec![b'x'; SIZE]);

    // PUB, window 1,000: with coalescing (the default) and without.
    let producer = Producer::connect(&addr, ProducerConfig::default())?;
    producer.publish("warmup", body.clone()).await?;
    let plain = Producer::connect(
        &addr,
        ProducerConfig {
            coalesce_pubs: false,
            ..Default::default()
        },
    )?;
    plain.publish("warmup", body.clone()).await?;
    let mut pub_rates = Vec::new();
    for p in [&producer, &plain] {
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let p = p.clone();
            let b = body.clone();
            let count = Arc::clone(&count);
            tasks.spawn(async move {
                while start.elapsed() < run {
                    if p.publish("bench_pub", b.clone()).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        pub_rates.push(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64());
    }
    plain.close().await;
    println!(
        "{:<44} {:>12.0} msg/s",
        "nsq-suite PUB (window 1,000, coalesced)", pub_rates[0]
    );
    println!(
        "{:<44} {:>12.0} msg/s",
        "nsq-suite PUB (window 1,000, one PUB each)", pub_rates[1]
    );

    // MPUB, batches of 100, 8 in flight.
    let mpub_rate = {
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let p = producer.clone();
            let batch: Vec<Bytes> = (0..100).map(|_| body.clone()).collect();
            let count = Arc::clone(&count);
            tasks.spawn(async move {
                while start.elapsed() < run {
                    if p.multi_publish("bench_mpub", batch.clone()).await.is_ok() {
                        count.fetch_add(100, Ordering::Relaxed);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    };
    println!(
        "{:<44} {:>12.0} msg/s",
        "nsq-suite MPUB (batch 100)", mpub_rate
    );

    let writer_rate = go_tool(
        "bench_writer",
        &[
            &format!("--nsqd-tcp-address={addr}"),
            "--topic=bench_go",
            // Twice the read phase, so that bench_reader never runs out of messages.
            &format!("--runfor={}s", 2 * seconds),
            &format!("--size={SIZE}"),
            "--batch-size=200",
        ],
    )?;
    println!(
        "{:<44} {:>12.0} msg/s",
        "NSQ bench_writer (MPUB 200)", writer_rate
    );

    // Consume with max_in_flight 2,500 from what MPUB wrote.
    let consume_rate = {
        let config = ConsumerConfig {
            nsqd_tcp_addresses: vec![addr.clone()],
            max_in_flight: 2500,
            ..Default::default()
        };
        let (consumer, mut messages) = Consumer::new("bench_mpub", "bench", config)?;
        let first = messages
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))?;
        first.finish();
        let start = Instant::now();
        let mut n = 0u64;
        let mut last = start;
        while start.elapsed() < run {
            match tokio::time::timeout(Duration::from_secs(1), messages.recv()).await {
                Ok(Some(m)) => {
                    m.finish();
                    n += 1;
                    last = Instant::now();
                }
                _ => break, // drained
            }
        }
        let close = tokio::spawn({
            let c = consumer.clone();
            async move { c.close().await }
        });
        while let Some(m) = messages.recv().await {
            m.finish();
        }
        close.await?;
        n as f64 / last.duration_since(start).as_secs_f64()
    };
    println!(
        "{:<44} {:>12.0} msg/s",
        "nsq-suite consume (max_in_flight 2,500)", consume_rate
    );

    let reader_rate = go_tool(
        "bench_reader",
        &[
            &format!("--nsqd-tcp-address={addr}"),
            "--topic=bench_go",
            "--channel=bench",
            &format!("--runfor={seconds}s"),
            &format!("--size={SIZE}"),
            "--rdy=2500",
        ],
    )?;
    println!(
        "{:<44} {:>12.0} msg/s",
        "NSQ bench_reader (RDY 2,500)", reader_rate
    );

    // Lone PUB round trips.
    let mut lat = hdrhistogram::Histogram::<u64>::new(3)?;
    for _ in 0..5000 {
        let t = Instant::now();
        producer.publish("bench_lone", body.clone()).await?;
        lat.record(t.elapsed().as_nanos() as u64)?;
    }
    println!(
        "{:<44} p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        "lone PUB round trip (5,000 sequential)",
        lat.value_at_quantile(0.5) as f64 / 1e3,
        lat.value_at_quantile(0.99) as f64 / 1e3,
        lat.max() as f64 / 1e3
    );
    println!();
    println!(
        "MPUB / bench_writer = {:.0} %, consume / bench_reader = {:.0} %",
        100.0 * mpub_rate / writer_rate,
        100.0 * consume_rate / reader_rate
    );
    producer.close().await;
    Ok(())
}

/// Runs one of NSQ's Go bench tools and returns the ops/s it reports.
fn go_tool(name: &str, args: &[&str]) -> anyhow::Result<f64> {
    let out = Command::new(bin(name)).args(args).output()?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // "... - 67.032mb/s - 351424.543ops/s - 2.846us/op"
    text.split(" - ")
        .find_map(|part| part.trim().strip_suffix("ops/s").map(|v| v.parse::<f64>()))
        .transpose()?
        .ok_or_else(|| anyhow::anyhow!("{name} printed no ops/s: {text}"))
}
