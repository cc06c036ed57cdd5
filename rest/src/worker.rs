//! `rest-worker`: `POST /square` answers the `WorkResult` of the reading in the body; with
//! `--push-to` it POSTs the result to the app's `/results` and answers 202 instead.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use messages::{SensorReading, WorkResult};
use serde::Serialize;
use suite_common::{
    addr::{HttpAddr, ListenAddr},
    cli::{LogArgs, ServiceConfig},
    log_limit::LogLimiter,
    setting::{message_id, Parse},
};
use worker::{
    process::{compute, Verdict},
    StalePolicy,
};

use crate::{
    client, metrics as m,
    service::{RestService, Running, ServiceArgs, AFTER_HELP},
};

/// The command line of `rest-worker`.
pub type Cli = suite_common::cli::Cli<Config>;

/// The worker's settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct Config {
    /// Name of this worker in the results
    #[arg(long, value_name = "ID", default_value_t = format!("rest-worker-{}", std::process::id()), value_parser = Parse(message_id))]
    pub worker_id: String,

    /// Simulated computation time per reading, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub work_ms: u64,

    /// Push mode: the app's address (host:port or http://host:port) to POST each result to
    /// (its /results). Unset: the result is the answer
    #[arg(long, value_name = "URL")]
    pub push_to: Option<HttpAddr>,

    /// Timeout, HTTP address, logging.
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs<4291>,
}

/// What `/square` needs.
struct Worker {
    /// `--worker-id`.
    id: String,
    /// `--work-ms`.
    work: Duration,
    /// The app's `/results` in push mode, and the client to reach it.
    app: Option<(String, reqwest::Client)>,
    /// Failed forwards are logged at most once a second.
    limiter: Mutex<LogLimiter>,
}

/// `POST /square`.
async fn square(State(w): State<Arc<Worker>>, Json(reading): Json<SensorReading>) -> Response {
    if let Err(e) = crate::check_id("sensor_id", &reading.sensor_id) {
        return (StatusCode::UNPROCESSABLE_ENTITY, e).into_response();
    }
    if !w.work.is_zero() {
        tokio::time::sleep(w.work).await;
    }
    let Some(result) = answer(reading, &w.id) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "dropped as stale").into_response();
    };
    metrics::counter!(m::READINGS_SQUARED).increment(1);
    let Some((url, client)) = &w.app else {
        return Json(result).into_response();
    };
    let sent: Result<serde::de::IgnoredAny, _> = client::post_json(client, url, &result).await;
    match sent {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "forwarded_to": url })),
        )
            .into_response(),
        Err(e) => {
            client::failed(&w.limiter, "app", &e);
            (
                StatusCode::BAD_GATEWAY,
                format!("the result could not be given to the app: {e}"),
            )
                .into_response()
        }
    }
}

/// The routes of a worker with id `id` (`/square`), forwarding to `app` when given.
fn routes(id: &str, work: Duration, app: Option<(String, reqwest::Client)>) -> Router {
    let state = Arc::new(Worker {
        id: id.to_owned(),
        work,
        app,
        limiter: Mutex::new(LogLimiter::default()),
    });
    Router::new()
        .route("/square", post(square))
        .with_state(state)
}

impl ServiceConfig for Config {
    const NAME: &'static str = "rest-worker";
    const ENV_PREFIX: &'static str = "REST_WORKER";
    const ABOUT: &'static str =
        "The talk's REST worker: POST /square answers the squares of a reading; with --push-to it \
         sends them to the app instead";
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
        self.worker_id.clone()
    }

    async fn run(self, running: Running) -> anyhow::Result<()> {
        let app = match &self.push_to {
            Some(app) => Some((
                format!("{}/results", app.url()),
                client::client(self.service.timeout.get())?,
            )),
            None => None,
        };
        let routes = routes(&self.worker_id, Duration::from_millis(self.work_ms), app);
        running
            .serve_while(routes, |shutdown| async move {
                shutdown.cancelled().await;
                Ok(())
            })
            .await
    }
}

/// The worker's result for `reading`: the NSQ worker's computation, with no `--max-age` (so
/// never stale, and always `Some`).
pub fn answer(reading: SensorReading, worker_id: &str) -> Option<WorkResult> {
    match compute(
        reading,
        worker_id,
        suite_common::unix_nanos(),
        None,
        StalePolicy::Flag,
    ) {
        Verdict::Publish(result) => Some(result),
        Verdict::DropStale { .. } => None,
    }
}
