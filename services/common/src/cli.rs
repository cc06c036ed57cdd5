//! The command-line flags every service has.
//!
//! [`CommonArgs`] is flattened into each service's clap parser. Apart from `--config` and
//! `--print-config`, its flags are **overrides** of configuration keys that the service's
//! config struct has too (`log_format`, `log_level`, `http_address`), so that they can also
//! come from the environment or the file: a flag that is not given is `None` and leaves the
//! lower layers alone.
//!
//! ```
//! use clap::Parser;
//! use serde::{Deserialize, Serialize};
//! use suite_common::{cli::CommonArgs, telemetry::LogFormat};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     common: CommonArgs,
//!     #[command(flatten)]
//!     flags: Flags,
//! }
//!
//! /// The service's own flags: every field an `Option` (or a list), named like its config key.
//! #[derive(clap::Args, Serialize)]
//! struct Flags {
//!     /// nsqd TCP address (repeatable)
//!     #[arg(long = "nsqd-tcp-address", value_name = "HOST:PORT")]
//!     nsqd_tcp_address: Vec<String>,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     nsqd_tcp_address: Vec<String>,
//!     log_format: LogFormat,
//!     log_level: String,
//!     http_address: String,
//! }
//! impl Default for Config {
//!     fn default() -> Self {
//!         Self {
//!             nsqd_tcp_address: vec!["127.0.0.1:4150".into()],
//!             log_format: LogFormat::Text,
//!             log_level: "info".into(),
//!             http_address: "127.0.0.1:4190".into(),
//!         }
//!     }
//! }
//!
//! let cli = Cli::parse_from(["worker", "--log-level", "debug", "--nsqd-tcp-address", "a:1"]);
//! let env = std::collections::HashMap::new();
//! let config: Config = cli
//!     .common
//!     .sources("WORKER", &["nsqd_tcp_address"])
//!     .env(&env)
//!     .load(&cli.common.with(&cli.flags))?;
//! assert_eq!(config.log_level, "debug");
//! assert_eq!(config.nsqd_tcp_address, ["a:1"]);
//! # Ok::<(), suite_common::config::ConfigError>(())
//! ```

use std::path::PathBuf;

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    config::{ConfigError, Sources},
    telemetry::LogFormat,
};

/// Flags shared by every service; flatten into the service's parser with
/// `#[command(flatten)]`.
///
/// Serializes as the overrides of `log_format`, `log_level` and `http_address` (the other
/// two fields are not configuration keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
pub struct CommonArgs {
    /// TOML configuration file (overridden by environment variables, themselves overridden
    /// by flags)
    #[arg(long, value_name = "PATH", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Log format [default: text]
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormat>,

    /// Log level or filter, e.g. info or info,nsq=debug (RUST_LOG overrides it) [default: info]
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,

    /// Address of the HTTP port (/health, /ready, /metrics)
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub http_address: Option<String>,
}

impl CommonArgs {
    /// The configuration sources these flags point at: `--config` as the file, the process
    /// environment with `env_prefix`, and `list_keys` as comma-separated environment lists.
    pub fn sources<'a>(&'a self, env_prefix: &'a str, list_keys: &'a [&'a str]) -> Sources<'a> {
        Sources::new(env_prefix)
            .file(self.config.as_deref())
            .list_keys(list_keys)
    }

    /// The overrides of both these flags and the service's own `flags`, as one layer.
    pub fn with<'a, F: Serialize>(&'a self, flags: &'a F) -> impl Serialize + 'a {
        Overrides {
            common: self,
            own: flags,
        }
    }

    /// Loads the service's configuration from its own flags, these flags, the process
    /// environment, the `--config` file and the defaults (see [`crate::config`]).
    pub fn load_config<T, F>(
        &self,
        env_prefix: &str,
        list_keys: &[&str],
        flags: &F,
    ) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default,
        F: Serialize,
    {
        self.sources(env_prefix, list_keys).load(&self.with(flags))
    }
}

/// Adds `[env: <PREFIX>_<KEY>]` to the help of every long flag that is a configuration key,
/// so that `--help` names the environment variable of each setting.
///
/// The environment is read by [`crate::config`], not by clap (clap's own `env` would also
/// read it, but without the list splitting and the strict unknown-variable check), so the
/// variable is only written into the help text. `--config`, `--print-config`, `--help` and
/// `--version` are not configuration keys and are left alone.
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
/// assert!(help.contains("[env: WORKER_LOG_LEVEL]"));
/// ```
pub fn with_env_help(command: clap::Command, env_prefix: &str) -> clap::Command {
    let prefix = env_prefix.trim_end_matches('_').to_ascii_uppercase();
    command.mut_args(move |arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        if matches!(long, "config" | "print-config" | "help" | "version") {
            return arg;
        }
        let var = format!("{prefix}_{}", long.replace('-', "_").to_ascii_uppercase());
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.help(format!("{help} [env: {var}]"))
    })
}

/// The common flags and a service's own, serialized as one map.
#[derive(Serialize)]
struct Overrides<'a, F> {
    /// The common flags.
    #[serde(flatten)]
    common: &'a CommonArgs,
    /// The service's own flags.
    #[serde(flatten)]
    own: &'a F,
}

/// Subcommands every service binary has; flatten into the service's subcommand enum with
/// `#[command(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CommonCommand {
    /// Probe the running service's /health (for Docker's HEALTHCHECK); exit 0 if healthy,
    /// 1 otherwise
    Healthcheck,
}

/// A service's command line: its constants and two accessors; parsing and loading are written
/// once here. Implement it for the service's clap parser (which flattens [`CommonArgs`] and
/// its own flags) and bring the trait into scope where `Cli::parse_args()` is called.
pub trait ServiceCli: clap::CommandFactory + clap::FromArgMatches + Sized {
    /// Prefix of the service's environment variables, e.g. `WORKER`.
    const ENV_PREFIX: &'static str;
    /// Keys whose environment value is a comma-separated list.
    const LIST_KEYS: &'static [&'static str];
    /// The default `--http-address`, shown in `--help`.
    const DEFAULT_HTTP_ADDRESS: &'static str;
    /// The service's configuration.
    type Config: Serialize + DeserializeOwned + Default;
    /// The service's own flags (each an override of the config key of the same name).
    type Flags: Serialize;

    /// The flags every service has.
    fn common(&self) -> &CommonArgs;
    /// The service's own flags.
    fn flags(&self) -> &Self::Flags;

    /// The clap command, with each flag's environment variable added to its help.
    fn command_with_env() -> clap::Command {
        let command = Self::command().mut_arg("http_address", |arg| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [default: {}]", Self::DEFAULT_HTTP_ADDRESS))
        });
        with_env_help(command, Self::ENV_PREFIX)
    }

    /// Parses the process arguments; exits with code 2 (clap's usage error) when they are bad,
    /// and 0 after `--help` or `--version`.
    fn parse_args() -> Self {
        let matches = Self::command_with_env().get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Parses the given arguments (the first is the program name).
    fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command_with_env().try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }

    /// Loads the configuration from the flags, the process environment, the `--config` file
    /// and the defaults.
    fn load_config(&self) -> Result<Self::Config, ConfigError> {
        self.common()
            .load_config(Self::ENV_PREFIX, Self::LIST_KEYS, self.flags())
    }

    /// Same as [`ServiceCli::load_config`] with `env` in place of the process environment.
    fn load_config_with_env(
        &self,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Self::Config, ConfigError> {
        self.common()
            .sources(Self::ENV_PREFIX, Self::LIST_KEYS)
            .env(env)
            .load(&self.common().with(self.flags()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
        #[command(subcommand)]
        command: Option<CommonCommand>,
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::parse_from([
            "svc",
            "--config",
            "/etc/svc.toml",
            "--print-config",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--http-address",
            "0.0.0.0:4190",
        ]);
        assert_eq!(cli.common.config, Some(PathBuf::from("/etc/svc.toml")));
        assert!(cli.common.print_config);
        assert_eq!(cli.common.log_format, Some(LogFormat::Json));
        assert_eq!(cli.common.log_level.as_deref(), Some("debug"));
        assert_eq!(cli.common.http_address.as_deref(), Some("0.0.0.0:4190"));
        assert_eq!(cli.command, None);
    }

    #[test]
    fn healthcheck_subcommand_accepts_common_flags() {
        let cli = Cli::parse_from(["svc", "healthcheck", "--config", "/etc/svc.toml"]);
        assert_eq!(cli.command, Some(CommonCommand::Healthcheck));
        assert_eq!(cli.common.config, Some(PathBuf::from("/etc/svc.toml")));
    }

    #[test]
    fn bad_log_format_is_a_clap_error() {
        let err = Cli::try_parse_from(["svc", "--log-format", "xml"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn only_config_keys_are_serialized() {
        let args = CommonArgs {
            config: Some(PathBuf::from("x")),
            print_config: true,
            log_level: Some("warn".to_owned()),
            ..CommonArgs::default()
        };
        let value = serde_json::to_value(&args).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"log_format": null, "log_level": "warn", "http_address": null})
        );

        #[derive(Serialize)]
        struct Own {
            topic: Option<String>,
        }
        let own = Own {
            topic: Some("t".to_owned()),
        };
        let value = serde_json::to_value(args.with(&own)).unwrap();
        assert_eq!(value["topic"], "t");
        assert_eq!(value["log_level"], "warn");
    }
}
