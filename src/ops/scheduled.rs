//! The scheduled backup, its upload and its weekly check, run by the job queue (the
//! scheduler queues them by cron; "back up now" queues the backup job too). With
//! `backup_s3_*` set, a backup written queues an `upload_backup` job, so a slow or failing
//! upload never holds up or fails the backup: it is retried with backoff, then
//! dead-lettered. A backup or an upload that fails for good, or a backup that does not
//! verify, raises a system alert to the operator.

use crate::config::Settings;
use crate::domain::alert::SystemAlert;
use crate::domain::certificate::CertSigningKey;
use crate::incidents::alerts::Alerts;
use crate::jobs::{Job, Queue};
use crate::store::DynStore;
use crate::store::run_blocking;
use std::sync::Arc;

pub const BACKUP: &str = "backup";
pub const BACKUP_VERIFY: &str = "backup_verify";
pub const UPLOAD_BACKUP: &str = "upload_backup";
/// The system checks these jobs raise.
pub const BACKUP_FAILED: &str = "backup_failed";
pub const BACKUP_VERIFY_FAILED: &str = "backup_verify_failed";
pub const BACKUP_UPLOAD_FAILED: &str = "backup_upload_failed";

/// What the backup jobs work with.
pub struct Backups {
    pub store: DynStore,
    pub settings: Arc<Settings>,
    pub signing_key: CertSigningKey,
    /// Raises the system alerts of a failed backup, upload or check.
    pub alerts: Arc<Alerts>,
    /// Takes the upload job of a backup just written.
    pub queue: Queue,
}

fn alert(state: &Backups, check: &'static str, message: String) {
    state.alerts.raise_system(&SystemAlert {
        check,
        message,
        value: 1.0,
        threshold: 0.0,
    });
}

/// Counts a failed attempt of `job` in `counter`; its last attempt also raises `check`.
fn failed(state: &Backups, job: &Job, (counter, check): (&'static str, &'static str), why: String) {
    metrics::counter!(counter).increment(1);
    if job.attempts >= job.max_attempts {
        alert(state, check, why);
    }
}

/// Takes a backup into the backup directory, then deletes the ones the keep rule lets go.
pub async fn backup(state: Arc<Backups>, job: Job) -> Result<(), String> {
    let (store, settings, key) = (
        state.store.clone(),
        state.settings.clone(),
        state.signing_key.clone(),
    );
    let started = std::time::Instant::now();
    let done = run_blocking(move || {
        let done = crate::ops::backup::create(
            &store,
            None,
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
            if state.settings.backup_s3.is_some() {
                queue_upload(&state, &done.path);
            }
            Ok(())
        }
        Err(e) => {
            let why = format!("the scheduled backup failed: {e}");
            let backup = ("agv_backup_failures_total", BACKUP_FAILED);
            failed(&state, &job, backup, why);
            Err(e)
        }
    }
}

/// Checks the newest backup by restoring it into a temporary database.
pub async fn verify(state: Arc<Backups>, _job: Job) -> Result<(), String> {
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

/// Queues the upload of a backup just written. A queue that refuses the job (full) is
/// reported as a failed upload: the backup itself stands.
fn queue_upload(state: &Backups, path: &std::path::Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let options = crate::jobs::EnqueueOptions {
        max_attempts: state.settings.backup_s3_upload_attempts,
        run_at: None,
    };
    match state
        .queue
        .enqueue(UPLOAD_BACKUP, serde_json::json!({"file": name}), options)
    {
        Ok(id) => tracing::info!(job = %id, file = %name, "backup upload queued"),
        Err(e) => {
            metrics::counter!("agv_backup_upload_failures_total").increment(1);
            tracing::error!(file = %name, error = %e, "cannot queue the backup's upload");
            alert(
                state,
                BACKUP_UPLOAD_FAILED,
                format!("the backup {name} was written but its upload could not be queued: {e}"),
            );
        }
    }
}

/// Uploads one backup of the backup directory to the bucket, then applies the keep rule to
/// the remote copies. Payload: `{"file": "agv-backup-….tar"}` (a name, never a path).
pub async fn upload(state: Arc<Backups>, job: Job) -> Result<(), String> {
    let name = job
        .payload
        .get("file")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && !n.starts_with('.'))
        .ok_or_else(|| {
            "the upload job names no backup file ({\"file\": \"agv-backup-….tar\"}); discard it"
                .to_owned()
        })?
        .to_owned();
    let Some(cfg) = state.settings.backup_s3.clone() else {
        tracing::warn!(file = %name, "backup upload skipped: backup_s3_endpoint and backup_s3_bucket are no longer set");
        return Ok(());
    };
    let path = state.settings.backup_dir.join(&name);
    if !path.is_file() {
        // Deleted before its upload: by the keep rule, when a newer backup of the same day
        // replaced it (that one has its own upload job), or by hand. No retry can help.
        tracing::warn!(file = %name, dir = %state.settings.backup_dir.display(), "backup upload skipped: the file is no longer in the backup directory (a newer backup of the day replaced it, or it was deleted)");
        return Ok(());
    }
    let started = std::time::Instant::now();
    let result = async {
        let remote = crate::ops::s3::Remote::new(&cfg)?;
        let up = remote.upload(&path, None).await?;
        Ok::<_, String>((remote, up))
    }
    .await;
    match result {
        Ok((remote, up)) => {
            metrics::gauge!("agv_backup_last_upload_timestamp_seconds")
                .set(chrono::Utc::now().timestamp() as f64);
            tracing::info!(key = %up.key, bytes = up.bytes, seconds = started.elapsed().as_secs_f64(), location = %remote.location(), "backup uploaded");
            // The keep rule's failure does not undo the upload; it runs again next time.
            match remote
                .prune(
                    state.settings.backup_keep_daily,
                    state.settings.backup_keep_weekly,
                )
                .await
            {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(deleted = deleted.len(), "old remote backup copies deleted");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete old remote backup copies");
                }
            }
            Ok(())
        }
        Err(e) => {
            let why = format!(
                "the backup {name} could not be uploaded to {} after {} attempts (it is kept locally): {e}",
                cfg.location(),
                job.attempts
            );
            let upload = ("agv_backup_upload_failures_total", BACKUP_UPLOAD_FAILED);
            failed(&state, &job, upload, why);
            Err(e)
        }
    }
}
