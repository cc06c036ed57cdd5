//! The `rest-worker` binary: see [`rest::worker`].

fn main() -> std::process::ExitCode {
    rest::service::main::<rest::worker::Cli>()
}
