//! The wire formats: the line protocol people type, and the framed binary
//! protocol between workers and the channel server.

pub mod command;
pub mod frame;
pub mod line;
pub mod telnet;
