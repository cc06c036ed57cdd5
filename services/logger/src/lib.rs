//! The logger: appends each `WorkResult` exactly once to a JSON-lines log.
//!
//! # What it does
//!
//! The logger consumes `--topic` (default `results`) on `--channel` (default `logger`) from
//! every nsqd it is given or finds through nsqlookupd, and appends one JSON object per result
//! to `--output` (or stdout): see [`line`](mod@line) for the format. It writes in batches (whatever has
//! arrived, up to `--max-in-flight`), flushes each batch (and `fsync`s it with `--fsync`), and
//! only then finishes the batch's messages: a crash before that gets them delivered again.
//!
//! NSQ delivers at least once, so the logger is idempotent: a result whose
//! `(sensor_id, epoch, seq)` is already in the output is finished without being written
//! again, and counted. That knowledge ([`seen::Seen`]) is derived from the output files,
//! rebuilt at every start ([`output::Output::open_with`]) from the state file ([`state`])
//! and the current file, so the files and the state cannot disagree, even after `kill -9`
//! between a write and its FINs. An incomplete last line left by a crash is cut off with a
//! warning (its message was never finished).
//!
//! The output rotates (`--rotate-size`, `--rotate-interval`) into closed files whose names
//! sort by time, gzipped with `--rotate-gzip` ([`rotation`]).
//!
//! It notices readings that never arrived ([`gaps`]): a seq still missing `--gap-grace` after
//! a later one, or after the sensor announced a higher last seq, is asked for again with a
//! [`messages::ReplayRequest`] ([`replay`]), with a growing pause, a bounded number of times.
//! What the sensor answers as no longer in its history, or never answers, is lost: it goes
//! into a durable loss list ([`lost`]), a WARN log and `nsq_suite_readings_lost_total`, and
//! `GET /gaps` shows it. A loss is never silent.
//!
//! It also keeps per-worker counts over a sliding window ([`workers`]): `GET /workers`, and a
//! summary log line every `--summary-interval`, e.g. `3 workers, 33% / 34% / 33%, 1200
//! results/s`, which makes NSQ's load balancing visible.
//!
//! On SIGTERM/SIGINT the logger closes its consumer with CLS, writes and finishes what is in
//! flight, and exits 0.
//!
//! # Modules
//!
//! * [`config`]: the settings ([`Config`], one typed field each) and the command line
//!   ([`Cli`]), filled from flags, environment and file;
//! * [`startup`]: [`Application::build`] and [`Application::run_until_stopped`];
//! * [`sink`]: what happens to a batch of messages;
//! * [`output`]: the output file, its rebuild and its failure handling;
//! * [`rotation`], [`state`]: the names of the rotated files, gzip, and the state file that
//!   makes a restart read only the current file;
//! * [`replay`]: the status and unavailable consumers, the replay requests, the losses;
//! * [`lost`]: the loss list file;
//! * [`line`](mod@line), [`seen`], [`gaps`], [`workers`]: the line format, the
//!   de-duplication set, the gap tracker and the per-worker window, free of I/O;
//! * [`metrics`]: the names of the Prometheus metrics.
//!
//! # Running it in-process
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use suite_common::service::Service as _; // http_addr
//! let mut config = logger::Config {
//!     output: Some("results.jsonl".into()),
//!     http_address: "127.0.0.1:0".parse()?,
//!     ..logger::Config::default()
//! };
//! config.consumer.nsqd_tcp_address = vec!["127.0.0.1:4150".parse()?];
//! let app = logger::Application::build(config).await?;
//! println!("{} readings already in the output", app.seen().len());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let run = tokio::spawn(app.run_until_stopped(async move { let _ = stopped.await; }));
//! // ... later:
//! let _ = stop.send(());
//! run.await??;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod channels;
pub mod config;
pub mod gaps;
pub mod jsonl;
pub mod line;
pub mod lost;
pub mod metrics;
pub mod output;
pub mod replay;
pub mod rotation;
pub mod seen;
pub mod sink;
pub mod startup;
pub mod state;
pub mod workers;

pub use config::{Cli, Config};
pub use startup::Application;
