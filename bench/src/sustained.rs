//! The `sustained` mode: the highest sensor rate a pipeline keeps up with, for the suite and
//! for NSQ's Go relay, each with W consumers of `sensor_data`.
//!
//! The same source feeds both: the suite's sensor at `--rate R`. A probe runs it for
//! `--sustained-seconds` and keeps up when
//! - the p99 of `taken_at` → written (the suite: the logger's line; the relay: the bench's own
//!   consumer of `results` receiving it) stays under [`P99_LIMIT`];
//! - the backlog does not grow: the depth of the consumers' channels at the end minus their
//!   depth a third of the way in is under half a second of readings;
//! - every reading arrives within [`DRAIN`] of the sensor's last.
//!
//! The search starts at `start` readings/s (the burst figure's 60 % when the pipeline mode
//! ran), multiplies the rate by 1.3 while probes pass and by 0.75 while they fail, and stops at
//! the first change of verdict or after [`MAX_PROBES`]. The figure is the highest passing rate.
//!
//! The relay at W: W `nsq_to_nsq` processes share the channel `relay` of `sensor_data` and
//! publish to `results` (`--max-in-flight` 2,500 each, as in the reference mode).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nsq::testkit::Nsqd;
use serde::Serialize;

/// The latency a sustained rate must keep at p99.
pub const P99_LIMIT: Duration = Duration::from_millis(50);
/// How long after the sensor's last reading every reading must have arrived.
const DRAIN: Duration = Duration::from_secs(5);
/// Most probes per search.
const MAX_PROBES: usize = 6;

/// One probe: a rate held for the probe's length.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub rate: u64,
    pub arrived: u64,
    pub p99_ms: f64,
    /// Channel depth at the end minus at a third of the way in, in readings.
    pub backlog_growth: i64,
    pub kept_up: bool,
}

/// The search's outcome for one system at one W.
#[derive(Debug, Clone, Serialize)]
pub struct SustainedRun {
    /// `suite` or `relay`.
    pub system: String,
    pub workers: usize,
    /// The highest rate that kept up (0: none did).
    pub msgs_per_sec: u64,
    /// Its p99, ms.
    pub p99_ms: f64,
    pub probes: Vec<Probe>,
}

/// What runs between the sensor and the measurement.
enum Pipeline {
    Suite { output: PathBuf },
    Relay { sink: Arc<Mutex<Vec<(u64, u64)>>> },
}

/// Finds the highest rate that `system` (`suite` or `relay`) keeps up with at `workers`.
pub async fn search(
    system: &str,
    workers: usize,
    seconds: u64,
    values: u32,
    start: u64,
    dir: &Path,
    nsqd: Nsqd,
) -> anyhow::Result<SustainedRun> {
    let tag = format!("sustained-{system}-w{workers}");
    let (mut procs, pipeline, channels, sink_consumer) = match system {
        "suite" => {
            nsqd.create_channel("sensor_data", "worker").await;
            nsqd.create_channel("results", "logger").await;
            let (procs, output) = crate::start_services(&nsqd, workers, 0, dir, &tag)?;
            (
                procs,
                Pipeline::Suite { output },
                vec![("sensor_data", "worker"), ("results", "logger")],
                None,
            )
        }
        "relay" => {
            nsqd.create_channel("sensor_data", "relay").await;
            nsqd.create_channel("results", "sink").await;
            let addr = nsqd.tcp_address();
            let mut procs = Vec::new();
            for i in 0..workers {
                procs.push(crate::spawn_relay(
                    &format!("nsq_to_nsq-{i}"),
                    &addr,
                    &dir.join(format!("{tag}-relay-{i}.log")),
                )?);
            }
            let sink = Arc::new(Mutex::new(Vec::new()));
            let consumer = sink_consumer(&addr, Arc::clone(&sink))?;
            (
                procs,
                Pipeline::Relay { sink },
                vec![("sensor_data", "relay"), ("results", "sink")],
                Some(consumer),
            )
        }
        other => anyhow::bail!("unknown system {other}"),
    };
    let mut probes: Vec<Probe> = Vec::new();
    let mut rate = start.max(100);
    for n in 0..MAX_PROBES {
        let probe = run_probe(
            &nsqd, &pipeline, &channels, rate, seconds, values, dir, &tag, n,
        )
        .await?;
        let kept_up = probe.kept_up;
        let changed = probes.last().is_some_and(|p| p.kept_up != kept_up);
        probes.push(probe);
        if changed {
            break;
        }
        rate = if kept_up {
            rate * 13 / 10
        } else {
            (rate * 3 / 4).max(100)
        };
    }
    for p in procs.iter_mut() {
        p.terminate().await;
    }
    if let Some(c) = sink_consumer {
        c.close().await;
    }
    let best = probes
        .iter()
        .filter(|p| p.kept_up)
        .max_by_key(|p| p.rate)
        .cloned();
    Ok(SustainedRun {
        system: system.to_owned(),
        workers,
        msgs_per_sec: best.as_ref().map_or(0, |p| p.rate),
        p99_ms: best.as_ref().map_or(f64::NAN, |p| p.p99_ms),
        probes,
    })
}

/// The bench's own consumer of `results` for the relay: records (taken_at, received_at).
fn sink_consumer(addr: &str, sink: Arc<Mutex<Vec<(u64, u64)>>>) -> anyhow::Result<nsq::Consumer> {
    let (consumer, mut messages) = nsq::Consumer::new(
        "results",
        "sink",
        nsq::ConsumerConfig {
            nsqd_tcp_addresses: vec![addr.to_owned()],
            max_in_flight: 2500,
            output_buffer_timeout: Some(Duration::from_millis(1)),
            ..nsq::ConsumerConfig::default()
        },
    )
    .context("the relay's sink consumer")?;
    tokio::spawn(async move {
        while let Some(msg) = messages.recv().await {
            let now = unix_nanos();
            if let Ok(reading) = messages::SensorReading::decode(msg.body()) {
                if let Ok(mut s) = sink.lock() {
                    s.push((reading.taken_at, now));
                }
            }
            msg.finish();
        }
    });
    Ok(consumer)
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sum of the depths of `channels` (in memory and on disk, plus in flight).
async fn depth(nsqd: &Nsqd, channels: &[(&str, &str)]) -> i64 {
    let mut sum = 0;
    for (topic, channel) in channels {
        if let Some(c) = nsqd.channel_stats(topic, channel).await {
            sum += c["depth"].as_i64().unwrap_or(0) + c["in_flight_count"].as_i64().unwrap_or(0);
        }
    }
    sum
}

#[allow(clippy::too_many_arguments)]
async fn run_probe(
    nsqd: &Nsqd,
    pipeline: &Pipeline,
    channels: &[(&str, &str)],
    rate: u64,
    seconds: u64,
    values: u32,
    dir: &Path,
    tag: &str,
    n: usize,
) -> anyhow::Result<Probe> {
    let count = rate * seconds;
    let sensor_id = format!("probe-{n}");
    if let Pipeline::Relay { sink } = pipeline {
        sink.lock()
            .map_err(|_| anyhow::anyhow!("sink poisoned"))?
            .clear();
    }
    let started = unix_nanos();
    let mut sensor = crate::spawn_sensor(
        nsqd,
        &sensor_id,
        rate,
        count,
        values,
        &dir.join(format!("{tag}-sensor-{n}.log")),
    )?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds) / 3).await;
    let early = depth(nsqd, channels).await;
    let budget = Duration::from_secs(seconds * 3 + 30);
    while sensor.running() {
        anyhow::ensure!(
            t0.elapsed() < budget,
            "the sensor did not finish in {budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = depth(nsqd, channels).await;
    sensor.wait_success(budget).await?;
    let sensor_done = Instant::now();
    // Latencies of this probe's readings, once they arrived (or DRAIN passed).
    let latencies = loop {
        let l = latencies(pipeline, &sensor_id, started)?;
        if l.len() as u64 >= count || sensor_done.elapsed() > DRAIN {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    // The first half second warms connections up; it is left out, as in the latency mode.
    let warm = started + 500_000_000;
    for (taken, arrived) in &latencies {
        if *taken >= warm {
            h.record(arrived.saturating_sub(*taken).max(1))?;
        }
    }
    let p99_ms = h.value_at_quantile(0.99) as f64 / 1e6;
    let backlog_growth = late - early;
    let kept_up = latencies.len() as u64 >= count
        && p99_ms < P99_LIMIT.as_secs_f64() * 1e3
        && backlog_growth < (rate / 2) as i64;
    Ok(Probe {
        rate,
        arrived: latencies.len() as u64,
        p99_ms,
        backlog_growth,
        kept_up,
    })
}

/// (taken_at, arrived) of the readings of `sensor_id` that arrived so far.
fn latencies(pipeline: &Pipeline, sensor_id: &str, since: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    match pipeline {
        Pipeline::Suite { output } => Ok(crate::lines(output)?
            .into_iter()
            .filter(|l| l.sensor_id == sensor_id)
            .map(|l| (l.taken_at, l.written_at))
            .collect()),
        Pipeline::Relay { sink } => Ok(sink
            .lock()
            .map_err(|_| anyhow::anyhow!("sink poisoned"))?
            .iter()
            .filter(|(taken, _)| *taken >= since)
            .copied()
            .collect()),
    }
}
