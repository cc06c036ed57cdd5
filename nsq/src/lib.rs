//! # nsq — the project's own NSQ client
//!
//! A client for NSQ's TCP protocol V2 with nsqlookupd discovery, written from the protocol
//! spec because no maintained Rust client keeps its promises (see this crate's README, "Why our
//! own client"). It is the only code in the project that knows the wire protocol.
//!
//! - [`Producer`]: `publish`, `multi_publish` (MPUB) and `deferred_publish` (DPUB) resolve
//!   only when nsqd answered. Publishes are pipelined on one connection and matched to
//!   responses in order. Bad input is rejected before it is sent. The connection is rebuilt
//!   forever with jittered, capped backoff; a publish whose answer was lost fails, it is never
//!   reported as sent.
//! - [`Consumer`]: one connection per nsqd, from fixed addresses and/or nsqlookupd polling
//!   (new nodes are connected, vanished ones dropped). RDY is spread so that the total in
//!   flight never exceeds `max_in_flight`. Each [`Message`] is finished, requeued or touched
//!   explicitly; dropped unhandled, it is requeued at once. Failures back off the go-nsq way.
//!   `close()` sends CLS and waits for in-flight messages.
//! - Both answer heartbeats, flush writes as soon as the writer is idle (no timer), report
//!   every connection change as an [`Event`], speak TLS with real certificate verification
//!   ([`TlsSettings`]) and AUTH.
//!
//! Module guide: `protocol` is the pure wire format (private: only the topic and channel
//! name rules are exported); `conn` opens and identifies a
//! connection; `producer` and `consumer` own the tasks; [`testkit`] (feature `testkit`)
//! starts real nsqd/nsqlookupd/nsqadmin for tests.

#![warn(missing_docs)]

pub mod backoff;
mod config;
mod conn;
mod consumer;
mod error;
mod events;
mod message;
mod producer;
mod protocol;
mod rdy;
#[cfg(test)]
mod test_alloc;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{
    check_tcp_address, hostname, lookupd_url, output_buffer_timeout_ms, ConnectionConfig,
    ConsumerConfig, ProducerConfig, TlsSettings, DEFAULT_OUTPUT_BUFFER_TIMEOUT,
};
pub use consumer::{Consumer, ConsumerStats, Messages, NodeStats};
pub use error::{ConfigError, ConnectError, InvalidInput, ProtocolError, PublishError};
pub use events::Event;
pub use message::Message;
pub use producer::{ConnectionState, Producer};
pub use protocol::{is_valid_channel_name, is_valid_topic_name};
