//! Helpers shared by the client's integration tests; `init_logs` and `wait_until` come from
//! the workspace's `test-support` crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use nsq::{ConsumerConfig, Messages, ProducerConfig};
// Not every test file uses both (this module is compiled into each one).
#[allow(unused_imports)]
pub use test_support::{init_logs, wait_until};

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
