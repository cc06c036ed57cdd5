//! The `rest-app` binary: see [`rest::app`].

fn main() -> std::process::ExitCode {
    suite_common::service::main::<rest::service::Rest<rest::app::Config>>()
}
