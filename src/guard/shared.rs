//! Rate limits and budgets that hold across several instances sharing one Postgres.
//!
//! Design: *quota leasing*. Each allowance (a key's or a tenant's requests and tokens per
//! minute, a tenant's budget of one day or month) has one row in the shared database
//! ([`crate::domain::quota`]). An instance takes a slice of the row's level with one short
//! locked update, serves calls from that slice in memory, and gives back what it has not
//! used after a second of idleness. Every unit a call uses was taken from the row first, so
//! all instances together admit no more than one instance would: a rate limit never more
//! than its bucket, a budget overspent by at most one call's estimate (the row grants a
//! slice while anything is left, and the slice that crosses zero is the last). Slices are a
//! quarter of what is left, so busy keys rarely touch the database, and near a limit each
//! slice is just one call's need. A per-call conditional update would have been simpler
//! but costs a database round trip on every call, and every tenant has rate limits by
//! default. SQLite (one instance) never leases: its limits stay purely in memory.
//!
//! This module does no I/O and never awaits: [`SharedQuota::try_take`] says which leases a
//! call lacks, the proxy fetches them from the store off the async runtime and hands them
//! back with [`SharedQuota::deposit`], and a background task sends the idle holdings back.
//! A refusal is remembered for up to a second so a throttled key does not query the
//! database on every call.

use super::lock;
use crate::domain::quota::{LeaseGrant, LeaseRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Units of a request or a token in a rate-limit row, so that refill is counted in
/// thousandths rather than lost to rounding.
pub const SCALE: i64 = 1_000;
/// A holding unused this long goes back to the shared row.
pub const IDLE_RETURN_MS: i64 = 1_000;
/// How long a refusal from the shared row is trusted before asking again.
const REFUSED_FOR_MS: i64 = 1_000;

/// Which allowance a demand is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    KeyRequests,
    KeyTokens,
    TenantRequests,
    TenantTokens,
    BudgetDaily,
    BudgetMonthly,
}

impl Allowance {
    pub fn is_budget(self) -> bool {
        matches!(self, Self::BudgetDaily | Self::BudgetMonthly)
    }

    pub fn is_tokens(self) -> bool {
        matches!(self, Self::KeyTokens | Self::TenantTokens)
    }
}

/// What one call needs of one allowance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub allowance: Allowance,
    pub name: String,
    /// Units the call takes.
    pub amount: i64,
    pub cap: i64,
    pub per_minute: i64,
    pub unit: i64,
    /// The row's level if it does not exist yet.
    pub initial: i64,
    pub expires_ms: i64,
}

impl Demand {
    /// What must be held for the call to pass: its amount, and at least one unit, so a
    /// call of unknown price still needs some budget left, as on one instance.
    fn check(&self) -> i64 {
        self.amount.max(self.unit)
    }

    /// The least level the row must have: a budget needs anything left; a rate limit what
    /// the call needs (at most a full bucket, so a huge call waits for one).
    fn threshold(&self, held: i64) -> i64 {
        if self.allowance.is_budget() {
            1
        } else {
            (self.check().min(self.cap) - held).max(1)
        }
    }
}

/// The shared row refused a demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub allowance: Allowance,
    /// The row's level when it refused (may be below zero).
    pub level: i64,
    pub cap: i64,
    /// For rate limits: seconds until the row has refilled enough, 1..=120.
    pub retry_after_secs: Option<u64>,
}

/// The outcome of [`SharedQuota::try_take`].
#[derive(Debug)]
pub enum Take {
    Taken(Taken),
    /// These leases are missing; fetch them, deposit them and try again.
    Lease(Vec<LeaseRequest>),
    Refused(Refusal),
}

#[derive(Debug, Default)]
struct Holding {
    held: i64,
    last_ms: i64,
    refused_until_ms: i64,
    refused_level: i64,
}

/// This instance's holdings of shared allowances.
#[derive(Debug, Default)]
pub struct SharedQuota {
    holdings: Mutex<HashMap<String, Holding>>,
}

/// What one admitted call took from the holdings. Dropped without
/// [`settle`](Taken::settle), it all goes back (the call never happened).
#[must_use = "taken allowance holds until it is settled or dropped"]
#[derive(Debug)]
pub struct Taken {
    quota: Option<Arc<SharedQuota>>,
    items: Vec<(Allowance, String, i64)>,
    taken_ms: i64,
}

impl Taken {
    /// Nothing taken (the quotas are not shared).
    pub fn none() -> Self {
        Self {
            quota: None,
            items: Vec::new(),
            taken_ms: 0,
        }
    }

    /// Corrects the holdings once the call's real use is known: `tokens_delta` tokens used
    /// beyond (negative: below) what was taken, and the real cost in nano-dollars (`None`:
    /// unknown, the estimate stays spent).
    pub fn settle(mut self, tokens_delta: i64, cost_nanos: Option<i64>, now_ms: i64) {
        let Some(quota) = self.quota.take() else {
            return;
        };
        for (allowance, name, amount) in std::mem::take(&mut self.items) {
            let back = if allowance.is_tokens() {
                tokens_delta.saturating_mul(SCALE).saturating_neg()
            } else if allowance.is_budget() {
                cost_nanos.map_or(0, |c| amount.saturating_sub(c))
            } else {
                0
            };
            if back != 0 {
                quota.adjust(&name, back, now_ms);
            }
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(quota) = self.quota.take() {
            for (_, name, amount) in self.items.drain(..) {
                quota.adjust(&name, amount, self.taken_ms);
            }
        }
    }
}

/// Leases fetched from the store for one call. Dropped before the call used them (the
/// client went away while they were fetched, or fetching failed half-way), they join this
/// instance's holdings, so nothing taken from a shared row is lost.
#[derive(Debug)]
pub struct Fetched {
    quota: Arc<SharedQuota>,
    grants: Vec<(LeaseRequest, LeaseGrant)>,
}

impl Fetched {
    pub fn new(quota: Arc<SharedQuota>) -> Self {
        Self {
            quota,
            grants: Vec::new(),
        }
    }

    pub fn push(&mut self, req: LeaseRequest, grant: LeaseGrant) {
        self.grants.push((req, grant));
    }

    /// The grants, for [`SharedQuota::try_take`].
    pub fn into_grants(mut self) -> Vec<(LeaseRequest, LeaseGrant)> {
        std::mem::take(&mut self.grants)
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        if self.grants.is_empty() {
            return;
        }
        let now_ms = crate::domain::Timestamp::now().millis();
        let mut map = lock(&self.quota.holdings);
        for (req, grant) in self.grants.drain(..) {
            deposit(&mut map, &req, grant, now_ms);
        }
    }
}

fn retry_after(d: &Demand, threshold: i64, level: i64) -> Option<u64> {
    if d.allowance.is_budget() || d.per_minute <= 0 {
        return None;
    }
    let missing = i128::from(threshold.saturating_sub(level).max(0));
    let secs = (missing * 60 + i128::from(d.per_minute) - 1) / i128::from(d.per_minute);
    Some(
        u64::try_from(secs)
            .unwrap_or(u64::MAX)
            .clamp(1, super::ratelimit::MAX_RETRY_AFTER_SECS),
    )
}

fn deposit(map: &mut HashMap<String, Holding>, req: &LeaseRequest, grant: LeaseGrant, now_ms: i64) {
    let h = map.entry(req.name.clone()).or_default();
    h.last_ms = now_ms;
    if grant.granted > 0 {
        h.held = h.held.saturating_add(grant.granted);
        h.refused_until_ms = 0;
    } else {
        h.refused_until_ms = now_ms + REFUSED_FOR_MS;
        h.refused_level = grant.level;
    }
}

impl SharedQuota {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the `grants` just fetched for this call, then takes every demand from the
    /// holdings at once, or none: says which leases are missing, or which allowance the
    /// shared row refused within the last second. Both under one lock, so what a call
    /// fetched is not taken by another call first.
    pub fn try_take(
        self: &Arc<Self>,
        demands: &[Demand],
        grants: &[(LeaseRequest, LeaseGrant)],
        now_ms: i64,
    ) -> Take {
        let mut map = lock(&self.holdings);
        for (req, grant) in grants {
            deposit(&mut map, req, *grant, now_ms);
        }
        let mut missing = Vec::new();
        for d in demands {
            let (held, refused) = match map.get(&d.name) {
                Some(h) => (
                    h.held,
                    (h.refused_until_ms > now_ms).then_some(h.refused_level),
                ),
                None => (0, None),
            };
            if held >= d.check() {
                continue;
            }
            let threshold = d.threshold(held);
            if let Some(level) = refused {
                return Take::Refused(Refusal {
                    allowance: d.allowance,
                    level,
                    cap: d.cap,
                    retry_after_secs: retry_after(d, threshold, level),
                });
            }
            missing.push(LeaseRequest {
                name: d.name.clone(),
                cap: d.cap,
                per_minute: d.per_minute,
                initial: d.initial,
                need: d.check() - held,
                threshold,
                unit: d.unit,
                expires_ms: d.expires_ms,
                now_ms,
            });
        }
        if !missing.is_empty() {
            return Take::Lease(missing);
        }
        let mut items = Vec::with_capacity(demands.len());
        for d in demands {
            if let Some(h) = map.get_mut(&d.name) {
                h.held -= d.amount;
                h.last_ms = now_ms;
            }
            items.push((d.allowance, d.name.clone(), d.amount));
        }
        Take::Taken(Taken {
            quota: Some(Arc::clone(self)),
            items,
            taken_ms: now_ms,
        })
    }

    /// Adds what the shared row granted (or remembers its refusal).
    pub fn deposit(&self, req: &LeaseRequest, grant: LeaseGrant, now_ms: i64) {
        deposit(&mut lock(&self.holdings), req, grant, now_ms);
    }

    /// A refusal for `demand` when leases could not be had after several tries (other
    /// calls of this instance kept taking them first).
    pub fn contended(demand: &Demand) -> Refusal {
        Refusal {
            allowance: demand.allowance,
            level: 0,
            cap: demand.cap,
            retry_after_secs: (!demand.allowance.is_budget()).then_some(1),
        }
    }

    fn adjust(&self, name: &str, amount: i64, now_ms: i64) {
        let mut map = lock(&self.holdings);
        let h = map.entry(name.to_owned()).or_default();
        h.held = h.held.saturating_add(amount);
        h.last_ms = h.last_ms.max(now_ms);
    }

    /// Takes the holdings idle for [`IDLE_RETURN_MS`] (`all`: every holding, at shutdown)
    /// out, to be given back to the shared rows; forgets entries with nothing left.
    pub fn drain(&self, now_ms: i64, all: bool) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        let mut map = lock(&self.holdings);
        map.retain(|name, h| {
            let idle = now_ms.saturating_sub(h.last_ms) >= IDLE_RETURN_MS;
            if (idle || all) && h.held != 0 {
                out.push((name.clone(), h.held));
                h.held = 0;
            }
            !(idle && h.held == 0 && h.refused_until_ms <= now_ms)
        });
        out
    }

    /// What this instance holds of an allowance (tests).
    pub fn held(&self, name: &str) -> i64 {
        lock(&self.holdings).get(name).map_or(0, |h| h.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::quota::{self, QuotaRow};

    fn grant(granted: i64, level: i64) -> LeaseGrant {
        LeaseGrant { granted, level }
    }

    fn requests(name: &str, rpm: i64) -> Demand {
        Demand {
            allowance: Allowance::KeyRequests,
            name: name.into(),
            amount: SCALE,
            cap: rpm * SCALE,
            per_minute: rpm * SCALE,
            unit: SCALE,
            initial: rpm * SCALE,
            expires_ms: 120_000,
        }
    }

    /// Two instances against one row, alternating: exactly the limit passes in all.
    #[test]
    fn two_instances_leasing_from_one_row_admit_exactly_the_limit() {
        let a = Arc::new(SharedQuota::new());
        let b = Arc::new(SharedQuota::new());
        let d = [requests("k", 10)];
        let mut row: Option<QuotaRow> = None;
        let mut admitted = 0;
        let mut kept = Vec::new();
        for i in 0..30 {
            let q = if i % 2 == 0 { &a } else { &b };
            loop {
                match q.try_take(&d, &[], 0) {
                    Take::Taken(t) => {
                        admitted += 1;
                        kept.push(t);
                        break;
                    }
                    Take::Refused(r) => {
                        assert_eq!(r.retry_after_secs, Some(6));
                        break;
                    }
                    Take::Lease(reqs) => {
                        for req in reqs {
                            let (next, g) = quota::lease(row.unwrap_or(QuotaRow::new(&req)), &req);
                            row = Some(next);
                            q.deposit(&req, g, 0);
                        }
                    }
                }
            }
        }
        assert_eq!(admitted, 10);
        for t in kept {
            t.settle(0, None, 0);
        }
        assert_eq!(a.held("k") + b.held("k"), 0);
    }

    #[test]
    fn unused_and_refunded_allowance_is_drained_back_when_idle() {
        let q = Arc::new(SharedQuota::new());
        let d = [Demand {
            allowance: Allowance::BudgetDaily,
            name: "b".into(),
            amount: 100,
            cap: 1_000,
            per_minute: 0,
            unit: 1,
            initial: 1_000,
            expires_ms: 0,
        }];
        let Take::Lease(reqs) = q.try_take(&d, &[], 0) else {
            panic!("nothing held yet")
        };
        assert_eq!(reqs[0].need, 100);
        q.deposit(&reqs[0], grant(250, 1_000), 0);
        let Take::Taken(t) = q.try_take(&d, &[], 0) else {
            panic!("held")
        };
        // Cost 40 of the 100 taken: 60 come back.
        t.settle(0, Some(40), 10);
        assert_eq!(q.held("b"), 210);
        let Take::Taken(t) = q.try_take(&d, &[], 20) else {
            panic!("held")
        };
        drop(t);
        assert_eq!(q.held("b"), 210, "a dropped take gives everything back");
        assert!(q.drain(500, false).is_empty(), "not idle yet");
        assert_eq!(
            q.drain(20 + IDLE_RETURN_MS, false),
            vec![("b".to_owned(), 210)]
        );
        assert_eq!(q.held("b"), 0);
        // A refusal is trusted for a second.
        let Take::Lease(reqs) = q.try_take(&d, &[], 5_000) else {
            panic!()
        };
        q.deposit(&reqs[0], grant(0, -5), 5_000);
        assert!(
            matches!(q.try_take(&d, &[], 5_500), Take::Refused(r) if r.level == -5 && r.retry_after_secs.is_none())
        );
        assert!(matches!(q.try_take(&d, &[], 6_000), Take::Lease(_)));
    }

    #[test]
    fn leases_fetched_for_a_call_that_went_away_join_the_holdings() {
        let q = Arc::new(SharedQuota::new());
        let d = [requests("k", 10)];
        let Take::Lease(reqs) = q.try_take(&d, &[], 0) else {
            panic!("nothing held yet")
        };
        let mut fetched = Fetched::new(q.clone());
        fetched.push(reqs[0].clone(), grant(2_000, 10_000));
        drop(fetched);
        assert_eq!(q.held("k"), 2_000);
        let mut fetched = Fetched::new(q.clone());
        fetched.push(reqs[0].clone(), grant(1_000, 8_000));
        let Take::Taken(_t) = q.try_take(&d, &fetched.into_grants(), 0) else {
            panic!("covered")
        };
        assert_eq!(q.held("k"), 2_000);
    }
}
