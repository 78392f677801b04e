//! fanout: a Workerman-style multi-process pub/sub server.
//!
//! - [`process`]: the master that supervises worker processes, the daemon
//!   start, the pid file, signals and the control protocol.
//! - [`worker`]: the mio event loop each worker runs, client connections, the
//!   worker's topics and its link to the channel server.
//! - [`channel`]: the channel server that fans publishes out to workers.
//! - [`protocol`]: the line protocol people type and the framed channel protocol.
//! - [`app`] and [`cli`]: the command line shared by the three binaries.

pub mod app;
pub mod channel;
pub mod cli;
pub mod config;
pub mod process;
pub mod protocol;
pub mod store;
pub mod worker;
