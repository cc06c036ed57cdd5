//! The `rest-sensor` binary: see [`rest::sensor`].

fn main() -> std::process::ExitCode {
    suite_common::service::main::<rest::service::Rest<rest::sensor::Config>>()
}
