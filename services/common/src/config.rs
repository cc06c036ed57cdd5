//! Layered configuration: flags, then environment, then a TOML file, then defaults.
//!
//! A service declares each setting **once**, as a field of a `clap::Args` struct: its type,
//! its doc comment (the `--help` text) and its default (`default_value_t`, which `--help`
//! shows as `[default: …]`). Shared groups ([`crate::cli::ConsumerArgs`],
//! [`crate::cli::LogArgs`]) are flattened into it. [`Sources::parse`] fills the struct from
//! four layers, each overriding the ones below it:
//!
//! 1. **flags** on the command line;
//! 2. **environment**: `<PREFIX>_<KEY>` in upper case, e.g. `WORKER_NSQD_TCP_ADDRESS` for the
//!    flag `--nsqd-tcp-address` of a service whose prefix is `WORKER`; repeatable flags take
//!    comma-separated values (`WORKER_NSQD_TCP_ADDRESS=a:4150,b:4150`);
//! 3. **file**: the TOML file given with `--config`, with the keys at top level (the flag's
//!    name with `_` for `-`);
//! 4. **defaults**: the `default_value_t` of the field.
//!
//! The environment and the file are read by the `config` crate's `Environment` and `File`
//! sources. Every value, whatever its layer, is then parsed by the field's clap value parser,
//! so that a setting is typed and validated in one place: a bad value is an error naming the
//! flag (and the variable or file it came from). What this module adds to the `config` crate
//! is strictness: an environment variable with the service's prefix or a file key that is not
//! a setting is an error naming it, suggesting the closest valid name (with `strsim`) and
//! listing all of them, because a misspelt setting silently falling back to its default is
//! the worst kind of bug in production.
//!
//! ```
//! use std::collections::HashMap;
//! use clap::{CommandFactory as _, Parser};
//! use suite_common::{addr::HostPort, config::Sources, setting::{Parse, at_least_one}};
//!
//! #[derive(Debug, Parser, serde::Serialize)]
//! struct Config {
//!     /// nsqd TCP address; repeatable
//!     #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4150")]
//!     nsqd_tcp_address: Vec<HostPort>,
//!     /// Most messages in flight
//!     #[arg(long, default_value_t = 1, value_parser = Parse(at_least_one::<u16>))]
//!     max_in_flight: u16,
//! }
//!
//! let env = HashMap::from([("WORKER_NSQD_TCP_ADDRESS".to_owned(), "a:4150, b:4150".to_owned())]);
//! let config: Config = Sources::new("WORKER")
//!     .env(&env)
//!     .parse(Config::command(), ["worker", "--max-in-flight", "8"])?;
//! assert_eq!(config.nsqd_tcp_address[1].to_string(), "b:4150");
//! assert_eq!(config.max_in_flight, 8);
//!
//! let env = HashMap::from([("WORKER_MAX_IN_FLIHGT".to_owned(), "8".to_owned())]);
//! let err = Sources::new("WORKER").env(&env).parse::<Config>(Config::command(), ["worker"]);
//! assert!(err.unwrap_err().to_string().starts_with(
//!     "unknown environment variable `WORKER_MAX_IN_FLIHGT` (did you mean `WORKER_MAX_IN_FLIGHT`?)"
//! ));
//! # Ok::<(), suite_common::config::LoadError>(())
//! ```
//!
//! Nested tables are not supported; keep service configurations flat.

use std::{
    collections::HashMap,
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, Arg, ArgAction, Command, FromArgMatches};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::addr::AddrError;

/// Why a configuration could not be loaded or is not valid.
///
/// Every variant is a usage error: the service exits with code 2 (see [`crate::exit`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file given with `--config` does not exist.
    #[error("config file {} does not exist", path.display())]
    FileNotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The config file exists but could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    FileRead {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or has a value that is not a setting's (a table).
    #[error("config file {} is not valid TOML: {message}", path.display())]
    FileSyntax {
        /// The path as given.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The config file has a top-level key that is not a configuration key.
    #[error(
        "unknown key `{key}` in config file {}{}; valid keys: {}",
        path.display(),
        did_you_mean(suggestion),
        valid.join(", ")
    )]
    UnknownFileKey {
        /// The path of the file.
        path: PathBuf,
        /// The unknown key.
        key: String,
        /// The closest valid key, if one is close.
        suggestion: Option<String>,
        /// All valid keys.
        valid: Vec<String>,
    },
    /// An environment variable has the service's prefix but names no configuration key.
    #[error(
        "unknown environment variable `{var}`{}; valid variables: {}",
        did_you_mean(suggestion),
        valid.join(", ")
    )]
    UnknownEnvVar {
        /// The variable's name.
        var: String,
        /// The closest valid variable name, if one is close.
        suggestion: Option<String>,
        /// All valid variable names.
        valid: Vec<String>,
    },
    /// The environment could not be read (a variable with the service's prefix is not valid
    /// UTF-8).
    #[error("cannot read the environment: {0}")]
    Environment(String),
    /// A value from the environment or the file is not valid for its setting.
    #[error("{message} (in {origin})")]
    Layer {
        /// Where the value came from, e.g. `environment variable WORKER_MAX_IN_FLIGHT`.
        origin: String,
        /// What is wrong, naming the flag.
        message: String,
    },
    /// A value is out of range or otherwise not acceptable (the service's own validation).
    #[error("invalid `{key}`: {message}")]
    Value {
        /// The setting, as the user knows it (flag name, e.g. `--max-in-flight`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An address setting is not valid.
    #[error(transparent)]
    Address(#[from] AddrError),
    /// The effective configuration could not be printed.
    #[error("cannot print the configuration: {0}")]
    Print(String),
}

impl ConfigError {
    /// A [`ConfigError::Value`], for a service's own validation of its settings.
    pub fn value(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Value {
            key: key.into(),
            message: message.into(),
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// Why the command line and the configuration could not be turned into the settings.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A usage error on the command line, or `--help`/`--version`: clap prints it and exits
    /// (with 2 for errors, 0 for help), see [`clap::Error::exit`].
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// The environment or the file is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The defaults of a configuration struct: what it is with no flag, no environment, no file.
///
/// # Panics
///
/// When a default is refused by its own value parser: a bug in the struct's declaration, not
/// something a user can cause (no input is read), caught by every service's tests.
#[allow(clippy::panic)] // see Panics: a declaration bug, never user input
pub fn defaults<C: clap::Args + FromArgMatches>() -> C {
    let command = C::augment_args(Command::new("defaults"));
    // Only the struct's own defaults are parsed here: an error is a bug in its declaration
    // (a default its own value parser refuses), which every service's tests catch.
    let matches = command
        .try_get_matches_from(["defaults"])
        .unwrap_or_else(|e| panic!("the defaults of a configuration do not parse: {e}"));
    C::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("the defaults of a configuration do not parse: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Layering

/// Long flags that are not settings: no environment variable, no file key.
pub const NOT_SETTINGS: &[&str] = &["config", "print-config", "help", "version"];

/// The settings of a command: its arguments with a long flag, apart from [`NOT_SETTINGS`].
pub fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l)))
}

/// The configuration key of a setting: its long flag with `_` for `-`.
pub fn key_of(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

/// The environment variable of a setting key, e.g. `WORKER_MAX_IN_FLIGHT`.
pub fn env_var(env_prefix: &str, key: &str) -> String {
    let prefix = env_prefix.trim_end_matches('_').to_ascii_uppercase();
    format!("{prefix}_{}", key.to_ascii_uppercase())
}

/// Where the configuration comes from, apart from the command line: the environment (with
/// the service's prefix) and the file named by `--config`.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Prefix of the service's environment variables, e.g. `WORKER` (a trailing `_` is
    /// optional).
    pub env_prefix: &'a str,
    /// The environment to read; `None` reads the process environment. Tests pass a map, so
    /// that they never mutate the process environment (racy between test threads).
    pub env: Option<&'a HashMap<String, String>>,
}

/// A value from the environment or the file, for one setting.
struct Given {
    /// The values (several for a repeatable flag).
    values: Vec<String>,
    /// Where they came from, for errors.
    origin: String,
}

impl<'a> Sources<'a> {
    /// Sources with the given environment prefix and the process environment.
    pub fn new(env_prefix: &'a str) -> Self {
        Self {
            env_prefix,
            env: None,
        }
    }

    /// Reads this map instead of the process environment.
    pub fn env(mut self, env: &'a HashMap<String, String>) -> Self {
        self.env = Some(env);
        self
    }

    /// Parses `args` (the first is the program name) with `command`, filling every setting
    /// that is not on the command line from the environment, else from the `--config` file
    /// (a `PathBuf` argument with the id `config`, if the command has one), else its default.
    pub fn parse<C: FromArgMatches>(
        &self,
        command: Command,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<C, LoadError> {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = command.clone().try_get_matches_from(&args)?;
        let keys: Vec<(String, bool)> = settings(&command)
            .map(|arg| (key_of(arg), matches!(arg.get_action(), ArgAction::Append)))
            .collect();

        let mut given: HashMap<String, Given> = HashMap::new();
        let file = if command.get_arguments().any(|a| a.get_id() == "config") {
            matches.get_one::<PathBuf>("config")
        } else {
            None
        };
        if let Some(path) = file {
            given.extend(file_layer(path, &keys)?);
        }
        // The environment beats the file (a list from the environment replaces the file's).
        given.extend(self.env_layer(&keys)?);

        let mut injected: Vec<OsString> = Vec::new();
        for arg in settings(&command) {
            let key = key_of(arg);
            let on_command_line =
                matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
            let Some(Given { values, origin }) = given.get(&key).filter(|_| !on_command_line)
            else {
                continue;
            };
            let long = arg.get_long().unwrap_or_default();
            // Parsed here first, by the setting alone, so that an error names where the
            // value came from.
            let alone = Command::new("setting")
                .no_binary_name(true)
                .arg(arg.clone().global(false));
            let values: Vec<String> = values.iter().map(|v| format!("--{long}={v}")).collect();
            if let Err(e) = alone.try_get_matches_from(&values) {
                return Err(ConfigError::Layer {
                    origin: origin.clone(),
                    message: clap_message(&e),
                }
                .into());
            }
            injected.extend(values.into_iter().map(OsString::from));
        }

        // The values from the environment and the file go before the command line's, so that
        // a subcommand on the command line stays last.
        let mut all = args;
        let rest = all.split_off(all.len().min(1));
        all.extend(injected);
        all.extend(rest);
        let matches = command.try_get_matches_from(all)?;
        Ok(C::from_arg_matches(&matches)?)
    }

    fn env_layer(&self, keys: &[(String, bool)]) -> Result<Vec<(String, Given)>, ConfigError> {
        use config::Source as _;

        let prefix = self.env_prefix.trim_end_matches('_');
        // The variables are picked here, with the prefix in upper case exactly (the `config`
        // crate compares it in any case); it strips the prefix and makes the keys.
        let upper = format!("{}_", prefix.to_ascii_uppercase());
        let vars: config::Map<String, String> = match self.env {
            Some(env) => env
                .iter()
                .filter(|(k, _)| k.starts_with(&upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => {
                let mut vars = config::Map::new();
                for (k, v) in std::env::vars_os() {
                    let Some(k) = k.to_str().filter(|k| k.starts_with(&upper)) else {
                        continue;
                    };
                    let v = v
                        .into_string()
                        .map_err(|_| ConfigError::Environment(format!("{k} is not valid UTF-8")))?;
                    vars.insert(k.to_owned(), v);
                }
                vars
            }
        };
        let map = config::Environment::with_prefix(prefix)
            .prefix_separator("_")
            .try_parsing(false)
            .source(Some(vars))
            .collect()
            .map_err(|e| ConfigError::Environment(e.to_string()))?;
        let mut vars: Vec<(String, config::Value)> = map.into_iter().collect();
        // Sorted, so that with several unknown variables the error is always about the same.
        vars.sort_by(|a, b| a.0.cmp(&b.0));

        let mut layer = Vec::new();
        for (key, value) in vars {
            let var = env_var(prefix, &key);
            let Some((_, is_list)) = keys.iter().find(|(k, _)| *k == key) else {
                let valid: Vec<String> = keys.iter().map(|(k, _)| env_var(prefix, k)).collect();
                return Err(ConfigError::UnknownEnvVar {
                    suggestion: closest(&var, &valid),
                    var,
                    valid,
                });
            };
            let text = value
                .into_string()
                .map_err(|e| ConfigError::Environment(format!("{var}: {e}")))?;
            let values = if *is_list {
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            } else {
                vec![text]
            };
            let origin = format!("environment variable {var}");
            layer.push((key, Given { values, origin }));
        }
        Ok(layer)
    }
}

/// The file's settings, read with the `config` crate's TOML `File` source.
fn file_layer(path: &Path, keys: &[(String, bool)]) -> Result<Vec<(String, Given)>, ConfigError> {
    use config::Source as _;

    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::FileNotFound {
                path: path.to_owned(),
            }
        } else {
            ConfigError::FileRead {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let syntax = |message: String| ConfigError::FileSyntax {
        path: path.to_owned(),
        message,
    };
    let map = config::File::from_str(&text, config::FileFormat::Toml)
        .collect()
        .map_err(|e| syntax(e.to_string().trim_end().to_owned()))?;
    let mut entries: Vec<(String, config::Value)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let valid: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    let mut layer = Vec::new();
    for (key, value) in entries {
        if !valid.contains(&key) {
            return Err(ConfigError::UnknownFileKey {
                path: path.to_owned(),
                suggestion: closest(&key, &valid),
                key,
                valid,
            });
        }
        let not_a_value = |e: config::ConfigError| syntax(format!("`{key}`: {e}"));
        // A single value where a list is expected is a list of one, as in the environment.
        let items = match value.kind {
            config::ValueKind::Array(_) => value.into_array().map_err(not_a_value)?,
            _ => vec![value],
        };
        let values = items
            .into_iter()
            .map(|v| v.into_string().map_err(not_a_value))
            .collect::<Result<_, _>>()?;
        let origin = format!("config file {}", path.display());
        layer.push((key, Given { values, origin }));
    }
    Ok(layer)
}

/// The first line of a clap error, without `error: `: what is wrong, naming the flag.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The valid name closest to `name`, if it is close enough to be a likely typo.
fn closest(name: &str, valid: &[String]) -> Option<String> {
    let name = name.to_ascii_lowercase();
    valid
        .iter()
        .map(|v| (strsim::levenshtein(&name, &v.to_ascii_lowercase()), v))
        .filter(|(d, v)| *d <= (v.len().max(name.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v.clone())
}

/// The settings whose `[default: …]` in `--help` is not what `config` (the defaults) prints,
/// and the settings printed without a flag or with a flag but not printed: empty when the
/// help and `--print-config` agree. For each service's tests.
pub fn help_mismatches<T: Serialize>(command: &Command, config: &T) -> Vec<String> {
    let printed = match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => return vec!["the configuration does not serialize as a struct".to_owned()],
    };
    let mut mismatches = Vec::new();
    for arg in settings(command) {
        let key = key_of(arg);
        let Some(value) = printed.get(&key) else {
            mismatches.push(format!(
                "--{} is not printed",
                arg.get_long().unwrap_or_default()
            ));
            continue;
        };
        let shown: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let actual: Vec<String> = match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items.iter().map(plain).collect(),
            other => vec![plain(other)],
        };
        if shown != actual {
            mismatches.push(format!(
                "{key}: --help shows {shown:?}, the default is {actual:?}"
            ));
        }
    }
    for key in printed.keys() {
        if !settings(command).any(|arg| key_of(arg) == *key) {
            mismatches.push(format!("{key} is printed but has no flag"));
        }
    }
    mismatches
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Printing

/// Renders the effective configuration as TOML, with secrets redacted.
///
/// The value of every key whose name contains `secret`, `password` or `token` is shown as
/// `"<redacted>"`. Unset optional settings are listed as comments at the top. Apart from
/// redacted values, the output is a valid `--config` file.
pub fn to_toml<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    let value = serde_json::to_value(config).map_err(|e| ConfigError::Print(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(ConfigError::Print(
            "the configuration is not a struct".to_owned(),
        ));
    };
    let mut unset = Vec::new();
    let table = to_toml_table(map, "", &mut unset);
    let mut out = String::new();
    for key in unset {
        let _ = writeln!(out, "# {key} is not set");
    }
    out += &toml::to_string(&table).map_err(|e| ConfigError::Print(e.to_string()))?;
    Ok(out)
}

/// Prints the effective configuration to stdout as TOML (see [`to_toml`]); for
/// `--print-config`.
pub fn print_config<T: Serialize>(config: &T) -> Result<(), ConfigError> {
    use std::io::Write as _;
    let text = to_toml(config)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| ConfigError::Print(e.to_string()))
}

/// Whether a key's value must not be printed.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "token"]
        .iter()
        .any(|word| key.contains(word))
}

fn to_toml_table(map: Map<String, Value>, path: &str, unset: &mut Vec<String>) -> toml::Table {
    let mut table = toml::Table::new();
    for (key, value) in map {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if value.is_null() {
            unset.push(full);
            continue;
        }
        let value = if is_secret(&key) {
            toml::Value::String("<redacted>".to_owned())
        } else {
            match value {
                Value::Object(inner) => toml::Value::Table(to_toml_table(inner, &full, unset)),
                other => to_toml_value(other),
            }
        };
        table.insert(key, value);
    }
    table
}

fn to_toml_value(value: Value) -> toml::Value {
    match value {
        Value::Null => toml::Value::String(String::new()),
        Value::Bool(b) => toml::Value::Boolean(b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            // Beyond i64 (TOML's integer range): keep the digits as text.
            (None, _) if n.is_u64() => toml::Value::String(n.to_string()),
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => toml::Value::String(n.to_string()),
        },
        Value::String(s) => toml::Value::String(s),
        Value::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .filter(|v| !v.is_null())
                .map(to_toml_value)
                .collect(),
        ),
        Value::Object(map) => {
            let mut unset = Vec::new();
            toml::Value::Table(to_toml_table(map, "", &mut unset))
        }
    }
}

/// The effective configuration as one log line (`key = value, ...`, secrets redacted as in
/// [`to_toml`]), for the start-up log of every service.
pub fn to_one_line<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    Ok(to_toml(config)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", "))
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, time::Duration};

    use clap::{CommandFactory as _, Parser};

    use super::*;
    use crate::{
        addr::{HostPort, LookupdAddr},
        setting::{at_least_one, HumanDuration, Parse, Topic},
        telemetry::LogFormat,
    };

    #[derive(Debug, Clone, PartialEq, Parser, Serialize)]
    struct TestConfig {
        /// TOML file
        #[arg(long)]
        #[serde(skip)]
        config: Option<PathBuf>,
        /// nsqd; repeatable
        #[arg(long, default_value = "127.0.0.1:4150")]
        nsqd_tcp_address: Vec<HostPort>,
        /// lookupd; repeatable
        #[arg(long)]
        lookupd_http_address: Vec<LookupdAddr>,
        /// in flight
        #[arg(long, default_value_t = 1, value_parser = Parse(at_least_one::<u16>))]
        max_in_flight: u16,
        /// topic
        #[arg(long, default_value = "sensor_data")]
        topic: Topic,
        /// verbose
        #[arg(long, default_value_t = false, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", action = ArgAction::Set,
              value_parser = clap::builder::BoolishValueParser::new())]
        verbose: bool,
        /// max age
        #[arg(long)]
        max_age: Option<HumanDuration>,
        /// secret
        #[arg(long)]
        auth_secret: Option<String>,
        /// log format
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// period
        #[arg(long, default_value_t = HumanDuration::from_secs(5), value_parser = Parse(HumanDuration::nonzero))]
        poll_interval: HumanDuration,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn load(
        env_map: &HashMap<String, String>,
        file: Option<&Path>,
        flags: &[&str],
    ) -> Result<TestConfig, LoadError> {
        let mut args = vec!["worker".to_owned()];
        if let Some(path) = file {
            args.push(format!("--config={}", path.display()));
        }
        args.extend(flags.iter().map(|s| (*s).to_owned()));
        Sources::new("WORKER")
            .env(env_map)
            .parse(TestConfig::command(), args)
    }

    fn defaults() -> TestConfig {
        load(&env(&[]), None, &[]).unwrap()
    }

    fn strings<T: ToString>(items: &[T]) -> Vec<String> {
        items.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let config = defaults();
        assert_eq!(strings(&config.nsqd_tcp_address), ["127.0.0.1:4150"]);
        assert_eq!(config.max_in_flight, 1);
        assert_eq!(&*config.topic, "sensor_data");
        assert_eq!(config.poll_interval.get(), Duration::from_secs(5));
        assert_eq!(config.max_age, None);
        assert!(!config.verbose);
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        let f = file(
            r#"
            max_in_flight = 10
            topic = "from_file"
            verbose = true
            nsqd_tcp_address = ["file:4150"]
            max_age = "5s"
            "#,
        );
        let e = env(&[
            ("WORKER_MAX_IN_FLIGHT", "20"),
            ("WORKER_TOPIC", "from_env"),
            ("WORKER_LOG_FORMAT", "json"),
        ]);
        let config = load(&e, Some(f.path()), &["--max-in-flight", "30"]).unwrap();
        assert_eq!(config.max_in_flight, 30, "flag beats env and file");
        assert_eq!(&*config.topic, "from_env", "env beats file");
        assert_eq!(config.log_format, LogFormat::Json, "env beats default");
        assert!(config.verbose, "file beats default");
        assert_eq!(
            strings(&config.nsqd_tcp_address),
            ["file:4150"],
            "file list replaces default"
        );
        assert_eq!(config.max_age.unwrap().get(), Duration::from_secs(5));
        assert_eq!(config.poll_interval.to_string(), "5s", "default stays");

        let config = load(
            &e,
            Some(f.path()),
            &[
                "--topic",
                "from_flag",
                "--nsqd-tcp-address",
                "flag:4150",
                "--log-format",
                "text",
            ],
        )
        .unwrap();
        assert_eq!(&*config.topic, "from_flag");
        assert_eq!(config.max_in_flight, 20, "env, as no flag");
        assert_eq!(strings(&config.nsqd_tcp_address), ["flag:4150"]);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn lists_from_env_are_comma_separated() {
        let e = env(&[
            ("WORKER_NSQD_TCP_ADDRESS", "a:4150, b:4150,,c:4150 "),
            ("WORKER_LOOKUPD_HTTP_ADDRESS", "http://l:4161"),
        ]);
        let config = load(&e, None, &[]).unwrap();
        assert_eq!(
            strings(&config.nsqd_tcp_address),
            ["a:4150", "b:4150", "c:4150"]
        );
        assert_eq!(strings(&config.lookupd_http_address), ["http://l:4161"]);
    }

    #[test]
    fn a_single_string_in_the_file_is_a_list_of_one() {
        let f = file("nsqd_tcp_address = \"f:1\"\n");
        let config = load(&env(&[]), Some(f.path()), &[]).unwrap();
        assert_eq!(strings(&config.nsqd_tcp_address), ["f:1"]);
    }

    #[test]
    fn env_list_replaces_file_list() {
        let f = file("nsqd_tcp_address = [\"f1:1\", \"f2:2\", \"f3:3\"]\n");
        let e = env(&[("WORKER_NSQD_TCP_ADDRESS", "e:1")]);
        let config = load(&e, Some(f.path()), &[]).unwrap();
        assert_eq!(strings(&config.nsqd_tcp_address), ["e:1"]);
    }

    #[test]
    fn bad_values_name_the_flag_and_where_they_came_from() {
        let e = env(&[("WORKER_MAX_IN_FLIGHT", "0")]);
        let text = load(&e, None, &[]).unwrap_err().to_string();
        assert_eq!(
            text,
            "invalid `--max-in-flight`: must be at least 1 \
             (in environment variable WORKER_MAX_IN_FLIGHT)"
        );

        let e = env(&[("WORKER_NSQD_TCP_ADDRESS", "a:1,nope")]);
        let text = load(&e, None, &[]).unwrap_err().to_string();
        assert!(
            text.starts_with("`--nsqd-tcp-address` 'nope' is not host:port"),
            "{text}"
        );

        let f = file("poll_interval = \"0s\"\n");
        let text = load(&env(&[]), Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("invalid `--poll-interval`: must not be 0 (in config file "),
            "{text}"
        );

        let e = env(&[("WORKER_LOG_FORMAT", "xml")]);
        let text = load(&e, None, &[]).unwrap_err().to_string();
        assert!(text.contains("--log-format"), "{text}");
        assert!(text.contains("WORKER_LOG_FORMAT"), "{text}");

        // On the command line, clap reports it (and exits with 2).
        let err = load(&env(&[]), None, &["--topic", "a b"]).unwrap_err();
        let LoadError::Usage(err) = err else {
            panic!("{err}")
        };
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("invalid `--topic`: 'a b'"),
            "{err}"
        );
    }

    #[test]
    fn unknown_env_var_is_an_error_naming_it() {
        let e = env(&[("WORKER_NSQD_ADRESS", "a:4150")]);
        let err = load(&e, None, &[]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            LoadError::Config(ConfigError::UnknownEnvVar { .. })
        ));
        assert!(
            text.starts_with("unknown environment variable `WORKER_NSQD_ADRESS`"),
            "{text}"
        );
        assert!(text.contains("WORKER_NSQD_TCP_ADDRESS"), "{text}");
        assert!(
            text.contains("WORKER_MAX_IN_FLIGHT"),
            "lists valid ones: {text}"
        );
        assert!(!text.contains("WORKER_CONFIG"), "not a setting: {text}");
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let e = env(&[("WORKER_MAX_INFLIGHT", "3")]);
        let text = load(&e, None, &[]).unwrap_err().to_string();
        assert!(
            text.contains("(did you mean `WORKER_MAX_IN_FLIGHT`?)"),
            "{text}"
        );
        let f = file("max_inflight = 3\n");
        let text = load(&env(&[]), Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(text.contains("(did you mean `max_in_flight`?)"), "{text}");
    }

    #[test]
    fn other_prefixes_are_ignored() {
        let e = env(&[("LOGGER_WHATEVER", "x"), ("WORKERS", "y"), ("PATH", "/bin")]);
        assert!(load(&e, None, &[]).is_ok());
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it() {
        let f = file("max_in_flight = 2\nnsqd_adress = [\"a:1\"]\n");
        let text = load(&env(&[]), Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("unknown key `nsqd_adress` in config file "),
            "{text}"
        );
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        assert!(text.contains("nsqd_tcp_address, "), "{text}");
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent/worker.toml");
        let err = load(&env(&[]), Some(path), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/worker.toml does not exist"
        );
    }

    #[test]
    fn bad_toml_is_an_error_with_the_line() {
        let f = file("max_in_flight = 2\ntopic = \n");
        let text = load(&env(&[]), Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(text.contains("is not valid TOML"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn env_text_is_converted_to_numbers_and_booleans() {
        let e = env(&[
            ("WORKER_VERBOSE", "true"),
            ("WORKER_MAX_AGE", "250ms"),
            ("WORKER_AUTH_SECRET", "hunter2"),
        ]);
        let config = load(&e, None, &[]).unwrap();
        assert!(config.verbose);
        assert_eq!(config.max_age.unwrap().get(), Duration::from_millis(250));
        assert_eq!(config.auth_secret.as_deref(), Some("hunter2"));
        let config = load(&e, None, &["--verbose=false"]).unwrap();
        assert!(!config.verbose, "flag beats env");
    }

    #[test]
    fn the_prefix_is_upper_case() {
        let e = env(&[("worker_topic", "t"), ("Worker_Bogus", "x")]);
        assert_eq!(&*load(&e, None, &[]).unwrap().topic, "sensor_data");
    }

    #[test]
    fn prefix_may_have_a_trailing_underscore() {
        let e = env(&[("WORKER_TOPIC", "t")]);
        let config: TestConfig = Sources::new("WORKER_")
            .env(&e)
            .parse(TestConfig::command(), ["w"])
            .unwrap();
        assert_eq!(&*config.topic, "t");
    }

    #[test]
    fn printed_config_is_toml_with_secrets_redacted() {
        let e = env(&[("WORKER_AUTH_SECRET", "hunter2")]);
        let config = load(&e, None, &[]).unwrap();
        let text = to_toml(&config).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("auth_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("# max_age is not set"), "{text}");
        assert!(
            text.contains("nsqd_tcp_address = [\"127.0.0.1:4150\"]"),
            "{text}"
        );
        assert!(text.contains("log_format = \"text\""), "{text}");

        // Without secrets, the output loads back as the same configuration.
        let config = load(
            &env(&[]),
            None,
            &["--max-age=90s", "--lookupd-http-address=l:1"],
        )
        .unwrap();
        let f = file(&to_toml(&config).unwrap());
        let loaded = load(&env(&[]), Some(f.path()), &[]).unwrap();
        assert_eq!(
            loaded,
            TestConfig {
                config: loaded.config.clone(),
                ..config
            }
        );
    }

    #[test]
    fn the_one_line_form_is_the_toml_on_one_line_and_redacted() {
        let e = env(&[("WORKER_AUTH_SECRET", "hunter2")]);
        let line = to_one_line(&load(&e, None, &[]).unwrap()).unwrap();
        assert!(!line.contains('\n'), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
        assert!(line.contains("auth_secret = \"<redacted>\", "), "{line}");
        assert!(line.contains("log_format = \"text\""), "{line}");
    }

    #[test]
    fn secret_keys_are_recognised() {
        for key in ["password", "nsq_auth_secret", "API_TOKEN", "tokens"] {
            assert!(is_secret(key), "{key}");
        }
        for key in ["topic", "max_in_flight"] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn help_defaults_match_the_printed_defaults() {
        let command = TestConfig::command();
        assert_eq!(help_mismatches(&command, &defaults()), Vec::<String>::new());
        let mut other = defaults();
        other.max_in_flight = 7;
        assert_eq!(help_mismatches(&command, &other).len(), 1);
    }
}
