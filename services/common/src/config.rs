//! Layered configuration: flags, then environment, then a TOML file, then defaults.
//!
//! A service describes its configuration as one flat struct with a [`Default`], and marks it
//! `#[serde(deny_unknown_fields)]`. This module fills it from four layers, each overriding
//! the ones below it:
//!
//! 1. **flags**: a serializable struct of `Option` fields from clap (`None` = not given);
//! 2. **environment**: `<PREFIX>_<KEY>` in upper case, e.g. `WORKER_NSQD_TCP_ADDRESS` for the
//!    key `nsqd_tcp_address` of a service whose prefix is `WORKER`; keys listed as lists take
//!    comma-separated values (`WORKER_NSQD_TCP_ADDRESS=a:4150,b:4150`);
//! 3. **file**: the TOML file given with `--config`, with the struct's keys at top level;
//! 4. **defaults**: `T::default()`.
//!
//! The layering itself is done by the `config` crate, which also converts text from the
//! environment to numbers and booleans. What this module adds is strictness: an environment
//! variable with the service's prefix or a file key that is not a configuration key is an
//! error naming it, suggesting the closest valid name and listing all of them, because a
//! misspelt setting silently falling back to its default is the worst kind of bug in
//! production.
//!
//! ```
//! use std::collections::HashMap;
//! use serde::{Deserialize, Serialize};
//! use suite_common::config::Sources;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     nsqd_tcp_address: Vec<String>,
//!     max_in_flight: u16,
//! }
//! impl Default for Config {
//!     fn default() -> Self {
//!         Self { nsqd_tcp_address: vec!["127.0.0.1:4150".into()], max_in_flight: 1 }
//!     }
//! }
//!
//! #[derive(Serialize)]
//! struct Flags { max_in_flight: Option<u16> }
//!
//! let env = HashMap::from([("WORKER_NSQD_TCP_ADDRESS".to_owned(), "a:4150, b:4150".to_owned())]);
//! let config: Config = Sources::new("WORKER")
//!     .list_keys(&["nsqd_tcp_address"])
//!     .env(&env)
//!     .load(&Flags { max_in_flight: Some(8) })?;
//! assert_eq!(config.nsqd_tcp_address, ["a:4150", "b:4150"]);
//! assert_eq!(config.max_in_flight, 8);
//!
//! let env = HashMap::from([("WORKER_MAX_IN_FLIHGT".to_owned(), "8".to_owned())]);
//! let err = Sources::new("WORKER").env(&env).load::<Config, _>(&()).unwrap_err();
//! assert!(err.to_string().starts_with(
//!     "unknown environment variable `WORKER_MAX_IN_FLIHGT` (did you mean `WORKER_MAX_IN_FLIGHT`?)"
//! ));
//! # Ok::<(), suite_common::config::ConfigError>(())
//! ```
//!
//! Nested tables are not supported in the environment; keep service configurations flat.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
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
    /// The config file is not valid TOML.
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
    /// An environment variable with the service's prefix is not valid UTF-8.
    #[error("environment variable `{var}` is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The layers merged, but the result does not fit the configuration struct
    /// (a value of the wrong type, typically).
    #[error("invalid configuration: {0}")]
    Invalid(String),
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

/// Where the configuration comes from, apart from the flags.
///
/// Built with [`Sources::new`] and its setters, then [`Sources::load`].
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Prefix of the service's environment variables, e.g. `WORKER` (a trailing `_` is
    /// optional). Compared in upper case.
    pub env_prefix: &'a str,
    /// The TOML file given with `--config`, if any. It must exist when given.
    pub file: Option<&'a Path>,
    /// Keys whose environment value is a comma-separated list.
    pub list_keys: &'a [&'a str],
    /// The environment to read; `None` reads the process environment. Tests pass a map, so
    /// that they never mutate the process environment (racy between test threads).
    pub env: Option<&'a HashMap<String, String>>,
}

impl<'a> Sources<'a> {
    /// Sources with the given environment prefix, no file, no list keys, the process
    /// environment.
    pub fn new(env_prefix: &'a str) -> Self {
        Self {
            env_prefix,
            file: None,
            list_keys: &[],
            env: None,
        }
    }

    /// Sets the TOML file (`None`: no file).
    pub fn file(mut self, file: Option<&'a Path>) -> Self {
        self.file = file;
        self
    }

    /// Sets the keys whose environment value is a comma-separated list.
    pub fn list_keys(mut self, keys: &'a [&'a str]) -> Self {
        self.list_keys = keys;
        self
    }

    /// Reads this map instead of the process environment.
    pub fn env(mut self, env: &'a HashMap<String, String>) -> Self {
        self.env = Some(env);
        self
    }

    /// Loads the configuration: `overrides` (flags), then environment, then file, then
    /// `T::default()`.
    ///
    /// `overrides` must serialize as a map (a struct) whose keys are configuration keys;
    /// `None` values and empty lists count as "not given". Pass `&()` for no flags.
    pub fn load<T, O>(&self, overrides: &O) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default,
        O: Serialize + ?Sized,
    {
        let defaults = T::default();
        let keys = config_keys::<T>(&defaults)?;

        let defaults = match serde_json::to_value(&defaults) {
            Ok(Value::Object(map)) => map,
            Ok(_) => Map::new(),
            Err(e) => return Err(ConfigError::Invalid(e.to_string())),
        };
        let mut builder =
            config::Config::builder().add_source(Layer::new(defaults, |_| "defaults".to_owned()));
        if let Some(path) = self.file {
            let table = self.file_layer(path, &keys)?;
            let origin = path.display().to_string();
            builder = builder.add_source(Layer::new(table, |_| origin.clone()));
        }
        let prefix = self.prefix();
        builder = builder.add_source(Layer::new(self.env_layer(&keys)?, |key| {
            format!("environment variable {prefix}{}", key.to_ascii_uppercase())
        }));
        builder = builder.add_source(Layer::new(overrides_layer(overrides, &keys)?, |key| {
            format!("flag --{}", key.replace('_', "-"))
        }));

        builder
            .build()
            .and_then(|c| c.try_deserialize::<T>())
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    fn prefix(&self) -> String {
        let prefix = self.env_prefix.trim_end_matches('_').to_ascii_uppercase();
        format!("{prefix}_")
    }

    fn file_layer(&self, path: &Path, keys: &[String]) -> Result<Map<String, Value>, ConfigError> {
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
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::FileSyntax {
                    path: path.to_owned(),
                    message: e.message().to_owned() + &line_of(&text, e.span()),
                })?;
        if let Some(key) = table.keys().find(|k| !keys.contains(k)) {
            return Err(ConfigError::UnknownFileKey {
                path: path.to_owned(),
                key: key.clone(),
                suggestion: closest(key, keys),
                valid: keys.to_vec(),
            });
        }
        match serde_json::to_value(table) {
            Ok(Value::Object(mut map)) => {
                // A single value where a list is expected is a list of one, as in the
                // environment.
                for key in self.list_keys {
                    if let Some(value) = map.get_mut(*key) {
                        if value.is_string() {
                            *value = Value::Array(vec![value.take()]);
                        }
                    }
                }
                Ok(map)
            }
            Ok(_) => Ok(Map::new()),
            Err(e) => Err(ConfigError::FileSyntax {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        }
    }

    fn env_layer(&self, keys: &[String]) -> Result<Map<String, Value>, ConfigError> {
        let prefix = self.prefix();
        let mut vars: Vec<(String, String)> = match self.env {
            Some(env) => env
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => {
                let mut vars = Vec::new();
                for (k, v) in std::env::vars_os() {
                    let Some(k) = k.to_str() else { continue };
                    if !k.starts_with(&prefix) {
                        continue;
                    }
                    let v = v
                        .into_string()
                        .map_err(|_| ConfigError::EnvNotUnicode { var: k.to_owned() })?;
                    vars.push((k.to_owned(), v));
                }
                vars
            }
        };
        // Sorted, so that with several unknown variables the error is always about the same.
        vars.sort();

        let mut layer = Map::new();
        for (var, value) in vars {
            let key = var[prefix.len()..].to_ascii_lowercase();
            if !keys.contains(&key) {
                let valid: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{prefix}{}", k.to_ascii_uppercase()))
                    .collect();
                return Err(ConfigError::UnknownEnvVar {
                    suggestion: closest(&var, &valid),
                    var,
                    valid,
                });
            }
            let value = if self.list_keys.contains(&key.as_str()) {
                Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_owned()))
                        .collect(),
                )
            } else {
                Value::String(value)
            };
            layer.insert(key, value);
        }
        Ok(layer)
    }
}

/// Loads a configuration from the process environment; see [`Sources::load`].
///
/// `env_prefix` is e.g. `WORKER`, `file` the `--config` path, `overrides` the flags (a struct
/// of `Option` fields), `list_keys` the keys whose environment value is comma-separated.
pub fn load<T, O>(
    env_prefix: &str,
    file: Option<&Path>,
    overrides: &O,
    list_keys: &[&str],
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
    O: Serialize + ?Sized,
{
    Sources::new(env_prefix)
        .file(file)
        .list_keys(list_keys)
        .load(overrides)
}

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

/// One layer of configuration, as a source for the `config` crate.
///
/// Built from JSON values rather than with `config::Config::try_from`, whose serializer drops
/// empty lists (an empty default list would then be a "missing field"). Each value records
/// its origin, which the `config` crate names in type errors ("... in environment variable
/// WORKER_MAX_IN_FLIGHT").
#[derive(Debug, Clone)]
struct Layer(config::Map<String, config::Value>);

impl Layer {
    fn new(map: Map<String, Value>, origin: impl Fn(&str) -> String) -> Self {
        Self(
            map.into_iter()
                .map(|(key, value)| {
                    let origin = origin(&key);
                    let value = to_config_value(value, &origin);
                    (key, value)
                })
                .collect(),
        )
    }
}

impl config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

fn to_config_value(value: Value, origin: &String) -> config::Value {
    use config::ValueKind;
    let kind = match value {
        Value::Null => ValueKind::Nil,
        Value::Bool(b) => ValueKind::Boolean(b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                ValueKind::U64(u)
            } else if let Some(i) = n.as_i64() {
                ValueKind::I64(i)
            } else {
                ValueKind::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => ValueKind::String(s),
        Value::Array(items) => ValueKind::Array(
            items
                .into_iter()
                .map(|v| to_config_value(v, origin))
                .collect(),
        ),
        Value::Object(map) => ValueKind::Table(
            map.into_iter()
                .map(|(k, v)| (k, to_config_value(v, origin)))
                .collect(),
        ),
    };
    config::Value::new(Some(origin), kind)
}

fn overrides_layer<O: Serialize + ?Sized>(
    overrides: &O,
    keys: &[String],
) -> Result<Map<String, Value>, ConfigError> {
    let value = serde_json::to_value(overrides)
        .map_err(|e| ConfigError::Invalid(format!("flags cannot be read: {e}")))?;
    let map = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => {
            return Err(ConfigError::Invalid(
                "flags must serialize as a struct".to_owned(),
            ))
        }
    };
    let mut layer = Map::new();
    for (key, value) in map {
        let given = match &value {
            Value::Null => false,
            Value::Array(items) => !items.is_empty(),
            _ => true,
        };
        if !given {
            continue;
        }
        if !keys.contains(&key) {
            // A programming error in the service (a flag without a config key), reported
            // as a configuration error rather than silently ignored.
            return Err(ConfigError::Invalid(format!(
                "flag `{key}` has no configuration key; valid keys: {}",
                keys.join(", ")
            )));
        }
        layer.insert(key, value);
    }
    Ok(layer)
}

/// The top-level keys of a configuration struct: its field names (from its `Deserialize`
/// implementation, so that `Option` fields are included) and the keys its default
/// serializes to.
fn config_keys<T: Serialize + DeserializeOwned>(defaults: &T) -> Result<Vec<String>, ConfigError> {
    let mut keys: Vec<String> = field_names::<T>().iter().map(|s| (*s).to_owned()).collect();
    match serde_json::to_value(defaults) {
        Ok(Value::Object(map)) => {
            for key in map.keys() {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
        Ok(_) if !keys.is_empty() => {}
        Ok(_) => {
            return Err(ConfigError::Invalid(
                "the configuration type is not a struct".to_owned(),
            ))
        }
        Err(e) => return Err(ConfigError::Invalid(e.to_string())),
    }
    Ok(keys)
}

/// The field names a derived `Deserialize` implementation expects, captured by asking it to
/// deserialize from a deserializer that only records them.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Recorder<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The error is expected: the recorder never produces a value.
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

/// The valid name closest to `name`, if it is close enough to be a likely typo.
fn closest(name: &str, valid: &[String]) -> Option<String> {
    valid
        .iter()
        .map(|v| (edit_distance(name, v), v))
        .filter(|(d, v)| *d <= (v.len().max(name.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v.clone())
}

/// Levenshtein distance (case-insensitive), for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ` at line N` for a TOML error span, so that the message points into the file.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text.as_bytes()[..start]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Parses a duration such as `500ms`, `5s` or `2m`, naming the flag when it is not one.
pub fn duration(flag: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::value(
            flag,
            format!("'{text}' is not a duration such as 500ms, 5s or 2m ({e})"),
        )
    })
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
    use std::io::Write as _;

    use serde::Deserialize;

    use super::*;
    use crate::telemetry::LogFormat;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TestConfig {
        nsqd_tcp_address: Vec<String>,
        lookupd_http_address: Vec<String>,
        max_in_flight: u16,
        topic: String,
        verbose: bool,
        max_age_ms: Option<u64>,
        auth_secret: Option<String>,
        log_format: LogFormat,
        log_level: String,
    }

    impl Default for TestConfig {
        fn default() -> Self {
            Self {
                nsqd_tcp_address: vec!["127.0.0.1:4150".to_owned()],
                lookupd_http_address: vec![],
                max_in_flight: 1,
                topic: "sensor_data".to_owned(),
                verbose: false,
                max_age_ms: None,
                auth_secret: None,
                log_format: LogFormat::Text,
                log_level: "info".to_owned(),
            }
        }
    }

    #[derive(Default, Serialize)]
    struct Flags {
        nsqd_tcp_address: Vec<String>,
        max_in_flight: Option<u16>,
        topic: Option<String>,
        log_format: Option<LogFormat>,
    }

    const LISTS: &[&str] = &["nsqd_tcp_address", "lookupd_http_address"];

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
        flags: &Flags,
    ) -> Result<TestConfig, ConfigError> {
        Sources::new("WORKER")
            .file(file)
            .list_keys(LISTS)
            .env(env_map)
            .load(flags)
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let config = load(&env(&[]), None, &Flags::default()).unwrap();
        assert_eq!(config, TestConfig::default());
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        let f = file(
            r#"
            max_in_flight = 10
            topic = "from_file"
            verbose = true
            nsqd_tcp_address = ["file:4150"]
            max_age_ms = 5000
            "#,
        );
        let e = env(&[
            ("WORKER_MAX_IN_FLIGHT", "20"),
            ("WORKER_TOPIC", "from_env"),
            ("WORKER_LOG_FORMAT", "json"),
        ]);
        let flags = Flags {
            max_in_flight: Some(30),
            ..Flags::default()
        };
        let config = load(&e, Some(f.path()), &flags).unwrap();
        assert_eq!(config.max_in_flight, 30, "flag beats env and file");
        assert_eq!(config.topic, "from_env", "env beats file");
        assert_eq!(config.log_format, LogFormat::Json, "env beats default");
        assert!(config.verbose, "file beats default");
        assert_eq!(
            config.nsqd_tcp_address,
            ["file:4150"],
            "file list replaces default"
        );
        assert_eq!(config.max_age_ms, Some(5000));
        assert_eq!(config.log_level, "info", "default stays");

        let flags = Flags {
            topic: Some("from_flag".to_owned()),
            nsqd_tcp_address: vec!["flag:4150".to_owned()],
            log_format: Some(LogFormat::Text),
            ..Flags::default()
        };
        let config = load(&e, Some(f.path()), &flags).unwrap();
        assert_eq!(config.topic, "from_flag");
        assert_eq!(config.max_in_flight, 20, "env, as no flag");
        assert_eq!(config.nsqd_tcp_address, ["flag:4150"]);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn lists_from_env_are_comma_separated() {
        let e = env(&[
            ("WORKER_NSQD_TCP_ADDRESS", "a:4150, b:4150,,c:4150 "),
            ("WORKER_LOOKUPD_HTTP_ADDRESS", "http://l:4161"),
        ]);
        let config = load(&e, None, &Flags::default()).unwrap();
        assert_eq!(config.nsqd_tcp_address, ["a:4150", "b:4150", "c:4150"]);
        assert_eq!(config.lookupd_http_address, ["http://l:4161"]);

        let e = env(&[("WORKER_NSQD_TCP_ADDRESS", "")]);
        let config = load(&e, None, &Flags::default()).unwrap();
        assert!(config.nsqd_tcp_address.is_empty(), "empty env = empty list");
    }

    #[test]
    fn a_single_string_in_the_file_is_a_list_of_one() {
        let f = file("nsqd_tcp_address = \"f:1\"\n");
        let config = load(&env(&[]), Some(f.path()), &Flags::default()).unwrap();
        assert_eq!(config.nsqd_tcp_address, ["f:1"]);
    }

    #[test]
    fn env_list_replaces_file_list() {
        let f = file("nsqd_tcp_address = [\"f1:1\", \"f2:2\", \"f3:3\"]\n");
        let e = env(&[("WORKER_NSQD_TCP_ADDRESS", "e:1")]);
        let config = load(&e, Some(f.path()), &Flags::default()).unwrap();
        assert_eq!(config.nsqd_tcp_address, ["e:1"]);
    }

    #[test]
    fn unknown_env_var_is_an_error_naming_it() {
        let e = env(&[("WORKER_NSQD_ADRESS", "a:4150")]);
        let err = load(&e, None, &Flags::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::UnknownEnvVar { .. }));
        assert!(
            text.starts_with("unknown environment variable `WORKER_NSQD_ADRESS`"),
            "{text}"
        );
        assert!(text.contains("WORKER_NSQD_TCP_ADDRESS"), "{text}");
        assert!(
            text.contains("WORKER_MAX_IN_FLIGHT"),
            "lists valid ones: {text}"
        );
    }

    #[test]
    fn typo_gets_a_suggestion() {
        let e = env(&[("WORKER_MAX_INFLIGHT", "3")]);
        let text = load(&e, None, &Flags::default()).unwrap_err().to_string();
        assert!(
            text.contains("(did you mean `WORKER_MAX_IN_FLIGHT`?)"),
            "{text}"
        );
    }

    #[test]
    fn other_prefixes_are_ignored() {
        let e = env(&[("LOGGER_WHATEVER", "x"), ("WORKERS", "y"), ("PATH", "/bin")]);
        assert!(load(&e, None, &Flags::default()).is_ok());
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_it() {
        let f = file("max_in_flight = 2\nnsqd_adress = [\"a:1\"]\n");
        let err = load(&env(&[]), Some(f.path()), &Flags::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("unknown key `nsqd_adress` in config file "),
            "{text}"
        );
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        assert!(text.contains("valid keys: nsqd_tcp_address, "), "{text}");
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent/worker.toml");
        let err = load(&env(&[]), Some(path), &Flags::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/worker.toml does not exist"
        );
    }

    #[test]
    fn bad_toml_is_an_error_with_the_line() {
        let f = file("max_in_flight = 2\ntopic = \n");
        let text = load(&env(&[]), Some(f.path()), &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("is not valid TOML"), "{text}");
        assert!(text.contains("(line 2)"), "{text}");
    }

    #[test]
    fn wrong_type_is_an_error_naming_the_key() {
        let e = env(&[("WORKER_MAX_IN_FLIGHT", "lots")]);
        let text = load(&e, None, &Flags::default()).unwrap_err().to_string();
        assert_eq!(
            text,
            "invalid configuration: invalid type: string \"lots\", expected an integer \
             for key `max_in_flight` in environment variable WORKER_MAX_IN_FLIGHT"
        );

        let e = env(&[("WORKER_LOG_FORMAT", "xml")]);
        assert!(load(&e, None, &Flags::default()).is_err());
    }

    #[test]
    fn env_text_is_converted_to_numbers_and_booleans() {
        let e = env(&[
            ("WORKER_VERBOSE", "true"),
            ("WORKER_MAX_AGE_MS", "250"),
            ("WORKER_AUTH_SECRET", "hunter2"),
        ]);
        let config = load(&e, None, &Flags::default()).unwrap();
        assert!(config.verbose);
        assert_eq!(config.max_age_ms, Some(250));
        assert_eq!(config.auth_secret.as_deref(), Some("hunter2"));
    }

    #[test]
    fn prefix_may_have_a_trailing_underscore_and_any_case() {
        let e = env(&[("WORKER_TOPIC", "t")]);
        let config: TestConfig = Sources::new("worker_").env(&e).load(&()).unwrap();
        assert_eq!(config.topic, "t");
    }

    #[test]
    fn flag_without_a_config_key_is_reported() {
        #[derive(Serialize)]
        struct Bad {
            not_a_key: Option<u8>,
        }
        let e = env(&[]);
        let ok: Result<TestConfig, _> = Sources::new("W").env(&e).load(&Bad { not_a_key: None });
        assert!(ok.is_ok(), "an absent flag is fine");
        let err = Sources::new("W")
            .env(&e)
            .load::<TestConfig, _>(&Bad { not_a_key: Some(1) })
            .unwrap_err();
        assert!(err.to_string().contains("`not_a_key`"), "{err}");
    }

    #[test]
    fn printed_config_is_toml_with_secrets_redacted() {
        let config = TestConfig {
            auth_secret: Some("hunter2".to_owned()),
            ..TestConfig::default()
        };
        let text = to_toml(&config).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("auth_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("# max_age_ms is not set"), "{text}");
        assert!(
            text.contains("nsqd_tcp_address = [\"127.0.0.1:4150\"]"),
            "{text}"
        );
        assert!(text.contains("log_format = \"text\""), "{text}");

        // Without secrets, the output loads back as the same configuration.
        let text = to_toml(&TestConfig::default()).unwrap();
        let f = file(&text);
        let loaded = load(&env(&[]), Some(f.path()), &Flags::default()).unwrap();
        assert_eq!(loaded, TestConfig::default());
    }

    #[test]
    fn the_one_line_form_is_the_toml_on_one_line_and_redacted() {
        let config = TestConfig {
            auth_secret: Some("hunter2".to_owned()),
            ..TestConfig::default()
        };
        let line = to_one_line(&config).unwrap();
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
    fn field_names_include_optional_fields() {
        let names = field_names::<TestConfig>();
        assert!(names.contains(&"max_age_ms"));
        assert_eq!(names.len(), 9);
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "SAME"), 0);
    }
}
