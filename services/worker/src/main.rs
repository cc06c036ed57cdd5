//! The `worker` binary: parses the command line and runs [`worker::Application`].

use std::process::ExitCode;

use suite_common::cli::ServiceCli as _;
use suite_common::{cli::CommonCommand, shutdown::CancellationToken};
use worker::{Application, Cli};

fn main() -> ExitCode {
    // A bad flag exits 2 in parse_args (clap); a bad variable or file is an error, also 2.
    suite_common::exit::finish(Cli::parse_args().map_err(Into::into).and_then(run))
}

/// Prints the configuration, probes, or runs the service until a signal.
fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    if cli.common.print_config {
        return Ok(suite_common::config::print_config(&config)?);
    }
    if let Some(CommonCommand::Healthcheck) = cli.command {
        return Ok(suite_common::healthcheck::probe(
            &config.http_address.to_string(),
        )?);
    }
    suite_common::telemetry::init(config.log.log_format, &config.log.log_level)?;
    let runtime = suite_common::shutdown::runtime()?;
    runtime.block_on(async {
        let app = Application::build(config).await?;
        let shutdown = CancellationToken::new();
        suite_common::shutdown::cancel_on_signal(shutdown.clone())?;
        app.run_until_stopped(shutdown.cancelled_owned()).await
    })
}
