//! # e2e — helpers for the end-to-end tests
//!
//! The tests in `tests/tests/` start real NSQ daemons through `nsq::testkit` and run the real
//! `sensor`, `worker` and `logger` binaries (built by `cargo test --workspace`) as child
//! processes, the way a user runs them. [`Service`] owns one such process: it captures its log
//! lines, waits for its `/health`, sends it SIGTERM or SIGKILL by PID, and kills it on drop.
//! [`wait_until`] (from the workspace's `test-support` crate) awaits a condition with a
//! deadline instead of sleeping; [`skip`] reports a test that cannot run here.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::missing_panics_doc
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use nsq::testkit::{free_port, Nsqadmin, Nsqd, Nsqlookupd};
pub use test_support::{skip, wait_until};

pub mod secure;

/// The channels the services read (topic, channel): created before the first message, so
/// that none misses one (NSQ copies a message only to the channels that exist).
pub const SUITE_CHANNELS: [(&str, &str); 4] = [
    ("sensor_data", "worker"),
    ("results", "logger"),
    ("sensor_status", "logger"),
    ("sensor_replay_unavailable", "logger"),
];

/// Creates [`SUITE_CHANNELS`] on `nsqd`.
pub async fn create_suite_channels(nsqd: &Nsqd) {
    for (topic, channel) in SUITE_CHANNELS {
        nsqd.create_channel(topic, channel).await;
    }
}

/// The directory holding the workspace's binaries (`target/debug`), found from the running
/// test executable (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// The path of a service binary; panics with what to do when it was not built.
pub fn service_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run the tests with `cargo test --workspace`, which builds the service binaries",
        path.display()
    );
    path
}

/// How long [`Service::wait_logged`] waits for lines a process has already printed to reach the
/// test: the reader threads are behind by milliseconds normally, by seconds at most on a loaded
/// 2-core machine (a thread not scheduled for that long would fail far more than this).
pub const LOG_LAG: Duration = Duration::from_secs(10);

/// A running service binary.
pub struct Service {
    /// `sensor`, `worker` or `logger`.
    pub name: String,
    /// Its HTTP address (`127.0.0.1:<port>`), given with `--http-address`.
    pub http: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    /// The threads copying stdout and stderr into `logs`; joined once the process exited,
    /// so that its last lines are there.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts `name` with `args` plus `--http-address 127.0.0.1:<free port>`.
    pub fn start(name: &str, args: &[String]) -> Service {
        let http = format!("127.0.0.1:{}", free_port());
        let mut all = args.to_vec();
        all.push(format!("--http-address={http}"));
        Self::start_raw(name, &all, &[], http)
    }

    /// Starts `name` with exactly `args` and extra environment variables. `http` is where the
    /// caller made it listen, for [`Service::wait_healthy`].
    pub fn start_raw(
        name: &str,
        args: &[String],
        env: &[(String, String)],
        http: String,
    ) -> Service {
        Self::start_program(name, &service_bin(name), args, env, http)
    }

    /// Starts any `program` (for example `ip netns exec <ns> <binary>`) as a service named
    /// `name`, with its output captured like the services'.
    pub fn start_program(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        http: String,
    ) -> Service {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().cloned())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("E2E_LOGS").is_some();
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = Arc::clone(&logs);
            let tag = name.to_string();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[{tag}] {line}");
                    }
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        Service {
            name: name.to_string(),
            http,
            child: Some(child),
            logs,
            readers,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Every line it printed so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// True when some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until every one of `needles` is in some log line; false if one is still missing
    /// after [`LOG_LAG`]. For a line the process has printed by the time the test looks (it
    /// answered `/health` after printing it, or it exited): the threads that read its output may
    /// not have got to it yet on a loaded machine.
    pub async fn wait_logged(&self, needles: &[&str]) -> bool {
        let deadline = Instant::now() + LOG_LAG;
        loop {
            if needles.iter().all(|n| self.logged(n)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `GET /health` answers 200.
    pub async fn wait_healthy(&mut self) {
        let url = format!("http://{}/health", self.http);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "{} exited before it was healthy: {status}\n{}",
                    self.name,
                    self.logs().join("\n")
                );
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy at {url}\n{}",
                self.name,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())?;
        // The pipes close with the process: the readers end after its last line.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Some(status)
    }

    /// Waits (polling, without blocking the runtime) for the exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        self.wait_exit(timeout).await
    }

    /// SIGSTOP: the process stops running, its connections open and unanswered, until
    /// [`Service::resume`].
    pub fn pause(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGSTOP);
    }

    /// SIGCONT after [`Service::pause`].
    pub fn resume(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGCONT);
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The JSON lines of a logger output file (a missing file reads as empty; a partial last
/// line, still being written, is left out).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Counts lines of a file cheaply (complete lines only).
pub fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// `--flag=value` helper.
pub fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}
