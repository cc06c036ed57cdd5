//! The `rest-sensor` binary: see [`rest::sensor`].

fn main() -> std::process::ExitCode {
    rest::service::main::<rest::sensor::Cli>()
}
