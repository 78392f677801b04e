//! The services a worker process runs in the runtime's event loop: the
//! pub/sub service of the data-source and subscriber servers, and the
//! channel server's.

use std::process::ExitCode;

use crate::config::{load_secret, Role};
use crate::runtime::Worker;

pub mod channel;
pub mod pubsub;

/// Runs the service the worker's settings name.
pub fn serve(worker: Worker) -> ExitCode {
    let secret_file = match &worker.config.role {
        Role::PubSub(p) => p.secret_file.as_ref(),
        Role::Channel(c) => c.secret_file.as_ref(),
    };
    let secret = match load_secret(secret_file) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match worker.config.role.clone() {
        Role::PubSub(p) => {
            let svc = pubsub::PubSub::new(&worker.config.title, p, secret.unwrap_or_default());
            worker.run(svc)
        }
        Role::Channel(c) => worker.run(channel::ChannelServer::new(c, secret)),
    }
}
