//! A minimal service wired with suite-common: what the sensor, worker and logger do in
//! `main`, without the NSQ part.
//!
//! ```text
//! cargo run -p suite-common --example minimal_service -- --http-address 127.0.0.1:0
//! MINIMAL_LOG_FORMAT=json cargo run -p suite-common --example minimal_service -- --print-config
//! ```

use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;
use suite_common::{
    addr::{HostPort, ListenAddr},
    cli::{CommonArgs, CommonCommand, LogArgs, ServiceCli},
    config, exit, healthcheck,
    http::{self, BaseState, HttpServer, Readiness},
    shutdown::{self, CancellationToken},
    telemetry,
};

/// The command line: subcommands, common flags, the service's settings.
#[derive(Parser)]
#[command(name = "minimal", version, about = "Example service")]
struct Cli {
    #[command(subcommand)]
    command: Option<CommonCommand>,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    config: Config,
}

/// The settings: each declared once, with its type (validated while parsing), its help and
/// its default. Flags, `MINIMAL_*` variables and the `--config` file all fill it.
#[derive(clap::Args, Serialize)]
struct Config {
    /// nsqd TCP address; repeatable
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4150")]
    nsqd_tcp_address: Vec<HostPort>,
    /// Instance id (tells replicas apart in logs and metrics)
    #[arg(long, default_value = "minimal-1")]
    id: String,
    /// Address of the HTTP port
    #[arg(
        long,
        value_name = "HOST:PORT",
        global = true,
        default_value = "127.0.0.1:4199"
    )]
    http_address: ListenAddr,
    #[command(flatten)]
    #[serde(flatten)]
    log: LogArgs,
}

impl ServiceCli for Cli {
    const ENV_PREFIX: &'static str = "MINIMAL";
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

fn main() -> ExitCode {
    // A bad flag exits 2 here (clap); a bad variable or file is an error, also exit 2.
    exit::finish(Cli::parse_args().map_err(Into::into).and_then(run))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    if cli.common.print_config {
        return Ok(config::print_config(&config)?);
    }
    if let Some(CommonCommand::Healthcheck) = cli.command {
        return Ok(healthcheck::probe(&config.http_address.to_string())?);
    }
    telemetry::init(config.log.log_format, &config.log.log_level)?;
    let nsqd = suite_common::addr::to_strings(&config.nsqd_tcp_address);
    tracing::info!(?nsqd, id = %config.id, "starting");
    tokio::runtime::Runtime::new()?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone())?;

    let metrics = http::install_metrics("minimal", &config.id)?;
    let readiness = Readiness::not_ready("starting");
    let state = BaseState::new("minimal", &config.id, readiness.clone(), metrics);
    let server = HttpServer::bind(&config.http_address.to_string()).await?;
    println!("http listening on {}", server.local_addr());
    let http_task =
        tokio::spawn(server.run(http::base_router(state), token.clone().cancelled_owned()));

    // A real service connects to NSQ here and sets readiness from its connections.
    readiness.set_ready();
    metrics::counter!("minimal_started_total").increment(1);

    token.cancelled().await;
    readiness.set_not_ready("shutting down");
    // A real service drains its in-flight messages here.
    http_task.await??;
    tracing::info!("stopped");
    Ok(())
}
