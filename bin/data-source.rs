use std::process::ExitCode;

fn main() -> ExitCode {
    fanout::cli::main::<fanout::cli::PubSubArgs>(&fanout::config::DATA_SOURCE)
}
