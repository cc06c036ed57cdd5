//! The `sensor` binary: parses the command line and runs [`sensor::Application`] until a signal
//! (see [`suite_common::service::main`]).

fn main() -> std::process::ExitCode {
    suite_common::service::main::<sensor::Application>()
}
