//! Call retention: a sweep that removes the request and response bodies of calls older
//! than the retention period, keeping everything else (metadata, tokens, cost, status,
//! decisions, every SHA-256), so the calls still count, still verify in their tenant's
//! chain and are still found by their filters — only not by their text.
//!
//! Run by the scheduler (`retention_cron`, job [`RETENTION`]) and by
//! `agv-server retention run`. The sweep walks the calls oldest first in batches of
//! [`BATCH`], each its own short write transaction (see `store::retention` for what a
//! batch keeps: chain v1 calls, calls of open incidents, certified calls), with a pause
//! between batches so the call recorder and other writers are never held up for long.
//! Blocking: the server runs it through `run_blocking`.

use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::{CallCursor, Timestamp};
use crate::store::{Store, StoreError, run_blocking};
use std::time::Duration;

/// The job kind of the scheduled sweep.
pub const RETENTION: &str = "retention";
/// Calls read per write transaction.
pub const BATCH: u32 = 500;
/// The pause between two batches, which lets other writers in.
pub const PAUSE: Duration = Duration::from_millis(50);
const DAY_MS: i64 = 86_400_000;

/// What a sweep did, so far or in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Bodies of calls created before this time may go; `None`: retention is off (0 days).
    pub cutoff: Option<Timestamp>,
    /// Chain v2 calls older than the cutoff that still held their bodies when the sweep
    /// began (the most it could prune).
    pub candidates: i64,
    pub examined: u64,
    pub pruned: u64,
    /// Kept because an open incident or a certificate refers to them.
    pub protected: u64,
}

/// The time before which call bodies go, `days` before `now`; `None` for 0 (keep forever).
pub fn cutoff(days: u32, now: Timestamp) -> Option<Timestamp> {
    (days > 0)
        .then(|| Timestamp::from_millis(now.millis().saturating_sub(i64::from(days) * DAY_MS)))
}

/// Runs one sweep: removes the bodies of calls older than `days` days (0: nothing), in
/// batches of `batch`, sleeping `pause` between them. `progress` sees the report after
/// each batch. Records `agv_retention_calls_pruned_total` and, when something was
/// pruned, an `instance.retention` entry in the instance's audit log by `actor`.
pub fn sweep(
    store: &dyn Store,
    days: u32,
    now: Timestamp,
    batch: u32,
    pause: Duration,
    actor: Actor,
    progress: &mut dyn FnMut(&SweepReport),
) -> Result<SweepReport, StoreError> {
    let Some(cutoff) = cutoff(days, now) else {
        return Ok(SweepReport::default());
    };
    // On SQLite a batch reads only calls the text indexer has passed (their documents
    // are removed with the bodies): catch it up first, so the sweep reaches every call.
    store.index_pending_calls()?;
    let mut report = SweepReport {
        cutoff: Some(cutoff),
        candidates: store.count_prunable_calls(cutoff)?,
        ..SweepReport::default()
    };
    progress(&report);
    let mut after: Option<CallCursor> = None;
    loop {
        let done = store.prune_call_bodies(cutoff, after.as_ref(), batch, Timestamp::now())?;
        report.examined += done.examined;
        report.pruned += done.pruned;
        report.protected += done.protected;
        metrics::counter!("agv_retention_calls_pruned_total").increment(done.pruned);
        progress(&report);
        let Some(next) = done.next else { break };
        after = Some(next);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    metrics::gauge!("agv_retention_last_run_timestamp_seconds")
        .set(chrono::Utc::now().timestamp() as f64);
    if report.pruned > 0 {
        crate::evidence::audit::record(
            store,
            &NewAuditEntry::new(None, actor, AuditAction::Retention, "calls").after(
                serde_json::json!({
                    "retention_days": days,
                    "cutoff": cutoff.to_rfc3339(),
                    "calls_pruned": report.pruned,
                    "calls_kept_for_incidents_or_certificates": report.protected,
                }),
            ),
        );
    }
    Ok(report)
}

/// The scheduled sweep (job [`RETENTION`]) with the configured `retention_days`.
pub async fn run_job(
    store: crate::store::DynStore,
    days: u32,
    _job: crate::jobs::Job,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let report = run_blocking(move || {
        sweep(
            store.as_ref(),
            days,
            Timestamp::now(),
            BATCH,
            PAUSE,
            Actor::System("retention".into()),
            &mut |_| {},
        )
    })
    .await
    .map_err(|e| format!("the retention sweep failed: {e} — it is retried; the calls it did not reach keep their bodies until then"))?;
    tracing::info!(
        retention_days = days,
        pruned = report.pruned,
        kept = report.protected,
        seconds = started.elapsed().as_secs_f64(),
        "retention sweep done"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_whole_days_back_and_zero_days_keeps_everything() {
        let now = Timestamp::from_millis(100 * DAY_MS);
        assert_eq!(cutoff(0, now), None);
        assert_eq!(cutoff(90, now), Some(Timestamp::from_millis(10 * DAY_MS)));
        assert_eq!(cutoff(1, now), Some(Timestamp::from_millis(99 * DAY_MS)));
    }
}
