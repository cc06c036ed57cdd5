//! SIGTERM cancels the shutdown token (its own test binary: signal handlers are per process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::time::Duration;

use nix::sys::signal::{raise, Signal as NixSignal};
use suite_common::shutdown::{self, CancellationToken, Signal, Signals};

#[tokio::test]
async fn first_signal_cancels_the_token() {
    // Handlers are installed before the signals are raised, so raising cannot kill the test.
    let mut signals = Signals::new().unwrap();
    let token = CancellationToken::new();
    let task = shutdown::cancel_on_signal(token.clone()).unwrap();

    raise(NixSignal::SIGTERM).unwrap();
    assert_eq!(signals.recv().await, Signal::Terminate);
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("token cancelled after SIGTERM");

    // A second signal would make that task exit the process: stop it first.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    raise(NixSignal::SIGINT).unwrap();
    assert_eq!(signals.recv().await, Signal::Interrupt);
}
