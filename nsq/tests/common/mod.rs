//! Helpers shared by the client's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nsq::{ConsumerConfig, Messages, ProducerConfig};

/// Test logs go to the test output only when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Fast reconnects for tests.
pub fn producer_config() -> ProducerConfig {
    let mut c = ProducerConfig::default();
    c.connection.reconnect_initial = Duration::from_millis(50);
    c.connection.reconnect_max = Duration::from_millis(500);
    c
}

/// A consumer on fixed nsqd addresses with fast reconnects.
pub fn consumer_config(nsqd: &[String], max_in_flight: u32) -> ConsumerConfig {
    let mut c = ConsumerConfig {
        nsqd_tcp_addresses: nsqd.to_vec(),
        max_in_flight,
        lookupd_poll_interval: Duration::from_millis(300),
        ..Default::default()
    };
    c.connection.reconnect_initial = Duration::from_millis(50);
    c.connection.reconnect_max = Duration::from_millis(500);
    c
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes; panics with `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message within `timeout`, or panic.
pub async fn recv(messages: &mut Messages, timeout: Duration) -> nsq::Message {
    match tokio::time::timeout(timeout, messages.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("consumer ended"),
        Err(_) => panic!("no message within {timeout:?}"),
    }
}

/// A numbered body: `msg-<n>` padded to `size` bytes.
pub fn body(n: u64, size: usize) -> Bytes {
    let mut s = format!("msg-{n:010}-");
    while s.len() < size {
        s.push('x');
    }
    Bytes::from(s)
}

/// The number in a body made by [`body`].
pub fn number(body: &[u8]) -> u64 {
    std::str::from_utf8(&body[4..14])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered body: {:?}", String::from_utf8_lossy(body)))
}
