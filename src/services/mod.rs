//! The services a worker process runs in the runtime's event loop: the
//! pub/sub service of the data-source and subscriber servers, and the
//! channel server's.

use std::process::ExitCode;

use crate::config::{load_nats_auth, load_secret, Role};
use crate::runtime::Worker;
use pubsub::nats_bus::NatsBus;

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
            let nats = match p.nats.is_empty() {
                true => None,
                false => match load_nats_auth(p.bus_credentials.as_ref()) {
                    Ok(auth) => {
                        let name = format!("{}[{}]", worker.config.name, std::process::id());
                        Some(Box::new(NatsBus::new(p.nats.clone(), auth, name)))
                    }
                    Err(e) => {
                        log::error!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let svc = pubsub::PubSub::new(&worker.config.title, p, secret.unwrap_or_default(), nats);
            worker.run(svc)
        }
        Role::Channel(c) => worker.run(channel::ChannelServer::new(c, secret)),
    }
}
