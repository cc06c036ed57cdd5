//! What the three binaries share, on `suite-common` like the NSQ services: each binary's
//! settings struct implements [`suite_common::cli::ServiceConfig`] (its command line) and
//! [`RestService`] (how it runs), and its `main` is
//! `suite_common::service::main::<Rest<Config>>()`: `--print-config`, `healthcheck`, logs,
//! metrics, the HTTP port with `/health` `/ready` `/metrics`, SIGTERM/SIGINT.

use std::{future::Future, net::SocketAddr};

use serde::Serialize;
use suite_common::{
    addr::ListenAddr,
    cli::{LogArgs, ServiceConfig},
    config::ConfigError,
    http::{HttpServer, Readiness},
    service::{Base, Service},
    setting::{HumanDuration, Parse},
    shutdown::CancellationToken,
};

/// The settings every REST service has; `PORT` is its default HTTP port on 127.0.0.1.
/// Flatten into its settings with `#[command(flatten)]` and `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct ServiceArgs<const PORT: u16> {
    /// Time limit of each request this service makes, connecting included
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = Parse(HumanDuration::nonzero))]
    pub timeout: HumanDuration,

    /// Address of the HTTP port (the service's routes, /health, /ready, /metrics)
    #[arg(long, value_name = "HOST:PORT", global = true, default_value_t = ListenAddr::loopback(PORT))]
    pub http_address: ListenAddr,

    /// Logging.
    #[command(flatten)]
    #[serde(flatten)]
    pub log: LogArgs,
}

/// A REST service's settings (its [`ServiceConfig::NAME`] is the name in logs, `/health` and
/// the metrics' `service` label), and how it runs.
pub trait RestService: ServiceConfig + Send + Sync + 'static {
    /// The instance id (the metrics' `id` label).
    fn id(&self) -> String;

    /// Rules that involve several settings, naming the flags.
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Runs until `running.shutdown` is cancelled (or the service's work is done).
    fn run(self, running: Running) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A built REST service (any of the three): what [`suite_common::service::main`] runs.
#[derive(Debug)]
pub struct Rest<C> {
    /// The checked settings.
    config: C,
    /// `/health`, `/ready`, `/metrics`; the service merges its routes in.
    base: axum::Router,
    /// The bound port.
    http: HttpServer,
    /// `/ready`: ready from the start (a REST service has nothing to connect to first).
    readiness: Readiness,
}

impl<C: RestService> Service for Rest<C> {
    type Config = C;

    async fn build(config: C) -> anyhow::Result<Self> {
        config.check()?;
        let Base {
            readiness,
            router,
            http,
        } = Base::start(C::NAME, &config.id(), &config, "starting").await?;
        readiness.set_ready();
        tracing::info!(http_address = %http.local_addr(), "{} started", C::NAME);
        Ok(Self {
            config,
            base: router,
            http,
            readiness,
        })
    }

    fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // The services stop their work on a token (paced runs finish what is in flight).
        let token = CancellationToken::new();
        let cancel = token.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            cancel.cancel();
        });
        let result = self
            .config
            .run(Running {
                base: self.base,
                http: self.http,
                readiness: self.readiness,
                shutdown: token,
            })
            .await;
        watcher.abort();
        result?;
        tracing::info!("{} stopped", C::NAME);
        Ok(())
    }
}

/// What a service gets to run with: the bound HTTP port and the common routes.
pub struct Running {
    /// `/health`, `/ready`, `/metrics`; the service merges its routes in.
    pub base: axum::Router,
    /// The bound port.
    pub http: HttpServer,
    /// `/ready`.
    pub readiness: Readiness,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
}

impl Running {
    /// The address the HTTP port is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Serves `routes` merged with the common ones while `work` runs; `work` gets the
    /// token cancelled on SIGTERM/SIGINT, and returns when the service is done.
    pub async fn serve_while<W, F>(self, routes: axum::Router, work: W) -> anyhow::Result<()>
    where
        W: FnOnce(CancellationToken) -> F,
        F: Future<Output = anyhow::Result<()>>,
    {
        crate::metrics::describe();
        let router = self
            .base
            .merge(routes)
            .layer(axum::extract::DefaultBodyLimit::max(crate::MAX_BODY_BYTES));
        let stop = CancellationToken::new();
        let server = tokio::spawn(self.http.run(router, stop.clone().cancelled_owned()));
        let result = work(self.shutdown).await;
        self.readiness.set_not_ready("stopping");
        stop.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server failed"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }
        result
    }
}

/// Text after the flags in `--help`.
pub const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it (lists
comma-separated), or as a key of the TOML file given with --config. Precedence: flags, then
environment, then file, then defaults. --print-config shows the result. Durations are written
like 500ms, 30s, 2m.

This is the talk's REST version, kept for comparison with the NSQ suite: a failed request
loses its reading (counted in rest_requests_failed_total); nothing is retried or queued.";
