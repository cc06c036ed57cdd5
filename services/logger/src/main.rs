//! The `logger` binary: parses the command line and runs [`logger::Application`] until a signal
//! (see [`suite_common::service::main`]).

fn main() -> std::process::ExitCode {
    suite_common::service::main::<logger::Application>()
}
