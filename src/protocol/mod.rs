//! The wire formats, pure (no sockets): the line protocol people type
//! (telnet stripping, lines, commands) and every line they get back (reply),
//! the framed binary protocol between workers and the channel server (frame),
//! and the rules for topic names (topic) and queue names and job references (queue).

pub mod command;
pub mod frame;
pub mod framing;
pub mod http;
pub mod input;
pub mod line;
pub mod nats;
pub mod queue;
pub mod read_buf;
pub mod reply;
pub mod telnet;
pub mod topic;
pub mod websocket;
