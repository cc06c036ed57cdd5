//! The `rest-worker` binary: see [`rest::worker`].

fn main() -> std::process::ExitCode {
    suite_common::service::main::<rest::service::Rest<rest::worker::Config>>()
}
