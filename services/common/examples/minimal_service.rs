//! A minimal service wired with suite-common: what the sensor, worker and logger do in
//! `main`, without the NSQ part.
//!
//! ```text
//! cargo run -p suite-common --example minimal_service -- --http-address 127.0.0.1:0
//! MINIMAL_LOG_FORMAT=json cargo run -p suite-common --example minimal_service -- --print-config
//! ```

use std::process::ExitCode;

use clap::Parser;
use serde::{Deserialize, Serialize};
use suite_common::{
    addr,
    cli::{CommonArgs, CommonCommand},
    config, exit, healthcheck,
    http::{self, BaseState, HttpServer, Readiness},
    shutdown::{self, CancellationToken},
    telemetry::{self, LogFormat},
};

/// The command line: subcommands, common flags, the service's own flags.
#[derive(Parser)]
#[command(name = "minimal", version, about = "Example service")]
struct Cli {
    #[command(subcommand)]
    command: Option<CommonCommand>,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    flags: Flags,
}

/// The service's own flags: each one overrides the config key of the same name.
#[derive(clap::Args, Serialize)]
struct Flags {
    /// nsqd TCP address (repeatable)
    #[arg(long, value_name = "HOST:PORT")]
    nsqd_tcp_address: Vec<String>,
    /// Instance id (tells replicas apart in logs and metrics)
    #[arg(long)]
    id: Option<String>,
}

/// The effective configuration, flat, with the three common keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where to publish.
    nsqd_tcp_address: Vec<String>,
    /// Instance id.
    id: String,
    /// Log format (common key).
    log_format: LogFormat,
    /// Log level (common key).
    log_level: String,
    /// HTTP port (common key).
    http_address: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nsqd_tcp_address: vec!["127.0.0.1:4150".to_owned()],
            id: "minimal-1".to_owned(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            http_address: "127.0.0.1:4199".to_owned(),
        }
    }
}

fn main() -> ExitCode {
    exit::finish(run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config: Config = cli
        .common
        .load_config("MINIMAL", &["nsqd_tcp_address"], &cli.flags)?;
    if cli.common.print_config {
        return Ok(config::print_config(&config)?);
    }
    if let Some(CommonCommand::Healthcheck) = cli.command {
        return Ok(healthcheck::probe(&config.http_address)?);
    }
    // Validation errors are usage errors: `exit::finish` makes them exit code 2.
    let nsqd = addr::host_ports("--nsqd-tcp-address", &config.nsqd_tcp_address)?;
    addr::listen_address("--http-address", &config.http_address)?;
    telemetry::init(config.log_format, &config.log_level)?;
    let nsqd: Vec<String> = nsqd.iter().map(ToString::to_string).collect();
    tracing::info!(?nsqd, id = %config.id, "starting");
    tokio::runtime::Runtime::new()?.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone())?;

    let metrics = http::install_metrics("minimal", &config.id)?;
    let readiness = Readiness::not_ready("starting");
    let state = BaseState::new("minimal", &config.id, readiness.clone(), metrics);
    let server = HttpServer::bind(&config.http_address).await?;
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
