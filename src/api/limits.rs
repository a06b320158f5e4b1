//! The limits of unauthenticated work, kept in memory per process: a token bucket per
//! client address, and the recent failed sign-ins by account and by address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failed sign-in counts against its account and its address.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A token bucket per client address.
///
/// The buckets live in two generations: new addresses go into the current one, and when it
/// holds [`MAX_TRACKED_ADDRESSES`] it becomes the previous one and the one before is
/// dropped. An address found only in the previous generation moves forward. So each
/// request costs O(1) however many addresses an attacker brings, memory stays below twice
/// the limit, and an address is forgotten (its bucket back to full) only after a whole
/// generation of other addresses went by without it.
pub struct AddressRateLimiter {
    per_minute: u32,
    buckets: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<IpAddr, (f64, Instant)>,
    previous: HashMap<IpAddr, (f64, Instant)>,
}

const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl AddressRateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(Generations::default()),
        }
    }

    /// How many addresses are remembered.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .map_or(0, |g| g.current.len() + g.previous.len())
    }

    /// `Ok` if `addr` may make a request now, else `Err(seconds until it may)`.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let known = match buckets.previous.remove(&addr) {
            Some(bucket) => bucket,
            None => buckets
                .current
                .get(&addr)
                .copied()
                .unwrap_or((capacity, now)),
        };
        if !buckets.current.contains_key(&addr) && buckets.current.len() >= MAX_TRACKED_ADDRESSES {
            buckets.previous = std::mem::take(&mut buckets.current);
        }
        let (tokens, at) = buckets.current.entry(addr).or_insert(known);
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil() as u64)
        }
    }
}

/// Recent failed sign-ins, by email and by address.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginThrottle {
    /// `Err(seconds)` while `keys` have too many recent failures.
    pub fn check(&self, keys: &[(String, usize)], now: Instant) -> Result<(), u64> {
        let Ok(mut map) = self.failures.lock() else {
            return Ok(());
        };
        for (key, max) in keys {
            if let Some(times) = map.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
                if times.len() >= *max
                    && let Some(oldest) = times.first()
                {
                    let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(*oldest));
                    return Err(wait.as_secs().max(1));
                }
            }
        }
        Ok(())
    }

    /// Recent failures under `key`.
    pub fn recent(&self, key: &str, now: Instant) -> usize {
        self.failures.lock().map_or(0, |map| {
            map.get(key).map_or(0, |times| {
                times
                    .iter()
                    .filter(|t| now.duration_since(**t) < FAILURE_WINDOW)
                    .count()
            })
        })
    }

    pub fn fail(&self, keys: &[(String, usize)], now: Instant) {
        if let Ok(mut map) = self.failures.lock() {
            if map.len() > 100_000 {
                map.retain(|_, v| {
                    v.last()
                        .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
                });
            }
            for (key, _) in keys {
                map.entry(key.clone()).or_default().push(now);
            }
        }
    }

    pub fn clear(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_limiter_allows_the_budget_then_refuses_then_refills() {
        let l = AddressRateLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(a, t0).is_ok());
        }
        let retry = l.check(a, t0).unwrap_err();
        assert!((1..=20).contains(&retry), "{retry}");
        assert!(
            l.check(b, t0).is_ok(),
            "other addresses have their own budget"
        );
        assert!(
            l.check(a, t0 + Duration::from_secs(20)).is_ok(),
            "one token refills in 20 s at 3/min"
        );
    }

    #[test]
    fn many_addresses_cost_a_bounded_memory_and_no_scan() {
        let l = AddressRateLimiter::new(1);
        let t0 = Instant::now();
        // Every address drains its bucket, so none could be forgotten as refilled.
        for i in 0..(5 * MAX_TRACKED_ADDRESSES as u32 / 2) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check(addr, t0).is_ok());
        }
        assert!(
            l.tracked() <= 2 * MAX_TRACKED_ADDRESSES,
            "{} addresses remembered",
            l.tracked()
        );
        // A recent address is still held to its budget.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + 5 * MAX_TRACKED_ADDRESSES as u32 / 2 - 1,
        ));
        assert!(l.check(last, t0).is_err());
    }

    #[test]
    fn a_zero_limit_means_off() {
        let l = AddressRateLimiter::new(0);
        for _ in 0..1000 {
            assert!(l.check("10.0.0.1".parse().unwrap(), Instant::now()).is_ok());
        }
    }
}
