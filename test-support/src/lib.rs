//! # test-support — helpers shared by the workspace's tests (dev-only, never published)
//!
//! Every service's `tests/*.rs`, the client's `nsq/tests/` and the end-to-end crate `e2e`
//! used to carry their own copy of these:
//!
//! - [`wait_until`] awaits a condition with a deadline instead of sleeping;
//! - [`consume`] reads `n` messages of a topic from a real nsqd and FINs them;
//! - [`init_logs`] sends the tests' own logs to the test output when `RUST_LOG` is set;
//! - [`run_bin`] runs a binary with a clean environment (the command-line tests), and
//!   [`cli`] holds the command-line checks every service repeats;
//! - [`spawn_service`] builds and runs a service in the test's runtime, as its `main` does;
//! - [`consul::ConsulAgent`] runs a real Consul dev agent (the pinned v1.13.9);
//! - [`skip`] makes a test that cannot run here say so, in its output and in
//!   `scripts/test.sh`'s summary.
//!
//! `nsq`'s own integration tests use this crate too: it depends on `nsq` and `nsq` has it as a
//! dev-dependency only, which cargo allows (the tests link the one `nsq` library).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::ffi::OsStr;
use std::future::Future;
use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nsq::testkit::Nsqd;

pub mod consul;

/// How often [`wait_until`] polls.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it is true; panics with `what` after `timeout`.
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
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Test logs go to the test output (captured per test) only when `RUST_LOG` is set, with
/// `RUST_LOG` as the filter. Safe to call from every test: the first call installs it.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Consumes `n` messages of `topic` on `channel` of `nsqd` (FINs them), decoding each with
/// `decode`. Panics when 10 s pass without the next message.
pub async fn consume<T>(
    nsqd: &Nsqd,
    topic: &str,
    channel: &str,
    n: usize,
    decode: impl Fn(&[u8]) -> T,
) -> Vec<T> {
    let config = nsq::ConsumerConfig {
        nsqd_tcp_addresses: vec![nsqd.tcp_address()],
        max_in_flight: 1000,
        ..nsq::ConsumerConfig::default()
    };
    let (consumer, mut messages) = nsq::Consumer::new(topic, channel, config).unwrap();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages on {topic}", out.len()))
            .unwrap();
        out.push(decode(msg.body()));
        msg.finish();
    }
    consumer.close().await;
    out
}

/// Runs the binary `bin` to its end with `args` and a clean environment plus `env`, the
/// way the command-line tests see it: no `RUST_LOG`, no stray `SENSOR_…` from the shell.
pub fn run_bin(bin: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = bin.as_ref();
    Command::new(bin)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.to_string_lossy()))
}

/// The command-line checks each service's binary gets.
pub mod cli {
    /// Runs `bin --config <a file holding file_toml> args... --print-config` with `env`,
    /// checks that it succeeds, and returns the settings it printed.
    pub fn print_config(
        bin: &str,
        file_toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> toml::Table {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("settings.toml");
        std::fs::write(&file, file_toml).unwrap();
        let mut all = vec!["--config", file.to_str().unwrap()];
        all.extend_from_slice(args);
        all.push("--print-config");
        let out = super::run_bin(bin, &all, env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().parse().unwrap()
    }

    use super::run_bin;

    /// `--help` exits 0 and its text contains every one of `needles`.
    pub fn help_mentions(bin: &str, needles: &[&str]) {
        let out = run_bin(bin, &["--help"], &[]);
        assert!(out.status.success(), "{bin} --help: {}", out.status);
        let help = String::from_utf8(out.stdout).unwrap();
        for needle in needles {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }

    /// `healthcheck` against a port where nothing listens exits 1.
    pub fn healthcheck_fails_when_nothing_listens(bin: &str) {
        let port = nsq::testkit::free_port();
        let out = run_bin(
            bin,
            &[
                "healthcheck",
                "--http-address",
                &format!("127.0.0.1:{port}"),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(1));
    }

    /// Running with `args` and `env` exits 2 (a configuration error), and when `message` is
    /// given, stderr contains it.
    pub fn exits_2(bin: &str, args: &[&str], env: &[(&str, &str)], message: Option<&str>) {
        let out = run_bin(bin, args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        if let Some(message) = message {
            assert!(stderr.contains(message), "{stderr}");
        }
    }
}

/// The environment variable naming the file where [`skip`] records a skipped test;
/// `scripts/test.sh` sets it and lists the file's lines at the end of its run.
pub const SKIPS_FILE_ENV: &str = "NSQ_SUITE_SKIPS_FILE";

/// Reports that `test` did not run here because of `reason`: a `SKIPPED` line on stderr
/// (the test harness captures it for a passing test; `--nocapture` shows it), and the same
/// line appended to the file named by [`SKIPS_FILE_ENV`] when that is set, which
/// `scripts/test.sh` (and so `.ci/run`) prints in its summary. The caller then returns: the
/// test passes, but visibly did not check anything.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIPS_FILE_ENV) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            eprintln!(
                "cannot record the skip in {} ({SKIPS_FILE_ENV}): {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// Builds the service `S` from `config` and runs it on the test's runtime, as its `main`
/// does. Returns its HTTP base URL (`http://host:port`), the sender that stops it (as SIGTERM
/// would) and the run's handle.
pub async fn spawn_service<S: suite_common::service::Service + 'static>(
    config: S::Config,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = S::build(config).await.unwrap();
    let base = format!("http://{}", app.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (base, stop, run)
}
