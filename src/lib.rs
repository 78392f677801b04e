//! fanout: a Workerman-style multi-process pub/sub server.
//!
//! The modules, from the bottom up (each uses only those above it):
//! - [`protocol`]: the wire formats, pure (no I/O): the line protocol people
//!   type and the replies they get, the framed channel protocol, topic names.
//! - [`config`]: what each server is, and the settings a master hands to its workers.
//! - [`runtime`]: the worker process: an event loop that runs one service and
//!   knows none, the handoff socket, the output queue of every connection.
//! - [`services`]: the pub/sub service of the data-source and subscriber
//!   servers, and the channel server's service.
//! - [`master`]: the master process that supervises workers, reloads them,
//!   answers the command line; the daemon start, the pid file, signals.
//! - [`cli`]: the command line shared by the three binaries.
//! - [`store`]: the channel server's numbered messages and queued jobs, with
//!   retention and an optional disk log (pure: no sockets, time an argument).

pub mod cli;
pub mod config;
pub mod master;
pub mod protocol;
pub mod runtime;
pub mod services;
pub mod store;
