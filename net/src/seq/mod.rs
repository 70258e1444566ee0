//! The sequencing stage on one node: the embedded store that numbers and
//! keeps each room's messages (the default) and its journal, fresh epochs, and the
//! append-batching loop the store thread and the cluster worker share.

pub(crate) mod batch;
pub mod epoch;
pub(crate) mod journal;
pub mod store;
pub(crate) mod store_task;
