//! From the link to the subscribers: the frames the channel server sent are
//! gathered per topic into one batch per read, encoded once as delivery lines
//! into a shared buffer, and queued by reference for every local subscriber.
//! WebSocket subscribers share a second encoding of the same batch, one text
//! frame per line; each encoding is made only if some subscriber needs it.
//! No socket I/O here: the frames are already read, the queues are flushed later.

use std::rc::Rc;

use log::{debug, error};

use super::clients::{Clients, Wire};
use super::link::{Link, LinkError};
use super::topics::{TopicId, Topics};
use crate::protocol::frame::Frame;
use crate::protocol::reply;
use crate::protocol::websocket;

/// Topics with a batch of lines waiting to be delivered.
#[derive(Default)]
pub struct Batches {
    touched: Vec<TopicId>,
}

impl Batches {
    /// Handles every whole frame the link has read. Lines for one topic are
    /// gathered into that topic's batch and delivered once per read.
    pub fn on_frames(&mut self, link: &mut Link, topics: &mut Topics, clients: &mut Clients) -> Result<(), LinkError> {
        loop {
            let frame = match link.reader.next_frame() {
                Ok(Some((frame, _))) => frame,
                Ok(None) => break,
                Err(e) => return Err(LinkError::BadFrame(e)),
            };
            match frame {
                Frame::Publish { topic, message } => {
                    // Runs of one topic are the common case: skip the hash.
                    let id = match self.touched.last() {
                        Some(&id) if *topics.get(id).name == *topic => id,
                        _ => match topics.find(topic) {
                            Some(id) => id,
                            None => continue,
                        },
                    };
                    let t = topics.get_mut(id);
                    if t.subscribers.is_empty() {
                        continue;
                    }
                    if t.batch.is_empty() {
                        self.touched.push(id);
                    }
                    reply::received(&mut t.batch, topic, message);
                    t.batch_msgs += 1;
                }
                Frame::SubAck(topic) => {
                    // Subscribers confirmed now must not get lines from before.
                    self.deliver(topics, clients);
                    if let Some((_, confirmed)) = topics.acknowledge(topic) {
                        for key in confirmed {
                            clients.confirm(key, topic);
                        }
                    }
                }
                Frame::SubErr { topic, reason } => {
                    self.deliver(topics, clients);
                    if let Some((id, refused)) = topics.refuse(topic) {
                        debug!("the channel server refused topic {}: {}", topic.escape_ascii(), reason.escape_ascii());
                        for key in refused {
                            clients.slab[key].topics.swap_remove(&id);
                            clients.refuse(key, topic, reason);
                        }
                    }
                }
                Frame::Welcome { .. } => link.welcomed(),
                Frame::Pong => {} // heard: that is all it is for
                Frame::Error(why) => {
                    let why = String::from_utf8_lossy(why).into_owned();
                    error!("the channel server refused this worker: {why}");
                    return Err(LinkError::Refused(why));
                }
                other => return Err(LinkError::Unexpected(format!("{other:?}"))),
            }
        }
        self.deliver(topics, clients);
        Ok(())
    }

    /// Encodes each touched topic's batch once per wire and queues it for every subscriber.
    fn deliver(&mut self, topics: &mut Topics, clients: &mut Clients) {
        for id in self.touched.drain(..) {
            let t = topics.get_mut(id);
            let msgs = std::mem::take(&mut t.batch_msgs);
            let mut lines: Option<Rc<[u8]>> = None;
            let mut frames: Option<Rc<[u8]>> = None;
            for &key in &t.subscribers {
                let bytes = match clients.slab[key].wire {
                    Wire::Lines => lines.get_or_insert_with(|| Rc::from(t.batch.as_slice())),
                    Wire::WebSocket => frames.get_or_insert_with(|| websocket::frames_of_lines(&t.batch).into()),
                };
                clients.deliver(key, bytes, msgs);
            }
            t.batch.clear();
            if t.batch.capacity() > 1 << 20 {
                t.batch = Vec::new();
            }
        }
    }
}
