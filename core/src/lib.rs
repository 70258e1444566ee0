//! roomhub-core: the pure, deterministic heart of roomhub.
//!
//! A [`Hub`] takes facts ([`Input`]) with the time they happened and answers
//! with instructions ([`Output`]). It never reads a clock, never does I/O and
//! never uses ambient randomness, so the same config and the same inputs give
//! the same outputs, byte for byte. The tokio server (`roomhub-net`), the
//! simulators (`roomhub-sim`) and the transcript tests all drive this one
//! state machine.
//!
//! Each room's order is owned outside the hub, by a sequencer: see
//! [`event`] for the seam and [`MemorySequencer`] for the in-process one.
//! [`SingleNode`] wires the two together for a process without a store.

pub mod api;
pub mod config;
pub mod error;
pub mod event;
pub mod hub;
pub mod ids;
mod limiter;
pub mod machine;
pub mod request;
mod room;
pub mod sequencer;
pub mod single;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
pub mod wire;

pub use config::{Config, Namespace};
pub use error::ErrorCode;
pub use event::{
    AppendReceipt, AppendRequest, DirectMessage, FrameKind, Input, Origin, Output, Position,
    PublishOutcome, PublishTicket, RelayOutcome, RemoteMember, Requester, RoomSnapshot,
    SequencedMessage, close,
};
pub use hub::{Hub, HubStats};
pub use ids::{ConnId, Epoch, Identity, NodeId, RoomAccess, RoomName, UserRef};
pub use machine::Core;
pub use request::{
    HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, ParseLimits, Publish, Request, RequestError,
    RequestKind, Since, parse_publish, parse_request,
};
pub use sequencer::{HistoryLimits, MemorySequencer};
pub use single::SingleNode;
pub use time::Timestamp;
