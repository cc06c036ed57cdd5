//! Exit codes: 0 done, 1 runtime failure, 2 configuration or usage error.
//!
//! A service's `main` returns [`ExitCode`] through [`finish`], which prints
//! `error: <message and causes>` to stderr for a failure. Whether it is a usage error (2) or
//! a runtime error (1) is decided from the error chain: any [`ConfigError`], [`AddrError`],
//! invalid log level ([`TelemetryError`]) or [`UsageError`] in it makes it a usage error.
//! clap already exits with 2 for bad flags, so every "you configured it wrong" ends with 2.
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn run() -> anyhow::Result<()> {
//!     Err(suite_common::exit::UsageError::new("--max-in-flight must be at least 1").into())
//! }
//!
//! fn main() -> ExitCode {
//!     suite_common::exit::finish(run()) // prints "error: --max-in-flight ...", exits 2
//! }
//! ```

use std::process::ExitCode;

use crate::{addr::AddrError, config::ConfigError, telemetry::TelemetryError};

/// Exit status of a configuration or usage error.
pub const USAGE: u8 = 2;

/// Exit status of a runtime failure.
pub const FAILURE: u8 = 1;

/// A usage error raised by a service itself (a setting out of range, a bad combination).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// A usage error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Whether the error, or any error in its chain, is a configuration or usage error.
pub fn is_usage_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<ConfigError>()
            || cause.is::<AddrError>()
            || cause.is::<UsageError>()
            || matches!(
                cause.downcast_ref::<TelemetryError>(),
                Some(TelemetryError::InvalidLevel { .. } | TelemetryError::InvalidRustLog { .. })
            )
    })
}

/// The exit status for an error: [`USAGE`] or [`FAILURE`].
pub fn status(err: &anyhow::Error) -> u8 {
    if is_usage_error(err) {
        USAGE
    } else {
        FAILURE
    }
}

/// Prints `error: ...` (with the causes) to stderr and returns the exit code for it.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", message(err));
    ExitCode::from(status(err))
}

/// The error and its causes on one line, `outer: cause: root cause`.
///
/// A cause whose text the message already contains is left out: many errors (this crate's
/// among them) include their source in their own message.
pub fn message(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Turns a service's result into its exit code: success, or [`report`] the error.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn config_errors_are_usage_errors_even_with_context() {
        let err = anyhow::Error::new(ConfigError::value("--max-in-flight", "must be >= 1"))
            .context("loading configuration");
        assert_eq!(status(&err), USAGE);

        let addr = crate::addr::host_port("--nsqd-tcp-address", "foo").unwrap_err();
        let err: anyhow::Error = Err::<(), _>(addr).context("setup").unwrap_err();
        assert_eq!(status(&err), USAGE);

        assert_eq!(status(&UsageError::new("bad").into()), USAGE);
    }

    #[test]
    fn message_has_each_cause_once() {
        let io = std::io::Error::other("refused");
        let err = anyhow::Error::new(crate::http::HttpError::Bind {
            addr: "x:1".to_owned(),
            source: io,
        })
        .context("starting");
        assert_eq!(
            message(&err),
            "starting: cannot listen for HTTP on x:1: refused"
        );
        let err = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(message(&err), "top: middle: root");
    }

    #[test]
    fn other_errors_are_runtime_failures() {
        let err = anyhow::anyhow!("nsqd went away");
        assert_eq!(status(&err), FAILURE);
        let err = anyhow::Error::new(TelemetryError::AlreadyInitialised("x".into()));
        assert_eq!(status(&err), FAILURE);
        let err = anyhow::Error::new(std::io::Error::other("disk full"));
        assert_eq!(status(&err), FAILURE);
    }
}
