//! The HTTP port every service has: `/health`, `/ready` and `/metrics`.
//!
//! Start-up is split in two so that `127.0.0.1:0` works: [`HttpServer::bind`] binds the
//! port (and fails early, as a start-up error, when it is taken), [`HttpServer::local_addr`]
//! tells the real address to log or print, and [`HttpServer::run`] serves until the shutdown
//! future resolves (mini-redis' `run(listener, shutdown)`).
//!
//! [`base_router`] gives the three common routes; a service merges its own into it:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use suite_common::http::{self, BaseState, HttpServer, Readiness};
//!
//! let metrics = http::install_metrics("worker", "worker-1")?;
//! let readiness = Readiness::not_ready("connecting to nsqd");
//! let state = BaseState::new("worker", "worker-1", readiness.clone(), metrics);
//! let router = http::base_router(state).merge(axum::Router::new() /* own routes */);
//!
//! let server = HttpServer::bind("127.0.0.1:0").await?;
//! println!("http listening on {}", server.local_addr());
//! let token = tokio_util::sync::CancellationToken::new();
//! let shutdown = token.clone().cancelled_owned();
//! tokio::spawn(server.run(router, shutdown));
//! readiness.set_ready();
//! # Ok(()) }
//! ```
//!
//! | route          | answer                                                              |
//! |----------------|---------------------------------------------------------------------|
//! | `GET /health`  | 200 `{"status":"ok","service":"worker","id":"worker-1"}`: the process serves HTTP |
//! | `GET /ready`   | 200 `{"ready":true}`, or 503 `{"ready":false,"reason":"..."}`      |
//! | `GET /metrics` | Prometheus text format; every series has the labels `service` and `id` |
//!
//! Metrics are recorded anywhere in the process with the `metrics` crate's macros
//! (`metrics::counter!("worker_messages_total").increment(1)`), once [`install_metrics`] has
//! installed the global recorder. Histograms are rendered with [`HISTOGRAM_BUCKETS`]
//! (seconds), so durations should be recorded in seconds.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};

/// Histogram buckets, in seconds (0.5 ms to 10 s).
pub const HISTOGRAM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the metrics recorder's upkeep runs (drains histogram buffers).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        /// The address as configured.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// A bound, not yet serving, HTTP listener.
#[derive(Debug)]
pub struct HttpServer {
    /// The bound socket.
    listener: TcpListener,
    /// Its address, with the real port when bound to port 0.
    local_addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr` (`host:port`; port 0 picks a free port).
    pub async fn bind(addr: &str) -> Result<Self, HttpError> {
        let bind_error = |source| HttpError::Bind {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `router` until `shutdown` resolves, then finishes the requests in progress.
    pub async fn run<F>(self, router: Router, shutdown: F) -> Result<(), HttpError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tracing::info!(addr = %self.local_addr, "http server listening");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(HttpError::Serve)?;
        tracing::debug!(addr = %self.local_addr, "http server stopped");
        Ok(())
    }
}

/// Whether the service can do its work now, as reported by `GET /ready`.
///
/// Cheap to clone; every clone shares the same state. The service sets it from the state of
/// its connections, e.g. `set_not_ready("producer disconnected")` when its nsqd connection
/// drops and `set_ready()` when it is back. One reason at a time: the last call wins.
/// Changes are logged.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `None` when ready, else the reason for not being ready.
    state: Arc<watch::Sender<Option<String>>>,
}

impl Readiness {
    /// A handle that starts ready.
    pub fn ready() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(None)),
        }
    }

    /// A handle that starts not ready, for the given reason (e.g. `"starting"`).
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            state: Arc::new(watch::Sender::new(Some(reason.into()))),
        }
    }

    /// Marks the service ready.
    pub fn set_ready(&self) {
        let changed = self.state.send_if_modified(|state| state.take().is_some());
        if changed {
            tracing::info!("ready");
        }
    }

    /// Marks the service not ready, with a reason shown by `/ready`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let changed = self.state.send_if_modified(|state| {
            if state.as_deref() == Some(reason.as_str()) {
                false
            } else {
                *state = Some(reason.clone());
                true
            }
        });
        if changed {
            tracing::warn!(%reason, "not ready");
        }
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.state.borrow().is_none()
    }

    /// Why the service is not ready (`None` when it is).
    pub fn reason(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change (`None` = ready), e.g. to wait until ready.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }
}

impl Default for Readiness {
    /// Starts not ready with the reason `"starting"`.
    fn default() -> Self {
        Self::not_ready("starting")
    }
}

/// State of the common routes.
#[derive(Debug, Clone)]
pub struct BaseState {
    /// Service name (`sensor`, `worker`, `logger`), reported by `/health`.
    service: Arc<str>,
    /// Instance id, reported by `/health` (tells replicas apart).
    id: Arc<str>,
    /// Answers `/ready`.
    readiness: Readiness,
    /// Renders `/metrics`.
    metrics: PrometheusHandle,
}

impl BaseState {
    /// State for a service instance; `metrics` comes from [`install_metrics`].
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        readiness: Readiness,
        metrics: PrometheusHandle,
    ) -> Self {
        Self {
            service: Arc::from(service.into()),
            id: Arc::from(id.into()),
            readiness,
            metrics,
        }
    }

    /// The readiness handle `/ready` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// The router with `/health`, `/ready` and `/metrics`; merge the service's own routes into it.
pub fn base_router(state: BaseState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn health(State(state): State<BaseState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "service": &*state.service,
        "id": &*state.id,
    }))
}

async fn ready(State(state): State<BaseState>) -> Response {
    match state.readiness.reason() {
        None => (StatusCode::OK, Json(json!({ "ready": true }))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn render_metrics(State(state): State<BaseState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// What [`install_metrics`] installed, so that a second call can return the same handle.
struct Installed {
    /// The `service` label.
    service: String,
    /// The `id` label.
    id: String,
    /// Renders the installed recorder.
    handle: PrometheusHandle,
}

static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder, with the global labels `service` and `id`,
/// and returns the handle that renders it.
///
/// Call it once at start-up, inside the tokio runtime (it spawns the recorder's periodic
/// upkeep there). A second call with the same labels returns the same handle; with other
/// labels, or when another recorder is installed, it is an error.
pub fn install_metrics(service: &str, id: &str) -> Result<PrometheusHandle, HttpError> {
    let mut installed = INSTALLED
        .lock()
        .map_err(|_| HttpError::Metrics("a previous installation panicked".to_owned()))?;
    if let Some(installed) = installed.as_ref() {
        if installed.service == service && installed.id == id {
            return Ok(installed.handle.clone());
        }
        return Err(HttpError::Metrics(format!(
            "already installed for service={} id={}",
            installed.service, installed.id
        )));
    }
    let handle = PrometheusBuilder::new()
        .add_global_label("service", service)
        .add_global_label("id", id)
        .set_buckets(HISTOGRAM_BUCKETS)
        .map_err(|e| HttpError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| HttpError::Metrics(e.to_string()))?;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    *installed = Some(Installed {
        service: service.to_owned(),
        id: id.to_owned(),
        handle: handle.clone(),
    });
    Ok(handle)
}

/// Sets the gauge `name{role, nsqd}` of every node in `nodes` (address, connected) to 1 or 0,
/// and to 0 for the nodes of `known` no longer listed (e.g. gone from nsqlookupd), so that a
/// dropped node does not stay at 1. `known` remembers every node seen.
pub fn set_node_gauges<'a>(
    name: &'static str,
    role: &'static str,
    nodes: impl IntoIterator<Item = (&'a str, bool)>,
    known: &mut std::collections::BTreeSet<String>,
) {
    let mut current = std::collections::BTreeSet::new();
    for (addr, connected) in nodes {
        metrics::gauge!(name, "role" => role, "nsqd" => addr.to_owned()).set(if connected {
            1.0
        } else {
            0.0
        });
        current.insert(addr.to_owned());
    }
    for gone in known.difference(&current) {
        metrics::gauge!(name, "role" => role, "nsqd" => gone.clone()).set(0.0);
    }
    known.extend(current);
}

/// How often [`sample_consumer`] refreshes the gauges and `/ready`.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Refreshes, every [`SAMPLE_INTERVAL`] until the task is aborted, what a consuming service
/// (worker, logger) reports of its consumer of `topic`/`channel`:
///
/// * the gauges [`CONNECTIONS`](crate::nsq_metrics::CONNECTIONS) (role `consumer`, one per
///   nsqd) and [`IN_FLIGHT`](crate::nsq_metrics::IN_FLIGHT);
/// * `readiness`: not ready while no nsqd delivers (with the last disconnect reasons), else
///   while `own` returns a problem, else while Consul (`discovery`) reports one, else ready.
///
/// `own` is the service's part: it runs on every tick, sets the service's own gauges (e.g. its
/// producer's connection) and returns why the service is not ready, or `None`.
pub fn sample_consumer(
    consumer: nsq::Consumer,
    topic: &str,
    channel: &str,
    readiness: Readiness,
    discovery: Option<Arc<crate::consul::Discovery>>,
    mut own: impl FnMut() -> Option<String> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let labels = crate::nsq_metrics::consumer_labels(topic, channel);
    let not_consuming = format!("not consuming {topic}/{channel} from any nsqd");
    async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut known = std::collections::BTreeSet::new();
        let mut reasons = DisconnectReasons::new(consumer.events());
        loop {
            tick.tick().await;
            reasons.update();
            let stats = consumer.stats();
            set_node_gauges(
                crate::nsq_metrics::CONNECTIONS,
                "consumer",
                stats.nodes.iter().map(|n| (n.addr.as_str(), n.connected)),
                &mut known,
            );
            metrics::gauge!(crate::nsq_metrics::IN_FLIGHT, &labels)
                .set(f64::from(stats.in_flight()));
            let own_problem = own();
            if stats.connections() == 0 {
                readiness.set_not_ready(format!("{not_consuming}{}", reasons.describe()));
            } else if let Some(problem) = own_problem {
                readiness.set_not_ready(problem);
            } else if let Some(problem) = discovery.as_ref().and_then(|d| d.problem()) {
                readiness.set_not_ready(problem);
            } else {
                readiness.set_ready();
            }
        }
    }
}

/// Why the connections to nsqd are down, for the reason `/ready` gives: the last disconnect
/// reason of each nsqd (for example a TLS certificate nsqd's CA did not sign, or
/// `E_AUTH_FAILED`), read from a consumer's events.
#[derive(Debug)]
pub struct DisconnectReasons {
    /// The consumer's events.
    events: tokio::sync::broadcast::Receiver<nsq::Event>,
    /// Last reason per nsqd, cleared when it connects.
    last: std::collections::BTreeMap<String, String>,
}

impl DisconnectReasons {
    /// Follows `events` (from `Consumer::events`).
    pub fn new(events: tokio::sync::broadcast::Receiver<nsq::Event>) -> Self {
        Self {
            events,
            last: std::collections::BTreeMap::new(),
        }
    }

    /// Takes in the events since the last call, without waiting.
    pub fn update(&mut self) {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            match self.events.try_recv() {
                Ok(nsq::Event::Disconnected { addr, reason }) => {
                    self.last.insert(addr, reason);
                }
                Ok(nsq::Event::Connected { addr }) | Ok(nsq::Event::NodeRemoved { addr }) => {
                    self.last.remove(&addr);
                }
                Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return,
            }
        }
    }

    /// `": <addr>: <reason>; ..."` for the nsqd whose last connection failed (at most three,
    /// each reason cut to 200 characters), or nothing.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .last
            .iter()
            .take(3)
            .map(|(addr, reason)| {
                let reason: String = reason.chars().take(200).collect();
                format!("{addr}: {reason}")
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join("; "))
        }
    }
}

/// The reason `/ready` gives for a producer to `addr` in `state`: what it is doing, or why its
/// last attempt failed.
pub fn producer_reason(state: &nsq::ConnectionState, addr: &str) -> String {
    match state {
        nsq::ConnectionState::Disconnected { reason } => {
            let reason: String = reason.chars().take(200).collect();
            format!("nsqd {addr} unreachable: {reason}")
        }
        nsq::ConnectionState::Closed => format!("the connection to nsqd {addr} is closed"),
        _ => format!("connecting to nsqd {addr}"),
    }
}
