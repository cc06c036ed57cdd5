//! Graceful shutdown on SIGTERM and SIGINT.
//!
//! A service creates one [`CancellationToken`] at start-up and hands clones (or child
//! tokens) to every task: the consumer stops taking messages when it is cancelled, the HTTP
//! server stops via `token.cancelled_owned()`, and so on. [`cancel_on_signal`] cancels it
//! on the first SIGTERM or SIGINT:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use suite_common::shutdown::{self, CancellationToken};
//!
//! let token = CancellationToken::new();
//! shutdown::cancel_on_signal(token.clone())?;
//! // ... start the work, passing token.clone() ...
//! token.cancelled().await; // then drain, flush, exit 0
//! # Ok(()) }
//! ```
//!
//! A second signal while the service is still shutting down exits the process at once with
//! status 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the usual convention
//! for "interrupt again to force".

use std::{fmt, io};

use tokio::signal::unix::{signal as unix_signal, Signal as UnixSignal, SignalKind};
pub use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The signal that asked the service to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: `docker stop`, `kill`, the process supervisor.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

impl Signal {
    /// The exit status for a process killed by this signal (128 + signal number).
    pub fn exit_status(self) -> i32 {
        match self {
            Signal::Terminate => 143,
            Signal::Interrupt => 130,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Listens for SIGTERM and SIGINT from the moment it is created.
///
/// Creating it installs the handlers, so signals that arrive before the first `recv` are not
/// lost (and no longer kill the process).
#[derive(Debug)]
pub struct Signals {
    /// SIGTERM stream.
    terminate: UnixSignal,
    /// SIGINT stream.
    interrupt: UnixSignal,
}

impl Signals {
    /// Installs the handlers; must be called inside a tokio runtime.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            terminate: unix_signal(SignalKind::terminate())?,
            interrupt: unix_signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Terminate,
            _ = self.interrupt.recv() => Signal::Interrupt,
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT received after the call.
pub async fn signal() -> io::Result<Signal> {
    Ok(Signals::new()?.recv().await)
}

/// Cancels `token` on the first SIGTERM or SIGINT; exits the process on the second.
///
/// The handlers are installed before this returns, so a signal arriving right after is
/// seen. Must be called inside a tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) -> io::Result<tokio::task::JoinHandle<()>> {
    let mut signals = Signals::new()?;
    Ok(tokio::spawn(async move {
        let first = signals.recv().await;
        tracing::info!(signal = %first, "shutting down");
        token.cancel();
        let second = signals.recv().await;
        tracing::error!(signal = %second, "second signal during shutdown, exiting now");
        eprintln!("error: received {second} during shutdown, exiting now");
        std::process::exit(second.exit_status());
    }))
}

/// The tokio runtime every service runs on: single-threaded.
///
/// A service does little CPU work per message and spends its time handing messages between
/// its NSQ connections and its handlers. On a multi-threaded runtime most of those hand-offs
/// wake another thread (a futex and a context switch each); on one thread they are plain
/// function calls. On the 2-core machines the suite targets, where nsqd needs the cores too,
/// this raised the pipeline's throughput by a third in the benchmark (`scripts/bench.sh`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_statuses() {
        assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
        assert_eq!(Signal::Interrupt.exit_status(), 130);
    }
}
