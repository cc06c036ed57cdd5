//! # bench — how far the suite goes on one machine, against NSQ's own Go tools
//!
//! ```text
//! scripts/bench.sh                 # builds in release mode, runs the default set (< 3 min)
//! target/release/bench --help
//! ```
//!
//! Modes, all against a fresh nsqd v1.3.0 on loopback with the settings the suite ships
//! (`nsq::testkit::SHIPPED_NSQD_ARGS`: `--min-output-buffer-timeout=1ms`, so that the
//! services' default `--output-buffer-timeout` of 1ms is granted), plus any `--nsqd-arg`:
//! - `pipeline`: the real binaries (sensor `--rate 0 --count N` → W workers → logger writing
//!   its file), W = 1, 2, 4, readings of about 200 bytes. Throughput from the first reading
//!   taken to the last result written, read from the logger's own output.
//! - `reference`: the same two-hop shape with NSQ's Go tools: `bench_writer` → `sensor_data` →
//!   `nsq_to_nsq` (max-in-flight 2,500) → `results` → `bench_reader`, all at once.
//! - `raw`: `bench_writer` + `bench_reader` on one topic at once: the one-hop ceiling.
//! - `latency`: the sensor at fixed rates with 2 workers; taken_at → written, HDR histogram.
//! - `memory`: the resident set (VmRSS) of each service in the steady state with the sensor's
//!   history full: the sensor runs at `--memory-rate` (5,000/s) with every other flag at its
//!   default, until its `/metrics` gauge `nsq_suite_history_readings` stops growing while it
//!   keeps taking readings; after a short settling time every process's RSS is sampled, with
//!   the number of readings the history then held. Once with the default `--values` (3: the
//!   history is bounded by `--history`, 100,000 readings, 20 s at 5,000/s) and once with
//!   `--values 40` (bounded by `--history-bytes` instead), by default.
//!
//! - `rest` (not in the default set): the talk's REST version, pull and push, against the
//!   suite with 2 workers: throughput, latency at 100/s and 1,000/s, readings lost, delayed and
//!   duplicated when a worker or the app/logger is down for 5 s (see `rest.rs`). Writes
//!   `rest.json` and `rest.md` (the README's table) into `--out`, a few minutes.
//!
//! Output: a table on stdout, `results.json` and two PNG plots in `--out`. Figures only; this
//! program never fails on a timing.

mod plot;
mod procs;
mod rest;
mod sustained;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use nsq::testkit::Nsqd;
use procs::{go_bench, suite_bin, wait_lines, Proc};
use serde::Serialize;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks the suite against NSQ's own Go tools"
)]
struct Cli {
    /// Modes to run, comma-separated: pipeline, reference, raw, latency, memory, and
    /// sustained and rest (not in the default set: each takes minutes)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pipeline,reference,raw,latency,memory"
    )]
    modes: Vec<String>,
    /// Readings per pipeline run
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Worker counts for the pipeline mode
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Seconds for each run of the Go tools
    #[arg(long, default_value_t = 5)]
    go_seconds: u64,
    /// Readings per second for the latency mode
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,20000")]
    rates: Vec<u64>,
    /// Seconds per latency rate
    #[arg(long, default_value_t = 6)]
    latency_seconds: u64,
    /// `--output-buffer-size` settings of the workers and the logger for the latency mode,
    /// each run at every rate: 64 (every message written at once) and 0 (the services'
    /// defaults: nsqd's 16 KiB buffer, flushed within their 1ms --output-buffer-timeout)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,0",
        allow_hyphen_values = true
    )]
    output_buffer_sizes: Vec<i64>,
    /// Longer runs: 1,000,000 readings per pipeline run, 20 s per rate and per Go run
    #[arg(long)]
    long: bool,
    /// Extra flag for every nsqd of the run, e.g. `--nsqd-arg=--mem-queue-size=1000000`
    /// (repeatable; every mode gets the same nsqd settings)
    #[arg(long, allow_hyphen_values = true)]
    nsqd_arg: Vec<String>,
    /// Readings per second of the sensor in the memory mode
    #[arg(long, default_value_t = 5_000)]
    memory_rate: u64,
    /// `--values` of the sensor in each memory run: 3 is its default (history bounded by
    /// --history), 40 makes it bounded by --history-bytes
    #[arg(long, value_delimiter = ',', default_value = "3,40")]
    memory_values: Vec<u32>,
    /// Seconds each rate is held in the sustained mode
    #[arg(long, default_value_t = 30)]
    sustained_seconds: u64,
    /// First rate the sustained mode tries (default: 60 % of the pipeline mode's burst
    /// figure at the same W, else 20,000)
    #[arg(long)]
    sustained_start: Option<u64>,
    /// rest mode: readings of each throughput run
    #[arg(long, default_value_t = 50_000)]
    rest_count: u64,
    /// rest mode: seconds per latency rate (100/s and 1,000/s)
    #[arg(long, default_value_t = 6)]
    rest_seconds: u64,
    /// rest mode: seconds of each fault run at 1,000/s (the fault starts a third of the way in
    /// and lasts 5 s)
    #[arg(long, default_value_t = 15)]
    fault_seconds: u64,
    /// rest mode: requests in flight at most from the REST driver (the pulling app, the
    /// pushing sensor)
    #[arg(long, default_value_t = 64)]
    rest_concurrency: usize,
    /// Where results.json and the plots go
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

/// Every figure of one run.
#[derive(Debug, Default, Serialize)]
struct Results {
    cores: usize,
    message_bytes: usize,
    pipeline: Vec<PipelineRun>,
    reference_msgs_per_sec: Option<f64>,
    raw: Option<RawRun>,
    latency: Vec<LatencyRun>,
    memory: Vec<MemoryRun>,
    sustained: Vec<sustained::SustainedRun>,
    /// Every nsqd's flags beyond addresses and data path (shipped settings and `--nsqd-arg`).
    nsqd_args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PipelineRun {
    workers: usize,
    readings: u64,
    seconds: f64,
    msgs_per_sec: f64,
    /// CPU microseconds per reading, by process (nsqd, sensor, logger, workers together).
    cpu_us_per_reading: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct RawRun {
    writer_msgs_per_sec: f64,
    reader_msgs_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct LatencyRun {
    rate: u64,
    /// The workers' and logger's `--output-buffer-size` (0: the services' defaults).
    output_buffer_size: i64,
    samples: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// (quantile, ms) points for the plot.
    distribution: Vec<(f64, f64)>,
}

/// One process set's memory in the steady state, the sensor's history full.
#[derive(Debug, Serialize)]
struct MemoryRun {
    /// The sensor's readings per second.
    rate: u64,
    /// The sensor's `--values`.
    values: u32,
    /// Readings the sensor's history held (its `nsq_suite_history_readings`), read right
    /// after the RSS was sampled.
    history_readings: u64,
    /// Seconds from the sensor's start to the sample.
    seconds: f64,
    /// Resident set size (VmRSS) of each process at the sample, bytes.
    rss_bytes: BTreeMap<String, u64>,
    /// Peak resident set size (VmHWM) of each process up to the sample, bytes.
    peak_rss_bytes: BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.long {
        cli.count = 1_000_000;
        cli.go_seconds = 20;
        cli.latency_seconds = 20;
    }
    for m in &cli.modes {
        if ![
            "pipeline",
            "reference",
            "raw",
            "latency",
            "memory",
            "sustained",
            "rest",
        ]
        .contains(&m.as_str())
        {
            anyhow::bail!(
                "unknown mode {m:?}: use pipeline, reference, raw, latency, memory, sustained, rest"
            );
        }
    }
    let _ = NSQD_ARGS.set(cli.nsqd_arg.clone());
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;
    let values = values_for_200_bytes();
    let mut results = Results {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        message_bytes: reading_size(values),
        nsqd_args: nsq::testkit::SHIPPED_NSQD_ARGS
            .iter()
            .map(|a| a.to_string())
            .chain(cli.nsqd_arg.iter().cloned())
            .collect(),
        ..Default::default()
    };
    let has = |m: &str| cli.modes.iter().any(|x| x == m);
    let steps = if has("pipeline") {
        cli.workers.len()
    } else {
        0
    } + usize::from(has("reference"))
        + usize::from(has("raw"))
        + if has("latency") {
            cli.rates.len() * cli.output_buffer_sizes.len()
        } else {
            0
        }
        + if has("memory") {
            cli.memory_values.len()
        } else {
            0
        }
        + if has("sustained") {
            2 * cli.workers.len()
        } else {
            0
        }
        + if has("rest") {
            rest::Setup::ALL.len()
        } else {
            0
        };
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    let logs = tempfile::tempdir()?;

    if has("pipeline") {
        for &w in &cli.workers {
            bar.set_message(format!("pipeline, {w} worker(s), {} readings", cli.count));
            let run = pipeline(w, cli.count, values, logs.path()).await?;
            say(
                &bar,
                format!(
                    "pipeline W={w}: {:.0} msg/s ({} readings in {:.2} s); CPU µs per reading: {}",
                    run.msgs_per_sec,
                    run.readings,
                    run.seconds,
                    run.cpu_us_per_reading
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            results.pipeline.push(run);
            bar.inc(1);
        }
    }
    if has("reference") {
        bar.set_message("reference: bench_writer → nsq_to_nsq → bench_reader");
        let r = reference(cli.go_seconds, logs.path()).await?;
        say(&bar, format!("reference 2-hop: {r:.0} msg/s"));
        results.reference_msgs_per_sec = Some(r);
        bar.inc(1);
    }
    if has("raw") {
        bar.set_message("raw: bench_writer + bench_reader");
        let r = raw(cli.go_seconds).await?;
        say(
            &bar,
            format!(
                "raw 1-hop: writer {:.0} msg/s, reader {:.0} msg/s",
                r.writer_msgs_per_sec, r.reader_msgs_per_sec
            ),
        );
        results.raw = Some(r);
        bar.inc(1);
    }
    if has("latency") {
        for &obs in &cli.output_buffer_sizes {
            let runs = latency(
                &cli.rates,
                cli.latency_seconds,
                values,
                obs,
                logs.path(),
                &bar,
            )
            .await?;
            results.latency.extend(runs);
        }
    }
    if has("memory") {
        results.memory = memory(cli.memory_rate, &cli.memory_values, logs.path(), &bar).await?;
    }
    if has("sustained") {
        for &w in &cli.workers {
            let burst = results
                .pipeline
                .iter()
                .find(|p| p.workers == w)
                .map(|p| (p.msgs_per_sec * 0.6) as u64);
            let start = cli.sustained_start.or(burst).unwrap_or(20_000);
            for system in ["suite", "relay"] {
                bar.set_message(format!(
                    "sustained: {system}, W={w}, {} s per rate from {start}/s",
                    cli.sustained_seconds
                ));
                let run = sustained::search(
                    system,
                    w,
                    cli.sustained_seconds,
                    values,
                    start,
                    logs.path(),
                    start_nsqd().await,
                )
                .await?;
                say(
                    &bar,
                    format!(
                        "sustained {system} W={w}: {} msg/s (p99 {:.1} ms); probes: {}",
                        run.msgs_per_sec,
                        run.p99_ms,
                        run.probes
                            .iter()
                            .map(|p| format!(
                                "{}/s {} (p99 {:.1} ms, backlog {:+})",
                                p.rate,
                                if p.kept_up { "ok" } else { "no" },
                                p.p99_ms,
                                p.backlog_growth
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                results.sustained.push(run);
                bar.inc(1);
            }
        }
    }
    let mut rest_runs = Vec::new();
    if has("rest") {
        let options = rest::Options {
            count: cli.rest_count,
            seconds: cli.rest_seconds,
            fault_seconds: cli.fault_seconds,
            concurrency: cli.rest_concurrency,
            values,
        };
        rest_runs = rest::run(&options, logs.path(), &bar).await?;
    }
    bar.finish_with_message("done");

    if !rest_runs.is_empty() {
        let table = rest::table(&rest_runs);
        println!(
            "\nREST against the NSQ suite, 2 workers, {} cores:\n\n{table}",
            results.cores
        );
        std::fs::write(cli.out.join("rest.md"), &table)?;
        std::fs::write(
            cli.out.join("rest.json"),
            serde_json::to_string_pretty(&rest_runs)?,
        )?;
        println!(
            "wrote {}, {}",
            cli.out.join("rest.md").display(),
            cli.out.join("rest.json").display()
        );
        if cli.modes.iter().all(|m| m == "rest") {
            return Ok(()); // results.json and the plots are the other modes'
        }
    }

    print_table(&results);
    let json = cli.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    plot::throughput(&cli.out.join("throughput.png"), &results)?;
    plot::latency(&cli.out.join("latency.png"), &results)?;
    println!(
        "\nwrote {}, {}, {}",
        json.display(),
        cli.out.join("throughput.png").display(),
        cli.out.join("latency.png").display()
    );
    Ok(())
}

/// Extra nsqd flags for every mode (`--nsqd-arg`), set once from the command line.
static NSQD_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// A fresh nsqd with the same settings for every mode.
async fn start_nsqd() -> Nsqd {
    let mut b = Nsqd::builder();
    for a in NSQD_ARGS.get().into_iter().flatten() {
        b = b.arg(a.clone());
    }
    b.start().await
}

/// How many values make an encoded reading about 200 bytes, like the Go tools' messages.
fn values_for_200_bytes() -> u32 {
    (1..200).find(|v| reading_size(*v) >= 200).unwrap_or(40)
}

fn reading_size(values: u32) -> usize {
    messages::SensorReading {
        schema: messages::SCHEMA_VERSION,
        sensor_id: "bench".into(),
        epoch: 1_700_000_000_000,
        seq: 100_000,
        taken_at: 1_700_000_000_000_000_000,
        values: vec![u32::MAX / 2; values as usize],
    }
    .encode()
    .map(|b| b.len())
    .unwrap_or(0)
}

/// Starts the logger and `workers` workers against `nsqd`, returning them and the output file.
fn start_services(
    nsqd: &Nsqd,
    workers: usize,
    output_buffer_size: i64,
    dir: &Path,
    tag: &str,
) -> anyhow::Result<(Vec<Proc>, PathBuf)> {
    let output = dir.join(format!("{tag}-results.jsonl"));
    let mut procs = vec![spawn_logger(nsqd, output_buffer_size, &output, dir, tag)?];
    for i in 0..workers {
        procs.push(spawn_worker(nsqd, i, output_buffer_size, dir, tag)?);
    }
    Ok((procs, output))
}

/// The logger of [`start_services`], writing `output` (also to start it again).
fn spawn_logger(
    nsqd: &Nsqd,
    output_buffer_size: i64,
    output: &Path,
    dir: &Path,
    tag: &str,
) -> anyhow::Result<Proc> {
    Proc::spawn(
        "logger",
        &suite_bin("logger")?,
        &[
            format!("--nsqd-tcp-address={}", nsqd.tcp_address()),
            format!("--output={}", output.display()),
            "--http-address=127.0.0.1:0".into(),
            format!("--output-buffer-size={output_buffer_size}"),
        ],
        &dir.join(format!("{tag}-logger-{}.log", procs::stamp())),
    )
}

/// Worker `i` of [`start_services`] (also to start it again).
fn spawn_worker(
    nsqd: &Nsqd,
    i: usize,
    output_buffer_size: i64,
    dir: &Path,
    tag: &str,
) -> anyhow::Result<Proc> {
    Proc::spawn(
        &format!("worker-{i}"),
        &suite_bin("worker")?,
        &[
            format!("--nsqd-tcp-address={}", nsqd.tcp_address()),
            format!("--destination-nsqd-tcp-address={}", nsqd.tcp_address()),
            format!("--worker-id=bench-w{i}"),
            "--http-address=127.0.0.1:0".into(),
            format!("--output-buffer-size={output_buffer_size}"),
        ],
        &dir.join(format!("{tag}-worker-{i}-{}.log", procs::stamp())),
    )
}

/// A sensor taking `count` readings at `rate` (0: as fast as possible), logging to `log`.
fn spawn_sensor(
    nsqd: &Nsqd,
    sensor_id: &str,
    rate: u64,
    count: u64,
    values: u32,
    log: &Path,
) -> anyhow::Result<Proc> {
    Proc::spawn(
        "sensor",
        &suite_bin("sensor")?,
        &[
            format!("--nsqd-tcp-address={}", nsqd.tcp_address()),
            format!("--sensor-id={sensor_id}"),
            format!("--rate={rate}"),
            format!("--count={count}"),
            format!("--values={values}"),
            "--http-address=127.0.0.1:0".into(),
        ],
        log,
    )
}

/// NSQ's `nsq_to_nsq` relaying `sensor_data` (channel `relay`) to `results` on the nsqd at
/// `addr`: the Go tools' stand-in for a worker.
fn spawn_relay(name: &str, addr: &str, log: &Path) -> anyhow::Result<Proc> {
    Proc::spawn(
        name,
        &nsq::testkit::bin("nsq_to_nsq"),
        &[
            format!("--nsqd-tcp-address={addr}"),
            "--topic=sensor_data".into(),
            "--channel=relay".into(),
            format!("--destination-nsqd-tcp-address={addr}"),
            "--destination-topic=results".into(),
            "--max-in-flight=2500".into(),
        ],
        log,
    )
}

/// The pipeline with `workers` workers: `count` readings at full speed.
async fn pipeline(
    workers: usize,
    count: u64,
    values: u32,
    dir: &Path,
) -> anyhow::Result<PipelineRun> {
    let nsqd = start_nsqd().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "logger").await;
    let tag = format!("pipeline-w{workers}");
    let (mut procs, output) = start_services(&nsqd, workers, 0, dir, &tag)?;
    let mut sensor = spawn_sensor(
        &nsqd,
        "bench",
        0,
        count,
        values,
        &dir.join(format!("{tag}-sensor.log")),
    )?;
    let budget = Duration::from_secs(60 + count / 5_000);
    // The sensor's CPU time is read just before it exits, from its last /proc sample.
    let mut sensor_cpu = 0.0;
    let deadline = Instant::now() + budget;
    while sensor.running() {
        sensor_cpu = sensor.cpu_seconds().unwrap_or(sensor_cpu);
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sensor did not finish in {budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sensor.wait_success(budget).await?;
    wait_lines(&output, count as usize, budget).await?;
    let (first_taken, last_written) = span(&output)?;
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let per = |secs: f64| secs * 1e6 / count as f64;
    if let Some(pid) = nsqd.pid() {
        cpu.insert("nsqd".into(), per(procs::cpu_seconds(pid)?));
    }
    cpu.insert("sensor".into(), per(sensor_cpu));
    for p in &procs {
        let key = if p.name.starts_with("worker") {
            "workers"
        } else {
            &p.name
        };
        *cpu.entry(key.to_string()).or_default() += per(p.cpu_seconds()?);
    }
    for p in procs.iter_mut() {
        p.terminate().await;
    }
    let seconds = (last_written.saturating_sub(first_taken)) as f64 / 1e9;
    Ok(PipelineRun {
        workers,
        readings: count,
        seconds,
        msgs_per_sec: count as f64 / seconds,
        cpu_us_per_reading: cpu,
    })
}

#[derive(serde::Deserialize)]
struct Line {
    taken_at: u64,
    written_at: u64,
    #[serde(default)]
    sensor_id: String,
    #[serde(default)]
    seq: u64,
}

/// Every complete line of the logger's output `path`: the files it closed (rotated, gzipped
/// or not; the logger rotates at 256 MiB by default, which a sustained run reaches) and the
/// current file, whose last line may still be being written.
fn lines(path: &Path) -> anyhow::Result<Vec<Line>> {
    // A file gzipped (or renamed) between the listing and its read: list again.
    for _ in 0..10 {
        if let Some(all) = lines_once(path)? {
            return Ok(all);
        }
    }
    anyhow::bail!("the logger's files kept changing while being read")
}

/// [`lines`], or `None` when a listed file was gone by the time it was read.
fn lines_once(path: &Path) -> anyhow::Result<Option<Vec<Line>>> {
    use std::io::Read as _;
    let files = logger::rotation::Files::new(path);
    let (closed, _) = files.list()?;
    let mut all = Vec::new();
    for c in closed
        .iter()
        .map(|c| (&c.path, c.gz))
        .chain([(&path.to_path_buf(), false)])
    {
        let (file, gz) = c;
        let mut text = String::new();
        match std::fs::File::open(file) {
            Ok(f) if gz => {
                flate2::read::GzDecoder::new(f).read_to_string(&mut text)?;
            }
            Ok(mut f) => {
                f.read_to_string(&mut text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        for l in complete.lines() {
            all.push(serde_json::from_str(l).with_context(|| format!("bad logger line: {l}"))?);
        }
    }
    Ok(Some(all))
}

/// (first taken_at, last written_at) over the logger's output, unix ns.
fn span(path: &Path) -> anyhow::Result<(u64, u64)> {
    let all = lines(path)?;
    let first = all
        .iter()
        .map(|l| l.taken_at)
        .min()
        .context("empty output")?;
    let last = all
        .iter()
        .map(|l| l.written_at)
        .max()
        .context("empty output")?;
    Ok((first, last))
}

/// NSQ's Go tools as a two-hop pipeline.
async fn reference(seconds: u64, dir: &Path) -> anyhow::Result<f64> {
    let nsqd = start_nsqd().await;
    nsqd.create_channel("sensor_data", "relay").await;
    nsqd.create_channel("results", "ch").await;
    let addr = nsqd.tcp_address();
    let _relay = spawn_relay("nsq_to_nsq", &addr, &dir.join("nsq_to_nsq.log"))?;
    // Wait until the relay is subscribed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nsqd
        .channel_stats("sensor_data", "relay")
        .await
        .map(|c| c["client_count"].as_u64().unwrap_or(0))
        .unwrap_or(0)
        == 0
    {
        anyhow::ensure!(Instant::now() < deadline, "nsq_to_nsq did not subscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (r, _w) = go_bench_pair(&addr, "sensor_data", "results", seconds).await;
    r
}

/// NSQ's `bench_writer` publishing to `write_topic` and `bench_reader` reading `read_topic`
/// (channel `ch`) on the nsqd at `addr`, at once for `seconds`: their msgs/s (reader, writer).
async fn go_bench_pair(
    addr: &str,
    write_topic: &str,
    read_topic: &str,
    seconds: u64,
) -> (anyhow::Result<f64>, anyhow::Result<f64>) {
    let run = format!("--runfor={seconds}s");
    let reader = go_bench(
        "bench_reader",
        vec![
            format!("--nsqd-tcp-address={addr}"),
            format!("--topic={read_topic}"),
            "--channel=ch".into(),
            run.clone(),
            "--size=200".into(),
        ],
    );
    let writer = go_bench(
        "bench_writer",
        vec![
            format!("--nsqd-tcp-address={addr}"),
            format!("--topic={write_topic}"),
            run,
            "--size=200".into(),
            "--batch-size=200".into(),
        ],
    );
    tokio::join!(reader, writer)
}

/// `bench_writer` and `bench_reader` at once on one topic.
async fn raw(seconds: u64) -> anyhow::Result<RawRun> {
    let nsqd = start_nsqd().await;
    nsqd.create_channel("sub_bench", "ch").await;
    let (r, w) = go_bench_pair(&nsqd.tcp_address(), "sub_bench", "sub_bench", seconds).await;
    Ok(RawRun {
        writer_msgs_per_sec: w?,
        reader_msgs_per_sec: r?,
    })
}

/// The sensor at each rate for `seconds`, 2 workers, one logger kept running.
async fn latency(
    rates: &[u64],
    seconds: u64,
    values: u32,
    output_buffer_size: i64,
    dir: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<LatencyRun>> {
    let nsqd = start_nsqd().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "logger").await;
    let tag = format!("latency-obs{output_buffer_size}");
    let (mut procs, output) = start_services(&nsqd, 2, output_buffer_size, dir, &tag)?;
    let mut runs = Vec::new();
    let mut expected = 0usize;
    for &rate in rates {
        bar.set_message(format!(
            "latency at {rate} readings/s for {seconds} s, --output-buffer-size {output_buffer_size}"
        ));
        let count = rate * seconds;
        let sensor_id = format!("rate-{rate}");
        let log = dir.join(format!("{tag}-sensor-{rate}.log"));
        let mut sensor = spawn_sensor(&nsqd, &sensor_id, rate, count, values, &log)?;
        let budget = Duration::from_secs(seconds * 3 + 30);
        let deadline = Instant::now() + budget;
        while sensor.running() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the sensor did not finish in {budget:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sensor.wait_success(budget).await?;
        expected += count as usize;
        wait_lines(&output, expected, Duration::from_secs(60)).await?;
        // The first half second warms connections up; it is left out.
        let warmup = rate / 2;
        let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
        for l in lines(&output)?
            .iter()
            .filter(|l| l.sensor_id == sensor_id && l.seq > warmup)
        {
            h.record(l.written_at.saturating_sub(l.taken_at).max(1))?;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        let distribution = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]
            .iter()
            .map(|q| (*q, ms(*q)))
            .collect();
        let run = LatencyRun {
            rate,
            output_buffer_size,
            samples: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1e6,
            distribution,
        };
        say(
            bar,
            format!(
            "latency at {rate}/s (--output-buffer-size {output_buffer_size}): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            run.p50_ms, run.p90_ms, run.p99_ms, run.max_ms, run.samples
        ));
        runs.push(run);
        bar.inc(1);
    }
    for p in procs.iter_mut() {
        p.terminate().await;
    }
    Ok(runs)
}

/// The sensor's `--history` default, for the memory mode's time budget only (the mode finds
/// out that the history is full from the sensor's own gauge).
const DEFAULT_HISTORY: u64 = 100_000;

/// How long the memory mode waits, once the history is full, before sampling the RSS: the
/// rings have then reached their size, and this lets freed pages settle.
const SETTLE: Duration = Duration::from_secs(2);

/// The suite with every service at its defaults but the sensor's `--rate` and `--values`,
/// sampled once the sensor's history is full: one run per `values`, one nsqd, 2 workers and
/// one logger kept running.
async fn memory(
    rate: u64,
    values: &[u32],
    dir: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<MemoryRun>> {
    let nsqd = start_nsqd().await;
    nsqd.create_channel("sensor_data", "worker").await;
    nsqd.create_channel("results", "logger").await;
    let (mut procs, _output) = start_services(&nsqd, 2, 0, dir, "memory")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut runs = Vec::new();
    for &v in values {
        bar.set_message(format!(
            "memory: sensor at {rate}/s with --values {v} until its history is full"
        ));
        // A free port, so that the sensor's /metrics can be read; it is bound again by the
        // sensor at once (a race with another program is possible, and fails the run).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join(format!("memory-sensor-v{v}.log"));
        let started = Instant::now();
        let mut sensor = Proc::spawn(
            "sensor",
            &suite_bin("sensor")?,
            &[
                format!("--nsqd-tcp-address={}", nsqd.tcp_address()),
                format!("--sensor-id=memory-v{v}"),
                format!("--rate={rate}"),
                format!("--values={v}"),
                format!("--http-address=127.0.0.1:{port}"),
            ],
            &log,
        )?;
        let url = format!("http://127.0.0.1:{port}/metrics");
        // Full: the number of readings held has not changed for a second while the sensor
        // went on taking readings. Twice the time the default history takes to fill, plus
        // start-up.
        let budget = Duration::from_secs(2 * DEFAULT_HISTORY / rate.max(1) + 60);
        let deadline = started + budget;
        let mut stable: Option<(Instant, u64, u64)> = None;
        loop {
            anyhow::ensure!(
                sensor.running(),
                "the sensor of the memory run stopped: see {}",
                log.display()
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "the sensor's history (--values {v}) did not stop growing within {budget:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(text) = metrics_text(&client, &url).await else {
                continue; // not listening yet
            };
            let held = gauge(&text, "nsq_suite_history_readings").unwrap_or(0);
            let seq = gauge(&text, "nsq_suite_last_seq").unwrap_or(0);
            match stable {
                Some((since, h, s)) if h == held && held > 0 => {
                    if since.elapsed() >= Duration::from_secs(1) && seq > s {
                        break;
                    }
                }
                _ => stable = Some((Instant::now(), held, seq)),
            }
        }
        tokio::time::sleep(SETTLE).await;
        let mut rss_bytes = BTreeMap::new();
        let mut peak_rss_bytes = BTreeMap::new();
        for p in procs.iter().chain(std::iter::once(&sensor)) {
            rss_bytes.insert(p.name.clone(), p.rss()?);
            peak_rss_bytes.insert(p.name.clone(), p.peak_rss()?);
        }
        let seconds = started.elapsed().as_secs_f64();
        let text = metrics_text(&client, &url).await?;
        let history_readings = gauge(&text, "nsq_suite_history_readings")
            .context("the sensor's /metrics has no nsq_suite_history_readings")?;
        sensor.terminate().await;
        let run = MemoryRun {
            rate,
            values: v,
            history_readings,
            seconds,
            rss_bytes,
            peak_rss_bytes,
        };
        say(bar, format!("memory: {}", memory_line(&run)));
        runs.push(run);
        bar.inc(1);
    }
    for p in procs.iter_mut() {
        p.terminate().await;
    }
    Ok(runs)
}

/// The body of a `/metrics` answer.
async fn metrics_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The value of gauge `name` in Prometheus text (whatever its labels), as a whole number.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|x| x as u64)
}

/// One memory run on one line.
fn memory_line(run: &MemoryRun) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    format!(
        "--values {}, {} readings held after {:.1} s at {}/s: RSS {}",
        run.values,
        run.history_readings,
        run.seconds,
        run.rate,
        run.rss_bytes
            .iter()
            .map(|(name, b)| format!(
                "{name} {:.1} MB (peak {:.1})",
                mb(*b),
                mb(run.peak_rss_bytes.get(name).copied().unwrap_or(0))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn print_table(r: &Results) {
    println!();
    println!(
        "nsq-suite benchmark: {} cores, {}-byte readings, NSQ v1.3.0 on loopback",
        r.cores, r.message_bytes
    );
    let reference = r.reference_msgs_per_sec;
    let half_raw = r.raw.as_ref().map(|x| x.reader_msgs_per_sec / 2.0);
    if !r.pipeline.is_empty() || reference.is_some() || r.raw.is_some() {
        println!("{:-<72}", "");
        println!(
            "{:<34} {:>12} {:>11} {:>11}",
            "setup", "msg/s", "/reference", "/(raw/2)"
        );
    }
    for p in &r.pipeline {
        let vs_ref = reference.map(|x| format!("{:.2}x", p.msgs_per_sec / x));
        let vs_raw = half_raw.map(|x| format!("{:.0} %", 100.0 * p.msgs_per_sec / x));
        println!(
            "{:<34} {:>12.0} {:>11} {:>11}",
            format!("pipeline, {} worker(s)", p.workers),
            p.msgs_per_sec,
            vs_ref.unwrap_or_default(),
            vs_raw.unwrap_or_default()
        );
    }
    if let Some(x) = reference {
        println!("{:<34} {:>12.0}", "reference (Go tools, 2 hops)", x);
    }
    if let Some(raw) = &r.raw {
        println!(
            "{:<34} {:>12.0}   (writer {:.0})",
            "raw (Go tools, 1 hop, reader)", raw.reader_msgs_per_sec, raw.writer_msgs_per_sec
        );
    }
    if !r.latency.is_empty() {
        println!("{:-<72}", "");
        println!(
            "{:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency, rate/s", "out buf", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for l in &r.latency {
            let buf = if l.output_buffer_size == 0 {
                "default".to_string()
            } else {
                l.output_buffer_size.to_string()
            };
            println!(
                "{:<16} {:>8} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                l.rate, buf, l.samples, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            );
        }
    }
    if !r.memory.is_empty() {
        println!("{:-<72}", "");
        println!("memory, steady state with the sensor's history full (services' defaults):");
        for run in &r.memory {
            println!("  {}", memory_line(run));
        }
    }
    if !r.sustained.is_empty() {
        println!("{:-<72}", "");
        println!(
            "sustained: highest rate kept up with p99 < {} ms and no backlog growth",
            sustained::P99_LIMIT.as_millis()
        );
        println!(
            "{:<10} {:>14} {:>10} {:>14} {:>10} {:>8}",
            "W", "suite msg/s", "p99 ms", "relay msg/s", "p99 ms", "ratio"
        );
        let workers: std::collections::BTreeSet<usize> =
            r.sustained.iter().map(|s| s.workers).collect();
        for w in workers {
            let find = |sys: &str| {
                r.sustained
                    .iter()
                    .find(|s| s.workers == w && s.system == sys)
            };
            let (suite, relay) = (find("suite"), find("relay"));
            let ratio = match (suite, relay) {
                (Some(s), Some(g)) if g.msgs_per_sec > 0 => {
                    format!("{:.2}x", s.msgs_per_sec as f64 / g.msgs_per_sec as f64)
                }
                _ => String::new(),
            };
            println!(
                "{:<10} {:>14} {:>10.1} {:>14} {:>10.1} {:>8}",
                w,
                suite.map_or(0, |s| s.msgs_per_sec),
                suite.map_or(f64::NAN, |s| s.p99_ms),
                relay.map_or(0, |s| s.msgs_per_sec),
                relay.map_or(f64::NAN, |s| s.p99_ms),
                ratio
            );
        }
    }
}

/// Prints a line above the progress bar (and plainly when output is not a terminal, where
/// indicatif hides the bar and its `println`).
fn say(bar: &ProgressBar, line: String) {
    bar.suspend(|| println!("{line}"));
}
