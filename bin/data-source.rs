use std::process::ExitCode;

fn main() -> ExitCode {
    fanout::app::main::<fanout::cli::PubSubArgs>(&fanout::config::DATA_SOURCE)
}
