//! Per-tenant spend against daily and monthly budgets (UTC), with reservations.
//!
//! Responsible for the budget check of the hot path: before a call goes upstream its
//! estimated cost is *reserved*, so parallel calls see each other's spend and fail closed;
//! when it finishes the reservation is *settled* with the real cost (or kept at the
//! estimate when the real cost is unknown), or *released* if the call never happened. A
//! call is admitted while the tenant's committed spend (settled plus reserved) is below the
//! limit, so however many calls race, the budget is overspent by at most one call's
//! estimate. It reports the first settle of a period that crosses `budget_soft_ratio`.
//!
//! It must not read the store: at start (or after a restart) the proxy seeds each tenant's
//! spend of the current day and month with [`Budgets::seed`]. Periods roll over at UTC
//! midnight and at the first of the month; a reservation is always settled into the period
//! it was made in. A [`Reservation`] dropped without being settled is released, so a
//! cancelled request cannot leak reserved budget.

use super::{Mode, Sharded};
use crate::domain::{Money, TenantId, Timestamp};
use chrono::Datelike;
use serde::Serialize;
use std::sync::Arc;

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Monthly,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }
}

/// A tenant's budgets; `None`: no budget for that period (spend is still tracked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLimits {
    pub daily: Option<Money>,
    pub monthly: Option<Money>,
    /// The fraction of a budget whose crossing is reported (0.8 = 80 %).
    pub soft_ratio: f64,
}

/// The call would start while the budget is already used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {} budget is used up: {spent} committed of {limit}", period.as_str())]
pub struct BudgetExceeded {
    pub period: BudgetPeriod,
    /// Settled plus reserved spend of the period.
    pub spent: Money,
    pub limit: Money,
}

/// A settle took the period's spend past the soft ratio of its budget (reported once per
/// period).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SoftLimitCrossed {
    pub period: BudgetPeriod,
    pub spent: Money,
    pub limit: Money,
    pub ratio: f64,
}

/// The current spend of a tenant, for status pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpendStatus {
    pub day_spent: Money,
    pub day_reserved: Money,
    pub month_spent: Money,
    pub month_reserved: Money,
}

#[derive(Debug, Clone, Copy, Default)]
struct Period {
    start: i64,
    spent: i64,
    reserved: i64,
    soft_reported: bool,
}

impl Period {
    fn fresh(start: i64) -> Self {
        Self {
            start,
            ..Self::default()
        }
    }

    fn committed(&self) -> Money {
        Money::from_nanos(self.spent.saturating_add(self.reserved))
    }

    fn unreserve(&mut self, amount: i64) {
        self.reserved = self.reserved.saturating_sub(amount).max(0);
    }
}

#[derive(Debug, Clone, Copy)]
struct Spend {
    day: Period,
    month: Period,
}

impl Spend {
    fn new(now_ms: i64) -> Self {
        Self {
            day: Period::fresh(day_start(now_ms)),
            month: Period::fresh(month_start(now_ms)),
        }
    }

    /// Moves to the periods containing `now`; a clock stepping back never reopens a
    /// finished period.
    fn roll(&mut self, now_ms: i64) {
        let day = day_start(now_ms);
        if day > self.day.start {
            self.day = Period::fresh(day);
            let month = month_start(now_ms);
            if month > self.month.start {
                self.month = Period::fresh(month);
            }
        }
    }

    /// Reserves `amount` if neither budget is used up: the periods' starts and their
    /// committed spend before this call.
    fn reserve(
        &mut self,
        amount: i64,
        limits: BudgetLimits,
        now_ms: i64,
    ) -> Result<(i64, i64, Money, Money), BudgetExceeded> {
        self.roll(now_ms);
        for (p, limit, period) in [
            (&self.day, limits.daily, BudgetPeriod::Daily),
            (&self.month, limits.monthly, BudgetPeriod::Monthly),
        ] {
            if let Some(limit) = limit
                && p.committed() >= limit
            {
                return Err(BudgetExceeded {
                    period,
                    spent: p.committed(),
                    limit,
                });
            }
        }
        let before = (self.day.committed(), self.month.committed());
        self.day.reserved = self.day.reserved.saturating_add(amount);
        self.month.reserved = self.month.reserved.saturating_add(amount);
        Ok((self.day.start, self.month.start, before.0, before.1))
    }
}

impl BudgetLimits {
    /// The budgets of a policy.
    pub fn of(policy: &crate::domain::PolicyConfig) -> Self {
        Self {
            daily: policy.budget_daily_usd.map(Money::from_usd),
            monthly: policy.budget_monthly_usd.map(Money::from_usd),
            soft_ratio: policy.budget_soft_ratio,
        }
    }
}

/// A proposed budget that the period's spend already reaches: once saved, it stops every
/// call of the tenant until the period ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStop {
    pub period: BudgetPeriod,
    pub limit_usd: f64,
    /// The period's spend so far.
    pub spent_usd: f64,
    /// When the period ends and calls pass again (unless the budget is raised first).
    pub until: Timestamp,
    pub message: String,
}

/// The budgets of `proposed` that `day_spent` and `month_spent` (above zero) already reach at `now`,
/// leaving out a budget `current` already has at the same or a lower limit (the tenant is
/// stopped by it already, or would be by the current one).
pub fn stops_at_once(
    current: BudgetLimits,
    proposed: BudgetLimits,
    day_spent: Money,
    month_spent: Money,
    now: Timestamp,
) -> Vec<BudgetStop> {
    let day = day_start(now.millis());
    let month = month_start(now.millis());
    [
        (BudgetPeriod::Daily, current.daily, proposed.daily, day_spent, day + DAY_MS, "today"),
        (
            BudgetPeriod::Monthly,
            current.monthly,
            proposed.monthly,
            month_spent,
            month_start(month + 32 * DAY_MS),
            "this month",
        ),
    ]
    .into_iter()
    .filter_map(|(period, current, limit, spent, until, when)| {
        let limit = limit?;
        // A budget of zero before any spend reads as what it is, no spending at all.
        if spent < limit || spent == Money::ZERO || current.is_some_and(|c| c <= limit) {
            return None;
        }
        let ends = chrono::DateTime::from_timestamp_millis(until)
            .map_or_else(|| until.to_string(), |d| d.format("%Y-%m-%d %H:%M").to_string());
        Some(BudgetStop {
            period,
            limit_usd: limit.usd(),
            spent_usd: spent.usd(),
            until: Timestamp::from_millis(until),
            message: format!(
                "the {} budget of {} is not above the {} spent {when}: saving it stops every call of this tenant until {ends} UTC, unless the budget is raised first",
                period.as_str(),
                limit.readable(),
                spent.readable(),
            ),
        })
    })
    .collect()
}

/// The start of the current UTC day and month at `now`: what a budget's spend counts from.
pub fn period_starts(now: Timestamp) -> (Timestamp, Timestamp) {
    (
        Timestamp::from_millis(day_start(now.millis())),
        Timestamp::from_millis(month_start(now.millis())),
    )
}

fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

fn month_start(ms: i64) -> i64 {
    chrono::DateTime::from_timestamp_millis(ms)
        .and_then(|d| d.date_naive().with_day(1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or_else(|| day_start(ms), |d| d.and_utc().timestamp_millis())
}

type Spends = Sharded<TenantId, Spend>;

/// Spend of every tenant; cheap to share (`Send + Sync`).
pub struct Budgets {
    spends: Arc<Spends>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new()
    }
}

/// Budget held for one call until it is settled or released.
#[must_use = "a reservation holds budget until it is settled or released"]
#[derive(Debug)]
pub struct Reservation {
    /// `None` once settled or released, and from the start in [`Mode::Peek`].
    spends: Option<Arc<Spends>>,
    tenant: TenantId,
    amount: i64,
    day_start: i64,
    month_start: i64,
    limits: BudgetLimits,
    day_committed: Money,
    month_committed: Money,
}

impl Reservation {
    /// The reserved (estimated) cost.
    pub fn amount(&self) -> Money {
        Money::from_nanos(self.amount)
    }

    /// Settled plus reserved spend of the period when this call was admitted, this call
    /// not included.
    pub fn committed_before(&self, period: BudgetPeriod) -> Money {
        match period {
            BudgetPeriod::Daily => self.day_committed,
            BudgetPeriod::Monthly => self.month_committed,
        }
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// The start of the period the call was admitted in (its spend counts there).
    pub fn period_start(&self, period: BudgetPeriod) -> Timestamp {
        Timestamp::from_millis(match period {
            BudgetPeriod::Daily => self.day_start,
            BudgetPeriod::Monthly => self.month_start,
        })
    }

    fn finish(&mut self, actual: Option<Money>) -> Option<SoftLimitCrossed> {
        let spends = self.spends.take()?;
        let actual = actual.map_or(self.amount, Money::nanos);
        let (amount, day, month, limits) =
            (self.amount, self.day_start, self.month_start, self.limits);
        spends
            .update(&self.tenant, |s| {
                let mut crossed = None;
                for (p, start, limit, period) in [
                    (&mut s.day, day, limits.daily, BudgetPeriod::Daily),
                    (&mut s.month, month, limits.monthly, BudgetPeriod::Monthly),
                ] {
                    if p.start != start {
                        // The period rolled over since: this call belongs to the finished one.
                        continue;
                    }
                    p.unreserve(amount);
                    p.spent = p.spent.saturating_add(actual);
                    if let Some(limit) = limit
                        && crossed.is_none()
                        && !p.soft_reported
                        && limit.nanos() > 0
                        && p.spent as f64 >= limits.soft_ratio * limit.nanos() as f64
                    {
                        p.soft_reported = true;
                        crossed = Some(SoftLimitCrossed {
                            period,
                            spent: Money::from_nanos(p.spent),
                            limit,
                            ratio: limits.soft_ratio,
                        });
                    }
                }
                crossed
            })
            .flatten()
    }

    fn release_now(&mut self) {
        let Some(spends) = self.spends.take() else {
            return;
        };
        let (amount, day, month) = (self.amount, self.day_start, self.month_start);
        spends.update(&self.tenant, |s| {
            if s.day.start == day {
                s.day.unreserve(amount);
            }
            if s.month.start == month {
                s.month.unreserve(amount);
            }
        });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release_now();
    }
}

impl Budgets {
    pub fn new() -> Self {
        Self {
            // Tenants are few and each needs its spend kept: no eviction.
            spends: Arc::new(Sharded::new(usize::MAX)),
        }
    }

    /// Reserves `estimate` for a call of `tenant` if neither budget is used up yet
    /// ([`Mode::Charge`]); in [`Mode::Peek`] the same answer, worked out on a copy of the
    /// tenant's spend, and a reservation that holds nothing.
    pub fn admit(
        &self,
        tenant: &TenantId,
        estimate: Money,
        limits: BudgetLimits,
        now: Timestamp,
        mode: Mode,
    ) -> Result<Reservation, BudgetExceeded> {
        let now_ms = now.millis();
        let amount = estimate.nanos().max(0);
        let fresh = || Spend::new(now_ms);
        let reserve = |s: &mut Spend| s.reserve(amount, limits, now_ms);
        let (day_start, month_start, day_committed, month_committed) = match mode {
            Mode::Charge => self.spends.with(tenant, |_| false, |_| 0, fresh, reserve)?,
            Mode::Peek => reserve(&mut self.spends.update(tenant, |s| *s).unwrap_or_else(fresh))?,
        };
        Ok(Reservation {
            spends: (mode == Mode::Charge).then(|| Arc::clone(&self.spends)),
            tenant: tenant.clone(),
            amount,
            day_start,
            month_start,
            limits,
            day_committed,
            month_committed,
        })
    }

    /// Turns a reservation into spend: the real cost, or the estimate when the real cost
    /// is unknown (an unknown price must not make a call free). Returns the soft-threshold
    /// crossing this settle caused, if it is the first of its period.
    pub fn settle(
        &self,
        mut reservation: Reservation,
        actual: Option<Money>,
    ) -> Option<SoftLimitCrossed> {
        reservation.finish(actual)
    }

    /// Gives a reservation back: the call never reached the upstream.
    pub fn release(&self, mut reservation: Reservation) {
        reservation.release_now();
    }

    /// Brings the tenant's settled spend of the current day and month up to the store's
    /// figures. Spend never goes down within a period, and calls settled here may not be
    /// committed yet when the store was read (a policy re-applied by the change feed in
    /// the middle of a burst), so the larger figure wins. Reservations in flight are kept.
    pub fn seed(&self, tenant: &TenantId, day_spend: Money, month_spend: Money, now: Timestamp) {
        let now_ms = now.millis();
        self.spends.with(
            tenant,
            |_| false,
            |_| 0,
            || Spend::new(now_ms),
            |s| {
                s.roll(now_ms);
                s.day.spent = s.day.spent.max(day_spend.nanos());
                s.month.spent = s.month.spent.max(month_spend.nanos());
            },
        );
    }

    /// The tenant's spend in the periods containing `now`.
    pub fn status(&self, tenant: &TenantId, now: Timestamp) -> SpendStatus {
        let now_ms = now.millis();
        let mut out = SpendStatus::default();
        self.spends.update(tenant, |s| {
            s.roll(now_ms);
            out = SpendStatus {
                day_spent: Money::from_nanos(s.day.spent),
                day_reserved: Money::from_nanos(s.day.reserved),
                month_spent: Money::from_nanos(s.month.spent),
                month_reserved: Money::from_nanos(s.month.reserved),
            };
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Mode::Charge;
    use std::sync::Barrier;

    fn usd(v: f64) -> Money {
        Money::from_usd(v)
    }

    fn limits(daily: Option<f64>, monthly: Option<f64>) -> BudgetLimits {
        BudgetLimits {
            daily: daily.map(usd),
            monthly: monthly.map(usd),
            soft_ratio: 0.8,
        }
    }

    /// 2026-03-31T12:00:00Z.
    const NOON: i64 = 1_774_958_400_000;

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    /// Empty budgets and a tenant.
    fn budgets() -> (Budgets, TenantId) {
        (Budgets::new(), TenantId::generate())
    }

    #[test]
    fn period_starts_are_utc_midnight_and_the_first_of_the_month() {
        assert_eq!(day_start(NOON), NOON - 12 * 3_600_000);
        assert_eq!(
            Timestamp::from_millis(month_start(NOON)).to_rfc3339(),
            "2026-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn calls_pass_until_committed_spend_reaches_the_limit() {
        let (b, t) = budgets();
        let l = limits(Some(1.0), None);
        let r = b.admit(&t, usd(0.6), l, ts(NOON), Charge).unwrap();
        assert_eq!(r.committed_before(BudgetPeriod::Daily), Money::ZERO);
        // Reserved spend counts: 0.6 < 1.0, so one more is admitted...
        let r2 = b.admit(&t, usd(0.6), l, ts(NOON), Charge).unwrap();
        assert_eq!(r2.committed_before(BudgetPeriod::Daily), usd(0.6));
        // ...and then the budget is committed.
        let e = b.admit(&t, usd(0.01), l, ts(NOON), Charge).unwrap_err();
        assert_eq!(e.period, BudgetPeriod::Daily);
        assert_eq!((e.spent, e.limit), (usd(1.2), usd(1.0)));
        b.release(r2);
        let _ = b.settle(r, Some(usd(0.1)));
        assert_eq!(b.status(&t, ts(NOON)).day_spent, usd(0.1));
        assert_eq!(b.status(&t, ts(NOON)).day_reserved, Money::ZERO);
        b.release(b.admit(&t, usd(0.5), l, ts(NOON), Charge).unwrap());
    }

    #[test]
    fn an_unknown_actual_cost_keeps_the_estimate() {
        let (b, t) = budgets();
        let r = b
            .admit(&t, usd(0.3), limits(None, None), ts(NOON), Charge)
            .unwrap();
        let _ = b.settle(r, None);
        assert_eq!(b.status(&t, ts(NOON)).day_spent, usd(0.3));
    }

    #[test]
    fn a_dropped_reservation_is_released() {
        let (b, t) = budgets();
        drop(
            b.admit(&t, usd(5.0), limits(Some(1.0), None), ts(NOON), Charge)
                .unwrap(),
        );
        assert_eq!(b.status(&t, ts(NOON)), SpendStatus::default());
    }

    #[test]
    fn a_stale_store_figure_never_lowers_the_spend_settled_here() {
        let (b, t) = budgets();
        let l = limits(Some(1.0), None);
        let r = b.admit(&t, usd(0.6), l, ts(NOON), Charge).unwrap();
        let _ = b.settle(r, Some(usd(0.6)));
        // The store was read before that call was committed: it says 0.2.
        b.seed(&t, usd(0.2), usd(0.2), ts(NOON));
        assert_eq!(b.status(&t, ts(NOON)).day_spent, usd(0.6));
        // Another instance spent more: the store's figure wins, and the budget is used up.
        b.seed(&t, usd(1.0), usd(1.0), ts(NOON));
        assert_eq!(b.status(&t, ts(NOON)).day_spent, usd(1.0));
        assert!(b.admit(&t, usd(0.1), l, ts(NOON), Charge).is_err());
        b.seed(&t, usd(0.0), usd(0.0), ts(NOON));
        assert!(
            b.admit(&t, usd(0.1), l, ts(NOON), Charge).is_err(),
            "still used up"
        );
    }

    #[test]
    fn the_monthly_budget_is_checked_too() {
        let (b, t) = budgets();
        b.seed(&t, usd(0.0), usd(50.0), ts(NOON));
        let l = limits(Some(10.0), Some(50.0));
        let e = b.admit(&t, usd(0.1), l, ts(NOON), Charge).unwrap_err();
        assert_eq!(e.period, BudgetPeriod::Monthly);
        assert_eq!(e.spent, usd(50.0));
    }

    #[test]
    fn spend_resets_at_utc_midnight_and_at_the_month_start() {
        let (b, t) = budgets();
        let l = limits(Some(1.0), Some(100.0));
        b.seed(&t, usd(1.0), usd(20.0), ts(NOON));
        assert!(b.admit(&t, usd(0.1), l, ts(NOON), Charge).is_err());
        // 2026-03-31T23:59:59.999Z is still the same day.
        let last_ms = day_start(NOON) + DAY_MS - 1;
        assert!(b.admit(&t, usd(0.1), l, ts(last_ms), Charge).is_err());
        // Midnight: a new day, and (31 March → 1 April) a new month.
        let r = b.admit(&t, usd(0.1), l, ts(last_ms + 1), Charge).unwrap();
        assert_eq!(r.committed_before(BudgetPeriod::Daily), Money::ZERO);
        assert_eq!(r.committed_before(BudgetPeriod::Monthly), Money::ZERO);
        let _ = b.settle(r, Some(usd(0.1)));
        // The next midnight starts a new day but not a new month.
        let s = b.status(&t, ts(last_ms + 1 + DAY_MS));
        assert_eq!((s.day_spent, s.month_spent), (Money::ZERO, usd(0.1)));
    }

    #[test]
    fn a_call_settled_after_midnight_counts_in_the_day_it_started() {
        let (b, t) = budgets();
        let l = limits(Some(1.0), None);
        let r = b.admit(&t, usd(0.5), l, ts(NOON), Charge).unwrap();
        let tomorrow = NOON + DAY_MS;
        b.admit(&t, usd(0.2), l, ts(tomorrow), Charge)
            .unwrap()
            .release_now();
        let _ = b.settle(r, Some(usd(0.5)));
        let s = b.status(&t, ts(tomorrow));
        assert_eq!((s.day_spent, s.day_reserved), (Money::ZERO, Money::ZERO));
        assert_eq!(
            s.month_spent,
            Money::ZERO,
            "March's call is not April's spend"
        );
    }

    #[test]
    fn the_soft_threshold_is_reported_once_per_period() {
        let (b, t) = budgets();
        let l = limits(Some(1.0), None);
        let r = b.admit(&t, usd(0.5), l, ts(NOON), Charge).unwrap();
        assert_eq!(b.settle(r, Some(usd(0.5))), None);
        let r = b.admit(&t, usd(0.5), l, ts(NOON), Charge).unwrap();
        let crossed = b.settle(r, Some(usd(0.35))).unwrap();
        assert_eq!(crossed.period, BudgetPeriod::Daily);
        assert_eq!((crossed.spent, crossed.limit), (usd(0.85), usd(1.0)));
        let r = b.admit(&t, usd(0.1), l, ts(NOON), Charge).unwrap();
        assert_eq!(b.settle(r, Some(usd(0.1))), None);
        // A new day reports again.
        let r = b.admit(&t, usd(0.9), l, ts(NOON + DAY_MS), Charge).unwrap();
        assert!(b.settle(r, Some(usd(0.9))).is_some());
    }

    #[test]
    fn fifty_parallel_calls_overspend_by_at_most_one_estimate() {
        let (b, t) = budgets();
        let (estimate, limit) = (usd(0.10), usd(1.05));
        let l = limits(Some(1.05), None);
        let barrier = Barrier::new(50);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..50)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        match b.admit(&t, estimate, l, ts(NOON), Charge) {
                            Ok(r) => {
                                let _ = b.settle(r, Some(estimate));
                                1
                            }
                            Err(_) => 0,
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let spent = b.status(&t, ts(NOON)).day_spent;
        assert_eq!(admitted, 11, "committed 0.0, 0.1, … 1.0 are below 1.05");
        assert!(spent <= limit.saturating_add(estimate), "{spent}");
        assert_eq!(spent, usd(1.1));
    }

    #[test]
    fn fifty_parallel_reservations_held_at_once_are_admitted_only_up_to_the_limit() {
        let (b, t) = budgets();
        let l = limits(Some(1.0), Some(1.0));
        let barrier = Barrier::new(50);
        let held: Vec<Reservation> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..50)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        b.admit(&t, usd(0.25), l, ts(NOON), Charge).ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 4);
        assert_eq!(b.status(&t, ts(NOON)).day_reserved, usd(1.0));
        for r in held {
            b.release(r);
        }
        assert_eq!(b.status(&t, ts(NOON)).day_reserved, Money::ZERO);
    }

    #[test]
    fn a_budget_the_spend_already_reaches_is_reported_with_when_calls_pass_again() {
        // 2026-12-07 15:00 UTC
        let now = Timestamp::from_millis(1_796_655_600_000);
        let (spent_day, spent_month) = (Money::from_usd(7.0), Money::from_usd(40.0));
        let stops =
            |current, proposed| stops_at_once(current, proposed, spent_day, spent_month, now);
        let none = limits(None, None);
        let day = stops(none, limits(Some(5.0), Some(100.0)));
        assert_eq!(day.len(), 1, "{day:?}");
        let s = &day[0];
        assert_eq!(
            (s.period, s.limit_usd, s.spent_usd),
            (BudgetPeriod::Daily, 5.0, 7.0)
        );
        assert_eq!(s.until.to_rfc3339(), "2026-12-08T00:00:00.000Z");
        assert!(
            s.message
                .contains("daily budget of $5.00 is not above the $7.00 spent today")
                && s.message.contains("until 2026-12-08 00:00 UTC"),
            "{}",
            s.message
        );

        let month = stops(none, limits(None, Some(40.0)));
        assert_eq!(month.len(), 1);
        assert_eq!(month[0].until.to_rfc3339(), "2027-01-01T00:00:00.000Z");

        // Below the spend, nothing to say; a budget already in force at that limit or a
        // lower one stops the tenant already.
        assert!(stops(none, limits(Some(7.5), None)).is_empty());
        let current = limits(Some(5.0), None);
        assert!(stops(current, limits(Some(5.0), None)).is_empty());
        assert!(stops(current, limits(Some(6.0), None)).is_empty());
        assert_eq!(stops(limits(Some(9.0), None), current).len(), 1);
    }
}
