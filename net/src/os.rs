//! What the binaries ask of the operating system: enough file descriptors
//! for tens of thousands of sockets, and a listen backlog that survives a
//! reconnect storm.

use std::net::SocketAddr;

/// Pending connections the kernel may hold for `accept` (it caps this at
/// `net.core.somaxconn`). tokio's `TcpListener::bind` uses 1,024, which a
/// storm of reconnecting clients overflows: their SYNs are then dropped and
/// retried a second later.
const LISTEN_BACKLOG: u32 = 65_535;

/// The default bound on history held in memory: a quarter of the
/// machine's memory (`MemTotal`), or 1 GiB where that cannot be read.
pub fn default_history_bytes() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    });
    total_kib.map_or(1 << 30, |kib| kib.saturating_mul(1024) / 4)
}

/// The default disk budget of the store in `dir`: an eighth of what its
/// file system has free (counting what the store's database already
/// takes), at most a sixteenth of the file system; 10 GiB where that
/// cannot be read. The budget counts each message's key and JSON; the
/// database file takes about four times that (its B-tree pages, and pages
/// freed by one commit that are reused after the next), so the file stays
/// within about half the free space.
pub fn default_disk_budget(dir: &std::path::Path) -> u64 {
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(std::path::Path::new("."));
    let held = std::fs::metadata(dir.join(crate::seq::store::DATABASE)).map_or(0, |m| m.len());
    match rustix::fs::statvfs(existing) {
        Ok(fs) => {
            let total = fs.f_blocks.saturating_mul(fs.f_frsize);
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            (total / 16).min(free.saturating_add(held) / 8)
        }
        Err(_) => 10 << 30,
    }
}

/// Raises the open-file limit as far as this process may: the hard limit
/// too when privileged (up to `fs.nr_open`), else the soft limit to the
/// hard one. Returns the limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Some(max) = nr_open
        && rlimit::setrlimit(rlimit::Resource::NOFILE, max, max).is_ok()
    {
        return Ok(max);
    }
    rlimit::increase_nofile_limit(u64::MAX)
}

/// A TCP listener on `addr` with a deep backlog.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do for listeners: a restart can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bounds how long data sent on an accepted socket may stay unacknowledged
/// (`TCP_USER_TIMEOUT`): a peer that vanished without a FIN is dropped by
/// the kernel within `wait` of the next byte sent to it (a ping), instead
/// of after the kernel's retransmissions (about 15 minutes). SSE clients
/// cannot answer pings, so this is what ends a dead SSE stream within the
/// pong wait. Only real TCP sockets (not a simulator's) have the option.
pub(crate) fn bound_unacknowledged(io: &dyn std::any::Any, wait: std::time::Duration) {
    if let Some(tcp) = io.downcast_ref::<tokio::net::TcpStream>() {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        if let Err(e) = rustix::net::sockopt::set_tcp_user_timeout(tcp, ms) {
            tracing::debug!("TCP_USER_TIMEOUT not set: {e}");
        }
    }
}
