//! roomhub's simulators. For now: a reference model of the protocol
//! ([`model`]) and the operations a model test drives through both the model
//! and the real core ([`ops`]).

pub mod model;
pub mod ops;
