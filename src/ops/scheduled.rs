//! The scheduled backup and its weekly check, run by the job queue (the scheduler queues
//! them by cron). A backup that fails for good, or a backup that does not verify, raises a
//! system alert to the operator.

use crate::domain::alert::SystemAlert;
use crate::jobs::Job;
use crate::startup::AppState;
use crate::store::run_blocking;
use actix_web::web;

pub const BACKUP: &str = "backup";
pub const BACKUP_VERIFY: &str = "backup_verify";
/// The system checks these jobs raise.
pub const BACKUP_FAILED: &str = "backup_failed";
pub const BACKUP_VERIFY_FAILED: &str = "backup_verify_failed";

fn last_attempt(job: &Job) -> bool {
    job.attempts >= job.max_attempts
}

fn alert(state: &AppState, check: &'static str, message: String) {
    state.alerts.raise_system(&SystemAlert {
        check,
        message,
        value: 1.0,
        threshold: 0.0,
    });
}

/// Takes a backup into the backup directory, then deletes the ones the keep rule lets go.
pub async fn backup(state: web::Data<AppState>, job: Job) -> Result<(), String> {
    let (store, settings, key) = (
        state.store.clone(),
        state.settings.clone(),
        state.signing_key.clone(),
    );
    let started = std::time::Instant::now();
    let done = run_blocking(move || {
        let done = crate::ops::backup::create(
            &store,
            &settings.data_dir,
            &settings.backup_dir,
            &key,
            settings.backup_passphrase.as_deref(),
            &mut |_, _| {},
        )?;
        let all = crate::ops::backup::list(&settings.backup_dir);
        for old in crate::ops::backup::to_prune(
            &all,
            settings.backup_keep_daily,
            settings.backup_keep_weekly,
        ) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), error = %e, "could not delete an old backup");
            }
        }
        Ok::<_, String>(done)
    })
    .await;
    match done {
        Ok(done) => {
            metrics::gauge!("agv_backup_last_success_timestamp_seconds")
                .set(chrono::Utc::now().timestamp() as f64);
            metrics::gauge!("agv_backup_last_bytes").set(done.bytes as f64);
            tracing::info!(file = %done.path.display(), bytes = done.bytes, seconds = started.elapsed().as_secs_f64(), "backup written");
            Ok(())
        }
        Err(e) => {
            metrics::counter!("agv_backup_failures_total").increment(1);
            if last_attempt(&job) {
                alert(
                    &state,
                    BACKUP_FAILED,
                    format!("the scheduled backup failed: {e}"),
                );
            }
            Err(e)
        }
    }
}

/// Checks the newest backup by restoring it into a temporary database.
pub async fn verify(state: web::Data<AppState>, _job: Job) -> Result<(), String> {
    let settings = state.settings.clone();
    let trusted = state.signing_key.public();
    let outcome = run_blocking(move || {
        // Nothing to check yet (a new instance): not an alarm.
        let Some(newest) = crate::ops::backup::list(&settings.backup_dir)
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let path = newest.0;
        match crate::ops::backup::verify(&path, Some(trusted), &mut |_, _| {}) {
            Ok(_) => Ok(Some(path)),
            Err(e) => Err(format!(
                "the backup {} does not verify: {e}",
                path.display()
            )),
        }
    })
    .await;
    match outcome {
        Ok(None) => {
            tracing::info!("no backup to check yet");
            Ok(())
        }
        Ok(Some(path)) => {
            metrics::gauge!("agv_backup_last_verified_timestamp_seconds")
                .set(chrono::Utc::now().timestamp() as f64);
            tracing::info!(file = %path.display(), "the newest backup verifies");
            Ok(())
        }
        Err(e) => {
            // A backup that does not verify will not verify on a retry: say it now.
            tracing::error!(error = %e, "the newest backup does not verify");
            alert(&state, BACKUP_VERIFY_FAILED, e);
            Ok(())
        }
    }
}
