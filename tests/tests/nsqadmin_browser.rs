//! nsqadmin in a real browser: the suite as an operator sees it.
//!
//! Starts nsqlookupd, nsqd, nsqadmin, a sensor at 50 readings/s, two workers and the logger,
//! then runs `tests/browser/nsqadmin.mjs`, which opens nsqadmin in Debian's headless Chromium
//! (through `playwright-core`, never a downloaded browser build) and checks the topics, the
//! channels, the clients' names and that the message counts grow. It saves a screenshot to
//! `target/nsqadmin.png`, or to `docs/nsqadmin.png` (the README's picture) when
//! `NSQ_SUITE_UPDATE_SCREENSHOT=1`.
//!
//! nsqlookupd and nsqadmin run here with NSQ's default timeouts, not through
//! `nsq::testkit::Nsqlookupd`, whose `--inactive-producer-timeout=5s` (for discovery tests) is
//! shorter than nsqd's 15 s ping: nsqlookupd would stop listing nsqd for 10 s out of every 15,
//! nsqadmin would show `UPSTREAM_ERROR` meanwhile, and the consumers would drop and re-add it.
//!
//! Needs `/usr/bin/chromium` (or `$NSQ_SUITE_CHROMIUM`), `node`, and
//! `tests/browser/node_modules` (`scripts/browser-env.sh` installs them; `.ci/run` calls it).
//! Where any of them is missing or Chromium cannot start, the test fails and says so: it
//! never passes without having looked at the page.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;

const WORKERS: [&str; 2] = ["worker-1", "worker-2"];

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What the browser script needs, or a message saying how to install it.
fn browser_prerequisites() -> Result<(), String> {
    let chromium =
        std::env::var("NSQ_SUITE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if !Path::new(&chromium).is_file() {
        return Err(format!(
            "Chromium not found at {chromium}: install Debian's package (apt-get install chromium) \
             or run scripts/browser-env.sh"
        ));
    }
    let playwright = root().join("tests/browser/node_modules/playwright-core");
    if !playwright.is_dir() {
        return Err(format!(
            "{} is missing: run scripts/browser-env.sh (npm ci in tests/browser)",
            playwright.display()
        ));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("node --version failed: {}", out.status)),
        Err(e) => Err(format!("node is not available: {e}")),
    }
}

/// An NSQ daemon started here with default options, killed on drop.
struct Daemon {
    /// `nsqlookupd` or `nsqadmin`.
    name: &'static str,
    /// Its HTTP address.
    http: String,
    child: Child,
}

impl Daemon {
    /// Starts `name` with `args` plus `--http-address` on a free port, and waits for `/ping`.
    async fn start(name: &'static str, args: &[String]) -> Daemon {
        let http = format!("127.0.0.1:{}", free_port());
        let child = Command::new(nsq::testkit::bin(name))
            .args(args)
            .arg(format!("--http-address={http}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut daemon = Daemon { name, http, child };
        let url = format!("http://{}/ping", daemon.http);
        wait_until(
            &format!("{name} answers {url}"),
            Duration::from_secs(15),
            || {
                let exited = daemon.child.try_wait().ok().flatten();
                assert!(exited.is_none(), "{name} exited at start-up: {exited:?}");
                let url = url.clone();
                async move {
                    reqwest::get(&url)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} stopped", self.name);
    }
}

async fn ready(client: &reqwest::Client, service: &Service) -> bool {
    client
        .get(format!("http://{}/ready", service.http))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Clients connected to a channel, from nsqd's own stats.
async fn clients(nsqd: &Nsqd, topic: &str, channel: &str) -> usize {
    nsqd.channel_stats(topic, channel)
        .await
        .and_then(|c| c["clients"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[tokio::test]
async fn nsqadmin_shows_the_suite_in_headless_chromium() {
    let started = Instant::now();
    if let Err(e) = browser_prerequisites() {
        panic!("cannot open nsqadmin in a browser: {e}");
    }

    let lookupd_tcp = format!("127.0.0.1:{}", free_port());
    let lookupd = Daemon::start(
        "nsqlookupd",
        &[
            format!("--tcp-address={lookupd_tcp}"),
            "--broadcast-address=127.0.0.1".to_owned(),
        ],
    )
    .await;
    let nsqd = Nsqd::builder()
        .arg(format!("--lookupd-tcp-address={lookupd_tcp}"))
        .start()
        .await;
    let admin = Daemon::start(
        "nsqadmin",
        &[format!("--lookupd-http-address={}", lookupd.http)],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let discovery = vec![
        flag("lookupd-http-address", &lookupd.http),
        flag("lookupd-poll-interval", "250ms"),
    ];
    let mut logger_args = discovery.clone();
    logger_args.push(flag("output", dir.path().join("results.jsonl").display()));
    let mut services = vec![Service::start("logger", &logger_args)];
    for id in WORKERS {
        let mut args = discovery.clone();
        args.push(flag("worker-id", id));
        args.push(flag("destination-nsqd-tcp-address", nsqd.tcp_address()));
        services.push(Service::start("worker", &args));
    }
    services.push(Service::start(
        "sensor",
        &[
            flag("nsqd-tcp-address", nsqd.tcp_address()),
            flag("sensor-id", "sensor-1"),
            flag("rate", 50),
        ],
    ));
    let client = reqwest::Client::new();
    for s in &mut services {
        s.wait_healthy().await;
    }
    for s in &services {
        wait_until(
            &format!("{} ready", s.name),
            Duration::from_secs(20),
            || ready(&client, s),
        )
        .await;
    }
    wait_until(
        "2 workers on sensor_data/worker and the logger on results/logger",
        Duration::from_secs(20),
        || async {
            clients(&nsqd, "sensor_data", "worker").await == WORKERS.len()
                && clients(&nsqd, "results", "logger").await == 1
        },
    )
    .await;

    let screenshot = if std::env::var_os("NSQ_SUITE_UPDATE_SCREENSHOT").is_some() {
        root().join("docs/nsqadmin.png")
    } else {
        root().join("target/nsqadmin.png")
    };
    let browsed = Instant::now();
    let mut node = tokio::process::Command::new("node");
    node.arg(root().join("tests/browser/nsqadmin.mjs"))
        .arg(format!("http://{}", admin.http))
        .arg(&screenshot)
        .args(WORKERS)
        .current_dir(root().join("tests/browser"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), node.output())
        .await
        .expect("the browser script did not end within 120 s")
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the nsqadmin browser check failed ({}):\n{stderr}\n--- its progress:\n{stdout}",
        out.status
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} is not a plausible screenshot ({} bytes)",
        screenshot.display(),
        png.len()
    );
    eprintln!("{stdout}browser checks took {:?}", browsed.elapsed());

    for s in &mut services {
        let status = s.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", s.name);
    }
    eprintln!("nsqadmin browser test took {:?}", started.elapsed());
}
