//! Building and running the sensor: [`Application::build`] then
//! [`Application::run_until_stopped`].
//!
//! `build` logs the settings (already validated while parsing), installs
//! the metrics recorder, starts the nsqd producer (which connects, and reconnects, in the
//! background: an unreachable nsqd is logged and retried, never fatal) and binds the HTTP
//! port. `run_until_stopped` serves HTTP and runs the engine (`crate::engine`) until `--count` is reached or
//! the shutdown future resolves, and returns the run's [`Report`].

use std::{
    future::Future,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

use anyhow::Context as _;
use nsq::{ConnectionConfig, ConnectionState, Producer, ProducerConfig};
use suite_common::{
    config::ConfigError,
    consul::{self, ConsulHealth, Discovery, Registration},
    http::{self, HttpServer, Readiness},
    service::Base,
    shutdown::CancellationToken,
};

use crate::{
    complete::CompleteWatch,
    config::Config,
    engine::{Engine, Report},
    history::History,
    http::{router as readings_router, ReadingsState},
    metrics as m,
    replay::Responder,
};

/// Name of the service, in `/health`, in the metrics' `service` label and in nsqadmin.
pub const SERVICE: &str = "sensor";

/// A built sensor, ready to run.
pub struct Application {
    /// The settings.
    settings: Arc<Config>,
    /// This run's epoch: Unix milliseconds at start-up, new at every start.
    epoch: u64,
    /// The nsqd producer (already connecting).
    producer: Producer,
    /// Consul, with --consul-http-address: registration, nsqlookupd and nsqd by name.
    discovery: Option<Arc<Discovery>>,
    /// Recent readings, shared by the loop and `GET /readings`.
    history: Arc<Mutex<History>>,
    /// What `/ready` reports: ready while the producer is connected.
    readiness: Readiness,
    /// The bound HTTP port.
    http: HttpServer,
    /// All HTTP routes.
    router: axum::Router,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("sensor_id", &self.settings.sensor_id)
            .field("epoch", &self.epoch)
            .field("http", &self.http.local_addr())
            .finish_non_exhaustive()
    }
}

suite_common::impl_service!(Application, Config);

impl Application {
    /// Starts connecting to nsqd and binds the HTTP port.
    ///
    /// Must be called inside a tokio runtime. Fails with a usage error for a bad setting, or
    /// when the HTTP port cannot be bound or the metrics recorder installed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.nsq.resolve()?;
        let discovery = Discovery::from_args(&config.consul)?.map(Arc::new);
        let settings = Arc::new(config);
        let Base {
            readiness,
            router,
            http,
        } = Base::start(
            SERVICE,
            &settings.sensor_id,
            &*settings,
            match settings.nsqd() {
                Some(nsqd) => format!("connecting to nsqd {nsqd}"),
                None => "waiting for Consul to list an nsqd".to_owned(),
            },
        )
        .await?;
        m::describe();
        m::register(&settings.topic, &settings.status_topic);

        let epoch = unix_millis();
        let producer = consul::producer(
            discovery.as_deref(),
            settings.nsqd(),
            crate::config::DEFAULT_NSQD,
            ProducerConfig {
                connection: connection_config(&settings)?,
                ..ProducerConfig::default()
            },
        )
        .context("starting the nsqd producer")?;

        let history = Arc::new(Mutex::new(History::new(
            settings.history,
            settings.history_bytes,
        )));
        let router = router.merge(readings_router(ReadingsState {
            sensor_id: Arc::from(settings.sensor_id.as_str()),
            epoch,
            history: Arc::clone(&history),
        }));
        tracing::info!(
            http_address = %http.local_addr(),
            sensor_id = %settings.sensor_id,
            epoch,
            "sensor started"
        );
        Ok(Self {
            settings,
            epoch,
            producer,
            discovery,
            history,
            readiness,
            http,
            router,
        })
    }

    /// This run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sensor id stamped into the readings.
    pub fn sensor_id(&self) -> &str {
        &self.settings.sensor_id
    }

    /// The readiness reported by `/ready` (e.g. to wait until the sensor is connected).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves HTTP and publishes readings until `--count` readings are confirmed or
    /// `shutdown` resolves; then flushes the outbox (bounded by `--flush-timeout`), announces
    /// the final status and stops.
    ///
    /// With `--count`, readings that could not be published make it an error (exit code 1):
    /// the sensor did not deliver what it was asked to. After a shutdown, they are reported
    /// in the log and the [`Report`], and the result is `Ok`.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<Report>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop_http = CancellationToken::new();
        let http_addr = self.http.local_addr();
        let http_task = tokio::spawn(
            self.http
                .run(self.router, stop_http.clone().cancelled_owned()),
        );
        if let Some(discovery) = &self.discovery {
            discovery.keep_registered(Registration::new(
                SERVICE,
                &self.settings.sensor_id,
                http_addr,
                &self.settings.consul,
            ));
        }
        let readiness_task = tokio::spawn(track_producer(
            self.producer.clone(),
            self.readiness.clone(),
            self.discovery.as_ref().map(|d| d.health()),
        ));

        let finishing = CancellationToken::new();
        let responder = Responder::start(
            Arc::clone(&self.settings),
            self.discovery.as_deref(),
            self.epoch,
            Arc::clone(&self.history),
            self.producer.clone(),
            connection_config(&self.settings)?,
        )?;
        let responder_task = tokio::spawn(responder.run(finishing.clone()));
        // Only a sensor that stays after its last reading waits for a complete announcement.
        let (watch_task, completed) =
            if self.settings.count.is_some() && !self.settings.linger.get().is_zero() {
                let (watch, completed) = CompleteWatch::start(
                    &self.settings,
                    self.discovery.as_deref(),
                    self.epoch,
                    connection_config(&self.settings)?,
                )?;
                (Some(tokio::spawn(watch.run(finishing.clone()))), completed)
            } else {
                (None, tokio::sync::watch::channel(None).1)
            };
        let engine = Engine::new(
            Arc::clone(&self.settings),
            self.epoch,
            self.producer.clone(),
            Arc::clone(&self.history),
            Arc::new(AtomicU64::new(0)),
            finishing.clone(),
        );
        let result = engine.run(shutdown, completed).await;
        finishing.cancel();
        if let Err(e) = responder_task.await {
            tracing::warn!(error = %e, "the replay responder failed");
        }
        if let Some(task) = watch_task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the complete watcher failed");
            }
        }

        readiness_task.abort();
        self.readiness.set_not_ready("stopped");
        if let Some(discovery) = &self.discovery {
            discovery.deregister().await;
        }
        stop_http.cancel();
        match http_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server failed"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }

        let report = result?;
        if let Some(count) = self.settings.count {
            if report.reason == crate::engine::StopReason::CountReached && !report.all_confirmed() {
                anyhow::bail!(
                    "only {} of {count} readings were confirmed by nsqd ({} dropped from the full \
                     outbox, {} rejected)",
                    report.confirmed,
                    report.dropped,
                    report.failed
                );
            }
        }
        Ok(report)
    }
}

/// Connection settings that make the sensor recognisable in nsqadmin.
fn connection_config(s: &Config) -> Result<ConnectionConfig, ConfigError> {
    Ok(s.nsq.resolve()?.apply(ConnectionConfig {
        client_id: s.sensor_id.clone(),
        user_agent: format!("nsq-suite-{SERVICE}/{}", env!("CARGO_PKG_VERSION")),
        ..ConnectionConfig::default()
    }))
}

/// Keeps `/ready` and the connection gauge in line with the producer's connection (and,
/// with Consul, with whether Consul answers).
async fn track_producer(
    producer: Producer,
    readiness: Readiness,
    mut consul: Option<ConsulHealth>,
) {
    let mut state = producer.state();
    loop {
        let current = state.borrow_and_update().clone();
        let addr = producer.addr();
        let connected = current == ConnectionState::Connected;
        metrics::gauge!(m::CONNECTIONS, "role" => "producer", "nsqd" => addr.clone())
            .set(if connected { 1.0 } else { 0.0 });
        let consul_problem = consul.as_ref().and_then(ConsulHealth::problem);
        match current {
            ConnectionState::Connected => match consul_problem {
                Some(problem) => readiness.set_not_ready(problem),
                None => readiness.set_ready(),
            },
            ConnectionState::Closed => readiness.set_not_ready("stopping"),
            _ if addr.is_empty() => readiness.set_not_ready(
                consul_problem.unwrap_or_else(|| "waiting for Consul to list an nsqd".to_owned()),
            ),
            other => readiness.set_not_ready(http::producer_reason(&other, &addr)),
        }
        let consul_changed = async {
            match consul.as_mut() {
                Some(health) => health.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            () = consul_changed => {}
        }
    }
}

/// Now, in milliseconds since the Unix epoch (the epoch of a new run).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
