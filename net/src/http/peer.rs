//! The remote address of an HTTP connection, put into each request by the
//! accept loop for the handlers that log or limit by it.

use std::net::SocketAddr;

#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);
