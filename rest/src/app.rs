//! `rest-app`: the talk's orchestrator. `--mode pull`: every `--interval`, GET a reading from
//! the sensor, POST it to a worker (the `--worker-url`s in turn) and write the result;
//! `--mode push`: write every result POSTed to `/results`. Each result is one line in the
//! logger's format ([`logger::line::LogLine`]), on stdout or appended to `--output`.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use logger::line::LogLine;
use messages::{SensorReading, WorkResult};
use serde::Serialize;
use suite_common::{
    addr::{HttpAddr, ListenAddr},
    cli::{LogArgs, ServiceConfig},
    config::ConfigError,
    log_limit::LogLimiter,
    setting::{at_least_one, message_id, HumanDuration, Parse},
    shutdown::CancellationToken,
};

use crate::{
    client::{self, RoundRobin},
    metrics as m, paced,
    service::{RestService, Running, ServiceArgs, AFTER_HELP},
};

/// The command line of `rest-app`.
pub type Cli = suite_common::cli::Cli<Config>;

/// How results reach the app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every --interval: sensor, then a worker, then the line (the talk's first version).
    #[default]
    Pull,
    /// Results arrive on POST /results (the second attempt).
    Push,
}

/// The app's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct Config {
    /// pull: ask the sensor and a worker every --interval; push: receive results on POST /results
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::Pull)]
    pub mode: Mode,

    /// Pull mode: the sensor's address (host:port or http://host:port)
    #[arg(long, value_name = "URL")]
    pub sensor_url: Option<HttpAddr>,

    /// Pull mode: a worker's address (host:port or http://host:port); repeatable, used in turn
    #[arg(long, value_name = "URL")]
    pub worker_url: Vec<HttpAddr>,

    /// Pull mode: time between two pulls; 0 for back to back
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub interval: HumanDuration,

    /// Pull mode: pulls in flight at most
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = Parse(at_least_one::<usize>))]
    pub concurrency: usize,

    /// Pull mode: stop (and exit) after this many pulls (unset: until stopped)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// File the lines are appended to (unset: stdout)
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Name of this app in logs and metrics
    #[arg(long, value_name = "ID", default_value = "rest-app", value_parser = Parse(message_id))]
    pub app_id: String,

    /// Timeout, HTTP address, logging.
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs<4292>,
}

/// Where the lines go: one `write` per line, so that a killed app leaves whole lines.
struct Output {
    /// The file or stdout.
    out: Mutex<Box<dyn Write + Send>>,
    /// Write errors are logged at most once a second.
    limiter: Mutex<LogLimiter>,
}

impl Output {
    /// `--output` (appended to) or stdout.
    fn open(path: Option<&PathBuf>) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open --output {}: {e}", path.display()))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            out: Mutex::new(out),
            limiter: Mutex::new(LogLimiter::default()),
        })
    }

    /// Checks `result` and writes its line; the error says what was wrong.
    fn write(&self, result: WorkResult) -> Result<(), String> {
        crate::check_id("sensor_id", &result.sensor_id)?;
        crate::check_id("worker_id", &result.worker_id)?;
        let mut line = Vec::with_capacity(256);
        let written = LogLine::new(result, suite_common::unix_nanos())
            .write_to(&mut line)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let mut out = self
                    .out
                    .lock()
                    .map_err(|_| "output lock poisoned".to_owned())?;
                out.write_all(&line)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write the output: {e}"))
            });
        match &written {
            Ok(()) => metrics::counter!(m::RESULTS_WRITTEN).increment(1),
            Err(error) => {
                let allowed = self.limiter.lock().map(|mut l| l.check()).unwrap_or(None);
                if let Some(held_back) = allowed {
                    tracing::error!(%error, held_back, "a result was not written");
                }
            }
        }
        written
    }
}

/// `POST /results` (push mode).
async fn results(
    State(out): State<Arc<Output>>,
    Json(result): Json<WorkResult>,
) -> (StatusCode, Json<serde_json::Value>) {
    match out.write(result) {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "written": true }))),
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "written": false, "error": error })),
        ),
    }
}

impl ServiceConfig for Config {
    const NAME: &'static str = "rest-app";
    const ENV_PREFIX: &'static str = "REST_APP";
    const ABOUT: &'static str =
        "The talk's REST app: pulls a reading from the sensor and has a worker square it, or \
         receives the results the workers push; writes one JSON line per result";
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
        self.app_id.clone()
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.mode == Mode::Pull {
            if self.sensor_url.is_none() {
                return Err(ConfigError::value(
                    "--sensor-url",
                    "pull mode needs the sensor's address: set --sensor-url, or use --mode push",
                ));
            }
            if self.worker_url.is_empty() {
                return Err(ConfigError::value(
                    "--worker-url",
                    "pull mode needs at least one worker's address: set --worker-url",
                ));
            }
        }
        Ok(())
    }

    async fn run(self, running: Running) -> anyhow::Result<()> {
        let output = Arc::new(Output::open(self.output.as_ref())?);
        let routes = match self.mode {
            Mode::Push => Router::new()
                .route("/results", post(results))
                .with_state(Arc::clone(&output)),
            Mode::Pull => Router::new(),
        };
        running
            .serve_while(routes, |shutdown| async move {
                match self.mode {
                    Mode::Push => {
                        tracing::info!("push mode: writing the results POSTed to /results");
                        shutdown.cancelled().await;
                        Ok(())
                    }
                    Mode::Pull => pull(&self, &output, &shutdown).await,
                }
            })
            .await
    }
}

/// Pull mode: sensor → worker → line, every `--interval`, until `--count` or `shutdown`.
async fn pull(
    s: &Config,
    output: &Arc<Output>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let client = client::client(s.service.timeout.get())?;
    let sensor = s
        .sensor_url
        .as_ref()
        .map(|u| format!("{}/reading", u.url()))
        .ok_or_else(|| anyhow::anyhow!("pull mode needs --sensor-url"))?;
    let workers = Arc::new(RoundRobin::new(&s.worker_url, "/square"));
    let limiter = Arc::new(Mutex::new(LogLimiter::default()));
    tracing::info!(%sensor, workers = s.worker_url.len(), interval = %s.interval, "pull mode");
    let schedule = paced::Schedule {
        period: s.interval.get(),
        concurrency: s.concurrency,
        count: s.count,
    };
    let pulls = paced::run(schedule, shutdown, |_| {
        let (client, sensor, workers, limiter, output) = (
            client.clone(),
            sensor.clone(),
            Arc::clone(&workers),
            Arc::clone(&limiter),
            Arc::clone(output),
        );
        async move {
            let reading: SensorReading = match client::get_json(&client, &sensor).await {
                Ok(r) => r,
                Err(e) => return client::failed(&limiter, "sensor", &e),
            };
            let Some(worker) = workers.next() else { return };
            match client::post_json::<_, WorkResult>(&client, worker, &reading).await {
                // A result the app cannot write was logged by `write`.
                Ok(result) => drop(output.write(result)),
                Err(e) => client::failed(&limiter, "worker", &e),
            }
        }
    })
    .await;
    tracing::info!(pulls, "pulling stopped after {pulls} pulls");
    Ok(())
}
