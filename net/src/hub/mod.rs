//! The hub stage: the inbox every fact arrives by, the task that owns the
//! core, the engine it drives (the core and its sequencer), and the
//! dispatch of frames to connections.

pub(crate) mod dispatch;
pub(crate) mod engine;
pub(crate) mod inbox;
pub(crate) mod task;
