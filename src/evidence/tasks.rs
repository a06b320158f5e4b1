//! Background evidence tasks: replaying every call of an incident, building a large export.
//!
//! `start` stores the task and queues a job naming it; the job queue's worker calls `run`,
//! which does the work, keeps the task's progress current and ends it as done (with its
//! result, or the file it made) or failed (with the reason). The HTTP side only reads tasks.

use crate::domain::certificate::CertSigningKey;
use crate::domain::incident::distinct_calls;
use crate::domain::replay::ReplayMode;
use crate::domain::task::{Task, TaskStatus, TaskUpdate, kind};
use crate::domain::{CallId, IncidentId, KeyId, TaskId, TenantId, Timestamp};
use crate::error::ApiError;
use crate::error::Code;
use crate::jobs::{EnqueueOptions, Job, Queue};
use crate::proxy::Proxy;
use crate::store::DynStore;
use crate::store::{StoreError, run_blocking};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The job kind that runs a task.
pub const TASK_RUN: &str = "evidence.task";
/// The most calls of one incident a replay task replays.
pub const MAX_REPLAY_CALLS: u32 = 10_000;
/// The most replay ids a task's result lists (all are counted).
const LISTED_REPLAYS: usize = 1_000;
/// How often a running task writes its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What tasks work with: where they are kept, the queue that runs them, the proxy a
/// replay goes through and the key that signs an export.
#[derive(Clone)]
pub struct Tasks {
    pub store: DynStore,
    pub queue: Queue,
    pub proxy: Arc<Proxy>,
    pub signing_key: CertSigningKey,
}

#[derive(Deserialize)]
struct Payload {
    tenant_id: TenantId,
    task_id: TaskId,
}

/// Stores `task` and queues its job. A full queue is a 503 and nothing is left queued.
/// With `alone_on`, a task of the same kind whose params have the same value there that is
/// still queued or running is a 409 naming it, and nothing is stored.
pub async fn start(
    state: &Tasks,
    task: Task,
    alone_on: Option<&'static str>,
) -> Result<Task, ApiError> {
    let store = state.store.clone();
    let stored = task.clone();
    let running = run_blocking(move || match alone_on {
        Some(key) => store.insert_task_alone(&stored, key),
        None => store.insert_task(&stored).map(|()| None),
    })
    .await?;
    if let Some(other) = running {
        return Err(ApiError::new(
            Code::TaskRunning,
            format!(
                "task {} is already doing this ({}, {} of {} done); follow it at /v1/tasks/{} or wait until it ends",
                other.id,
                other.status.as_str(),
                other.progress_done,
                other.progress_total,
                other.id
            ),
        ));
    }
    let payload = json!({"tenant_id": task.tenant_id, "task_id": task.id});
    if let Err(e) = state.queue.enqueue(
        TASK_RUN,
        payload,
        EnqueueOptions {
            // The work is not idempotent (a replay makes new records): one attempt, and a
            // failure is reported on the task instead of being retried behind its back.
            max_attempts: 1,
            run_at: None,
        },
    ) {
        let reason = format!("the job queue refused the task: {e}");
        let _ = update(state, &task, failed(reason.clone())).await;
        return Err(ApiError::new(Code::QueueFull, reason));
    }
    Ok(task)
}

async fn update(state: &Tasks, task: &Task, u: TaskUpdate) -> Result<Task, StoreError> {
    let store = state.store.clone();
    let (t, id) = (task.tenant_id.clone(), task.id.clone());
    run_blocking(move || store.update_task(&t, &id, &u, Timestamp::now())).await
}

/// The task ends as failed, for `reason`.
fn failed(reason: String) -> TaskUpdate {
    TaskUpdate {
        status: Some(TaskStatus::Failed),
        error: Some(reason),
        ..TaskUpdate::default()
    }
}

/// Writes a running task's progress; a failed write only leaves the bar behind.
async fn progress(state: &Tasks, task: &Task, done: usize, total: i64) {
    let progress = Some((i64::try_from(done).unwrap_or(i64::MAX), total));
    let u = TaskUpdate {
        progress,
        ..TaskUpdate::default()
    };
    let _ = update(state, task, u).await;
}

/// The job handler: runs the task the job names.
pub async fn run(state: Arc<Tasks>, job: Job) -> Result<(), String> {
    let p: Payload = serde_json::from_value(job.payload.clone())
        .map_err(|e| format!("the task job's payload is not valid: {e}"))?;
    let store = state.store.clone();
    let task = match run_blocking(move || store.get_task(&p.tenant_id, &p.task_id)).await {
        Ok(t) => t,
        // Its tenant was deleted meanwhile: nothing left to do.
        Err(StoreError::NotFound) => return Ok(()),
        Err(e) => return Err(format!("cannot load the task: {e}")),
    };
    if task.status.is_finished() {
        return Ok(());
    }
    let task = update(
        &state,
        &task,
        TaskUpdate {
            status: Some(TaskStatus::Running),
            ..TaskUpdate::default()
        },
    )
    .await
    .map_err(|e| format!("cannot mark the task running: {e}"))?;
    let outcome = match task.kind.as_str() {
        kind::INCIDENT_REPLAY => replay_incident(&state, &task).await,
        kind::INCIDENT_EXPORT => export_incident(&state, &task).await,
        other => Err(format!("unknown task kind '{other}'")),
    };
    let finish = match outcome {
        Ok(u) => TaskUpdate {
            status: Some(TaskStatus::Done),
            ..u
        },
        Err(reason) => {
            tracing::warn!(task = %task.id, kind = %task.kind, error = %reason, "a task failed");
            failed(reason)
        }
    };
    update(&state, &task, finish)
        .await
        .map_err(|e| format!("cannot record the task's end: {e}"))?;
    Ok(())
}

fn param<'a>(task: &'a Task, name: &str) -> Result<&'a str, String> {
    task.params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the task has no '{name}' parameter"))
}

/// The distinct calls of an incident, oldest signal first, up to `limit`.
pub async fn incident_calls(
    state: &Tasks,
    tenant: &TenantId,
    incident: &IncidentId,
    limit: u32,
) -> Result<Vec<CallId>, StoreError> {
    let store = state.store.clone();
    let (t, i) = (tenant.clone(), incident.clone());
    let signals = run_blocking(move || store.incident_signals(Some(&t), &i, limit)).await?;
    Ok(distinct_calls(signals))
}

async fn replay_incident(state: &Tasks, task: &Task) -> Result<TaskUpdate, String> {
    let incident = IncidentId::parse(param(task, "incident_id")?).map_err(|e| e.to_string())?;
    let mode = ReplayMode::parse(param(task, "mode")?).map_err(|e| e.to_string())?;
    // Absent when a person (not a key) asked for the replay.
    let key = task.params.get("key_id").and_then(Value::as_str);
    let key = key
        .map(KeyId::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let calls = incident_calls(state, &task.tenant_id, &incident, MAX_REPLAY_CALLS)
        .await
        .map_err(|e| format!("cannot list the incident's calls: {e}"))?;
    let total = i64::try_from(calls.len()).unwrap_or(i64::MAX);
    // The total is known now: a progress bar can show it before the first call is done.
    progress(state, task, 0, total).await;
    let mut by_level: BTreeMap<String, u64> = BTreeMap::new();
    let (mut would_block, mut drift, mut failed) = (0u64, 0u64, 0u64);
    let mut replays: Vec<Value> = Vec::new();
    let mut failures: Vec<Value> = Vec::new();
    let mut last_progress = Instant::now();
    for (i, call) in calls.iter().enumerate() {
        match crate::evidence::replay::replay(
            &state.proxy,
            &task.tenant_id,
            key.as_ref(),
            call.as_str(),
            mode,
        )
        .await
        {
            Ok(report) => {
                if let Some(level) = report.get("match_level").and_then(Value::as_str) {
                    *by_level.entry(level.to_owned()).or_default() += 1;
                }
                if report.get("would_block").and_then(Value::as_bool) == Some(true) {
                    would_block += 1;
                }
                // An upstream replay's `model_drift` is `{"detected", "reasons", …}`.
                let drifted = report
                    .pointer("/model_drift/detected")
                    .and_then(Value::as_bool)
                    == Some(true);
                if drifted {
                    drift += 1;
                }
                if replays.len() < LISTED_REPLAYS {
                    replays.push(json!({
                        "call_id": call,
                        "replay_id": report.get("id"),
                        "replay_call_id": report.get("replay_call_id"),
                        "match_level": report.get("match_level"),
                        "would_block": report.get("would_block"),
                        "model_drift": drifted,
                    }));
                }
            }
            Err(e) => {
                failed += 1;
                if failures.len() < LISTED_REPLAYS {
                    failures.push(json!({"call_id": call, "code": e.code, "error": e.message}));
                }
                // A frozen tenant stops an upstream replay for every call alike.
                if e.code == Code::TenantFrozen {
                    return Err(format!("the replay stopped at call {call}: {}", e.message));
                }
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            progress(state, task, i + 1, total).await;
        }
    }
    Ok(TaskUpdate {
        progress: Some((total, total)),
        result: Some(json!({
            "incident_id": incident,
            "mode": mode.as_str(),
            "calls": total,
            "replayed": total - i64::try_from(failed).unwrap_or(0),
            "failed": failed,
            "by_match_level": by_level,
            "would_block": would_block,
            "model_drift": drift,
            "replays": replays,
            "failures": failures,
        })),
        ..TaskUpdate::default()
    })
}

async fn export_incident(state: &Tasks, task: &Task) -> Result<TaskUpdate, String> {
    use crate::evidence::export::{ExportFormat, build_export};
    let incident = IncidentId::parse(param(task, "incident_id")?).map_err(|e| e.to_string())?;
    let format = ExportFormat::parse(param(task, "format")?).map_err(|e| e.to_string())?;
    let policy_version = crate::evidence::policy_version(&state.proxy.guard, &task.tenant_id);
    let file = build_export(
        &state.store,
        &state.signing_key,
        policy_version,
        &task.tenant_id,
        &incident,
        format,
        state.proxy.guard.redactor(&task.tenant_id),
    )
    .await
    .map_err(|e| e.message)?;
    let calls = i64::try_from(file.calls).unwrap_or(i64::MAX);
    Ok(TaskUpdate {
        progress: Some((calls, calls)),
        result: Some(json!({
            "incident_id": incident,
            "format": format.as_str(),
            "calls": file.calls,
            "bytes": file.bytes.len(),
            "certificate_id": file.certificate_id,
        })),
        output: Some((file.content_type.to_owned(), file.filename, file.bytes)),
        ..TaskUpdate::default()
    })
}

/// For handlers: a task answer with where to follow it.
pub fn accepted(task: &Task) -> Value {
    json!({
        "object": "task",
        "id": task.id,
        "task_id": task.id,
        "kind": task.kind,
        "status": task.status,
        "status_url": format!("/v1/tasks/{}", task.id),
    })
}
