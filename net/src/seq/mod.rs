//! The sequencing stage on one node: the embedded stores that number and
//! keep each room's messages (the journaled one by default, the synced one
//! with `--fsync always`) and the journal, fresh epochs, and the
//! append-batching loop the store thread and the cluster worker share.

pub(crate) mod batch;
pub mod epoch;
pub mod error;
pub mod faults;
pub(crate) mod journal;
pub mod journaled;
pub mod store;
pub(crate) mod store_task;
pub(crate) mod usage;
