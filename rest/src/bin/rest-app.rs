//! The `rest-app` binary: see [`rest::app`].

fn main() -> std::process::ExitCode {
    rest::service::main::<rest::app::Cli>()
}
