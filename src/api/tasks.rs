//! Background evidence work over HTTP: `POST /v1/incidents/{id}/replay` (replay every call
//! of an incident: 202 and a task), `GET /v1/tasks`, `GET /v1/tasks/{id}` (status,
//! progress, result) and `GET /v1/tasks/{id}/download` (the file an export task made).

use super::audit::record;
use super::auth::by_key;
use super::auth::{AdminAction, AdminCall, AdminKey};
use super::error::{ApiError, missing, path_id};
use crate::domain::audit::AuditAction;
use crate::domain::replay::ReplayMode;
use crate::domain::task::{Task, kind};
use crate::domain::{TaskId, Timestamp};
use crate::error::Code;
use crate::evidence::tasks;
use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use serde_json::json;

/// Queues a replay of every call of the incident (up to `tasks::MAX_REPLAY_CALLS`).
#[post("/v1/incidents/{id}/replay")]
pub async fn replay_incident(
    (state, AdminKey(caller), source): AdminAction,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mode = super::evidence::replay_mode(
        &raw,
        "send {\"mode\": \"policy\"} (re-check every call against today's guardrails) or {\"mode\": \"upstream\"} (send every stored request again)",
    )?;
    let incident = super::incidents::load_incident(&state, &caller, &path).await?;
    if mode == ReplayMode::Upstream
        && let Some(by) = caller.frozen_by(state.proxy.guard.killswitch())
    {
        return Err(ApiError::new(
            Code::TenantFrozen,
            format!(
                "replay refused: frozen by the kill switch ({}); nothing was queued or sent. Unfreeze first",
                by.reason
            ),
        ));
    }
    let task = Task::new(
        &caller.tenant_id,
        kind::INCIDENT_REPLAY,
        caller.label(),
        json!({"incident_id": incident.id, "mode": mode.as_str(), "key_id": caller.key_id}),
        Timestamp::now(),
    );
    let task = tasks::start(&state.tasks(), task, Some("incident_id")).await?;
    record(
        &state,
        by_key(
            &caller,
            &source,
            AuditAction::IncidentReplay,
            incident.id.as_str(),
        )
        .after(json!({"task_id": task.id, "mode": mode.as_str()})),
    )
    .await;
    Ok(accepted(&task))
}

/// 202 for a task started in the background: where to follow it, and what it is.
pub(crate) fn accepted(task: &Task) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/tasks/{}", task.id)))
        .json(tasks::accepted(task))
}

fn task_json(task: &Task) -> serde_json::Value {
    let mut v = serde_json::to_value(task).unwrap_or_default();
    v["object"] = json!("task");
    if task.filename.is_some() {
        v["download_url"] = json!(format!("/v1/tasks/{}/download", task.id));
    }
    v
}

#[get("/v1/tasks")]
pub async fn list((state, AdminKey(caller)): AdminCall) -> Result<HttpResponse, ApiError> {
    let tasks = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.list_tasks(tenant, 100)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": tasks.iter().map(task_json).collect::<Vec<_>>(),
    })))
}

#[get("/v1/tasks/{id}")]
pub async fn get(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("task", &path, TaskId::parse)?;
    let task = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.get_task(tenant, &id)
        })
        .await
        .map_err(missing("task", &path))?;
    Ok(HttpResponse::Ok().json(task_json(&task)))
}

#[get("/v1/tasks/{id}/download")]
pub async fn download(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("task", &path, TaskId::parse)?;
    let (content_type, filename, bytes) = state.with_tenant(&caller.tenant_id, move |store, tenant| store.task_output(tenant, &id))
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::not_found(format!(
                "task {} has no file: it does not exist, is still running, or made none (see GET /v1/tasks/{})",
                path.as_str(),
                path.as_str()
            )),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(super::page::attachment(&filename))
        .body(bytes))
}
