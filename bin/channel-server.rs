use std::process::ExitCode;

fn main() -> ExitCode {
    fanout::cli::main::<fanout::cli::ChannelArgs>(&fanout::config::CHANNEL_SERVER)
}
