//! The hub stage: the inbox every fact arrives by, the task that owns the
//! core, the engine it drives (the core and its sequencer), and the
//! dispatch of frames to connections, and the services it calls off its
//! thread.

pub(crate) mod dispatch;
pub(crate) mod engine;
pub(crate) mod inbox;
pub(crate) mod services;
pub(crate) mod task;
