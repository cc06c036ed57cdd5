//! What every service's `main` and `build` do, written once: [`main`] parses the command
//! line and runs a [`Service`]; [`Base`] is the start of every `build` (the start-up log
//! line, the metrics recorder, the readiness and the HTTP port with its base routes).

use std::{future::Future, net::SocketAddr, process::ExitCode};

use axum::Router;

use crate::{
    cli::{Cli, CommonCommand, ServiceCli as _, ServiceConfig},
    http::{self, BaseState, HttpServer, Readiness},
    shutdown::CancellationToken,
};

/// A service: built from its settings, then run until a signal. Its futures are `Send`, so
/// that tests can spawn a service on their own runtime.
pub trait Service: Sized + Send {
    /// Its settings.
    type Config: ServiceConfig + Send;

    /// Validates the settings and sets up what can fail at start (a usage error, a port
    /// that cannot be bound...). Runs inside the tokio runtime.
    fn build(config: Self::Config) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// The address the HTTP port is bound to (the real port when configured with port 0).
    fn http_addr(&self) -> SocketAddr;

    /// Runs until `shutdown` resolves (or the service's work is done), then stops cleanly.
    fn run_until_stopped<F>(self, shutdown: F) -> impl Future<Output = anyhow::Result<()>> + Send
    where
        F: Future<Output = ()> + Send + 'static;
}

/// Implements [`Service`] for a service's `Application`, which has the inherent methods
/// `build(Config) -> anyhow::Result<Self>` and `run_until_stopped(self, shutdown) ->
/// anyhow::Result<T>` (`T` is dropped: the sensor returns its run's report) and its bound
/// HTTP port in a field `http` ([`HttpServer`]).
#[macro_export]
macro_rules! impl_service {
    ($app:ty, $config:ty) => {
        impl $crate::service::Service for $app {
            type Config = $config;

            async fn build(config: $config) -> ::anyhow::Result<Self> {
                <$app>::build(config).await
            }

            fn http_addr(&self) -> ::std::net::SocketAddr {
                self.http.local_addr()
            }

            async fn run_until_stopped<F>(self, shutdown: F) -> ::anyhow::Result<()>
            where
                F: ::std::future::Future<Output = ()> + Send + 'static,
            {
                <$app>::run_until_stopped(self, shutdown).await.map(drop)
            }
        }
    };
}

/// The whole `main` of a service: parses the command line (flags > environment > `--config`
/// file > defaults), then prints the settings (`--print-config`), probes a running instance
/// (`healthcheck`), or runs the service until SIGTERM or SIGINT. The exit code is 0, 1 for a
/// runtime failure, 2 for a usage error (a bad flag, variable or file).
pub fn main<S: Service>() -> ExitCode {
    crate::exit::finish(
        Cli::<S::Config>::parse_args()
            .map_err(Into::into)
            .and_then(run::<S>),
    )
}

/// Prints the configuration, probes, or runs the service until a signal.
fn run<S: Service>(cli: Cli<S::Config>) -> anyhow::Result<()> {
    let Cli {
        common,
        config,
        command,
    } = cli;
    if common.print_config {
        return Ok(crate::config::print_config(&config)?);
    }
    if let Some(CommonCommand::Healthcheck) = command {
        return Ok(crate::healthcheck::probe(
            &config.http_address().to_string(),
        )?);
    }
    crate::telemetry::init(config.log().log_format, &config.log().log_level)?;
    let runtime = crate::shutdown::runtime()?;
    runtime.block_on(async {
        let app = S::build(config).await?;
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signal(shutdown.clone())?;
        app.run_until_stopped(shutdown.cancelled_owned()).await
    })
}

/// The start of every service's `build`.
#[derive(Debug)]
pub struct Base {
    /// What `/ready` reports; not ready (with the reason given to [`Base::start`]) until the
    /// service says otherwise.
    pub readiness: Readiness,
    /// `/health`, `/ready` and `/metrics`; merge the service's own routes into it.
    pub router: Router,
    /// The bound HTTP port.
    pub http: HttpServer,
}

impl Base {
    /// Logs `starting <service>` with the version and the settings on one line (secrets
    /// redacted), installs the metrics recorder (labels `service` and `id`) and binds the HTTP
    /// port (`settings.http_address()`). Must be called inside the tokio runtime.
    pub async fn start<C: ServiceConfig>(
        service: &'static str,
        id: &str,
        settings: &C,
        not_ready: impl Into<String>,
    ) -> anyhow::Result<Base> {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            config = %crate::config::to_one_line(settings)?,
            "starting {service}"
        );
        let metrics = http::install_metrics(service, id)?;
        let readiness = Readiness::not_ready(not_ready);
        let router = http::base_router(BaseState::new(service, id, readiness.clone(), metrics));
        let http = HttpServer::bind(&settings.http_address().to_string()).await?;
        Ok(Base {
            readiness,
            router,
            http,
        })
    }
}
