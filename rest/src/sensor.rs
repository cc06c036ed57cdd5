//! `rest-sensor`: `GET /reading` takes and returns the next reading; with `--push-to` it POSTs
//! every reading to a worker's `/square` instead, at `--rate` (the talk's second attempt).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, routing::get, Json, Router};
use messages::{SensorReading, SCHEMA_VERSION};
use rand::Rng as _;
use serde::Serialize;
use suite_common::{
    addr::{HttpAddr, ListenAddr},
    cli::{LogArgs, ServiceConfig},
    log_limit::LogLimiter,
    setting::{at_least_one, message_id, Invalid, Parse},
    shutdown::CancellationToken,
};

use crate::{
    client::{self, RoundRobin},
    metrics as m, paced,
    service::{RestService, Running, ServiceArgs, AFTER_HELP},
};

/// The command line of `rest-sensor`.
pub type Cli = suite_common::cli::Cli<Config>;

/// Most values a reading may have (so that it stays far below the body limit).
pub const MAX_VALUES: u32 = 1000;

/// The sensor's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct Config {
    /// Name of the sensor, in every reading
    #[arg(long, value_name = "ID", default_value = "rest-sensor", value_parser = Parse(message_id))]
    pub sensor_id: String,

    /// Values per reading
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = Parse(values))]
    pub values: u32,

    /// Push mode: a worker's address (host:port or http://host:port) to POST each reading
    /// to; repeatable, used in turn. Unset: pull mode (GET /reading)
    #[arg(long, value_name = "URL")]
    pub push_to: Vec<HttpAddr>,

    /// Push mode: readings per second; 0 for as fast as --concurrency allows
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub rate: u32,

    /// Push mode: stop (and exit) after this many readings (unset: until stopped)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Push mode: requests in flight at most
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = Parse(at_least_one::<usize>))]
    pub concurrency: usize,

    /// Timeout, HTTP address, logging.
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs<4290>,
}

/// Parses `--values`: 1 to [`MAX_VALUES`].
fn values(text: &str) -> Result<u32, Invalid> {
    let n: u32 = at_least_one(text)?;
    if n > MAX_VALUES {
        return Err(Invalid::Value(format!("must be at most {MAX_VALUES}")));
    }
    Ok(n)
}

/// Time between two readings at `rate` per second (zero: as fast as possible).
pub fn period(rate: u32) -> Duration {
    if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(1) / rate
    }
}

/// Takes readings: the next seq, random values.
#[derive(Debug)]
pub struct Sensor {
    /// `--sensor-id`.
    sensor_id: String,
    /// This run's epoch (Unix milliseconds at start).
    epoch: u64,
    /// `--values`.
    values: usize,
    /// The last seq taken.
    seq: AtomicU64,
}

impl Sensor {
    /// A sensor starting at seq 1 in a new epoch.
    pub fn new(sensor_id: &str, values: u32) -> Self {
        Self {
            sensor_id: sensor_id.to_owned(),
            epoch: suite_common::unix_nanos() / 1_000_000,
            values: values as usize,
            seq: AtomicU64::new(0),
        }
    }

    /// The next reading, taken now.
    pub fn take(&self) -> SensorReading {
        metrics::counter!(m::READINGS_TAKEN).increment(1);
        let mut rng = rand::rng();
        SensorReading {
            schema: SCHEMA_VERSION,
            sensor_id: self.sensor_id.clone(),
            epoch: self.epoch,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            taken_at: suite_common::unix_nanos(),
            values: (0..self.values).map(|_| rng.random()).collect(),
        }
    }
}

/// `GET /reading`.
async fn reading(State(sensor): State<Arc<Sensor>>) -> Json<SensorReading> {
    Json(sensor.take())
}

impl ServiceConfig for Config {
    const NAME: &'static str = "rest-sensor";
    const ENV_PREFIX: &'static str = "REST_SENSOR";
    const ABOUT: &'static str =
        "The talk's REST sensor: GET /reading answers the next reading; with --push-to it POSTs \
         each reading to a worker instead";
    const AFTER_HELP: &'static str = AFTER_HELP;

    fn http_address(&self) -> &ListenAddr {
        &self.service.http_address
    }

    fn log(&self) -> &LogArgs {
        &self.service.log
    }
}

impl RestService for Config {
    fn id(&self) -> String {
        self.sensor_id.clone()
    }

    async fn run(self, running: Running) -> anyhow::Result<()> {
        let sensor = Arc::new(Sensor::new(&self.sensor_id, self.values));
        let routes = Router::new()
            .route("/reading", get(reading))
            .with_state(Arc::clone(&sensor));
        running
            .serve_while(routes, |shutdown| async move {
                if self.push_to.is_empty() {
                    tracing::info!("pull mode: serving GET /reading");
                    shutdown.cancelled().await;
                    Ok(())
                } else {
                    push(&self, &sensor, &shutdown).await
                }
            })
            .await
    }
}

/// Push mode: POSTs readings to the workers in turn until `--count` or `shutdown`.
async fn push(
    s: &Config,
    sensor: &Arc<Sensor>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let client = client::client(s.service.timeout.get())?;
    let workers = Arc::new(RoundRobin::new(&s.push_to, "/square"));
    let limiter = Arc::new(Mutex::new(LogLimiter::default()));
    let lost = Arc::new(AtomicU64::new(0));
    tracing::info!(
        workers = s.push_to.len(),
        rate = s.rate,
        "push mode: POSTing readings to the workers"
    );
    let schedule = paced::Schedule {
        period: period(s.rate),
        concurrency: s.concurrency,
        count: s.count,
    };
    let taken = paced::run(schedule, shutdown, |_| {
        let reading = sensor.take();
        let (client, workers, limiter, lost) = (
            client.clone(),
            Arc::clone(&workers),
            Arc::clone(&limiter),
            Arc::clone(&lost),
        );
        async move {
            let Some(url) = workers.next() else { return };
            let sent: Result<serde::de::IgnoredAny, _> =
                client::post_json(&client, url, &reading).await;
            if let Err(e) = sent {
                lost.fetch_add(1, Ordering::Relaxed);
                client::failed(&limiter, "worker", &e);
            }
        }
    })
    .await;
    tracing::info!(
        taken,
        lost = lost.load(Ordering::Relaxed),
        "pushing stopped: {taken} readings taken, {} lost",
        lost.load(Ordering::Relaxed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use suite_common::cli::ServiceCli as _;

    use super::*;

    #[test]
    fn readings_count_up_in_one_epoch() {
        let s = Sensor::new("s", 4);
        let (a, b) = (s.take(), s.take());
        assert_eq!((a.seq, b.seq, a.epoch), (1, 2, b.epoch));
        assert_eq!((a.values.len(), a.sensor_id.as_str()), (4, "s"));
    }

    #[test]
    fn settings_and_their_errors() {
        let parse = |args: &[&str]| {
            let mut all = vec!["rest-sensor"];
            all.extend_from_slice(args);
            Cli::try_parse_with_env(all, &Default::default()).map(|c| c.config)
        };
        let c = parse(&["--push-to", "127.0.0.1:1", "--push-to", "http://h:2"]).unwrap();
        assert_eq!(c.push_to.len(), 2);
        assert_eq!((c.rate, c.concurrency, c.values), (10, 64, 3));
        assert!(parse(&["--values", "1001"]).is_err());
        assert!(parse(&["--push-to", "https://h:1"]).is_err());
        assert!(parse(&["--timeout", "0s"]).is_err());
        assert_eq!(period(1000), Duration::from_millis(1));
        assert_eq!(period(0), Duration::ZERO);
    }
}
