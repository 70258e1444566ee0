//! The cluster stage: several nodes share rooms through a broker. The
//! contract ([`broker`]), its wire format ([`wire`]) and names ([`keys`]),
//! the Redis adapter ([`redis`]), and the node's tasks: heartbeat,
//! subscription session, request worker and server API calls ([`calls`]),
//! started by [`node`].

pub mod broker;
pub mod calls;
pub(crate) mod heartbeat;
pub mod keys;
pub(crate) mod node;
pub mod redis;
pub mod sharded;
pub(crate) mod subscriber;
pub mod view;
pub mod wire;
pub(crate) mod worker;
