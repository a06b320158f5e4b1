//! Replays and certificates over HTTP: `POST /v1/replay/{call_id}`, `GET /v1/replays/{id}`,
//! `POST /v1/certificates`,
//! `GET /v1/certificates/{id}`, and the public `GET /v1/certificates/public-key` and
//! `GET /v1/certificates/{id}/verify` (no key needed; the check reveals no content).

use super::audit::record;
use super::auth::by_key;
use super::auth::{AdminAction, AdminCall, AdminKey};
use super::error::{ApiError, hinted_json, path_id, required_json};
use crate::api::state::AppState;
use crate::domain::audit::AuditAction;
use crate::domain::replay::ReplayMode;
use crate::domain::{CallId, CertificateId, IncidentId, ReplayId};
use crate::error::Code;
use crate::evidence::certificates::{self, Subject};
use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    mode: String,
}

/// The `{"mode": "policy"|"upstream"}` body of a replay request; `hint` says what to send.
pub(crate) fn replay_mode(raw: &[u8], hint: &str) -> Result<ReplayMode, ApiError> {
    let body = hinted_json::<ReplayBody>(raw, hint)?;
    ReplayMode::parse(&body.mode).map_err(|e| ApiError::new(Code::InvalidMode, e.0))
}

#[post("/v1/replay/{call_id}")]
pub async fn replay(
    (state, AdminKey(caller), source): AdminAction,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mode = replay_mode(
        &raw,
        "send {\"mode\": \"policy\"} (re-check against today's guardrails, nothing sent) or {\"mode\": \"upstream\"} (send the stored request again)",
    )?;
    let report = crate::evidence::replay::replay(
        &state.proxy,
        &caller.tenant_id,
        caller.key_id.as_ref(),
        &path,
        mode,
    )
    .await?;
    let mut after = serde_json::Map::new();
    for k in [
        "replay_id",
        "mode",
        "match_level",
        "would_block",
        "model_drift",
        "replay_call_id",
    ] {
        if let Some(v) = report.get(k) {
            after.insert(k.to_owned(), v.clone());
        }
    }
    record(
        &state,
        by_key(&caller, &source, AuditAction::Replay, path.as_str()).after(after.into()),
    )
    .await;
    Ok(HttpResponse::Ok().json(report))
}

/// A replay's report as it was given back when the replay ran.
#[get("/v1/replays/{id}")]
pub async fn get_replay(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let id = path_id("replay", &raw, ReplayId::parse)?;
    let record = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.get_replay(tenant, &id)
        })
        .await
        .map_err(super::error::missing("replay", &raw))?;
    Ok(HttpResponse::Ok().json(record.report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    call_id: Option<String>,
    replay_id: Option<String>,
    incident_id: Option<String>,
}

fn subject_of(body: IssueBody) -> Result<Subject, ApiError> {
    let bad = |m: String| ApiError::new(Code::InvalidSubject, m);
    // A malformed id cannot exist: it reads as not found, like in the path of other endpoints.
    match (body.call_id, body.replay_id, body.incident_id) {
        (Some(c), None, None) => path_id("call", &c, CallId::parse).map(Subject::Call),
        (None, Some(r), None) => path_id("replay", &r, ReplayId::parse).map(Subject::Replay),
        (None, None, Some(i)) => path_id("incident", &i, IncidentId::parse).map(Subject::Incident),
        _ => Err(bad(
            "name exactly one thing to certify: {\"call_id\": \"call_…\"}, {\"replay_id\": \"rpl_…\"} or {\"incident_id\": \"inc_…\"}".into(),
        )),
    }
}

#[post("/v1/certificates")]
pub async fn issue(
    (state, AdminKey(caller), source): AdminAction,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = required_json::<IssueBody>(
        &raw,
        "the request body is empty; send {\"call_id\": …}, {\"replay_id\": …} or {\"incident_id\": …}",
    )?;
    let subject = subject_of(body)?;
    let policy_version = crate::evidence::policy_version(&state.proxy.guard, &caller.tenant_id);
    let cert = certificates::issue(
        &state.store,
        &state.signing_key,
        policy_version,
        &caller.tenant_id,
        subject,
    )
    .await?;
    record(
        &state,
        by_key(
            &caller,
            &source,
            AuditAction::CertificateIssue,
            cert.certificate_id.as_str(),
        )
        .after(json!({"kind": cert.kind, "subject_id": cert.subject_id, "chain_head": cert.chain_head})),
    )
    .await;
    Ok(HttpResponse::Created().json(cert))
}

/// The instance's public key: anyone may fetch it to verify certificates offline.
#[get("/v1/certificates/public-key")]
pub async fn public_key(state: web::Data<AppState>) -> HttpResponse {
    let public = state.signing_key.public();
    HttpResponse::Ok().json(json!({
        "algorithm": "Ed25519",
        "public_key": public.to_base64(),
        "encoding": "base64 of the raw 32-byte key",
        "instance_id": public.instance_id(),
        "verify_offline": "agv-server verify CERT.json --public-key <public_key>",
    }))
}

async fn stored(
    state: &AppState,
    tenant: Option<&crate::domain::TenantId>,
    raw_id: &str,
) -> Result<crate::store::StoredCertificate, ApiError> {
    let id = path_id("certificate", raw_id, CertificateId::parse)?;
    let tenant = tenant.cloned();
    state
        .with_store(move |store| store.get_certificate(tenant.as_ref(), &id))
        .await
        .map_err(super::error::missing("certificate", raw_id))
}

/// The certificate exactly as issued (save it as a file to verify it offline).
#[get("/v1/certificates/{id}")]
pub async fn get(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = stored(&state, Some(&caller.tenant_id), &path).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(row.body))
}

/// Public: is this certificate genuine? Answers valid or not, its kind, when it was issued
/// and why — never its content.
#[get("/v1/certificates/{id}/verify")]
pub async fn verify(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = stored(&state, None, &path).await?;
    Ok(HttpResponse::Ok().json(certificates::check_stored(&row, &state.signing_key)))
}
