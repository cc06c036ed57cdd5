//! The `logger` binary: parses the command line and runs [`logger::Application`].

use std::process::ExitCode;

use logger::{Application, Cli};
use suite_common::cli::ServiceCli as _;
use suite_common::{cli::CommonCommand, shutdown::CancellationToken};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    suite_common::exit::finish(run(cli))
}

/// Loads the configuration, then prints it, probes, or runs the service until a signal.
fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.load_config()?;
    if cli.common.print_config {
        return Ok(suite_common::config::print_config(&config)?);
    }
    if let Some(CommonCommand::Healthcheck) = cli.command {
        return Ok(suite_common::healthcheck::probe(&config.http_address)?);
    }
    suite_common::telemetry::init(config.log_format, &config.log_level)?;
    let runtime = suite_common::shutdown::runtime()?;
    runtime.block_on(async {
        let app = Application::build(config).await?;
        let shutdown = CancellationToken::new();
        suite_common::shutdown::cancel_on_signal(shutdown.clone())?;
        app.run_until_stopped(shutdown.cancelled_owned()).await
    })
}
