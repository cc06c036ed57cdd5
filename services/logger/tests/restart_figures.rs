//! The restart figures of issue 14: how long the logger takes to be ready, and its peak RSS,
//! in front of a long history. Not a test (it asserts nothing about time): a measurement,
//! ignored by default, that prints one `RESTART` line per case.
//!
//! ```sh
//! cargo build --release -p logger
//! RESTART_BIN=$PWD/target/release/logger RESTART_LINES=20000000 \
//!   cargo test -p logger --test restart_figures -- --ignored --nocapture
//! ```
//!
//! Cases, each with `RESTART_LINES` lines (default 20,000,000) of 4 sensors, each
//! restarting every 1,000,000 readings, with one reading lost every 100,000:
//!
//! 1. `one file, no state`: the whole history in one file and no state file: what every
//!    start read before rotation (the logger reads it all to rebuild its state);
//! 2. `rotated, after kill -9`: the same history written through the logger's own writer
//!    ([`Output::write_batch`], [`Output::rotate`]) at the shipped `--rotate-size`: closed
//!    files, the state file, and a current file partly full; the logger reads the state
//!    and the current file;
//! 3. `rotated, after SIGTERM`: case 2 stopped cleanly, which saves a state file covering
//!    the current file too; the logger then reads the state only.
//!
//! Ready means `GET /ready` answers 200 (consuming from an nsqd with a writable output);
//! the RSS is the process's `VmHWM` (peak resident set) once ready. Closed files are not
//! gzipped here (`--rotate-gzip` does not change what a restart reads, and compressing
//! 4 GB would only make the run longer).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a measurement: a failure fails it

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use logger::{
    line::Key,
    output::{Options, Output},
    rotation::Rotation,
    seen::SeenLimits,
};
use nsq::testkit::{free_port, Nsqd};

/// Sensors in the history.
const SENSORS: u64 = 4;
/// Readings per sensor epoch (then the sensor "restarts").
const EPOCH_READINGS: u64 = 1_000_000;
/// One reading in this many is missing (lost for good: one more seq range each).
const HOLE_EVERY: u64 = 100_000;
/// The shipped `--rotate-size`.
const ROTATE_SIZE: u64 = 256 << 20;

/// The line of the `n`-th reading of the history (a realistic line: 3 values, ~205 bytes).
fn line(n: u64, out: &mut Vec<u8>) -> Option<Key> {
    let sensor = n % SENSORS;
    let reading = n / SENSORS;
    let epoch = 1_764_500_000_000 + reading / EPOCH_READINGS * 3_600_000;
    let seq = reading % EPOCH_READINGS + 1;
    if seq % HOLE_EVERY == 0 {
        return None;
    }
    let taken = 1_764_500_000_000_000_000 + n * 1_000_000;
    let v = [(n * 7919) % 1000, (n * 104_729) % 1000, n % 1000];
    writeln!(
        out,
        "{{\"sensor_id\":\"sensor-{sensor}\",\"epoch\":{epoch},\"seq\":{seq},\"values\":[{},{},{}],\
         \"squares\":[{},{},{}],\"worker_id\":\"worker-{}\",\"taken_at\":{taken},\
         \"computed_at\":{},\"written_at\":{},\"stale\":false}}",
        v[0],
        v[1],
        v[2],
        v[0] * v[0],
        v[1] * v[1],
        v[2] * v[2],
        n % 3,
        taken + 2_000_000,
        taken + 3_000_000,
    )
    .unwrap();
    Some(Key {
        sensor_id: format!("sensor-{sensor}"),
        epoch,
        seq,
    })
}

/// Writes the history into one file; returns its size.
fn one_file(path: &Path, lines: u64) -> u64 {
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut buf = Vec::with_capacity(256);
    for n in 0..lines {
        buf.clear();
        line(n, &mut buf);
        file.write_all(&buf).unwrap();
    }
    file.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Writes the history through the logger's writer, rotating at [`ROTATE_SIZE`], and stops
/// as a kill -9 would (no state saved at the end); returns the closed files made.
fn rotated(path: &Path, lines: u64) -> usize {
    let options = Options {
        rotation: Rotation {
            size: ROTATE_SIZE,
            ..Rotation::OFF
        },
        limits: SeenLimits::default(),
        ..Options::default()
    };
    let (mut output, recovered) = Output::open_with(path, &options).unwrap();
    let mut seen = recovered.seen;
    let mut batch = Vec::with_capacity(1000 * 256);
    let mut rotations = 0;
    for n in 0..lines {
        if let Some(key) = line(n, &mut batch) {
            seen.insert(&key);
        }
        if batch.len() >= 1000 * 200 || n + 1 == lines {
            output.write_batch(&batch).unwrap();
            batch.clear();
            if output.rotation_due() {
                output.rotate(seen.snapshot()).unwrap();
                rotations += 1;
            }
        }
    }
    rotations
}

/// The peak resident set of `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A started logger, ready.
struct Started {
    /// The process.
    child: Child,
    /// From the spawn to `GET /ready` answering 200 (connecting to nsqd, and `/ready`'s
    /// 250 ms refresh, included).
    ready: Duration,
    /// The `took` of its `de-duplication state rebuilt` log line: the rebuild alone.
    rebuild: String,
    /// Its peak RSS when ready, in KiB.
    rss_kib: u64,
}

/// Starts the logger on `output` and waits until it is ready.
async fn start_logger(bin: &Path, nsqd: &Nsqd, output: &Path, extra: &[&str]) -> Started {
    let http = format!("127.0.0.1:{}", free_port());
    let log_path = output.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            format!("--nsqd-tcp-address={}", nsqd.tcp_address()),
            format!("--output={}", output.display()),
            format!("--http-address={http}"),
            "--detect-gaps=false".to_owned(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{http}/ready");
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the logger exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not ready in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    let rss_kib = vm_hwm_kib(child.id());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let rebuild = logs
        .lines()
        .find(|l| l.contains("de-duplication state rebuilt"))
        .and_then(|l| l.split(" took=").nth(1))
        .map(|t| t.split_whitespace().next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    Started {
        child,
        ready,
        rebuild,
        rss_kib,
    }
}

fn sigterm(child: &mut Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

fn report(case: &str, lines: u64, dir: &Path, s: &Started) {
    let bytes: u64 = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_none_or(|x| x != "log"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let state = std::fs::metadata(dir.join("results.state")).map_or(0, |m| m.len());
    let current = std::fs::metadata(dir.join("results.jsonl")).map_or(0, |m| m.len());
    println!(
        "RESTART {case}: {lines} lines, {:.0} MB on disk (current file {:.0} MB, state file \
         {:.1} KB): rebuild took {}, ready in {:.2} s, peak RSS {:.1} MB",
        bytes as f64 / 1e6,
        current as f64 / 1e6,
        state as f64 / 1e3,
        s.rebuild,
        s.ready.as_secs_f64(),
        s.rss_kib as f64 / 1024.0,
    );
}

#[tokio::test]
#[ignore = "a measurement of minutes and gigabytes: run it by name with --ignored"]
async fn restart_figures() {
    let lines: u64 = std::env::var("RESTART_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    let bin: PathBuf = std::env::var_os("RESTART_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_logger")),
        PathBuf::from,
    );
    let nsqd = Nsqd::start().await;

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let made = Instant::now();
    one_file(&output, lines);
    eprintln!("one file written in {:.0?}", made.elapsed());
    // Rotation off: the logger must not close this file while it is measured.
    let off = ["--rotate-size=0", "--rotate-interval=0s"];
    let mut s = start_logger(&bin, &nsqd, &output, &off).await;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    report("one file, no state", lines, dir.path(), &s);
    drop(dir);

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.jsonl");
    let made = Instant::now();
    let rotations = rotated(&output, lines);
    eprintln!("{rotations} rotations written in {:.0?}", made.elapsed());
    // The shipped rotation; the history was written without gzip, as if each closed file
    // had been compressed already (nothing to compress at start).
    let shipped = ["--rotate-gzip=false"];
    let mut s = start_logger(&bin, &nsqd, &output, &shipped).await;
    report("rotated, after kill -9", lines, dir.path(), &s);
    sigterm(&mut s.child);
    let mut s = start_logger(&bin, &nsqd, &output, &shipped).await;
    report("rotated, after SIGTERM", lines, dir.path(), &s);
    sigterm(&mut s.child);
}
