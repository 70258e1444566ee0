//! The simulated broker: the [`Broker`](roomhub_net::cluster::broker::Broker)
//! contract without Redis, for turmoil worlds and the in-memory cluster
//! harness. [`model`] is the pure state (time is an argument), [`server`]
//! serves it over TCP, [`client`] is a node's side. The conformance suite
//! (`sim/tests/broker_conformance.rs`) runs the same cases against it and
//! against Redis.

pub mod client;
pub mod model;
pub mod server;

pub use client::{BrokerStream, Connector, SimBroker, tcp_connector};
pub use model::{BrokerModel, Publication, SimBrokerConfig};
pub use server::serve;
