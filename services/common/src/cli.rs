//! The command-line flags every service has, and the groups of settings services share.
//!
//! * [`CommonArgs`]: `--config` and `--print-config` (not settings: they say where the
//!   settings come from and what to do with them), flattened into each service's parser;
//! * [`LogArgs`]: `--log-format` and `--log-level`, flattened into each service's settings;
//! * [`ConsumerArgs`]: the settings of an NSQ consumer (nsqd and nsqlookupd addresses,
//!   lookupd poll interval, max-in-flight, output buffer), flattened into the settings of
//!   every service that consumes (worker, logger). A new consumer setting is one field there.
//!
//! A service's settings are one `clap::Args` struct (see [`crate::config`]); its parser
//! implements [`ServiceCli`], which layers flags, environment, file and defaults:
//!
//! ```
//! use clap::Parser;
//! use suite_common::{
//!     addr::ListenAddr,
//!     cli::{CommonArgs, ConsumerArgs, LogArgs, ServiceCli},
//! };
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     common: CommonArgs,
//!     #[command(flatten)]
//!     config: Config,
//! }
//!
//! /// The service's settings: each declared once, with its type, help and default.
//! #[derive(clap::Args, serde::Serialize)]
//! struct Config {
//!     #[command(flatten)]
//!     #[serde(flatten)]
//!     consumer: ConsumerArgs<200>,
//!     /// Address of the HTTP port
//!     #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4191")]
//!     http_address: ListenAddr,
//!     #[command(flatten)]
//!     #[serde(flatten)]
//!     log: LogArgs,
//! }
//!
//! impl ServiceCli for Cli {
//!     const ENV_PREFIX: &'static str = "WORKER";
//!     fn common(&self) -> &CommonArgs {
//!         &self.common
//!     }
//! }
//!
//! let env = std::collections::HashMap::new();
//! let cli = Cli::try_parse_with_env(["worker", "--log-level", "debug", "--nsqd-tcp-address", "a:1"], &env)?;
//! assert_eq!(cli.config.log.log_level, "debug");
//! assert_eq!(cli.config.consumer.nsqd_addresses(), ["a:1"]);
//! assert_eq!(cli.config.consumer.max_in_flight, 200);
//! # Ok::<(), suite_common::config::LoadError>(())
//! ```

use std::{collections::HashMap, ffi::OsString, path::PathBuf};

use serde::Serialize;

use crate::{
    addr::{HostPort, LookupdAddr},
    config::{ConfigError, LoadError, Sources, NOT_SETTINGS},
    setting::{at_least_one, HumanDuration, Invalid, Parse},
    telemetry::LogFormat,
};

/// Flags every service has that are not settings; flatten into the service's parser with
/// `#[command(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (overridden by environment variables, themselves overridden
    /// by flags)
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,
}

/// The logging settings every service has; flatten into its settings with
/// `#[command(flatten)]` and `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct LogArgs {
    /// Log format
    #[arg(long, value_enum, value_name = "FORMAT", global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or filter, e.g. info or info,nsq=debug (RUST_LOG overrides it)
    #[arg(long, value_name = "LEVEL", global = true, default_value = "info")]
    pub log_level: String,
}

/// The settings of an NSQ consumer, shared by the services that consume (worker, logger):
/// flatten into their settings with `#[command(flatten)]` and `#[serde(flatten)]`.
///
/// `MAX_IN_FLIGHT` is the service's default `--max-in-flight`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct ConsumerArgs<const MAX_IN_FLIGHT: u32> {
    /// nsqlookupd HTTP address (host:port or http://host:port) to discover nsqd; repeatable
    #[arg(long, value_name = "ADDR")]
    pub lookupd_http_address: Vec<LookupdAddr>,

    /// nsqd TCP address to consume from directly; repeatable
    #[arg(long, value_name = "HOST:PORT")]
    pub nsqd_tcp_address: Vec<HostPort>,

    /// How often nsqlookupd is asked for new nsqd
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(5),
        value_parser = Parse(HumanDuration::nonzero)
    )]
    pub lookupd_poll_interval: HumanDuration,

    /// Most messages handled at once, over all nsqd
    #[arg(
        long,
        value_name = "N",
        default_value_t = MAX_IN_FLIGHT,
        value_parser = Parse(at_least_one::<u32>)
    )]
    pub max_in_flight: u32,

    /// nsqd's output buffer for this consumer, in bytes: 0 keeps nsqd's default (16 KiB,
    /// flushed at least every 250 ms: best throughput, but a lone message can wait up to
    /// 250 ms); 64 makes nsqd write every message at once (lowest latency, more syscalls in
    /// nsqd); -1 disables the buffer
    #[arg(
        long,
        value_name = "BYTES",
        allow_hyphen_values = true,
        default_value_t = 0,
        value_parser = Parse(output_buffer_size)
    )]
    pub output_buffer_size: i64,

    /// How long nsqd may hold what it sends this consumer.
    #[command(flatten)]
    #[serde(flatten)]
    pub flush: FlushArgs,
}

/// `--output-buffer-timeout`, of every consumer (the worker's and logger's, the sensor's
/// replay consumer): flatten it with `#[command(flatten)]` and `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct FlushArgs {
    /// Longest nsqd may hold a message for this consumer in its output buffer: a lone
    /// message waits up to this long per hop. nsqd grants it only at or above its
    /// --min-output-buffer-timeout (25ms unless changed; the suite's configurations set 1ms);
    /// otherwise the consumer falls back to nsqd's --output-buffer-timeout (250ms) with one
    /// WARN. 0 asks for nothing (nsqd's default)
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_millis(1),
        value_parser = Parse(output_buffer_timeout)
    )]
    pub output_buffer_timeout: HumanDuration,
}

impl FlushArgs {
    /// The output-buffer timeout to ask nsqd for: `None` keeps nsqd's default.
    pub fn output_buffer_timeout(&self) -> Option<std::time::Duration> {
        requested(&self.output_buffer_timeout)
    }
}

/// Parses `--output-buffer-timeout`: 0 (ask for nothing), or whole milliseconds from 1ms.
pub fn output_buffer_timeout(text: &str) -> Result<HumanDuration, Invalid> {
    let d: HumanDuration = text.parse()?;
    if d.get().is_zero() || nsq::output_buffer_timeout_ms(d.get()).is_ok() {
        Ok(d)
    } else {
        Err(Invalid::Value(
            "must be 0 (nsqd's default) or whole milliseconds from 1ms, e.g. 1ms".to_owned(),
        ))
    }
}

/// The output-buffer timeout to ask nsqd for: `None` (0) keeps nsqd's default.
pub fn requested(timeout: &HumanDuration) -> Option<std::time::Duration> {
    Some(timeout.get()).filter(|d| !d.is_zero())
}

/// Parses `--output-buffer-size`: 0, -1 or 64 to 65536.
fn output_buffer_size(text: &str) -> Result<i64, Invalid> {
    let size: i64 = text
        .trim()
        .parse()
        .map_err(|e| Invalid::Value(format!("'{text}' is not a whole number ({e})")))?;
    if !matches!(size, -1 | 0 | 64..=65_536) {
        return Err(Invalid::Value(
            "must be 0 (nsqd's default), -1 (no buffer) or 64 to 65536 bytes".to_owned(),
        ));
    }
    Ok(size)
}

impl<const MAX_IN_FLIGHT: u32> ConsumerArgs<MAX_IN_FLIGHT> {
    /// The nsqlookupd base URLs (`http://host:port`).
    pub fn lookupd_urls(&self) -> Vec<String> {
        crate::addr::lookupd_urls(&self.lookupd_http_address)
    }

    /// The nsqd addresses (`host:port`).
    pub fn nsqd_addresses(&self) -> Vec<String> {
        crate::addr::to_strings(&self.nsqd_tcp_address)
    }

    /// The output-buffer timeout to ask nsqd for: `None` keeps nsqd's default.
    pub fn output_buffer_timeout(&self) -> Option<std::time::Duration> {
        self.flush.output_buffer_timeout()
    }

    /// The output buffer to ask nsqd for: `None` keeps nsqd's default.
    pub fn output_buffer_size(&self) -> Option<i64> {
        (self.output_buffer_size != 0).then_some(self.output_buffer_size)
    }

    /// Checks that there is something to consume from: at least one nsqlookupd or nsqd.
    /// `service` names the service in the message, `env_prefix` its variables.
    pub fn require_source(&self, service: &str, env_prefix: &str) -> Result<(), ConfigError> {
        if self.lookupd_http_address.is_empty() && self.nsqd_tcp_address.is_empty() {
            return Err(ConfigError::value(
                "--lookupd-http-address / --nsqd-tcp-address",
                format!(
                    "none given: the {service} needs at least one nsqlookupd or nsqd to consume \
                     from (or {env_prefix}_LOOKUPD_HTTP_ADDRESS / {env_prefix}_NSQD_TCP_ADDRESS)"
                ),
            ));
        }
        Ok(())
    }
}

/// Adds `[default: …]` (from the argument's default) and `[env: <PREFIX>_<KEY>]` to the help of
/// every long flag that is a setting, so that `--help` names the default and the environment
/// variable of each setting.
///
/// The environment is read by [`crate::config`], not by clap (clap's own `env` would also
/// read it, but without the list splitting and the strict unknown-variable check), so the
/// variable is only written into the help text. `--config`, `--print-config`, `--help` and
/// `--version` are not settings and are left alone.
///
/// ```
/// use clap::CommandFactory as _;
///
/// #[derive(clap::Parser)]
/// struct Cli {
///     #[command(flatten)]
///     common: suite_common::cli::CommonArgs,
///     /// Topic to consume
///     #[arg(long)]
///     topic: Option<String>,
/// }
///
/// let help = suite_common::cli::with_env_help(Cli::command(), "WORKER")
///     .render_help()
///     .to_string();
/// assert!(help.contains("Topic to consume [env: WORKER_TOPIC]"));
/// assert!(!help.contains("WORKER_CONFIG"));
/// ```
pub fn with_env_help(command: clap::Command, env_prefix: &str) -> clap::Command {
    let prefix = env_prefix.trim_end_matches('_').to_ascii_uppercase();
    command.mut_args(move |arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        if NOT_SETTINGS.contains(&long) {
            return arg;
        }
        let var = format!("{prefix}_{}", long.replace('-', "_").to_ascii_uppercase());
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        // The default is written here rather than by clap (which would put it in a paragraph
        // of its own in the long help), still from the argument's real default.
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if defaults.is_empty() || arg.is_hide_default_value_set() {
            arg.help(format!("{help} [env: {var}]"))
        } else {
            let defaults = defaults.join(", ");
            arg.help(format!("{help} [default: {defaults}] [env: {var}]"))
                .hide_default_value(true)
        }
    })
}

/// Subcommands every service binary has; flatten into the service's subcommand enum with
/// `#[command(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CommonCommand {
    /// Probe the running service's /health (for Docker's HEALTHCHECK); exit 0 if healthy,
    /// 1 otherwise
    Healthcheck,
}

/// A service's settings struct: the part of the command line that differs between services,
/// with what `--help` says of the service. [`Cli`] adds what every service has around it.
pub trait ServiceConfig: clap::Args + Serialize {
    /// Name of the binary (`sensor`, `worker`, `logger`), in `--help` and `--version`.
    const NAME: &'static str;
    /// Prefix of the service's environment variables, e.g. `WORKER`.
    const ENV_PREFIX: &'static str;
    /// One line for `--help`: what the service does.
    const ABOUT: &'static str;
    /// Text after the flags in `--help`.
    const AFTER_HELP: &'static str;

    /// Changes the clap command further, e.g. the help of a shared flag (default: none).
    fn adjust(command: clap::Command) -> clap::Command {
        command
    }
    /// Where the HTTP port listens (the `healthcheck` subcommand probes it).
    fn http_address(&self) -> &crate::addr::ListenAddr;
    /// The logging settings.
    fn log(&self) -> &LogArgs;
}

/// The command line of every service: the `healthcheck` subcommand, [`CommonArgs`], and the
/// service's settings `C`.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct Cli<C: ServiceConfig> {
    /// Flags every service has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The service's settings.
    #[command(flatten)]
    pub config: C,
    /// `healthcheck`, or nothing to run the service.
    #[command(subcommand)]
    pub command: Option<CommonCommand>,
}

impl<C: ServiceConfig> ServiceCli for Cli<C> {
    const ENV_PREFIX: &'static str = C::ENV_PREFIX;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn command_with_env() -> clap::Command {
        use clap::CommandFactory as _;
        let command = Self::command()
            .name(C::NAME)
            .bin_name(C::NAME)
            .about(C::ABOUT)
            .after_help(C::AFTER_HELP);
        with_env_help(C::adjust(command), Self::ENV_PREFIX)
    }
}

impl<C: ServiceConfig> Cli<C> {
    /// The settings from `args` (without the program name) and `env` (in place of the
    /// process environment), or the error as the user would read it.
    pub fn config_from(args: &[&str], env: &[(&str, &str)]) -> Result<C, String> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let args = std::iter::once(C::NAME).chain(args.iter().copied());
        match Self::try_parse_with_env(args, &env) {
            Ok(cli) => Ok(cli.config),
            Err(LoadError::Usage(e)) => Err(e.render().to_string()),
            Err(LoadError::Config(e)) => Err(e.to_string()),
        }
    }
}

/// A service's command line: parsing and layering are written once here. Implement it for
/// the service's clap parser (which flattens [`CommonArgs`] and the service's settings) and
/// bring the trait into scope where `Cli::parse_args()` is called.
pub trait ServiceCli: clap::CommandFactory + clap::FromArgMatches + Sized {
    /// Prefix of the service's environment variables, e.g. `WORKER`.
    const ENV_PREFIX: &'static str;

    /// The flags every service has.
    fn common(&self) -> &CommonArgs;

    /// The clap command, with each setting's environment variable added to its help.
    fn command_with_env() -> clap::Command {
        with_env_help(Self::command(), Self::ENV_PREFIX)
    }

    /// Parses the process arguments, environment and `--config` file. Exits with code 2
    /// (clap's usage error) when the command line is bad, and 0 after `--help` or
    /// `--version`; a bad environment or file is an `Err` (a usage error too).
    fn parse_args() -> Result<Self, ConfigError> {
        match Sources::new(Self::ENV_PREFIX).parse(Self::command_with_env(), std::env::args_os()) {
            Ok(cli) => Ok(cli),
            Err(LoadError::Usage(e)) => e.exit(),
            Err(LoadError::Config(e)) => Err(e),
        }
    }

    /// Parses the given arguments (the first is the program name) with `env` in place of the
    /// process environment.
    fn try_parse_with_env<I, T>(args: I, env: &HashMap<String, String>) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Sources::new(Self::ENV_PREFIX)
            .env(env)
            .parse(Self::command_with_env(), args)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn output_buffer_timeout_is_0_or_whole_milliseconds() {
        let ms = |t: &str| output_buffer_timeout(t).map(|d| requested(&d));
        assert_eq!(
            ms("1ms").ok(),
            Some(Some(std::time::Duration::from_millis(1)))
        );
        assert_eq!(
            ms("5ms").ok(),
            Some(Some(std::time::Duration::from_millis(5)))
        );
        assert_eq!(ms("0").ok(), Some(None), "0 asks for nothing");
        assert!(ms("500us").is_err());
        assert!(ms("1500us").is_err());
        assert!(ms("soon").is_err());
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        consumer: ConsumerArgs<7>,
        #[command(subcommand)]
        command: Option<CommonCommand>,
    }

    impl ServiceCli for Cli {
        const ENV_PREFIX: &'static str = "SVC";
        fn common(&self) -> &CommonArgs {
            &self.common
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, LoadError> {
        let mut all = vec!["svc"];
        all.extend_from_slice(args);
        Cli::try_parse_with_env(all, &HashMap::new())
    }

    #[test]
    fn flags_parse() {
        let cli = parse(&[
            "--config",
            "/dev/null",
            "--print-config",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(cli.common.config, Some(PathBuf::from("/dev/null")));
        assert!(cli.common.print_config);
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert_eq!(cli.log.log_level, "debug");
        assert_eq!(cli.command, None);
    }

    #[test]
    fn healthcheck_subcommand_accepts_common_flags() {
        let cli = parse(&["healthcheck", "--config", "/dev/null", "--log-level=warn"]).unwrap();
        assert_eq!(cli.command, Some(CommonCommand::Healthcheck));
        assert_eq!(cli.common.config, Some(PathBuf::from("/dev/null")));
        assert_eq!(cli.log.log_level, "warn");
    }

    #[test]
    fn bad_log_format_is_a_clap_error() {
        let Err(LoadError::Usage(err)) = parse(&["--log-format", "xml"]) else {
            panic!("accepted")
        };
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn consumer_settings() {
        let cli = parse(&[]).unwrap();
        assert_eq!(cli.consumer.max_in_flight, 7, "the service's default");
        assert_eq!(cli.consumer.output_buffer_size(), None);
        let err = cli.consumer.require_source("svc", "SVC").unwrap_err();
        assert!(err.to_string().contains("SVC_NSQD_TCP_ADDRESS"), "{err}");

        let cli = parse(&[
            "--lookupd-http-address=l:4161",
            "--output-buffer-size",
            "-1",
            "--lookupd-poll-interval=250ms",
        ])
        .unwrap();
        assert_eq!(cli.consumer.lookupd_urls(), ["http://l:4161"]);
        assert_eq!(cli.consumer.output_buffer_size(), Some(-1));
        assert_eq!(
            cli.consumer.lookupd_poll_interval.get(),
            std::time::Duration::from_millis(250)
        );
        assert!(cli.consumer.require_source("svc", "SVC").is_ok());

        for bad in [
            ["--max-in-flight", "0"],
            ["--output-buffer-size", "10"],
            ["--lookupd-poll-interval", "0s"],
        ] {
            let Err(LoadError::Usage(err)) = parse(&bad) else {
                panic!("{bad:?} accepted")
            };
            assert!(
                err.to_string().contains(&format!("invalid `{}`", bad[0])),
                "{err}"
            );
        }
    }

    #[test]
    fn help_names_the_variables_of_settings_only() {
        let help = Cli::command_with_env().render_help().to_string();
        assert!(help.contains("[env: SVC_MAX_IN_FLIGHT]"), "{help}");
        assert!(help.contains("[default: 7]"), "{help}");
        assert!(!help.contains("SVC_CONFIG"), "{help}");
        assert!(!help.contains("SVC_PRINT_CONFIG"), "{help}");
    }
}
