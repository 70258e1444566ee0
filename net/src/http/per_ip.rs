//! Per-address admission (`--max-connections-per-ip`,
//! `--connection-rate-per-ip`): what one client address may open, checked
//! before anything costly (the token, the hooks) is looked at. IPv6
//! addresses count by their /64, which is what one host or site is usually
//! given; IPv4-mapped addresses count as their IPv4 address.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::StatusCode;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use rustc_hash::FxHashMap;

pub use crate::config::PerIpLimits;

/// The clock the rate limiter reads: tokio's, which turmoil drives in the
/// simulated worlds.
#[derive(Clone, Debug)]
struct TokioClock(tokio::time::Instant);

impl governor::clock::Clock for TokioClock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        self.0.elapsed().into()
    }
}

type Limiter = RateLimiter<IpAddr, HashMapStateStore<IpAddr>, TokioClock>;

/// Addresses the rate limiter remembers before it forgets the idle ones.
const REMEMBERED: usize = 16_384;

pub(crate) struct PerIp {
    /// The limits in force and their rate limiter (a reload replaces
    /// both; the counts of open connections stay).
    rules: RwLock<(PerIpLimits, Option<Arc<Limiter>>)>,
    /// When the rate limiter next forgets addresses whose bucket is full.
    prune_at: AtomicUsize,
    open: Mutex<FxHashMap<IpAddr, usize>>,
}

/// One address's connection, released when dropped.
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    key: Option<IpAddr>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else {
            return;
        };
        let mut open = self.per_ip.open();
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

impl PerIp {
    pub(crate) fn new(limits: PerIpLimits) -> Self {
        PerIp {
            rules: RwLock::new((limits, rate_limiter(limits))),
            prune_at: AtomicUsize::new(REMEMBERED),
            open: Mutex::default(),
        }
    }

    /// New limits for the connections from now on. A new rate starts
    /// every address with a full bucket; an unchanged one keeps them.
    pub(crate) fn set_limits(&self, limits: PerIpLimits) {
        let mut rules = self.rules.write().unwrap_or_else(|e| e.into_inner());
        if rules.0.connections_per_second != limits.connections_per_second {
            rules.1 = rate_limiter(limits);
        }
        rules.0 = limits;
    }

    fn open(&self) -> std::sync::MutexGuard<'_, FxHashMap<IpAddr, usize>> {
        // A panic while holding the lock leaves plain counts behind; go on.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one more connection from `ip`, or says why not (429).
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<IpSlot, (StatusCode, &'static str)> {
        let ip = ip.to_canonical();
        let (limits, rate) = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        let unlimited = IpSlot {
            per_ip: self.clone(),
            key: None,
        };
        if limits.exempt_loopback && ip.is_loopback() {
            return Ok(unlimited);
        }
        let key = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        };
        if let Some(rate) = &rate {
            if rate.check_key(&key).is_err() {
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many new connections from this address; retry in a second",
                ));
            }
            let remembered = rate.len();
            if remembered > self.prune_at.load(Ordering::Relaxed) {
                rate.retain_recent();
                let next = (rate.len() * 2).max(REMEMBERED);
                self.prune_at.store(next, Ordering::Relaxed);
            }
        }
        if limits.max_connections == 0 {
            return Ok(unlimited);
        }
        let mut open = self.open();
        let n = open.entry(key).or_insert(0);
        if *n >= limits.max_connections {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ));
        }
        *n += 1;
        Ok(IpSlot {
            per_ip: self.clone(),
            key: Some(key),
        })
    }
}

fn rate_limiter(limits: PerIpLimits) -> Option<Arc<Limiter>> {
    NonZeroU32::new(limits.connections_per_second).map(|n| {
        let clock = TokioClock(tokio::time::Instant::now());
        Arc::new(RateLimiter::new(
            Quota::per_second(n),
            HashMapStateStore::default(),
            clock,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn counts_and_rates_per_address_and_per_ipv6_64() {
        let limits = PerIpLimits {
            max_connections: 2,
            connections_per_second: 3,
            exempt_loopback: true,
        };
        let per_ip = Arc::new(PerIp::new(limits));
        let a = per_ip.admit(ip("10.0.0.1")).unwrap();
        let _b = per_ip.admit(ip("::ffff:10.0.0.1")).unwrap();
        // Two held: the third is refused; another address is not.
        assert_eq!(
            per_ip.admit(ip("10.0.0.1")).err().map(|e| e.0),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        let _c = per_ip.admit(ip("10.0.0.2")).unwrap();
        // The refused attempt spent the third token of the second.
        drop(a);
        assert!(per_ip.admit(ip("10.0.0.1")).is_err(), "rate: 3 per second");
        tokio::time::advance(Duration::from_secs(1)).await;
        let _d = per_ip.admit(ip("10.0.0.1")).unwrap();
        // One /64 is one client; the next /64 another.
        let _e = per_ip.admit(ip("2001:db8:0:1::1")).unwrap();
        let _f = per_ip.admit(ip("2001:db8:0:1::2")).unwrap();
        assert!(per_ip.admit(ip("2001:db8:0:1::3")).is_err());
        assert!(per_ip.admit(ip("2001:db8:0:2::1")).is_ok());
        // Loopback, exempt here.
        let held: Vec<IpSlot> = (0..10)
            .map(|_| per_ip.admit(ip("127.0.0.1")).unwrap())
            .collect();
        assert_eq!(held.len(), 10);
        drop((_b, _c, _d, _e, _f));
        assert!(per_ip.open().is_empty(), "every slot released");
    }
}
