//! Admission before the upgrade: the client address's limits, the origin
//! check, the token, and the connection slots (`--max-connections`,
//! `--max-connections-per-user`) held from the upgrade until the socket is
//! gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, StatusCode, Uri};
use roomhub_core::Identity;
use rustc_hash::FxHashMap;

use crate::auth::{AuthError, Authenticator, TokenSource, extract_token};
use crate::clock::Clock;
use crate::http::per_ip::{PerIp, PerIpLimits};

/// The connection slots of one server.
pub(crate) struct Admission {
    /// Sockets held, upgrading or open or closing: what admission counts.
    sockets: AtomicUsize,
    per_user: Mutex<FxHashMap<Arc<str>, usize>>,
    max_connections: AtomicUsize,
    /// 0: no limit.
    max_per_user: AtomicUsize,
    /// What one client address may open, checked first.
    pub(crate) per_ip: Arc<PerIp>,
}

/// A reserved connection slot, released when dropped: whether the upgrade
/// fails, the connection ends, or the task is cancelled.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    user: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.sockets.fetch_sub(1, Ordering::Relaxed);
        let mut per_user = self.admission.per_user();
        if let Some(n) = per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(max_connections: usize, max_per_user: usize, per_ip: PerIpLimits) -> Self {
        Admission {
            sockets: AtomicUsize::new(0),
            per_user: Mutex::default(),
            max_connections: AtomicUsize::new(max_connections),
            max_per_user: AtomicUsize::new(max_per_user),
            per_ip: Arc::new(PerIp::new(per_ip)),
        }
    }

    /// New limits for the connections from now on; open ones stay.
    pub(crate) fn set_limits(
        &self,
        max_connections: usize,
        max_per_user: usize,
        per_ip: PerIpLimits,
    ) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        self.max_per_user.store(max_per_user, Ordering::Relaxed);
        self.per_ip.set_limits(per_ip);
    }

    /// Sockets held now.
    pub(crate) fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    fn per_user(&self) -> std::sync::MutexGuard<'_, FxHashMap<Arc<str>, usize>> {
        // A panic while holding the lock leaves plain counts behind; go on.
        self.per_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for `user`, or says why not.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        user: &Arc<str>,
    ) -> Result<Slot, (StatusCode, &'static str)> {
        if self.sockets.fetch_add(1, Ordering::Relaxed)
            >= self.max_connections.load(Ordering::Relaxed)
        {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            return Err((StatusCode::SERVICE_UNAVAILABLE, "server full"));
        }
        let mut per_user = self.per_user();
        let count = per_user.entry(user.clone()).or_insert(0);
        let max_per_user = self.max_per_user.load(Ordering::Relaxed);
        if max_per_user > 0 && *count >= max_per_user {
            drop(per_user);
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections for this user",
            ));
        }
        *count += 1;
        Ok(Slot {
            admission: self.clone(),
            user: user.clone(),
        })
    }
}

/// Whether a browser on this origin may connect (`allowed` empty: any).
pub(crate) fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    // Browsers always send Origin on a WebSocket upgrade; a client
    // without one is not a browser, and origin checks protect browsers.
    match headers.get(ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => {
            let origin = origin.trim_end_matches('/');
            allowed.iter().any(|o| o == origin)
        }
        Some(Err(_)) => false,
    }
}

/// The identity the request's token proves, and where the token was.
pub(crate) async fn authenticate(
    auth: &Authenticator,
    clock: Clock,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Identity, TokenSource), AuthError> {
    let (token, source) = extract_token(headers, uri.query()).ok_or(AuthError::Missing)?;
    let identity = auth.verify(&token, clock.unix_seconds()).await?;
    Ok((identity, source))
}
