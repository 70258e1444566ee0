//! turmoil's simulated TCP as an axum [`Listener`], so the real roomhub
//! server runs unchanged inside a simulation.

use std::net::SocketAddr;

use axum::serve::Listener;

pub struct SimListener(pub turmoil::net::TcpListener);

impl SimListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        turmoil::net::TcpListener::bind(addr).await.map(SimListener)
    }
}

impl Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                // As axum does for tokio's listener: an accept error is about
                // one connection, not the listener; wait a little and go on.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
