//! The sensor: takes readings and publishes them to NSQ, keeping a replayable history.
//!
//! # What it does
//!
//! Every `1/--rate` seconds (or as fast as nsqd confirms, with `--rate 0`) the sensor takes a
//! [`messages::SensorReading`] with `--values` random `u32`s, identified by
//! `(sensor_id, epoch, seq)`: the epoch is the Unix time in milliseconds at start-up, new at
//! every start, and seq counts from 1 within it. Each reading goes
//!
//! 1. into the [`History`](history::History) (the last `--history` readings), served by
//!    `GET /readings` and, later, used to answer replay requests;
//! 2. into the [`Outbox`](outbox::Outbox), from which it is published to `--topic` (PUB, or
//!    MPUB batches of up to 200 with several in flight). It leaves the outbox only when nsqd
//!    confirmed it. A publish that fails in a way that may pass (connection lost, timeout) is
//!    retried with a growing pause; when the outbox is full (nsqd away for long) the oldest
//!    readings are dropped, counted and logged.
//!
//! Every `--status-interval`, and once more at shutdown with `final = true`, the sensor
//! announces its latest seq as a [`messages::SensorStatus`] on `--status-topic`, so that the
//! logger can tell readings lost at the tail of an epoch. The periodic announcements carry
//! the highest seq nsqd confirmed; the final one carries the last seq taken, so that readings
//! that could not be flushed are visibly missing rather than silently absent.
//!
//! It answers the loggers' [`messages::ReplayRequest`]s ([`replay`]): on its own ephemeral
//! channel of `--replay-topic` it receives every request, and re-publishes the readings of its
//! epoch that the history still holds, unchanged, to `--topic`; for those no longer held it
//! publishes a [`messages::ReplayUnavailable`], so that the logger reports them lost instead
//! of asking forever.
//!
//! With `--count N` the sensor stops once all N readings are confirmed (exit 0), or fails
//! (exit 1) if some could not be. Before it stops, it announces its final seq and keeps
//! answering replay requests until a logger announces the epoch complete ([`complete`]), at
//! most `--linger` (30 s; 0: stop at once), or until SIGTERM. On SIGTERM/SIGINT it stops taking readings, flushes the
//! outbox for at most `--flush-timeout`, reports what it could not flush, and exits 0.
//!
//! # Modules
//!
//! * [`config`]: the settings ([`Config`], one typed field each) and the command line
//!   ([`Cli`]), filled from flags, environment and file;
//! * [`startup`]: [`Application::build`] and [`Application::run_until_stopped`];
//! * [`engine`]: the loop that takes, publishes and retries, and its [`Report`];
//! * [`replay`]: answering replay requests from the history;
//! * [`complete`]: the loggers' announcements that an epoch is complete;
//! * [`outbox`], [`history`], [`pacer`]: the data structures it uses, free of I/O;
//! * [`http`]: `GET /readings`; the common `/health`, `/ready` and `/metrics` come from
//!   `suite_common`;
//! * [`metrics`]: the names of the Prometheus metrics.
//!
//! # Running it in-process
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use suite_common::service::Service as _; // http_addr
//! let config = sensor::Config {
//!     nsqd_tcp_address: Some("127.0.0.1:4150".parse()?),
//!     count: Some(100),
//!     http_address: "127.0.0.1:0".parse()?,
//!     ..sensor::Config::default()
//! };
//! let app = sensor::Application::build(config).await?;
//! println!("HTTP on {}", app.http_addr());
//! let report = app.run_until_stopped(std::future::pending()).await?;
//! assert_eq!(report.confirmed, 100);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod complete;
pub mod config;
pub mod engine;
pub mod history;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod pacer;
pub mod replay;
pub mod startup;

pub use config::{Cli, Config};
pub use engine::{Report, StopReason};
pub use startup::Application;
