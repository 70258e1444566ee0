//! The HTTP stage: the accept loop, the routes, admission before the
//! upgrade, the WebSocket handler and upgrade, the server API and the
//! small pages.

pub(crate) mod accept;
pub(crate) mod admin;
pub(crate) mod admission;
pub(crate) mod admit;
pub(crate) mod api;
pub(crate) mod error;
pub(crate) mod pages;
pub(crate) mod peer;
pub(crate) mod per_ip;
pub(crate) mod reload;
pub(crate) mod router;
pub(crate) mod series;
pub(crate) mod sse;
pub(crate) mod state;
pub(crate) mod tls;
pub(crate) mod upgrade;
pub(crate) mod ws;
