//! Process management: the master that supervises workers, the daemon start,
//! the pid file, signals, and the control messages between them.

pub mod control;
pub mod daemon;
pub mod master;
pub mod pidfile;
pub mod signals;
