//! One client connection of a pub/sub worker.

use std::collections::VecDeque;
use std::net::SocketAddr;

use mio::net::TcpStream;

use super::send_queue::SendQueue;
use super::topics::TopicId;
use crate::protocol::line::LineReader;

pub struct Client {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub id: u64,
    pub reader: LineReader,
    pub out: SendQueue,
    pub topics: Vec<TopicId>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Close once the output queue is written (quit, slow consumer, drain).
    pub closing: bool,
    /// Waiting in the flush list.
    pub dirty: bool,
    /// Not read while too much output waits for it.
    pub input_paused: bool,
    /// Waiting in the list of clients to read again.
    pub unread: bool,
    /// Replies held back behind a subscription that the channel server has not
    /// confirmed yet, so that replies come in the order of the commands.
    pub held: VecDeque<Held>,
}

pub enum Held {
    /// The `OK subscribed` of this topic goes here once it is confirmed.
    Subscription(Box<[u8]>),
    Text(Vec<u8>),
}

impl Client {
    pub fn new(stream: TcpStream, peer: SocketAddr, id: u64) -> Client {
        Client {
            stream,
            peer,
            id,
            reader: LineReader::default(),
            out: SendQueue::default(),
            topics: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            closing: false,
            dirty: false,
            input_paused: false,
            unread: false,
            held: VecDeque::new(),
        }
    }
}
