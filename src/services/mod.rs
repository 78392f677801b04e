//! The services a worker process runs in the runtime's event loop.

pub mod channel;
pub mod pubsub;
