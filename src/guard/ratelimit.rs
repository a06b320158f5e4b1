//! dg-003: requests and tokens per minute, per key or per tenant.
//!
//! Responsible for admitting or throttling one call against a per-minute limit, saying
//! how long to wait when it throttles, and charging the tokens a call really used once it
//! has finished. Each limited id has two token buckets (requests and tokens) that refill
//! continuously at the limit per minute, so bursts up to one minute's allowance pass and
//! sustained traffic settles at the limit.
//!
//! It must stay bounded in memory and cheap: buckets live in a sharded map behind short
//! mutex sections, an idle bucket (full again, so forgetting it changes nothing) is evicted
//! when its shard fills, and limits are passed in on each call rather than stored, so a
//! policy change takes effect at once. A limit of zero means "no limit".

use super::{Mode, Sharded};
use crate::domain::Timestamp;
use std::hash::Hash;

const WINDOW_MS: f64 = 60_000.0;
/// Token debt is capped at one minute's allowance, so a bucket is full again at most two
/// minutes after its last use, and `retry_after` never exceeds 120 seconds.
pub const MAX_RETRY_AFTER_SECS: u64 = 120;
const IDLE_MS: i64 = (MAX_RETRY_AFTER_SECS * 1000) as i64;

/// The limits of one id; zero disables that dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u64,
}

/// Which allowance ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
}

impl Dimension {
    pub fn unit(self) -> &'static str {
        match self {
            Self::Requests => "requests/min",
            Self::Tokens => "tokens/min",
        }
    }
}

/// A call was throttled: `used` of `limit` in the last minute, retry after the given seconds
/// (1 ..= [`MAX_RETRY_AFTER_SECS`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    pub dimension: Dimension,
    pub used: f64,
    pub limit: f64,
    pub retry_after_secs: u64,
}

/// Usage after an admitted call, in the dimension closest to its limit (`limit` 0: no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub dimension: Dimension,
    pub used: f64,
    pub limit: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    requests: f64,
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    fn full(limits: RateLimits, now_ms: i64) -> Self {
        Self {
            requests: f64::from(limits.requests_per_minute),
            tokens: limits.tokens_per_minute as f64,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, limits: RateLimits, now_ms: i64) {
        // A clock that steps back refills nothing rather than draining.
        let elapsed = now_ms.saturating_sub(self.last_ms).max(0) as f64;
        let rpm = f64::from(limits.requests_per_minute);
        let tpm = limits.tokens_per_minute as f64;
        self.requests = (self.requests + elapsed * rpm / WINDOW_MS).min(rpm);
        self.tokens = (self.tokens + elapsed * tpm / WINDOW_MS).min(tpm);
        self.last_ms = self.last_ms.max(now_ms);
    }

    fn usage(&self, limits: RateLimits) -> Usage {
        let rpm = f64::from(limits.requests_per_minute);
        let tpm = limits.tokens_per_minute as f64;
        let req = Usage {
            dimension: Dimension::Requests,
            used: (rpm - self.requests).max(0.0),
            limit: rpm,
        };
        let tok = Usage {
            dimension: Dimension::Tokens,
            used: (tpm - self.tokens).max(0.0),
            limit: tpm,
        };
        let ratio = |u: &Usage| {
            if u.limit > 0.0 {
                u.used / u.limit
            } else {
                -1.0
            }
        };
        if ratio(&tok) > ratio(&req) { tok } else { req }
    }

    /// See [`RateLimiter::acquire`].
    fn acquire(
        &mut self,
        limits: RateLimits,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Usage, Throttled> {
        self.refill(limits, now_ms);
        let rpm = f64::from(limits.requests_per_minute);
        if rpm > 0.0 && self.requests < 1.0 {
            return Err(Throttled {
                dimension: Dimension::Requests,
                used: (rpm - self.requests).max(0.0),
                limit: rpm,
                retry_after_secs: retry_after(1.0, self.requests, rpm),
            });
        }
        let tpm = limits.tokens_per_minute as f64;
        // A request bigger than the whole allowance waits for a full bucket rather than
        // forever.
        let need = (tokens as f64).min(tpm).max(1.0);
        if tpm > 0.0 && self.tokens < need {
            return Err(Throttled {
                dimension: Dimension::Tokens,
                used: (tpm - self.tokens).max(0.0),
                limit: tpm,
                retry_after_secs: retry_after(need, self.tokens, tpm),
            });
        }
        if rpm > 0.0 {
            self.requests -= 1.0;
        }
        if tpm > 0.0 {
            self.charge_tokens(limits, i64::try_from(tokens).unwrap_or(i64::MAX));
        }
        Ok(self.usage(limits))
    }

    fn charge_tokens(&mut self, limits: RateLimits, delta: i64) {
        let tpm = limits.tokens_per_minute as f64;
        self.tokens = (self.tokens - delta as f64).clamp(-tpm, tpm);
    }
}

/// Seconds until `level` has refilled to `need` at `per_minute`.
fn retry_after(need: f64, level: f64, per_minute: f64) -> u64 {
    let secs = ((need - level) * 60.0 / per_minute).ceil();
    if secs.is_finite() {
        (secs as u64).clamp(1, MAX_RETRY_AFTER_SECS)
    } else {
        MAX_RETRY_AFTER_SECS
    }
}

pub struct RateLimiter<K> {
    buckets: Sharded<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter remembering at most about `max_entries` ids.
    pub fn new(max_entries: usize) -> Self {
        Self {
            buckets: Sharded::new(max_entries),
        }
    }

    /// Admits one request expected to use `tokens` prompt tokens, or says why not. In
    /// [`Mode::Charge`] an admitted request is charged one request and `tokens` tokens at
    /// once, so parallel calls cannot all slip through the same allowance; in
    /// [`Mode::Peek`] the same answer, worked out on a copy of the id's bucket: nothing is
    /// charged or stored.
    pub fn acquire(
        &self,
        id: &K,
        limits: RateLimits,
        tokens: u64,
        now: Timestamp,
        mode: Mode,
    ) -> Result<Usage, Throttled> {
        let now_ms = now.millis();
        let fresh = || Bucket::full(limits, now_ms);
        match mode {
            Mode::Charge => self.buckets.with(
                id,
                |b| b.last_ms.saturating_add(IDLE_MS) <= now_ms,
                |b| b.last_ms,
                fresh,
                |b| b.acquire(limits, tokens, now_ms),
            ),
            Mode::Peek => {
                let mut copy = self.buckets.update(id, |b| *b).unwrap_or_else(fresh);
                copy.acquire(limits, tokens, now_ms)
            }
        }
    }

    /// Gives back an admission that did not go ahead (`requests` requests and `tokens`
    /// tokens charged by [`acquire`](Self::acquire)).
    pub fn refund(&self, id: &K, limits: RateLimits, requests: u32, tokens: u64) {
        self.buckets.update(id, |b| {
            let rpm = f64::from(limits.requests_per_minute);
            b.requests = (b.requests + f64::from(requests)).min(rpm);
            b.charge_tokens(limits, -i64::try_from(tokens).unwrap_or(i64::MAX));
        });
    }

    /// Charges (positive) or refunds (negative) tokens once a call's real usage is known,
    /// relative to what was charged at admission.
    pub fn charge_tokens(&self, id: &K, limits: RateLimits, delta: i64, now: Timestamp) {
        if limits.tokens_per_minute == 0 || delta == 0 {
            return;
        }
        let now_ms = now.millis();
        self.buckets.update(id, |b| {
            b.refill(limits, now_ms);
            b.charge_tokens(limits, delta);
        });
    }

    /// Current usage of `id`, without charging or changing anything (`None`: not tracked,
    /// i.e. unused).
    pub fn usage(&self, id: &K, limits: RateLimits, now: Timestamp) -> Option<Usage> {
        let mut copy = self.buckets.update(id, |b| *b)?;
        copy.refill(limits, now.millis());
        Some(copy.usage(limits))
    }

    /// How many ids are tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Mode::Charge;

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_millis((secs * 1000.0) as i64)
    }

    const fn limits(requests_per_minute: u32, tokens_per_minute: u64) -> RateLimits {
        RateLimits {
            requests_per_minute,
            tokens_per_minute,
        }
    }

    const L: RateLimits = limits(3, 1_000);

    #[test]
    fn requests_beyond_the_limit_are_throttled_with_a_bounded_retry_after() {
        let rl = RateLimiter::new(100);
        for _ in 0..3 {
            rl.acquire(&"k", L, 10, at(0.0), Charge).unwrap();
        }
        let t = rl.acquire(&"k", L, 10, at(0.0), Charge).unwrap_err();
        assert_eq!(t.dimension, Dimension::Requests);
        assert_eq!((t.used, t.limit), (3.0, 3.0));
        // One request refills every 20 s.
        assert_eq!(t.retry_after_secs, 20);
        let t = rl.acquire(&"k", L, 10, at(15.0), Charge).unwrap_err();
        assert!((1..=5).contains(&t.retry_after_secs), "{t:?}");
        rl.acquire(&"k", L, 10, at(20.0), Charge).unwrap();
    }

    #[test]
    fn tokens_beyond_the_limit_are_throttled_and_debt_is_capped() {
        let rl = RateLimiter::new(100);
        let l = limits(0, 600);
        rl.acquire(&"k", l, 500, at(0.0), Charge).unwrap();
        let t = rl.acquire(&"k", l, 200, at(0.0), Charge).unwrap_err();
        assert_eq!(t.dimension, Dimension::Tokens);
        assert_eq!(t.limit, 600.0);
        // 100 left, 200 needed, 10 tokens per second.
        assert_eq!(t.retry_after_secs, 10);
        // The call really used far more: the debt stops at one minute's worth.
        rl.charge_tokens(&"k", l, 100_000, at(0.0));
        let t = rl.acquire(&"k", l, 1, at(0.0), Charge).unwrap_err();
        assert!(t.retry_after_secs <= MAX_RETRY_AFTER_SECS);
        assert_eq!(t.retry_after_secs, 61);
    }

    #[test]
    fn a_request_larger_than_the_allowance_waits_for_a_full_bucket() {
        let rl = RateLimiter::new(100);
        let l = limits(0, 100);
        rl.acquire(&"k", l, 5_000, at(0.0), Charge).unwrap();
        let t = rl.acquire(&"k", l, 5_000, at(0.0), Charge).unwrap_err();
        assert_eq!(t.retry_after_secs, MAX_RETRY_AFTER_SECS);
        rl.acquire(&"k", l, 5_000, at(120.0), Charge).unwrap();
    }

    #[test]
    fn zero_limits_never_throttle() {
        let rl = RateLimiter::new(100);
        let off = limits(0, 0);
        for _ in 0..1_000 {
            rl.acquire(&"k", off, 1_000_000, at(0.0), Charge).unwrap();
        }
    }

    #[test]
    fn refunds_and_usage_corrections_restore_the_allowance() {
        let rl = RateLimiter::new(100);
        for _ in 0..3 {
            rl.acquire(&"k", L, 100, at(0.0), Charge).unwrap();
        }
        rl.refund(&"k", L, 1, 100);
        let u = rl.acquire(&"k", L, 100, at(0.0), Charge).unwrap();
        assert_eq!(u.used, 3.0);
        assert_eq!(u.dimension, Dimension::Requests);
        rl.charge_tokens(&"k", L, -300, at(0.0));
        let u = rl.usage(&"k", L, at(0.0)).unwrap();
        assert_eq!(u.dimension, Dimension::Requests);
        assert_eq!(rl.usage(&"other", L, at(0.0)), None);
    }

    #[test]
    fn limits_are_per_id() {
        let rl = RateLimiter::new(100);
        for _ in 0..3 {
            rl.acquire(&"a", L, 1, at(0.0), Charge).unwrap();
        }
        assert!(rl.acquire(&"a", L, 1, at(0.0), Charge).is_err());
        rl.acquire(&"b", L, 1, at(0.0), Charge).unwrap();
    }

    #[test]
    fn memory_stays_bounded_by_evicting_idle_then_oldest_ids_first() {
        let rl = RateLimiter::new(64);
        for i in 0..10_000u32 {
            rl.acquire(&i, L, 1, Timestamp::from_millis(i64::from(i)), Charge)
                .unwrap();
        }
        assert!(rl.len() <= 64, "{}", rl.len());
        // The newest id is always kept.
        assert!(rl.usage(&9_999, L, at(10.0)).is_some());
    }
}
