//! The channel server: workers connect to it, subscribe to topics, and publish;
//! it numbers each publish in its store and forwards it to every worker
//! subscribed to its topic; it dispatches the work queues' jobs. It runs as
//! the single worker of its own master.

mod jobs;
pub mod queues;
mod server;
mod subscriptions;

pub use server::ChannelServer;
