//! Incident exports over HTTP: `GET /v1/incidents/{id}/export?format=json|pdf|csv`.
//! Admin keys only, scoped to the key's tenant (another tenant's incident is a 404).
//! The work is `evidence::export::build_export`; this handler parses, audits and sends.

use super::audit::record;
use super::auth::by_key;
use super::auth::{AdminAction, AdminKey};
use super::error::{ApiError, path_id};
use crate::domain::IncidentId;
use crate::domain::audit::AuditAction;
use crate::error::Code;
use crate::evidence::export::{ExportFormat, build_export};
use actix_web::{HttpResponse, get, web};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `json` (the default: the signed evidence pack), `pdf` or `csv`.
    format: Option<String>,
    /// `true`: build it as a background task (202) whatever its size.
    #[serde(rename = "async")]
    background: Option<bool>,
}

/// Incidents with more signals than this are exported as a background task (202).
pub const SYNC_EXPORT_MAX_SIGNALS: i64 = 2_000;

#[get("/v1/incidents/{id}/export")]
pub async fn export(
    (state, AdminKey(caller), source): AdminAction,
    path: web::Path<String>,
    q: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("incident", &path, IncidentId::parse)?;
    let format = ExportFormat::parse(q.format.as_deref().unwrap_or("json"))
        .map_err(|e| ApiError::new(Code::InvalidFormat, e.0))?;
    // Also the 404 for an incident of another tenant, before any task is queued.
    let incident = super::incidents::load_incident(&state, &caller, &path).await?;
    let background = q
        .background
        .unwrap_or(incident.signal_count > SYNC_EXPORT_MAX_SIGNALS);
    if background {
        let task = crate::domain::task::Task::new(
            &caller.tenant_id,
            crate::domain::task::kind::INCIDENT_EXPORT,
            caller.label(),
            json!({"incident_id": id, "format": format.as_str()}),
            crate::domain::Timestamp::now(),
        );
        let task = crate::evidence::tasks::start(&state.tasks(), task, None).await?;
        record(
            &state,
            by_key(&caller, &source, AuditAction::Export, id.as_str()).after(json!({
                "format": format.as_str(),
                "incident_id": id,
                "task_id": task.id,
            })),
        )
        .await;
        return Ok(super::tasks::accepted(&task));
    }
    let policy_version = crate::evidence::policy_version(&state.proxy.guard, &caller.tenant_id);
    let file = build_export(
        &state.store,
        &state.signing_key,
        policy_version,
        &caller.tenant_id,
        &id,
        format,
        state.proxy.guard.redactor(&caller.tenant_id),
    )
    .await?;
    record(
        &state,
        by_key(&caller, &source, AuditAction::Export, id.as_str()).after(json!({
            "format": format.as_str(),
            "incident_id": id,
            "certificate_id": file.certificate_id,
            "calls": file.calls,
            "bytes": file.bytes.len(),
        })),
    )
    .await;
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        .insert_header(super::page::attachment(&file.filename))
        .body(file.bytes))
}
