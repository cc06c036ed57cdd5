//! The worker: turns each `SensorReading` into a `WorkResult`, and gives up on nothing
//! silently.
//!
//! # What it does
//!
//! The worker consumes `--topic` (default `sensor_data`) on `--channel` (default `worker`)
//! from every nsqd it is given (`--nsqd-tcp-address`) or finds through nsqlookupd
//! (`--lookupd-http-address`). Replicas on the same channel share the messages: that is
//! NSQ's load balancing, nothing in the worker knows about the others.
//!
//! For each reading it waits `--work-ms` (a simulated cost), computes the squares of the
//! values ([`process::compute`]) and publishes a `WorkResult` to `--destination-topic` on
//! `--destination-nsqd-tcp-address`. The reading is finished (FIN) only after nsqd confirmed
//! the result: a crash before that gets the reading delivered again (at-least-once; the
//! logger removes the duplicates). Messages are handled concurrently, up to
//! `--max-in-flight`.
//!
//! What cannot be handled goes to the dead-letter topic (`--dead-letter-topic`, default
//! `<topic>.dead`) as a `DeadLetter` envelope with the original bytes and the reason, and is
//! then finished: bodies that do not decode (at once, never retried), and messages delivered
//! more than `--max-attempts` times. A failure that may pass (the results nsqd is away) is
//! requeued with a growing delay. The table in [`handler`] lists every case.
//!
//! Stale readings (older than `--max-age`, off by default) follow `--stale-policy`: `flag`
//! (the default) processes them and sets `stale = true` in the result; `drop` finishes them
//! without a result, counted in `nsq_suite_stale_readings_total` and logged.
//!
//! On SIGTERM/SIGINT the worker closes its consumer with CLS, keeps handling what is in
//! flight until each message is finished or requeued, closes its producer and exits 0.
//!
//! # Modules
//!
//! * [`config`]: the settings ([`Config`], one typed field each) and the command line
//!   ([`Cli`]), filled from flags, environment and file;
//! * [`startup`]: [`Application::build`] and [`Application::run_until_stopped`];
//! * [`handler`]: what happens to one message;
//! * [`process`]: the computation and envelopes, free of I/O;
//! * [`metrics`]: the names of the Prometheus metrics.
//!
//! # Running it in-process
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use suite_common::service::Service as _; // http_addr
//! let mut config = worker::Config {
//!     http_address: "127.0.0.1:0".parse()?,
//!     ..worker::Config::default()
//! };
//! config.consumer.nsqd_tcp_address = vec!["127.0.0.1:4150".parse()?];
//! let app = worker::Application::build(config).await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let run = tokio::spawn(app.run_until_stopped(async move { let _ = stopped.await; }));
//! // ... later:
//! let _ = stop.send(());
//! run.await??;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod handler;
pub mod metrics;
pub mod process;
pub mod startup;

pub use config::{Cli, Config, StalePolicy};
pub use startup::Application;
