//! The `worker` binary: parses the command line and runs [`worker::Application`] until a signal
//! (see [`suite_common::service::main`]).

fn main() -> std::process::ExitCode {
    suite_common::service::main::<worker::Application>()
}
