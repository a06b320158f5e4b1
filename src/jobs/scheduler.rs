//! The cron scheduler: on each tick of a configured schedule it enqueues a job of the
//! configured kind, and the workers run it.
//!
//! Scheduled work goes through the durable queue rather than running inside the tick, so
//! it gets the same retries, dead letters and metrics as everything else, and a slow job
//! never delays other schedules. This module must not run job logic itself, and must not
//! swallow a refused enqueue: a full queue is logged as an error on every tick.

use super::queue::{EnqueueOptions, Queue, WeakQueue};
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};

/// The kind of the periodic housekeeping job (the server registers its handler).
pub const HOUSEKEEPING: &str = "housekeeping";
/// Housekeeping runs every 10 minutes unless configured otherwise.
pub const DEFAULT_HOUSEKEEPING_CRON: &str = "0 */10 * * * *";

/// One schedule: on every tick of `cron`, enqueue a `kind` job with `payload`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleEntry {
    /// Names the schedule in logs and errors, e.g. `"backup"`.
    pub name: String,
    /// Six fields, seconds first: `sec min hour day-of-month month day-of-week`.
    pub cron: String,
    pub kind: String,
    pub payload: serde_json::Value,
}

impl ScheduleEntry {
    /// The default housekeeping schedule.
    pub fn housekeeping() -> Self {
        Self {
            name: HOUSEKEEPING.to_owned(),
            cron: DEFAULT_HOUSEKEEPING_CRON.to_owned(),
            kind: HOUSEKEEPING.to_owned(),
            payload: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("schedule '{name}' has an invalid cron expression: {reason}")]
    InvalidCron { name: String, reason: String },
    #[error("the job scheduler failed: {0}")]
    Scheduler(String),
}

impl From<tokio_cron_scheduler::JobSchedulerError> for SchedulerError {
    fn from(e: tokio_cron_scheduler::JobSchedulerError) -> Self {
        Self::Scheduler(e.to_string())
    }
}

/// When `expr` next fires after `after` (UTC, as the scheduler reads it), or `None` for an
/// expression it would refuse. For the console ("first backup at 03:00").
pub fn next_tick(
    expr: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .ok()?
        .find_next_occurrence(&after, false)
        .ok()
}

/// A running scheduler; call [`SchedulerHandle::shutdown`] to stop it.
pub struct SchedulerHandle {
    scheduler: JobScheduler,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle").finish_non_exhaustive()
    }
}

impl SchedulerHandle {
    /// Stops ticking. Jobs already enqueued stay in the queue.
    pub async fn shutdown(mut self) -> Result<(), SchedulerError> {
        Ok(self.scheduler.shutdown().await?)
    }
}

/// Arbitrates scheduled runs between instances sharing one database: a run is queued
/// only by the instance that claims it (see `Store::claim_scheduled_run`).
#[derive(Clone)]
pub struct Claimer {
    pub store: crate::store::DynStore,
    /// This process, for the claim's record.
    pub instance: String,
}

impl Claimer {
    /// Whether this instance runs the firing of `name` now. The slot is the firing time
    /// rounded to the second, which every instance's scheduler agrees on. A store that
    /// cannot answer does not stop the run: better twice than never.
    async fn claim(&self, name: &str) -> bool {
        let slot = (crate::domain::Timestamp::now().millis() + 500).div_euclid(1000);
        let (store, n, me) = (self.store.clone(), name.to_owned(), self.instance.clone());
        match crate::store::run_blocking(move || store.claim_scheduled_run(&n, slot, &me)).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(schedule = %name, error = %e, "cannot claim the scheduled run; running it here");
                true
            }
        }
    }
}

/// Validates every entry, then starts ticking. Nothing is scheduled if any entry is
/// invalid.
pub async fn start_scheduler(
    queue: Queue,
    entries: Vec<ScheduleEntry>,
    claimer: Option<Claimer>,
) -> Result<SchedulerHandle, SchedulerError> {
    for entry in &entries {
        crate::config::values::validate_cron(&entry.cron).map_err(|reason| {
            SchedulerError::InvalidCron {
                name: entry.name.clone(),
                reason,
            }
        })?;
    }
    let scheduler = JobScheduler::new().await?;
    for entry in entries {
        // Weak: the cron library keeps its job closures after shutdown.
        let queue = queue.downgrade();
        let (name, cron) = (entry.name.clone(), entry.cron.clone());
        let claimer = claimer.clone();
        let job = CronJob::new_async(cron.as_str(), move |_, _| {
            let queue = queue.clone();
            let entry = entry.clone();
            let claimer = claimer.clone();
            Box::pin(async move {
                if let Some(c) = claimer
                    && !c.claim(&entry.name).await
                {
                    tracing::debug!(schedule = %entry.name, "another instance runs this one");
                    return;
                }
                tick(queue, entry).await
            })
        })
        .map_err(|e| SchedulerError::InvalidCron {
            name,
            reason: e.to_string(),
        })?;
        scheduler.add(job).await?;
    }
    scheduler.start().await?;
    Ok(SchedulerHandle { scheduler })
}

async fn tick(queue: WeakQueue, entry: ScheduleEntry) {
    let Some(queue) = queue.upgrade() else {
        return; // the server is shutting down
    };
    let ScheduleEntry {
        name,
        kind,
        payload,
        ..
    } = entry;
    // enqueue waits for the disk flush; keep that off the runtime's worker threads.
    let kind_for_enqueue = kind.clone();
    let result = tokio::task::spawn_blocking(move || {
        queue.enqueue(&kind_for_enqueue, payload, EnqueueOptions::default())
    })
    .await;
    match result {
        Ok(Ok(id)) => {
            tracing::debug!(schedule = %name, kind = %kind, job = %id, "scheduled job enqueued")
        }
        Ok(Err(e)) => {
            tracing::error!(schedule = %name, kind = %kind, error = %e, "scheduled job was not enqueued")
        }
        Err(e) => {
            tracing::error!(schedule = %name, kind = %kind, error = %e, "scheduled enqueue did not finish")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::queue::QueueLimits;
    use std::time::Duration;

    #[test]
    fn validate_cron_accepts_six_field_expressions() {
        crate::config::values::validate_cron(DEFAULT_HOUSEKEEPING_CRON).unwrap();
        crate::config::values::validate_cron("0 0 3 * * *").unwrap();
        crate::config::values::validate_cron("*/5 * * * * Mon-Fri").unwrap();
    }

    #[test]
    fn the_next_tick_of_a_daily_schedule_is_the_next_such_time_in_utc() {
        use chrono::TimeZone;
        let at = |h, m| chrono::Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap();
        assert_eq!(next_tick("0 0 3 * * *", at(1, 0)), Some(at(3, 0)));
        assert_eq!(
            next_tick("0 0 3 * * *", at(3, 0)),
            Some(at(3, 0) + chrono::Duration::days(1)),
            "strictly after"
        );
        assert_eq!(next_tick("0 0 3 * *", at(1, 0)), None, "five fields");
        assert_eq!(next_tick("garbage", at(1, 0)), None);
    }

    #[test]
    fn validate_cron_rejects_garbage_and_five_field_expressions() {
        for bad in [
            "",
            "garbage",
            "* * * * *",
            "0 61 * * * *",
            "a b c d e f",
            "0 0 0 * * * * *",
        ] {
            let err = crate::config::values::validate_cron(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_entry_prevents_the_scheduler_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&dir.path().join("queue"), QueueLimits::default()).unwrap();
        let mut entry = ScheduleEntry::housekeeping();
        entry.name = "nightly".to_owned();
        entry.cron = "every night".to_owned();
        let err = start_scheduler(queue, vec![entry], None).await.unwrap_err();
        assert!(err.to_string().contains("schedule 'nightly'"), "{err}");
    }

    // Single-threaded, like the runtime actix-web runs on.
    #[tokio::test]
    async fn a_schedule_every_second_enqueues_jobs_until_shut_down() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&dir.path().join("queue"), QueueLimits::default()).unwrap();
        let entry = ScheduleEntry {
            name: "fast".to_owned(),
            cron: "* * * * * *".to_owned(),
            kind: HOUSEKEEPING.to_owned(),
            payload: serde_json::json!({"sweep": true}),
        };
        let handle = start_scheduler(queue.clone(), vec![entry], None)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while queue.stats().pending < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no jobs were scheduled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handle.shutdown().await.unwrap();

        let job = queue
            .claim(crate::domain::Timestamp::now())
            .unwrap()
            .unwrap();
        assert_eq!(job.kind, HOUSEKEEPING);
        assert_eq!(job.payload, serde_json::json!({"sweep": true}));
    }
}
