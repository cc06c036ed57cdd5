//! Plumbing shared by the nsq-suite services (sensor, worker, logger), and nothing else.
//!
//! This crate knows how a service *runs*: its flags and configuration, its logs, its HTTP
//! port, its shutdown, its exit code. It knows nothing of what a service *does*: no message
//! type, no topic it uses, no NSQ protocol (those live in the `messages` and `nsq` crates and
//! in the services themselves); of NSQ it knows only the shape of the settings (topic and
//! channel names, addresses, the consumer's settings). Keeping it that way keeps it from
//! becoming the shared library every service has to upgrade in lockstep.
//!
//! # Modules, in the order a `main` uses them
//!
//! * [`cli`]: [`CommonArgs`](cli::CommonArgs) (`--config`, `--print-config`), the shared
//!   groups of settings [`LogArgs`](cli::LogArgs) and [`ConsumerArgs`](cli::ConsumerArgs),
//!   the `healthcheck` subcommand, and [`ServiceCli`](cli::ServiceCli), which parses.
//! * [`config`]: fills the service's settings struct from flags > environment > TOML file >
//!   defaults, rejecting unknown environment variables and file keys; prints the settings
//!   with secrets redacted.
//! * [`setting`] and [`addr`]: the types of settings (durations, topic and channel names,
//!   `host:port` and nsqlookupd addresses), which validate while they parse.
//! * [`telemetry`]: installs the `tracing` subscriber (text or JSON, `RUST_LOG` wins).
//! * [`http`]: binds the HTTP port, serves `/health`, `/ready` (from a
//!   [`Readiness`](http::Readiness) handle) and `/metrics` (Prometheus) plus the service's
//!   own routes; [`sample_consumer`](http::sample_consumer) keeps a consuming service's
//!   `/ready` and connection gauges current.
//! * [`body`]: reads an HTTP answer (from nsqlookupd, Consul, ...) up to a cap.
//! * [`nsq_metrics`]: the names and help of the metrics every NSQ consumer and connection
//!   of the suite has.
//! * [`shutdown`]: a [`CancellationToken`](shutdown::CancellationToken) cancelled on SIGTERM
//!   or SIGINT, and the single-threaded [`runtime`](shutdown::runtime) the services run on.
//! * [`consul`]: optional service discovery: registration with a check on `/ready`, and the
//!   nsqlookupd and nsqd addresses found by name ([`ConsulArgs`](consul::ConsulArgs)).
//! * [`healthcheck`]: the blocking probe behind `<service> healthcheck`, for images without
//!   curl.
//! * [`service`]: [`main`](service::main), the whole `main` of a service (parse, then print
//!   the settings, probe, or run until a signal), and [`Base`](service::Base), the start of
//!   every service's `build` (start-up log line, metrics, readiness, HTTP port).
//! * [`exit`]: maps the outcome to an exit code (0, 1 runtime failure, 2 usage error) and
//!   prints `error: ...`.
//!
//! # A service's `main`
//!
//! `examples/minimal_service.rs` is a complete service without the NSQ part; every service
//! of the suite follows its shape:
//!
//! ```no_run
#![doc = include_str!("../examples/minimal_service.rs")]
//! ```

#![warn(missing_docs)]

pub mod addr;
pub mod body;
pub mod cli;
pub mod config;
pub mod consul;
pub mod exit;
pub mod healthcheck;
pub mod http;
pub mod log_limit;
pub mod nsq_metrics;
pub mod security;
pub mod service;
pub mod setting;
pub mod shutdown;
pub mod telemetry;

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before 1970): the time stamps
/// of the messages (`taken_at`, `computed_at`, ...).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
