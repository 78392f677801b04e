//! Integration tests: the real binaries, started as separate processes on
//! ephemeral loopback ports, driven over TCP as telnet would.

mod attacks;
mod bench;
mod channel;
mod errors;
mod fanout;
mod lifecycle;
mod nats;
mod nats_cluster;
mod numbered;
mod ops;
mod queues;
mod reload;
mod robustness;
mod session;
mod support;
mod websocket;
