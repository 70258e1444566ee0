//! What the simulated clients saw, in the order it happened: the material the
//! invariant checker works from, and what the determinism check hashes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One client connection attempt that got through: (client index, session number).
pub type SessionId = (usize, u32);

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The upgrade succeeded, on this server host.
    Connected { user: String, server: String },
    /// A request went out. `since` is set for joins with `since`.
    Sent { frame: Value },
    /// A frame arrived.
    Received { frame: Value },
    /// The server closed the connection with this code.
    Closed { code: u16, reason: String },
    /// The connection failed or ended without a close frame.
    Broken { why: String },
    /// The client dropped the connection on purpose (abrupt, storm, watchdog).
    Dropped { why: &'static str },
    /// The client finished normally at the end of the world.
    Finished,
    /// HTTP probe results at the end, per server host: `/ws/online` and
    /// `/metrics`.
    Probe {
        server: String,
        online: u64,
        rooms: u64,
        queue_peak_bytes: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Simulated milliseconds since the world started.
    pub at_ms: u64,
    pub session: SessionId,
    pub event: Event,
}

/// Shared by every host of one world. Turmoil runs hosts one at a time, so a
/// mutex is never contended; it only satisfies `Send` bounds.
#[derive(Clone, Default)]
pub struct Trace {
    records: Arc<Mutex<Vec<Record>>>,
}

impl Trace {
    pub fn push(&self, at_ms: u64, session: SessionId, event: Event) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Record {
                at_ms,
                session,
                event,
            });
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A hash of everything, in order: the same seed must give the same hash.
    pub fn hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for r in self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            r.at_ms.hash(&mut h);
            r.session.hash(&mut h);
            format!("{:?}", r.event).hash(&mut h);
        }
        h.finish()
    }
}
