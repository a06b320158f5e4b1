//! Shared quotas: the arithmetic of the allowance rows that several instances on one
//! Postgres lease slices from (rate limits and budgets that hold across instances).
//!
//! A row is a bucket: `level` units are left of `cap`, and it refills by `per_minute`
//! units a minute up to `cap` (a budget refills by nothing; a new period is a new row). An
//! instance takes a *lease* — a slice of the level — and serves calls from it in memory;
//! what it did not use goes back with [`give_back`]. Every unit a call uses was taken from
//! the row first, so all instances together never admit more than one bucket would.
//!
//! Slices shrink as the level falls ([`LEASE_DIVISOR`]), so near the limit every instance
//! asks for just what its next call needs. This module does no I/O: the store runs
//! [`lease`] and [`give_back`] on the row it locked.

/// A lease is a quarter of what is left (at least what the call needs).
pub const LEASE_DIVISOR: i64 = 4;

/// The prefix of the rows of a key's rate limits (`…requests`, `…tokens`).
pub fn key_rate_prefix(key: &str) -> String {
    format!("rate:key:{key}:")
}

/// The prefix of the rows of a tenant's rate limits.
pub fn tenant_rate_prefix(tenant: &str) -> String {
    format!("rate:tenant:{tenant}:")
}

/// The prefix of the rows of a tenant's budgets (`…daily:<start ms>`, `…monthly:<start ms>`).
pub fn budget_prefix(tenant: &str) -> String {
    format!("budget:{tenant}:")
}

/// The stored state of one allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaRow {
    pub cap: i64,
    pub level: i64,
    pub per_minute: i64,
    pub updated_ms: i64,
}

/// One instance asks for a slice of allowance `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub name: String,
    /// The limit now (a changed limit moves the level by the difference).
    pub cap: i64,
    pub per_minute: i64,
    /// The level of a row that does not exist yet.
    pub initial: i64,
    /// Units the waiting call still lacks: the least a grant gives.
    pub need: i64,
    /// The level the row must have for anything to be granted (a budget: 1, any spend
    /// left; a rate limit: what the call needs, at most a full bucket).
    pub threshold: i64,
    /// Grants are whole multiples of this (one request, one token, one nano-dollar) on top
    /// of `need`, so no instance is left holding a fraction nobody can use.
    pub unit: i64,
    /// When the row may be deleted (a rate limit is full again by then; a budget's period
    /// is over).
    pub expires_ms: i64,
    pub now_ms: i64,
}

/// What a lease gave: `granted` 0 means refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub granted: i64,
    /// The row's level when asked, before the grant (for retry-after and messages).
    pub level: i64,
}

impl QuotaRow {
    /// A new row, full (`initial` = cap) or with a period's spend already taken.
    pub fn new(req: &LeaseRequest) -> Self {
        Self {
            cap: req.cap,
            level: req.initial.min(req.cap),
            per_minute: req.per_minute,
            updated_ms: req.now_ms,
        }
    }

    /// The level at `now` under limit `cap`.
    fn refilled(&self, cap: i64, per_minute: i64, now_ms: i64) -> i64 {
        let shifted = self.level.saturating_add(cap.saturating_sub(self.cap));
        let elapsed = now_ms.saturating_sub(self.updated_ms).max(0);
        let refill = i128::from(elapsed) * i128::from(per_minute.max(0)) / 60_000;
        let level = i128::from(shifted) + refill;
        i64::try_from(level.min(i128::from(cap))).unwrap_or(cap)
    }

    fn rebased(&self, cap: i64, per_minute: i64, now_ms: i64) -> Self {
        Self {
            cap,
            level: self.refilled(cap, per_minute, now_ms),
            per_minute,
            updated_ms: self.updated_ms.max(now_ms),
        }
    }
}

/// Takes a slice of `row` for `req`: the new row (the same row when refused) and what was
/// granted. Nothing is granted
/// while the level is below `threshold`; otherwise at least `need`, so a budget may go
/// below zero by at most one call's estimate (the single-instance guarantee) and a rate
/// limit's tokens by at most one call's prompt, floored at minus one bucket.
pub fn lease(row: QuotaRow, req: &LeaseRequest) -> (QuotaRow, LeaseGrant) {
    let mut next = row.rebased(req.cap, req.per_minute, req.now_ms);
    let level = next.level;
    if level < req.threshold.max(1) {
        // Unchanged, so the refill's fraction of a unit is not rounded away.
        return (row, LeaseGrant { granted: 0, level });
    }
    let unit = req.unit.max(1);
    let slice = (level / LEASE_DIVISOR).min(level).max(0) / unit * unit;
    let granted = slice.max(req.need).max(1);
    next.level = level.saturating_sub(granted).max(req.cap.saturating_neg());
    (next, LeaseGrant { granted, level })
}

/// Puts `amount` back (unused lease; negative: spend beyond what was leased), at most up to
/// the cap.
pub fn give_back(row: QuotaRow, amount: i64, now_ms: i64) -> QuotaRow {
    let mut next = row.rebased(row.cap, row.per_minute, now_ms);
    next.level = next
        .level
        .saturating_add(amount)
        .min(next.cap)
        .max(next.cap.saturating_neg());
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(need: i64, threshold: i64, now_ms: i64) -> LeaseRequest {
        LeaseRequest {
            name: "r".into(),
            cap: 10_000,
            per_minute: 10_000,
            initial: 10_000,
            need,
            threshold,
            unit: 1_000,
            expires_ms: now_ms + 120_000,
            now_ms,
        }
    }

    #[test]
    fn slices_shrink_with_the_level_and_never_exceed_the_bucket() {
        let r = req(1_000, 1_000, 0);
        let mut row = QuotaRow::new(&r);
        let mut total = 0;
        let mut grants = vec![];
        loop {
            let (next, g) = lease(row, &r);
            row = next;
            if g.granted == 0 {
                break;
            }
            grants.push(g.granted);
            total += g.granted;
        }
        assert_eq!(total, 10_000, "{grants:?}");
        assert_eq!(grants[0], 2_000);
        assert_eq!(*grants.last().unwrap(), 1_000);
        assert!(grants.iter().all(|g| g % 1_000 == 0));
    }

    #[test]
    fn a_rate_row_refills_and_a_returned_lease_counts_again() {
        let r = req(10_000, 10_000, 0);
        let (row, g) = lease(QuotaRow::new(&r), &r);
        assert_eq!((g.granted, row.level), (10_000, 0));
        // Six seconds refill one request of ten per minute.
        let (row, g) = lease(row, &req(1_000, 1_000, 5_999));
        assert_eq!(g.granted, 0);
        let (row, g) = lease(row, &req(1_000, 1_000, 6_000));
        assert_eq!(g.granted, 1_000);
        let row = give_back(row, 3_000, 6_000);
        assert_eq!(row.level, 3_000);
        assert_eq!(give_back(row, 50_000, 6_000).level, 10_000);
    }

    #[test]
    fn a_budget_is_overspent_by_at_most_the_need_of_the_last_grant() {
        let b = |need, now_ms| LeaseRequest {
            name: "b".into(),
            cap: 1_000,
            per_minute: 0,
            initial: 1_000,
            need,
            threshold: 1,
            unit: 1,
            expires_ms: 0,
            now_ms,
        };
        let (row, g) = lease(QuotaRow::new(&b(100, 0)), &b(100, 0));
        assert_eq!((g.granted, row.level), (250, 750));
        let row = QuotaRow { level: 50, ..row };
        let (row, g) = lease(row, &b(100, 1_000_000));
        assert_eq!((g.granted, row.level), (100, -50));
        let (_, g) = lease(row, &b(1, 2_000_000));
        assert_eq!(g.granted, 0, "a budget does not refill");
    }

    #[test]
    fn a_changed_limit_moves_the_level_by_the_difference() {
        let r = req(1_000, 1_000, 0);
        let row = QuotaRow {
            level: 2_000,
            ..QuotaRow::new(&r)
        };
        let raised = LeaseRequest {
            cap: 20_000,
            ..r.clone()
        };
        let (row, g) = lease(row, &raised);
        assert_eq!(g.level, 12_000);
        assert_eq!(row.cap, 20_000);
        let lowered = LeaseRequest { cap: 5_000, ..r };
        let (_, g) = lease(row, &lowered);
        assert_eq!(g.granted, 0, "{g:?}");
    }
}
