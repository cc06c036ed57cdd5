//! The `rest` mode: the talk's REST version (`rest-sensor`, `rest-worker` ×2, `rest-app`), in
//! pull and in push mode, side by side with the NSQ suite (sensor, 2 workers, logger, one
//! nsqd), on the same machine in the same run. Every figure comes from the lines the app or
//! the logger wrote:
//!
//! * throughput: `--rest-count` readings as fast as possible, from the first reading taken to
//!   the last line written;
//! * latency: taken → written at 100/s and 1,000/s (`--rest-seconds` each, the first half
//!   second left out);
//! * faults, at 1,000/s for `--fault-seconds` (15 s): a worker killed (SIGKILL) a third of the
//!   way in and started again on the same port 5 s later; then the app or the logger killed
//!   the same way. Lost: readings due by the schedule (rate × duration) never written;
//!   delayed: written more than [`DELAYED`] after being taken; duplicated: written more than
//!   once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use nsq::testkit::{free_port, Nsqd};
use serde::Serialize;

use crate::procs::{self, suite_bin, Proc};
use crate::{say, spawn_logger, spawn_sensor, spawn_worker, start_nsqd, start_services};

/// A reading written this long after it was taken counts as delayed: far above every
/// setup's p99 at 1,000/s.
pub const DELAYED: Duration = Duration::from_secs(1);

/// How long a killed process stays down.
const DOWN: Duration = Duration::from_secs(5);

/// The rate of the fault scenarios.
const FAULT_RATE: u32 = 1_000;

/// The three setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Setup {
    /// The talk's first version: the app polls the sensor and asks a worker.
    RestPull,
    /// The second attempt: the sensor pushes to a worker, which pushes to the app.
    RestPush,
    /// The suite.
    Nsq,
}

impl Setup {
    /// Every setup, in table order.
    pub const ALL: [Setup; 3] = [Setup::RestPull, Setup::RestPush, Setup::Nsq];

    /// Column title.
    pub fn title(self) -> &'static str {
        match self {
            Setup::RestPull => "REST pull",
            Setup::RestPush => "REST push",
            Setup::Nsq => "NSQ suite",
        }
    }
}

/// What is killed in a fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// No fault.
    None,
    /// The second worker.
    Worker,
    /// The app (REST) or the logger (NSQ).
    Sink,
}

/// Options of the mode.
#[derive(Debug, Clone)]
pub struct Options {
    /// Readings of a throughput run.
    pub count: u64,
    /// Seconds per latency rate.
    pub seconds: u64,
    /// Seconds of a fault run.
    pub fault_seconds: u64,
    /// Requests in flight at most, for the REST driver (the app pulling, the sensor pushing).
    pub concurrency: usize,
    /// `--values` of every sensor.
    pub values: u32,
}

/// Readings lost, delayed and duplicated in one fault run.
#[derive(Debug, Default, Serialize)]
pub struct Damage {
    /// Readings due by the schedule.
    pub expected: u64,
    /// Due, never written.
    pub lost: u64,
    /// Written more than [`DELAYED`] after being taken.
    pub delayed: u64,
    /// Written more than once (extra lines).
    pub duplicated: u64,
    /// The longest taken → written, ms.
    pub max_ms: f64,
}

/// The figures of one setup.
#[derive(Debug, Serialize)]
pub struct SetupRun {
    /// Which setup.
    pub setup: Setup,
    /// Readings per second, as fast as possible.
    pub msgs_per_sec: f64,
    /// (rate, p50 ms, p99 ms, samples).
    pub latency: Vec<(u32, f64, f64, u64)>,
    /// A worker killed for 5 s at 1,000/s.
    pub worker_killed: Damage,
    /// The app or logger killed for 5 s at 1,000/s.
    pub sink_down: Damage,
}

/// One line of the app's or the logger's output (torn or foreign lines are skipped).
#[derive(serde::Deserialize)]
struct Line {
    sensor_id: String,
    seq: u64,
    taken_at: u64,
    written_at: u64,
}

/// The lines of `path` written for `sensor_id`.
fn lines(path: &Path, sensor_id: &str) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| l.sensor_id == sensor_id)
        .collect()
}

/// Runs the mode: every setup through every scenario.
pub async fn run(o: &Options, dir: &Path, bar: &ProgressBar) -> anyhow::Result<Vec<SetupRun>> {
    let mut runs = Vec::new();
    for setup in Setup::ALL {
        bar.set_message(format!("rest mode: {} throughput", setup.title()));
        let msgs_per_sec = throughput(setup, o, dir).await?;
        let mut latency = Vec::new();
        for rate in [100, 1_000] {
            bar.set_message(format!("rest mode: {} at {rate}/s", setup.title()));
            let count = u64::from(rate) * o.seconds;
            let tag = format!("{setup:?}-latency-{rate}");
            let (out, id) = flow(setup, Some(rate), count, o, Fault::None, dir, &tag).await?;
            let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
            for l in lines(&out, &id)
                .iter()
                .filter(|l| l.seq > u64::from(rate / 2))
            {
                h.record(l.written_at.saturating_sub(l.taken_at).max(1))?;
            }
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
            latency.push((rate, ms(0.5), ms(0.99), h.len()));
        }
        let mut damage = Vec::new();
        for fault in [Fault::Worker, Fault::Sink] {
            bar.set_message(format!("rest mode: {} with {fault:?} down", setup.title()));
            let count = u64::from(FAULT_RATE) * o.fault_seconds;
            let tag = format!("{setup:?}-{fault:?}");
            let (out, id) = flow(setup, Some(FAULT_RATE), count, o, fault, dir, &tag).await?;
            damage.push(assess(&lines(&out, &id), count));
        }
        let sink_down = damage.pop().unwrap_or_default();
        let worker_killed = damage.pop().unwrap_or_default();
        let run = SetupRun {
            setup,
            msgs_per_sec,
            latency,
            worker_killed,
            sink_down,
        };
        say(bar, format!("rest mode: {run:?}"));
        runs.push(run);
        bar.inc(1);
    }
    Ok(runs)
}

/// Lost, delayed and duplicated readings among `lines`, `expected` readings (seq 1 to
/// `expected`) being due.
fn assess(lines: &[Line], expected: u64) -> Damage {
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut delayed = 0;
    let mut max_ns = 0;
    for l in lines {
        let latency = l.written_at.saturating_sub(l.taken_at);
        max_ns = max_ns.max(latency);
        *seen.entry(l.seq).or_default() += 1;
        if Duration::from_nanos(latency) > DELAYED {
            delayed += 1;
        }
    }
    let written = seen.range(1..=expected).count() as u64;
    Damage {
        expected,
        lost: expected - written,
        delayed,
        duplicated: seen.values().map(|n| n - 1).sum(),
        max_ms: max_ns as f64 / 1e6,
    }
}

/// Readings per second as fast as possible, from the first taken to the last written.
async fn throughput(setup: Setup, o: &Options, dir: &Path) -> anyhow::Result<f64> {
    if setup == Setup::Nsq {
        return Ok(crate::pipeline(2, o.count, o.values, dir)
            .await?
            .msgs_per_sec);
    }
    let tag = format!("{setup:?}-throughput");
    let (out, id) = flow(setup, None, o.count, o, Fault::None, dir, &tag).await?;
    let all = lines(&out, &id);
    let first = all
        .iter()
        .map(|l| l.taken_at)
        .min()
        .context("no line written")?;
    let last = all
        .iter()
        .map(|l| l.written_at)
        .max()
        .context("no line written")?;
    Ok(all.len() as f64 / (last.saturating_sub(first) as f64 / 1e9))
}

/// `count` readings through `setup` at `rate` (`None`: as fast as possible), with `fault`
/// happening a third of the way in; returns the output file and the sensor id once every
/// reading is written or given up on.
async fn flow(
    setup: Setup,
    rate: Option<u32>,
    count: u64,
    o: &Options,
    fault: Fault,
    dir: &Path,
    tag: &str,
) -> anyhow::Result<(PathBuf, String)> {
    let id = tag.to_lowercase();
    let planned = Duration::from_secs_f64(count as f64 / f64::from(rate.unwrap_or(u32::MAX)));
    let fault_at = planned / 3;
    if setup == Setup::Nsq {
        let out = nsq_flow(
            rate.unwrap_or(0),
            count,
            o.values,
            fault,
            fault_at,
            dir,
            &id,
        )
        .await?;
        return Ok((out, id));
    }
    let out = dir.join(format!("{id}.jsonl"));
    let mut rig = Rig::start(setup, rate, count, o, &out, dir, &id).await?;
    let started = Instant::now();
    let budget = planned * 3 + Duration::from_secs(60);
    if fault != Fault::None {
        tokio::time::sleep(fault_at).await;
        let restarted = rig.kill_and_restart(fault, started, planned).await?;
        anyhow::ensure!(
            restarted,
            "the run ended before the fault: see {}",
            dir.display()
        );
    }
    rig.wait_driver(started + budget).await?;
    Ok((out, id))
}

/// The REST processes of one run, on fixed loopback ports so that a killed one can come back
/// where the others expect it.
struct Rig {
    setup: Setup,
    /// The processes by role: "sensor", "w0", "w1", "app".
    procs: BTreeMap<&'static str, (Proc, Vec<String>, u16)>,
    /// Where the logs go.
    dir: PathBuf,
    /// Name of the run.
    id: String,
    /// Pull mode: the app's interval, to restart it with what is left of the schedule.
    rate: Option<u32>,
    /// Pull mode: pulls the first app was to make.
    count: u64,
}

impl Rig {
    /// Starts the sinks first, then the driver (the app pulling, or the sensor pushing).
    async fn start(
        setup: Setup,
        rate: Option<u32>,
        count: u64,
        o: &Options,
        out: &Path,
        dir: &Path,
        id: &str,
    ) -> anyhow::Result<Self> {
        let port = |_: &str| free_port();
        let (sensor, w0, w1, app) = (port("s"), port("w0"), port("w1"), port("a"));
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut rig = Rig {
            setup,
            procs: BTreeMap::new(),
            dir: dir.to_path_buf(),
            id: id.to_owned(),
            rate,
            count,
        };
        let driver_rate = rate.unwrap_or(0);
        let concurrency = format!("--concurrency={}", o.concurrency);
        match setup {
            Setup::RestPull => {
                rig.spawn(
                    "sensor",
                    "rest-sensor",
                    sensor,
                    vec![
                        format!("--sensor-id={id}"),
                        format!("--values={}", o.values),
                    ],
                )?;
                rig.spawn("w0", "rest-worker", w0, vec!["--worker-id=w0".into()])?;
                rig.spawn("w1", "rest-worker", w1, vec!["--worker-id=w1".into()])?;
                rig.healthy(&["sensor", "w0", "w1"]).await?;
                let interval = if driver_rate == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs(1) / driver_rate
                };
                rig.spawn(
                    "app",
                    "rest-app",
                    app,
                    vec![
                        format!("--sensor-url={}", addr(sensor)),
                        format!("--worker-url={}", addr(w0)),
                        format!("--worker-url={}", addr(w1)),
                        format!("--interval={}ns", interval.as_nanos()),
                        format!("--count={count}"),
                        concurrency,
                        format!("--output={}", out.display()),
                    ],
                )?;
            }
            Setup::RestPush => {
                rig.spawn(
                    "app",
                    "rest-app",
                    app,
                    vec!["--mode=push".into(), format!("--output={}", out.display())],
                )?;
                rig.healthy(&["app"]).await?;
                rig.spawn(
                    "w0",
                    "rest-worker",
                    w0,
                    vec!["--worker-id=w0".into(), format!("--push-to={}", addr(app))],
                )?;
                rig.spawn(
                    "w1",
                    "rest-worker",
                    w1,
                    vec!["--worker-id=w1".into(), format!("--push-to={}", addr(app))],
                )?;
                rig.healthy(&["w0", "w1"]).await?;
                rig.spawn(
                    "sensor",
                    "rest-sensor",
                    sensor,
                    vec![
                        format!("--sensor-id={id}"),
                        format!("--values={}", o.values),
                        format!("--push-to={}", addr(w0)),
                        format!("--push-to={}", addr(w1)),
                        format!("--rate={driver_rate}"),
                        format!("--count={count}"),
                        concurrency,
                    ],
                )?;
            }
            Setup::Nsq => anyhow::bail!("the NSQ suite is not a REST rig"),
        }
        Ok(rig)
    }

    /// Starts `bin` as `role` on `port` with `args`.
    fn spawn(
        &mut self,
        role: &'static str,
        bin: &str,
        port: u16,
        args: Vec<String>,
    ) -> anyhow::Result<()> {
        let mut all = args.clone();
        all.push(format!("--http-address=127.0.0.1:{port}"));
        let log = self
            .dir
            .join(format!("{}-{role}-{}.log", self.id, procs::stamp()));
        let proc = Proc::spawn(role, &suite_bin(bin)?, &all, &log)?;
        self.procs.insert(role, (proc, args, port));
        Ok(())
    }

    /// Waits until each of `roles` answers `/health`.
    async fn healthy(&self, roles: &[&str]) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for role in roles {
            let (proc, _, port) = self.procs.get(role).context("no such process")?;
            let url = format!("http://127.0.0.1:{port}/health");
            loop {
                anyhow::ensure!(proc.running(), "{role} stopped: see {}", self.dir.display());
                if client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "{role} not healthy at {url}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Kills the worker w1 or the app (SIGKILL), waits [`DOWN`], starts it again with the
    /// same flags (a pulling app with what is left of the schedule). False when the driver
    /// had already finished.
    async fn kill_and_restart(
        &mut self,
        fault: Fault,
        started: Instant,
        planned: Duration,
    ) -> anyhow::Result<bool> {
        let role = if fault == Fault::Worker { "w1" } else { "app" };
        let driver = if self.setup == Setup::RestPull {
            "app"
        } else {
            "sensor"
        };
        if !self.procs.get(driver).is_some_and(|(p, _, _)| p.running()) {
            return Ok(false);
        }
        let (proc, mut args, port) = self.procs.remove(role).context("no such process")?;
        drop(proc); // SIGKILL
        tokio::time::sleep(DOWN).await;
        if role == "app" && self.setup == Setup::RestPull {
            // The schedule went on while the app was down: the new app makes the pulls
            // that are still due, until the planned end.
            let left = planned.saturating_sub(started.elapsed());
            let rate = f64::from(self.rate.unwrap_or(FAULT_RATE));
            let remaining = ((left.as_secs_f64() * rate) as u64).min(self.count);
            for a in &mut args {
                if a.starts_with("--count=") {
                    *a = format!("--count={remaining}");
                }
            }
        }
        let bin = if role == "app" {
            "rest-app"
        } else {
            "rest-worker"
        };
        self.spawn(role, bin, port, args)?;
        Ok(true)
    }

    /// Waits until the driver (the pulling app or the pushing sensor) has finished.
    async fn wait_driver(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let driver = if self.setup == Setup::RestPull {
            "app"
        } else {
            "sensor"
        };
        let (proc, _, _) = self.procs.get_mut(driver).context("no driver")?;
        let left = deadline.saturating_duration_since(Instant::now());
        proc.wait_success(left).await?;
        for (proc, _, _) in self.procs.values_mut() {
            if proc.running() {
                proc.terminate().await;
            }
        }
        Ok(())
    }
}

/// The NSQ suite: nsqd, the logger, 2 workers and a sensor at `rate` (0: as fast as
/// possible) for `count` readings, `fault` happening at `fault_at`; returns the logger's
/// output once every reading was written or 90 s passed (nsqd gives a dead consumer's
/// messages to another one after its `--msg-timeout`, 60 s by default).
async fn nsq_flow(
    rate: u32,
    count: u64,
    values: u32,
    fault: Fault,
    fault_at: Duration,
    dir: &Path,
    id: &str,
) -> anyhow::Result<PathBuf> {
    let nsqd: Nsqd = start_nsqd().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "logger").await;
    let (mut procs, output) = start_services(&nsqd, 2, 0, dir, id)?;
    let log = dir.join(format!("{id}-sensor.log"));
    let mut sensor = spawn_sensor(&nsqd, id, u64::from(rate), count, values, &log)?;
    if fault != Fault::None {
        tokio::time::sleep(fault_at).await;
        let i = if fault == Fault::Worker { 2 } else { 0 };
        drop(procs.remove(i)); // SIGKILL
        tokio::time::sleep(DOWN).await;
        let again = if fault == Fault::Worker {
            spawn_worker(&nsqd, 1, 0, dir, id)?
        } else {
            spawn_logger(&nsqd, 0, &output, dir, id)?
        };
        procs.insert(i, again);
    }
    sensor
        .wait_success(Duration::from_secs(count / 500 + 120))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let distinct: std::collections::BTreeSet<u64> =
            lines(&output, id).iter().map(|l| l.seq).collect();
        if distinct.len() as u64 >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in procs.iter_mut() {
        p.terminate().await;
    }
    Ok(output)
}

/// The table of the README, in Markdown.
pub fn table(runs: &[SetupRun]) -> String {
    let cell = |f: &dyn Fn(&SetupRun) -> String| runs.iter().map(f).collect::<Vec<_>>().join(" | ");
    let header = runs
        .iter()
        .map(|r| r.setup.title())
        .collect::<Vec<_>>()
        .join(" | ");
    let damage = |d: &Damage| {
        format!(
            "{} lost, {} delayed, {} duplicated (of {}; max {:.0} ms)",
            d.lost, d.delayed, d.duplicated, d.expected, d.max_ms
        )
    };
    let mut t = format!(
        "| scenario | {header} |\n|---|{}\n",
        "---|".repeat(runs.len())
    );
    t += &format!(
        "| throughput, as fast as possible | {} |\n",
        cell(&|r| format!("{:.0} readings/s", r.msgs_per_sec))
    );
    t += &format!(
        "| p50 / p99 latency at 100/s and 1,000/s | {} |\n",
        cell(&|r| r
            .latency
            .iter()
            .map(|(rate, p50, p99, _)| format!("{rate}/s: {p50:.2} / {p99:.2} ms"))
            .collect::<Vec<_>>()
            .join("; "))
    );
    t += &format!(
        "| a worker killed for 5 s while 1,000/s flow | {} |\n",
        cell(&|r| damage(&r.worker_killed))
    );
    t += &format!(
        "| the app or logger down for 5 s (1,000/s) | {} |\n",
        cell(&|r| damage(&r.sink_down))
    );
    t += "| a second consumer of every result (fan-out): what had to change | code change | code change | a new channel, no change |\n";
    t
}
