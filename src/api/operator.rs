//! The operator console's API (`/api/operator/…`, operator role only): instance health,
//! every tenant at a glance, the incidents of all tenants, backups ("back up now", list,
//! verify), the job queue's dead letters and the update state (is a newer signed release
//! out?). It never installs an update: that stays with `agv-server update` or a new image.

use super::access::operator;
use super::audit::{Source, record};
use super::error::{ApiError, optional_json};
use super::names::usd;
use crate::api::state::AppState;
use crate::domain::Timestamp;
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::incident::IncidentFilter;
use crate::error::Code;
use crate::jobs::queue::{EnqueueOptions, JobId};
use crate::store::{StoreError, run_blocking};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;

/// Total size of the files directly in the data directory (the database, its WAL, the
/// search index, keys), plus the job queue's directory.
fn data_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(meta) = e.metadata() {
                if meta.is_file() {
                    total += meta.len();
                } else if meta.is_dir()
                    && e.file_name().to_string_lossy().starts_with("queue")
                    && let Ok(inner) = std::fs::read_dir(e.path())
                {
                    total += inner
                        .flatten()
                        .filter_map(|f| f.metadata().ok())
                        .filter(|m| m.is_file())
                        .map(|m| m.len())
                        .sum::<u64>();
                }
            }
        }
    }
    total
}

fn backups_json(dir: &std::path::Path) -> Vec<Value> {
    crate::ops::backup::list(dir)
        .into_iter()
        .map(|(path, at)| {
            json!({
                "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "at": at.timestamp_millis(),
                "bytes": std::fs::metadata(&path).map(|m| m.len()).ok(),
            })
        })
        .collect()
}

/// The instance's health, as the operator overview and its live stream show it.
pub async fn health_json(state: &AppState) -> Result<Value, ApiError> {
    let now = Timestamp::now().millis();
    let (calls, errors, p95) = state.proxy.health.window(now);
    let stats = state.queue.stats();
    let settings = state.settings.clone();
    let (disk, recent) = run_blocking(move || {
        Ok::<_, StoreError>((
            (
                data_bytes(&settings.data_dir),
                crate::incidents::alerts::disk_used_percent(&settings.data_dir),
            ),
            backups_json(&settings.backup_dir),
        ))
    })
    .await?;
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started_at.elapsed().as_secs(),
        "backend": state.store.backend().as_str(),
        "calls_5m": calls,
        "calls_per_minute": calls as f64 / 5.0,
        "error_rate_5m": if calls == 0 { 0.0 } else { errors as f64 / calls as f64 },
        "latency_p95_ms": p95,
        "queue": {"pending": stats.pending, "running": stats.running, "dead": stats.dead},
        "disk": {"data_bytes": disk.0, "used_percent": disk.1},
        "last_backup": recent.first(),
        "backup_schedule": {
            "cron": state.settings.backup_cron,
            "next_at": state.settings.backup_cron.as_deref()
                .and_then(|c| crate::jobs::scheduler::next_tick(c, chrono::Utc::now()))
                .map(|t| t.timestamp_millis()),
        },
        "update": {"current": env!("CARGO_PKG_VERSION"), "check": "agv-server update --check"},
    }))
}

#[get("/api/operator/health")]
pub async fn health(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    Ok(HttpResponse::Ok().json(health_json(&state).await?))
}

#[get("/api/operator/tenants")]
pub async fn tenants(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let (day_start, _) = crate::guard::budget::period_starts(Timestamp::now());
    let store = state.store.clone();
    let rows = run_blocking(move || {
        let mut out = Vec::new();
        for t in store.list_tenants()? {
            let counts = store.call_counts(&t.id, day_start)?;
            let spend = store.spend_since(&t.id, day_start)?;
            let stats = store.incident_stats(&t.id)?;
            out.push((t, counts, spend, stats));
        }
        Ok::<_, StoreError>(out)
    })
    .await?;
    let ks = state.proxy.guard.killswitch();
    let data: Vec<Value> = rows
        .iter()
        .map(|(t, counts, spend, stats)| {
            let frozen = ks.tenant_status(&t.id);
            json!({
                "id": t.id, "name": t.name, "created_at": t.created_at,
                "frozen": frozen.tenant.is_some(),
                "frozen_keys": frozen.keys.len(),
                "calls_today": counts.total, "blocked_today": counts.blocked,
                "errors_today": counts.upstream_errors,
                "spend_today_usd": spend.usd(),
                "open_incidents": stats.open + stats.acknowledged,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data})))
}

#[get("/api/operator/incidents")]
pub async fn incidents(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let store = state.store.clone();
    let (list, names) = run_blocking(move || {
        let list = store.list_incidents(None, &IncidentFilter::default(), None, 50)?;
        let names: std::collections::HashMap<String, String> = store
            .list_tenants()?
            .into_iter()
            .map(|t| (t.id.to_string(), t.name.as_str().to_owned()))
            .collect();
        Ok::<_, StoreError>((list, names))
    })
    .await?;
    let data: Vec<Value> = list
        .iter()
        .map(|i| {
            let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("tenant_name".into(), json!(names.get(i.tenant_id.as_str())));
                m.insert("cost_usd".into(), json!(usd(i.cost.nanos())));
            }
            v
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data})))
}

fn running_backup(state: &AppState) -> Option<crate::jobs::queue::Job> {
    let id = state.backup_now.job.lock().ok()?.clone()?;
    state.queue.get(&id).ok().flatten().filter(|_| {
        !state
            .queue
            .dead_letters()
            .is_ok_and(|d| d.iter().any(|l| l.job.id == id))
    })
}

#[get("/api/operator/backups")]
pub async fn backups(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let dir = state.settings.backup_dir.clone();
    let list = run_blocking(move || Ok::<_, StoreError>(backups_json(&dir))).await?;
    let running = running_backup(&state);
    Ok(HttpResponse::Ok().json(json!({
        "data": list,
        "dir": state.settings.backup_dir.display().to_string(),
        // Where backups are also uploaded (`s3://bucket/prefix`), or null.
        "upload_to": state.settings.backup_s3.as_ref().map(crate::config::BackupS3::location),
        "running": running.is_some(),
        "last_error": running.and_then(|j| j.last_error),
    })))
}

#[post("/api/operator/backups")]
pub async fn backup_now(
    state: web::Data<AppState>,
    req: HttpRequest,
    source: Source,
) -> Result<HttpResponse, ApiError> {
    let user = operator(&state, &req).await?;
    if running_backup(&state).is_some() {
        return Err(ApiError::new(
            Code::BackupRunning,
            "a backup is already running; wait for it to finish",
        ));
    }
    let id = state
        .queue
        .enqueue(
            crate::ops::scheduled::BACKUP,
            json!({"requested_by": format!("user:{}", user.id)}),
            EnqueueOptions::default(),
        )
        .map_err(|e| ApiError::new(Code::QueueFull, format!("cannot queue the backup: {e}")))?;
    if let Ok(mut g) = state.backup_now.job.lock() {
        *g = Some(id.clone());
    }
    record(
        &state,
        NewAuditEntry::new(
            None,
            Actor::User(user.id.clone()),
            AuditAction::Backup,
            id.as_str(),
        )
        .source(source.0.clone()),
    )
    .await;
    Ok(HttpResponse::Accepted().json(json!({"started": true, "job_id": id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    file: String,
}

#[post("/api/operator/backups/verify")]
pub async fn verify_backup(
    state: web::Data<AppState>,
    req: HttpRequest,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let body = optional_json::<VerifyBody>(&raw)?.ok_or_else(|| {
        ApiError::new(Code::InvalidJson, "send {\"file\": \"agv-backup-….tar\"}").param("file")
    })?;
    // Only a file name in the backup directory: no paths.
    let name = body.file;
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
        return Err(ApiError::new(
            Code::InvalidFile,
            "name a backup file of the list (a file name, not a path)",
        )
        .param("file"));
    }
    let path: PathBuf = state.settings.backup_dir.join(&name);
    if !path.is_file() {
        return Err(ApiError::not_found(format!("no backup {name}")));
    }
    let trusted = state.signing_key.public();
    let outcome = run_blocking(move || {
        Ok::<_, StoreError>(crate::ops::backup::verify(
            &path,
            Some(trusted),
            &mut |_, _| {},
        ))
    })
    .await?;
    Ok(HttpResponse::Ok().json(match outcome {
        Ok((_, counts, _)) => json!({
            "ok": true,
            "counts": counts.into_iter().map(|(t, n)| (t, json!(n))).collect::<serde_json::Map<String, Value>>()
        }),
        Err(e) => json!({"ok": false, "error": e}),
    }))
}

#[get("/api/operator/jobs")]
pub async fn jobs(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let stats = state.queue.stats();
    let dead = state
        .queue
        .dead_letters()
        .map_err(|e| ApiError::new(Code::QueueUnavailable, e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({
        "stats": {
            "pending": stats.pending, "running": stats.running, "dead": stats.dead,
            "completed_total": stats.completed_total, "retries_total": stats.retries_total,
            "failures_total": stats.failures_total,
        },
        "dead": dead.iter().map(|d| json!({
            "id": d.job.id.as_str(), "kind": d.job.kind, "attempts": d.job.attempts,
            "error": d.job.last_error, "created_at": d.job.created_at, "died_at": d.died_at,
        })).collect::<Vec<_>>(),
    })))
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).map_err(|_| ApiError::not_found(format!("no dead job {raw}")))
}

fn is_dead(state: &AppState, id: &JobId) -> Result<(), ApiError> {
    let dead = state
        .queue
        .dead_letters()
        .map_err(|e| ApiError::new(Code::QueueUnavailable, e.to_string()))?;
    if dead.iter().any(|d| &d.job.id == id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no dead job {}", id.as_str())))
    }
}

/// Retries (`retry`) or discards a dead letter: the operator only, and only a dead job.
async fn act_on_dead_job(
    state: &AppState,
    req: &HttpRequest,
    raw: &str,
    retry: bool,
) -> Result<HttpResponse, ApiError> {
    operator(state, req).await?;
    let id = job_id(raw)?;
    is_dead(state, &id)?;
    let (done, outcome) = if retry {
        (state.queue.retry_dead(&id), "retried")
    } else {
        (state.queue.discard_dead(&id), "discarded")
    };
    done.map_err(|e| ApiError::new(Code::QueueUnavailable, e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ outcome: id.as_str() })))
}

#[post("/api/operator/jobs/{id}/retry")]
pub async fn retry_job(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act_on_dead_job(&state, &req, &path, true).await
}

#[delete("/api/operator/jobs/{id}")]
pub async fn discard_job(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act_on_dead_job(&state, &req, &path, false).await
}

fn update_json(checked: &crate::ops::update::Checked) -> Value {
    use crate::ops::update as up;
    let current = env!("CARGO_PKG_VERSION");
    let in_container = up::in_container();
    let rollback_available = std::env::current_exe()
        .map(|exe| up::prev_path(&exe).is_file())
        .unwrap_or(false);
    json!({
        "current": current,
        "latest": checked.latest,
        "available": checked.latest.as_deref().is_some_and(|v| up::is_newer(v, current)),
        "checked_at": checked.at_millis,
        "error": checked.error,
        "in_container": in_container,
        "rollback_available": rollback_available,
        "how_to": if in_container {
            up::IN_CONTAINER_HOW_TO
        } else {
            "agv-server update"
        },
    })
}

/// The update state for the operator: the cached check, or a fresh one with `force`.
async fn update_answer(
    state: &AppState,
    req: &HttpRequest,
    force: bool,
) -> Result<HttpResponse, ApiError> {
    operator(state, req).await?;
    let checked = state
        .update_check
        .get(&state.settings.update_source, force)
        .await;
    Ok(HttpResponse::Ok().json(update_json(&checked)))
}

/// Whether a newer signed release is out (checked at most hourly; see docs/console-api.md).
#[get("/api/operator/update")]
pub async fn update_state(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    update_answer(&state, &req, false).await
}

/// "Check now": a fresh check, whatever the cache holds.
#[post("/api/operator/update/check")]
pub async fn update_check_now(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    update_answer(&state, &req, true).await
}
