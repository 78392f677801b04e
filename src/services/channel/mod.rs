//! The channel server: workers connect to it, subscribe to topics, and publish;
//! it forwards each publish, byte for byte, to every worker subscribed to its
//! topic. It runs as the single worker of its own master.

mod jobs;
pub mod queues;
mod server;

pub use server::ChannelServer;
