//! What the three binaries share: the command line, start-up and the HTTP port, written once
//! with `suite-common` the way the NSQ services' `main` and `startup` use it.
//!
//! A service is a settings struct implementing [`RestService`]; [`rest_cli!`] declares its
//! command line and [`main`] runs it: `--print-config`, `healthcheck`, logs, metrics, the
//! HTTP port with `/health` `/ready` `/metrics`, SIGTERM/SIGINT.

use std::{future::Future, net::SocketAddr, process::ExitCode};

use serde::Serialize;
use suite_common::{
    addr::ListenAddr,
    cli::{CommonArgs, CommonCommand, LogArgs, ServiceCli},
    config::ConfigError,
    http::{self, BaseState, HttpServer, Readiness},
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

impl<const PORT: u16> ServiceArgs<PORT> {
    /// What [`main`] needs of them.
    pub fn common(&self) -> Common<'_> {
        Common {
            http_address: &self.http_address,
            log: &self.log,
        }
    }
}

/// The settings [`main`] uses before the service runs.
#[derive(Debug)]
pub struct Common<'a> {
    /// Where the HTTP port listens.
    pub http_address: &'a ListenAddr,
    /// The logging settings.
    pub log: &'a LogArgs,
}

/// A REST service's settings, and how it runs.
pub trait RestService: Serialize + Sized + Send + 'static {
    /// Name in logs, `/health` and the metrics' `service` label.
    const SERVICE: &'static str;

    /// The HTTP address and the logging settings.
    fn common(&self) -> Common<'_>;

    /// The instance id (the metrics' `id` label).
    fn id(&self) -> String;

    /// Rules that involve several settings, naming the flags.
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Runs until `running.shutdown` is cancelled (or the service's work is done).
    fn run(self, running: Running) -> impl Future<Output = anyhow::Result<()>>;
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

/// A command line declared with [`rest_cli!`].
pub trait RestCli: ServiceCli {
    /// The settings.
    type Config: RestService;

    /// The parts of the command line.
    fn into_parts(self) -> (CommonArgs, Self::Config, Option<CommonCommand>);
}

/// Declares a service's command line: `rest_cli!(Cli, "rest-sensor", "REST_SENSOR",
/// "about", Config)`.
#[macro_export]
macro_rules! rest_cli {
    ($cli:ident, $name:literal, $prefix:literal, $about:literal, $config:ty) => {
        /// The command line.
        #[derive(Debug, clap::Parser)]
        #[command(name = $name, version, about = $about, after_help = $crate::service::AFTER_HELP)]
        pub struct $cli {
            /// Flags every service has.
            #[command(flatten)]
            pub common: suite_common::cli::CommonArgs,
            /// The settings.
            #[command(flatten)]
            pub config: $config,
            /// `healthcheck`, or nothing to run.
            #[command(subcommand)]
            pub command: Option<suite_common::cli::CommonCommand>,
        }

        impl suite_common::cli::ServiceCli for $cli {
            const ENV_PREFIX: &'static str = $prefix;
            fn common(&self) -> &suite_common::cli::CommonArgs {
                &self.common
            }
        }

        impl $crate::service::RestCli for $cli {
            type Config = $config;
            fn into_parts(
                self,
            ) -> (
                suite_common::cli::CommonArgs,
                $config,
                Option<suite_common::cli::CommonCommand>,
            ) {
                (self.common, self.config, self.command)
            }
        }
    };
}

/// Text after the flags in `--help`.
pub const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it (lists
comma-separated), or as a key of the TOML file given with --config. Precedence: flags, then
environment, then file, then defaults. --print-config shows the result. Durations are written
like 500ms, 30s, 2m.

This is the talk's REST version, kept for comparison with the NSQ suite: a failed request
loses its reading (counted in rest_requests_failed_total); nothing is retried or queued.";

/// The `main` of a REST binary.
pub fn main<C: RestCli>() -> ExitCode {
    suite_common::exit::finish(C::parse_args().map_err(Into::into).and_then(run::<C>))
}

/// Prints the configuration, probes, or runs the service until a signal.
fn run<C: RestCli>(cli: C) -> anyhow::Result<()> {
    let (common, config, command) = cli.into_parts();
    if common.print_config {
        return Ok(suite_common::config::print_config(&config)?);
    }
    if let Some(CommonCommand::Healthcheck) = command {
        return Ok(suite_common::healthcheck::probe(
            &config.common().http_address.to_string(),
        )?);
    }
    let log = config.common().log;
    suite_common::telemetry::init(log.log_format, &log.log_level)?;
    let runtime = suite_common::shutdown::runtime()?;
    runtime.block_on(async {
        config.check()?;
        let service = C::Config::SERVICE;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %suite_common::config::to_one_line(&config)?,
            "starting {service}"
        );
        let id = config.id();
        let metrics = http::install_metrics(service, &id)?;
        let readiness = Readiness::ready();
        let base = http::base_router(BaseState::new(service, &id, readiness.clone(), metrics));
        let http = HttpServer::bind(&config.common().http_address.to_string()).await?;
        tracing::info!(http_address = %http.local_addr(), "{service} started");
        let shutdown = CancellationToken::new();
        suite_common::shutdown::cancel_on_signal(shutdown.clone())?;
        config
            .run(Running {
                base,
                http,
                readiness,
                shutdown,
            })
            .await?;
        tracing::info!("{service} stopped");
        Ok(())
    })
}
