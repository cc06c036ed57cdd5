//! Logging through `tracing`: human-readable by default, JSON lines on request.
//!
//! [`init`] installs the global subscriber once, at start-up, from the service's
//! `log_format` and `log_level` settings. `RUST_LOG`, when set, takes precedence over the
//! level, so that an operator can turn on `debug` for one module without touching the
//! configuration (`RUST_LOG=info,nsq=debug`).
//!
//! Logs go to **stderr**: stdout is kept for what a service prints on purpose
//! (`--print-config`, the bound HTTP address).

use std::io::IsTerminal as _;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (coloured when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The configured level is not a valid filter (a usage error: exit code 2).
    #[error("invalid `--log-level` '{level}': {message}")]
    InvalidLevel {
        /// The level as configured.
        level: String,
        /// What the filter parser reported.
        message: String,
    },
    /// `RUST_LOG` is set but is not a valid filter (a usage error: exit code 2).
    #[error("invalid RUST_LOG '{value}': {message}")]
    InvalidRustLog {
        /// The value of `RUST_LOG`.
        value: String,
        /// What the filter parser reported.
        message: String,
    },
    /// A global subscriber is already installed (`init` called twice).
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Installs the global `tracing` subscriber.
///
/// `level` is a filter such as `info` or `info,nsq=debug`; `RUST_LOG` replaces it when set
/// and not empty. Returns an error rather than panicking when called a second time.
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(level, rust_log.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))
}

/// The filter [`init`] uses: `rust_log` when given and not empty, else `level`.
///
/// `level` is validated in both cases, so that a bad setting is reported even while
/// `RUST_LOG` happens to hide it.
pub fn filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let invalid_level = |message| TelemetryError::InvalidLevel {
        level: level.to_owned(),
        message,
    };
    // A bare word is valid filter syntax (it enables a target at every level), but as a
    // log level it is a typo: only level names or `target=level` directives are accepted.
    if let Some(word) = level.split(',').map(str::trim).find(|d| {
        !d.is_empty() && !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
    }) {
        return Err(invalid_level(format!(
            "'{word}' is not a level (one of {}) nor a target=level directive",
            LEVELS.join(", ")
        )));
    }
    let from_level = parse_filter(level).map_err(invalid_level)?;
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(value) => parse_filter(value).map_err(|message| TelemetryError::InvalidRustLog {
            value: value.to_owned(),
            message,
        }),
        None => Ok(from_level),
    }
}

/// Level names accepted on their own in a `--log-level`.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    if text.trim().is_empty() {
        return Err("empty filter (e.g. info, debug, info,nsq=debug)".to_owned());
    }
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("{e} (e.g. info, debug, info,nsq=debug)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_levels() {
        for level in ["info", "debug", "warn,nsq=trace", "error"] {
            assert!(filter(level, None).is_ok(), "{level}");
        }
    }

    #[test]
    fn invalid_level_is_an_error_naming_the_setting() {
        let err = filter("loud", None).unwrap_err().to_string();
        assert!(err.starts_with("invalid `--log-level` 'loud': "), "{err}");
        assert!(filter("", None).is_err());
    }

    #[test]
    fn rust_log_overrides_the_level() {
        let f = filter("info", Some("debug")).unwrap();
        assert_eq!(f.to_string(), "debug");
        let f = filter("info", Some("  ")).unwrap();
        assert_eq!(f.to_string(), "info");
        let err = filter("info", Some("a=b=c")).unwrap_err().to_string();
        assert!(err.starts_with("invalid RUST_LOG"), "{err}");
    }

    #[test]
    fn log_format_names() {
        let json: LogFormat = serde_json::from_str("\"json\"").unwrap();
        assert_eq!(json, LogFormat::Json);
        assert_eq!(serde_json::to_string(&LogFormat::Text).unwrap(), "\"text\"");
    }
}
