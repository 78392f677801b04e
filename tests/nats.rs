//! NATS: the test cluster itself, read through the crate's own NATS parser.

use fanout::protocol::nats::Auth;

use crate::nats_cluster::{NatsClient, NatsCluster, Owned};

/// A message published on node A reaches a subscriber on node C, and our
/// parser reads what a real server sends.
#[test]
fn nats_cluster_routes_between_nodes() {
    let mut cluster = NatsCluster::start();
    let mut sub = NatsClient::connect(&cluster.nodes[2].url, &Auth::None);
    assert!(sub.info.connect_urls.len() >= 3, "every node advertised: {:?}", sub.info.connect_urls);
    sub.subscribe(b"fanout.t", 1);
    cluster.wait_interest(0, "fanout.t", 1);
    let mut publisher = NatsClient::connect(&cluster.nodes[0].url, &Auth::None);
    publisher.publish(b"fanout.t", b"across");
    assert_eq!(sub.next(), Some(Owned::Msg(b"fanout.t".to_vec(), b"across".to_vec())));
}
