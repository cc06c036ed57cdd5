//! Real NSQ daemons for tests (feature `testkit`).
//!
//! Starts `nsqlookupd`, `nsqd` and `nsqadmin` v1.3.0, built by `scripts/build-nsq.sh` into
//! `.nsq-bin/` (or `$NSQ_BIN_DIR`), on free loopback ports with a temporary data directory.
//! Each start waits until the daemon answers `/ping`. Dropping a handle kills the process it
//! started (by its PID) and removes its data directory.
//!
//! ```no_run
//! # async fn f() {
//! let lookupd = nsq::testkit::Nsqlookupd::start().await;
//! let nsqd = nsq::testkit::Nsqd::builder().lookupd(&lookupd).start().await;
//! println!("nsqd at {}", nsqd.tcp_address());
//! # }
//! ```
//!
//! Failures here are test-setup failures and panic with a message that says what to do.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the pinned NSQ binaries are: `$NSQ_BIN_DIR`, else `<repo>/.nsq-bin`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("NSQ_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(|p| p.join(".nsq-bin"))
            .unwrap_or_else(|| PathBuf::from(".nsq-bin")),
    }
}

/// The path of one NSQ binary; panics with instructions when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "NSQ binary {} not found: run scripts/build-nsq.sh first (it builds NSQ v1.3.0 into .nsq-bin/)",
            path.display()
        );
    }
    path
}

static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that is free now and not handed out before by this process.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A started daemon process, killed on drop.
struct Proc {
    name: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[String]) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args).stdin(Stdio::null());
        if std::env::var_os("NSQ_TEST_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name,
            child: Some(child),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn signal(&mut self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits for the process to exit (after a signal), up to `timeout`, then kills it.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                eprintln!("{} did not exit in {timeout:?}: killing it", self.name);
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_ping(proc_: &mut Proc, http: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    let url = format!("http://{http}/ping");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = proc_.exited() {
            return Err(format!("{} exited during start-up: {status}", proc_.name));
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not answer {url} within 15 s", proc_.name));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running nsqlookupd on loopback.
pub struct Nsqlookupd {
    proc_: Proc,
    tcp_port: u16,
    http_port: u16,
}

impl Nsqlookupd {
    /// Starts one on free ports and waits for `/ping`.
    pub async fn start() -> Nsqlookupd {
        let mut last = String::new();
        for _ in 0..3 {
            let (tcp_port, http_port) = (free_port(), free_port());
            let mut l = Nsqlookupd {
                proc_: Proc {
                    name: "nsqlookupd",
                    child: None,
                },
                tcp_port,
                http_port,
            };
            l.proc_ = Proc::spawn("nsqlookupd", &l.args());
            let http = l.http_address();
            match wait_ping(&mut l.proc_, &http).await {
                Ok(()) => return l,
                Err(e) => last = e,
            }
        }
        panic!("nsqlookupd did not start: {last}");
    }

    fn args(&self) -> Vec<String> {
        vec![
            format!("--tcp-address=127.0.0.1:{}", self.tcp_port),
            format!("--http-address=127.0.0.1:{}", self.http_port),
            "--broadcast-address=127.0.0.1".into(),
            // Longer than nsqd's lookupd PING period (15 s, fixed): with less, a live nsqd
            // drops out of /lookup between two pings. An nsqd that exits or is killed is
            // unregistered at once anyway (its connection closes).
            "--inactive-producer-timeout=60s".into(),
        ]
    }

    /// `127.0.0.1:<tcp port>`, for nsqd's `--lookupd-tcp-address`.
    pub fn tcp_address(&self) -> String {
        format!("127.0.0.1:{}", self.tcp_port)
    }

    /// `127.0.0.1:<http port>`, for consumers' `--lookupd-http-address`.
    pub fn http_address(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The process ID.
    pub fn pid(&self) -> Option<u32> {
        self.proc_.pid()
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        self.proc_.signal(Signal::SIGKILL);
        self.proc_.wait(Duration::from_secs(5));
    }

    /// Kills it and starts a fresh one (empty registry) on the same ports.
    pub async fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..50 {
            self.proc_ = Proc::spawn("nsqlookupd", &self.args());
            let http = self.http_address();
            match wait_ping(&mut self.proc_, &http).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nsqlookupd did not restart: {last}");
    }
}

/// The nsqd flags every configuration shipped with the suite sets (Procfile,
/// docker-compose.yml, the benchmark, and every nsqd this testkit starts unless told
/// otherwise): let consumers ask for a 1 ms output-buffer timeout, which the services do by
/// default ([`crate::DEFAULT_OUTPUT_BUFFER_TIMEOUT`]). nsqd's own minimum is 25 ms.
pub const SHIPPED_NSQD_ARGS: &[&str] = &["--min-output-buffer-timeout=1ms"];

/// Options for an nsqd.
#[derive(Default, Clone)]
pub struct NsqdBuilder {
    ports: Option<(u16, u16)>,
    lookupd_tcp: Vec<String>,
    msg_timeout: Option<Duration>,
    extra: Vec<String>,
    /// Leave out [`SHIPPED_NSQD_ARGS`]: nsqd on NSQ's own defaults.
    stock: bool,
}

impl NsqdBuilder {
    /// Registers with this lookupd.
    pub fn lookupd(mut self, l: &Nsqlookupd) -> Self {
        self.lookupd_tcp.push(l.tcp_address());
        self
    }

    /// nsqd's `--msg-timeout` (short ones make redelivery tests quick).
    pub fn msg_timeout(mut self, d: Duration) -> Self {
        self.msg_timeout = Some(d);
        self
    }

    /// Fixed TCP and HTTP ports (from [`free_port`]), e.g. to start nsqd after a client that
    /// already points at it.
    pub fn ports(mut self, tcp: u16, http: u16) -> Self {
        self.ports = Some((tcp, http));
        self
    }

    /// nsqd on NSQ's own defaults, without [`SHIPPED_NSQD_ARGS`]: an existing cluster that
    /// was not set up for this suite (a 25 ms `--min-output-buffer-timeout`).
    pub fn stock(mut self) -> Self {
        self.stock = true;
        self
    }

    /// Any other nsqd flag, e.g. `--mem-queue-size=0`.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }

    /// Starts nsqd and waits for `/ping`.
    pub async fn start(self) -> Nsqd {
        let mut last = String::new();
        for _ in 0..3 {
            let (tcp_port, http_port) = self.ports.unwrap_or_else(|| (free_port(), free_port()));
            let mut nsqd = Nsqd {
                proc_: Proc {
                    name: "nsqd",
                    child: None,
                },
                tcp_port,
                http_port,
                options: self.clone(),
                data: None,
            };
            nsqd.data = Some(
                tempfile::Builder::new()
                    .prefix("nsqd-test-")
                    .tempdir()
                    .expect("create a temporary data dir for nsqd"),
            );
            match nsqd.spawn().await {
                Ok(()) => return nsqd,
                Err(e) => last = e,
            }
        }
        panic!("nsqd did not start: {last}");
    }
}

/// A running nsqd on loopback with its own data directory.
pub struct Nsqd {
    proc_: Proc,
    tcp_port: u16,
    http_port: u16,
    options: NsqdBuilder,
    data: Option<tempfile::TempDir>,
}

impl Nsqd {
    /// Options, then `.start().await`.
    pub fn builder() -> NsqdBuilder {
        NsqdBuilder::default()
    }

    /// An nsqd with the suite's shipped options ([`SHIPPED_NSQD_ARGS`]) and no lookupd.
    pub async fn start() -> Nsqd {
        NsqdBuilder::default().start().await
    }

    fn args(&self) -> Vec<String> {
        let data = self.data_path();
        let mut args = vec![
            format!("--tcp-address=127.0.0.1:{}", self.tcp_port),
            format!("--http-address=127.0.0.1:{}", self.http_port),
            "--https-address=".into(),
            "--broadcast-address=127.0.0.1".into(),
            format!("--data-path={}", data.display()),
        ];
        for l in &self.options.lookupd_tcp {
            args.push(format!("--lookupd-tcp-address={l}"));
        }
        if let Some(t) = self.options.msg_timeout {
            args.push(format!("--msg-timeout={}ms", t.as_millis()));
        }
        if !self.options.stock {
            args.extend(SHIPPED_NSQD_ARGS.iter().map(|a| a.to_string()));
        }
        args.extend(self.options.extra.iter().cloned());
        args
    }

    async fn spawn(&mut self) -> Result<(), String> {
        self.proc_ = Proc::spawn("nsqd", &self.args());
        let http = self.http_address();
        wait_ping(&mut self.proc_, &http).await
    }

    /// The data directory (kept across restarts).
    pub fn data_path(&self) -> PathBuf {
        self.data
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_else(std::env::temp_dir)
    }

    /// `127.0.0.1:<tcp port>`.
    pub fn tcp_address(&self) -> String {
        format!("127.0.0.1:{}", self.tcp_port)
    }

    /// `127.0.0.1:<http port>`.
    pub fn http_address(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc_.pid()
    }

    /// SIGTERM (nsqd flushes its memory queues to disk) and wait for the exit.
    pub fn terminate(&mut self) {
        self.proc_.signal(Signal::SIGTERM);
        self.proc_.wait(Duration::from_secs(20));
    }

    /// SIGKILL: what nsqd held in memory is lost.
    pub fn kill(&mut self) {
        self.proc_.signal(Signal::SIGKILL);
        self.proc_.wait(Duration::from_secs(5));
    }

    /// Starts it again on the same ports and data directory (after terminate or kill).
    pub async fn restart(&mut self) {
        let mut last = String::new();
        // The port may take a moment to be free again.
        for _ in 0..50 {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nsqd did not restart: {last}");
    }

    /// `/stats?format=json`, parsed.
    pub async fn stats(&self) -> serde_json::Value {
        let url = format!("http://{}/stats?format=json", self.http_address());
        reqwest::get(&url)
            .await
            .expect("GET /stats")
            .json()
            .await
            .expect("/stats JSON")
    }

    /// A channel's entry in `/stats`, if it exists.
    pub async fn channel_stats(&self, topic: &str, channel: &str) -> Option<serde_json::Value> {
        let stats = self.stats().await;
        stats["topics"]
            .as_array()?
            .iter()
            .find(|t| t["topic_name"] == topic)?["channels"]
            .as_array()?
            .iter()
            .find(|c| c["channel_name"] == channel)
            .cloned()
    }

    /// Creates a topic (and optionally a channel) over HTTP, so that messages published
    /// before any consumer subscribes are kept for that channel.
    pub async fn create_channel(&self, topic: &str, channel: &str) {
        let client = reqwest::Client::new();
        let base = format!("http://{}", self.http_address());
        let r = client
            .post(format!("{base}/topic/create"))
            .query(&[("topic", topic)])
            .send()
            .await
            .expect("POST /topic/create");
        assert!(r.status().is_success(), "topic/create: {}", r.status());
        let r = client
            .post(format!("{base}/channel/create"))
            .query(&[("topic", topic), ("channel", channel)])
            .send()
            .await
            .expect("POST /channel/create");
        assert!(r.status().is_success(), "channel/create: {}", r.status());
    }
}

/// A running nsqadmin on loopback.
pub struct Nsqadmin {
    proc_: Proc,
    http_port: u16,
}

impl Nsqadmin {
    /// Starts nsqadmin against these lookupds and waits for `/ping`.
    pub async fn start(lookupds: &[&Nsqlookupd]) -> Nsqadmin {
        let mut last = String::new();
        for _ in 0..3 {
            let http_port = free_port();
            let mut args = vec![format!("--http-address=127.0.0.1:{http_port}")];
            for l in lookupds {
                args.push(format!("--lookupd-http-address={}", l.http_address()));
            }
            let mut a = Nsqadmin {
                proc_: Proc::spawn("nsqadmin", &args),
                http_port,
            };
            let http = a.http_address();
            match wait_ping(&mut a.proc_, &http).await {
                Ok(()) => return a,
                Err(e) => last = e,
            }
        }
        panic!("nsqadmin did not start: {last}");
    }

    /// `127.0.0.1:<http port>`.
    pub fn http_address(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
}
