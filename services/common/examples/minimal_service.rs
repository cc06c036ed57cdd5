//! A minimal service wired with suite-common: what the sensor, worker and logger do, without
//! the NSQ part.
//!
//! ```text
//! cargo run -p suite-common --example minimal_service -- --http-address 127.0.0.1:0
//! MINIMAL_LOG_FORMAT=json cargo run -p suite-common --example minimal_service -- --print-config
//! ```

use std::{future::Future, net::SocketAddr, process::ExitCode};

use serde::Serialize;
use suite_common::{
    addr::{HostPort, ListenAddr},
    cli::{LogArgs, ServiceConfig},
    service::{self, Base, Service},
};

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

impl ServiceConfig for Config {
    const NAME: &'static str = "minimal";
    const ENV_PREFIX: &'static str = "MINIMAL";
    const ABOUT: &'static str = "Example service";
    const AFTER_HELP: &'static str = "";

    fn http_address(&self) -> &ListenAddr {
        &self.http_address
    }

    fn log(&self) -> &LogArgs {
        &self.log
    }
}

/// The running service: its HTTP port and what it does.
struct Minimal {
    base: Base,
}

impl Service for Minimal {
    type Config = Config;

    async fn build(config: Config) -> anyhow::Result<Self> {
        let nsqd = suite_common::addr::to_strings(&config.nsqd_tcp_address);
        let base = Base::start("minimal", &config.id, &config, "starting").await?;
        // Prints the real port when configured with port 0.
        println!("http listening on {}", base.http.local_addr());
        tracing::info!(?nsqd, "started");
        Ok(Minimal { base })
    }

    fn http_addr(&self) -> SocketAddr {
        self.base.http.local_addr()
    }

    async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Base {
            readiness,
            router,
            http,
        } = self.base;
        // A real service connects to NSQ here and sets readiness from its connections.
        readiness.set_ready();
        metrics::counter!("minimal_started_total").increment(1);
        // A real service drains its in-flight messages when `shutdown` resolves.
        http.run(router, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn main() -> ExitCode {
    // Flags > environment > --config file > defaults; --print-config, `healthcheck`, or run
    // until SIGTERM/SIGINT. Exit code 0, 1 (runtime failure) or 2 (usage error).
    service::main::<Minimal>()
}
