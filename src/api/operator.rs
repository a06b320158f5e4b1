//! The operator console's API (`/api/operator/…`, operator role only): instance health and
//! its one-line banner, every tenant at a glance, the incidents of all tenants (filtered,
//! counted by severity), every call a policy stopped across tenants (the enforcement log,
//! also as CSV), backups ("back up now", list, verify), the job queue's dead letters and
//! the update state (is a newer signed release out?). It never installs an update: that stays with `agv-server update` or a new image.

use super::access::{operator, tenant_for};
use super::audit::{Console, ConsoleChange, by_person, record};
use super::error::{ApiError, optional_json, path_id};
use super::names::usd;
use super::page;
use super::v1::{given, query_time, query_value};
use crate::api::state::AppState;
use crate::domain::audit::AuditAction;
use crate::domain::incident::{IncidentFilter, IncidentStatus, Severity};
use crate::domain::{CallCursor, TenantId, Timestamp};
use crate::error::Code;
use crate::jobs::queue::{EnqueueOptions, JobId};
use crate::store::{BlockedCall, BlockedFilter, StoreError, run_blocking};
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

/// A backup older than this (or none, on an instance up this long) is overdue.
const BACKUP_OVERDUE_MS: i64 = 36 * 3_600_000;
/// The data disk's use from which the banner warns, and from which it is a fault.
const DISK_WARN_PERCENT: f64 = 85.0;
const DISK_BAD_PERCENT: f64 = 95.0;

/// What the health banner sums up, all of it known to the server already.
struct StatusFacts<'a> {
    ready: &'a super::health::Readiness,
    dead_jobs: u64,
    last_backup_at: Option<i64>,
    next_backup_at: Option<i64>,
    uptime_ms: i64,
    disk_used_percent: Option<f64>,
    /// The newer signed release, when the latest update check found one.
    update_available: Option<String>,
    now: i64,
}

/// The health banner: `level` (`ok`, `warn`, `bad`), its `headline`, and one check per
/// part (`state` `ok`, `warn`, `bad`, or `info` that never raises the level), each with
/// what is wrong and what to do (`fix`) when it is not ok. A part without trouble to
/// report (the disk) is left out.
fn status_summary(f: &StatusFacts<'_>) -> Value {
    let check = |id: &str, label: &str, state: &str, text: &str, fix: Option<&str>| json!({"id": id, "label": label, "state": state, "text": text, "fix": fix});
    let mut checks = vec![
        match &f.ready.database {
            Ok(()) => check("database", "database", "ok", "ok", None),
            Err(e) => check(
                "database",
                "database",
                "bad",
                e,
                Some(
                    "Check that the database answers and its disk has room; /ready answers 503 until it does.",
                ),
            ),
        },
        match &f.ready.recorder {
            None => check("recorder", "recorder", "ok", "ok", None),
            Some(e) => check(
                "recorder",
                "recorder",
                "bad",
                &format!("the latest call records could not be committed: {e}"),
                Some(
                    "Free space on the database's disk (see “When storage fails” in the README); this clears at the next commit that succeeds.",
                ),
            ),
        },
        match (&f.ready.queue, f.dead_jobs) {
            (Err(e), _) => check(
                "queue",
                "job queue",
                "bad",
                e,
                Some(
                    "Free space in the data directory: alerts, exports and backups are refused until the queue takes work again.",
                ),
            ),
            (Ok(()), 0) => check("queue", "job queue", "ok", "ok", None),
            (Ok(()), n) => check(
                "queue",
                "job queue",
                "warn",
                &format!("{n} dead letter{}", if n == 1 { "" } else { "s" }),
                Some("Retry or discard them under Jobs."),
            ),
        },
    ];
    let overdue = Some("Back up now, then look under Jobs for a failed backup.");
    let mut backup = match f.last_backup_at {
        Some(at) if f.now - at > BACKUP_OVERDUE_MS => {
            check("backup", "last backup", "bad", "overdue", overdue)
        }
        Some(_) => check("backup", "last backup", "ok", "ok", None),
        None if f.next_backup_at.is_none() => check(
            "backup",
            "last backup",
            "warn",
            "none, and automatic backups are off",
            Some("Set backup_cron (AGV_BACKUP_CRON), or back up now."),
        ),
        None if f.uptime_ms > BACKUP_OVERDUE_MS => {
            check("backup", "last backup", "bad", "none yet", overdue)
        }
        None => check("backup", "last backup", "ok", "none yet", None),
    };
    backup["at"] = json!(f.last_backup_at);
    backup["next_at"] = json!(f.next_backup_at);
    checks.push(backup);
    if let Some(p) = f.disk_used_percent.filter(|p| *p >= DISK_WARN_PERCENT) {
        checks.push(check(
            "disk",
            "disk",
            if p >= DISK_BAD_PERCENT { "bad" } else { "warn" },
            &format!("{p:.0}% full"),
            Some("Free space or grow the disk: on a full disk no call can be recorded."),
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    checks.push(match &f.update_available {
        Some(latest) => check(
            "version",
            "version",
            "info",
            &format!("{version}, {latest} is out"),
            Some("See Updates on the operator page."),
        ),
        None => check("version", "version", "ok", version, None),
    });
    let worst = |s: &str| checks.iter().any(|c| c["state"] == s);
    let (level, headline) = if worst("bad") {
        ("bad", "Unhealthy")
    } else if worst("warn") {
        ("warn", "Needs attention")
    } else {
        ("ok", "Healthy")
    };
    json!({"level": level, "headline": headline, "checks": checks})
}

/// The instance's health, as the operator overview and its live stream show it, with the
/// health banner (`status`).
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
    let ready = super::health::Readiness::check(state).await;
    let next_backup_at = state
        .settings
        .backup_cron
        .as_deref()
        .and_then(|c| crate::jobs::scheduler::next_tick(c, chrono::Utc::now()))
        .map(|t| t.timestamp_millis());
    let uptime = state.started_at.elapsed();
    let status = status_summary(&StatusFacts {
        ready: &ready,
        dead_jobs: stats.dead,
        last_backup_at: recent.first().and_then(|b| b["at"].as_i64()),
        next_backup_at,
        uptime_ms: i64::try_from(uptime.as_millis()).unwrap_or(i64::MAX),
        disk_used_percent: disk.1,
        update_available: state.update_check.cached().and_then(|c| {
            c.latest
                .filter(|v| crate::ops::update::is_newer(v, env!("CARGO_PKG_VERSION")))
        }),
        now,
    });
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": uptime.as_secs(),
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
            "next_at": next_backup_at,
        },
        "update": {"current": env!("CARGO_PKG_VERSION"), "check": "agv-server update --check"},
        "status": status,
    }))
}

#[get("/api/operator/health")]
pub async fn health((state, req): Console) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    Ok(HttpResponse::Ok().json(health_json(&state).await?))
}

#[get("/api/operator/tenants")]
pub async fn tenants((state, req): Console) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let (day_start, _) = crate::guard::budget::period_starts(Timestamp::now());
    let rows = state
        .with_store(move |store| {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    severity: Option<String>,
    status: Option<String>,
    tenant: Option<String>,
}

/// The tenant a filter names: 404 when there is none such.
async fn named_tenant(
    state: &AppState,
    req: &HttpRequest,
    user: &crate::domain::User,
    raw: Option<String>,
) -> Result<Option<TenantId>, ApiError> {
    match given(raw) {
        Some(raw) => Ok(Some(tenant_for(state, req, user, Some(&raw)).await?)),
        None => Ok(None),
    }
}

/// The newest incidents of every tenant (or of `tenant`), with `severity` and `status`,
/// and how many incidents of each severity the status and tenant filters hold (`counts`).
#[get("/api/operator/incidents")]
pub async fn incidents(
    (state, req): Console,
    q: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = operator(&state, &req).await?;
    let q = q.into_inner();
    let filter = IncidentFilter {
        severity: query_value(given(q.severity).as_deref(), Severity::parse)?,
        status: query_value(given(q.status).as_deref(), IncidentStatus::parse)?,
        ..IncidentFilter::default()
    };
    let tenant = named_tenant(&state, &req, &user, q.tenant).await?;
    let (list, counts, names) = state
        .with_store(move |store| {
            let list = store.list_incidents(tenant.as_ref(), &filter, None, 50)?;
            let counts = store.incident_severity_counts(tenant.as_ref(), filter.status)?;
            Ok::<_, StoreError>((list, counts, tenant_names(store.as_ref())?))
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
    let counts: serde_json::Map<String, Value> = Severity::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data, "counts": counts})))
}

fn tenant_names(
    store: &dyn crate::store::Store,
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    Ok(store
        .list_tenants()?
        .into_iter()
        .map(|t| (t.id.to_string(), t.name.as_str().to_owned()))
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnforcementQuery {
    tenant: Option<String>,
    policy: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
    format: Option<String>,
}

/// The CSV columns of the enforcement log.
const ENFORCEMENT_CSV_HEADER: &str =
    "created_at,tenant_id,tenant_name,key_id,key_name,end_user,policy,status,reason,call_id";

/// Every call a policy stopped, across tenants, newest first: `tenant`, `policy` (an id
/// or a name, as in a call search), `since`, `until`, `limit` (≤ 1000), `cursor`;
/// `format=csv` gives the page as CSV (next cursor in `X-Next-Cursor`).
#[get("/api/operator/enforcement")]
pub async fn enforcement(
    (state, req): Console,
    q: web::Query<EnforcementQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = operator(&state, &req).await?;
    let q = q.into_inner();
    let csv = page::wants_csv(q.format.as_deref())?;
    let filter = BlockedFilter {
        tenant: named_tenant(&state, &req, &user, q.tenant).await?,
        policy: given(q.policy)
            .as_deref()
            .map(crate::domain::search::parse_policy)
            .transpose()
            .map_err(|e| ApiError::new(Code::InvalidQuery, e.0).param("policy"))?,
        since: query_time("since", given(q.since).as_deref())?,
        until: query_time("until", given(q.until).as_deref())?,
    };
    let cursor = page::cursor(given(q.cursor).as_deref(), CallCursor::decode)?;
    let limit = q
        .limit
        .unwrap_or(if csv { 1000 } else { 50 })
        .clamp(1, 1000);
    let (rows, names) = state
        .with_store(move |store| {
            let rows = store.blocked_calls(&filter, cursor.as_ref(), limit)?;
            Ok::<_, StoreError>((rows, tenant_names(store.as_ref())?))
        })
        .await?;
    let next_cursor = page::next_cursor(&rows, limit, |r| r.cursor().encode());
    let tenant_name = |r: &BlockedCall| names.get(r.tenant_id.as_str()).cloned();
    if csv {
        let csv_row = |r: &BlockedCall| {
            [
                r.created_at.to_rfc3339(),
                r.tenant_id.to_string(),
                tenant_name(r).unwrap_or_default(),
                r.key_id.clone(),
                r.key_name.clone().unwrap_or_default(),
                r.end_user.clone().unwrap_or_default(),
                r.policy.clone(),
                r.status.to_string(),
                r.reason.clone().unwrap_or_default(),
                r.id.to_string(),
            ]
        };
        return Ok(page::csv_page(
            "enforcement.csv",
            ENFORCEMENT_CSV_HEADER,
            rows.iter().map(csv_row),
            next_cursor,
        ));
    }
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "call_id": r.id, "created_at": r.created_at, "tenant_id": r.tenant_id,
                "tenant_name": tenant_name(r), "key_id": r.key_id, "key_name": r.key_name,
                "end_user": r.end_user, "policy": r.policy, "status": r.status,
                "reason": r.reason,
            })
        })
        .collect();
    Ok(page::json_page(data, next_cursor))
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
pub async fn backups((state, req): Console) -> Result<HttpResponse, ApiError> {
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
pub async fn backup_now((state, req, source): ConsoleChange) -> Result<HttpResponse, ApiError> {
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
        by_person(None, &user.id, &source, AuditAction::Backup, id.as_str()),
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
    (state, req): Console,
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
pub async fn jobs((state, req): Console) -> Result<HttpResponse, ApiError> {
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
    let id = path_id("dead job", raw, JobId::parse)?;
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
    (state, req): Console,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act_on_dead_job(&state, &req, &path, true).await
}

#[delete("/api/operator/jobs/{id}")]
pub async fn discard_job(
    (state, req): Console,
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
pub async fn update_state((state, req): Console) -> Result<HttpResponse, ApiError> {
    update_answer(&state, &req, false).await
}

/// "Check now": a fresh check, whatever the cache holds.
#[post("/api/operator/update/check")]
pub async fn update_check_now((state, req): Console) -> Result<HttpResponse, ApiError> {
    update_answer(&state, &req, true).await
}

#[cfg(test)]
mod tests {
    use super::{StatusFacts, status_summary};
    use crate::api::health::Readiness;
    use serde_json::Value;

    const HOUR: i64 = 3_600_000;

    fn fine() -> Readiness {
        Readiness {
            database: Ok(()),
            recorder: None,
            queue: Ok(()),
        }
    }

    fn facts(ready: &Readiness) -> StatusFacts<'_> {
        StatusFacts {
            ready,
            dead_jobs: 0,
            last_backup_at: Some(1_000 * HOUR - 3 * HOUR),
            next_backup_at: Some(1_000 * HOUR + 5 * HOUR),
            uptime_ms: 100 * HOUR,
            disk_used_percent: Some(40.0),
            update_available: None,
            now: 1_000 * HOUR,
        }
    }

    fn check<'a>(v: &'a Value, id: &str) -> &'a Value {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn a_healthy_instance_is_green_and_lists_each_part() {
        let ready = fine();
        let v = status_summary(&facts(&ready));
        assert_eq!(v["level"], "ok");
        assert_eq!(v["headline"], "Healthy");
        assert_eq!(check(&v, "backup")["at"], 997 * HOUR);
        assert!(
            check(&v, "disk").is_null(),
            "a disk with room is not mentioned"
        );
    }

    #[test]
    fn each_fault_names_itself_and_what_to_do() {
        let broken = Readiness {
            database: Err("connection refused".into()),
            recorder: Some("disk full".into()),
            queue: Err("its files take 9 bytes of a 8 byte budget".into()),
        };
        let v = status_summary(&facts(&broken));
        assert_eq!(v["level"], "bad");
        assert_eq!(v["headline"], "Unhealthy");
        for id in ["database", "recorder", "queue"] {
            assert_eq!(check(&v, id)["state"], "bad", "{id}");
            assert!(check(&v, id)["fix"].is_string(), "{id}");
        }
        assert!(
            check(&v, "recorder")["text"]
                .as_str()
                .unwrap()
                .contains("disk full")
        );

        let ready = fine();
        let mut f = facts(&ready);
        f.dead_jobs = 2;
        f.disk_used_percent = Some(90.0);
        f.update_available = Some("9.9.9".into());
        let v = status_summary(&f);
        assert_eq!(v["level"], "warn");
        assert_eq!(check(&v, "queue")["text"], "2 dead letters");
        assert_eq!(check(&v, "disk")["state"], "warn");
        assert_eq!(check(&v, "version")["state"], "info");
        f.disk_used_percent = Some(97.0);
        assert_eq!(status_summary(&f)["level"], "bad");
    }

    #[test]
    fn a_missing_or_old_backup_is_overdue_only_after_a_day_and_a_half() {
        let ready = fine();
        let mut f = facts(&ready);
        f.last_backup_at = Some(f.now - 37 * HOUR);
        assert_eq!(check(&status_summary(&f), "backup")["state"], "bad");
        f.last_backup_at = None;
        f.uptime_ms = HOUR;
        let v = status_summary(&f);
        assert_eq!(check(&v, "backup")["state"], "ok", "a fresh instance waits");
        assert_eq!(check(&v, "backup")["text"], "none yet");
        f.uptime_ms = 37 * HOUR;
        assert_eq!(check(&status_summary(&f), "backup")["state"], "bad");
        f.next_backup_at = None;
        f.uptime_ms = HOUR;
        let v = status_summary(&f);
        assert_eq!(check(&v, "backup")["state"], "warn");
        assert!(
            check(&v, "backup")["fix"]
                .as_str()
                .unwrap()
                .contains("backup_cron")
        );
    }
}
