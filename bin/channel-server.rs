use std::process::ExitCode;

fn main() -> ExitCode {
    fanout::app::main::<fanout::cli::ChannelArgs>(&fanout::config::CHANNEL_SERVER)
}
