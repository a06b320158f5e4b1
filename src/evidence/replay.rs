//! `POST /v1/replay/{call_id}`: replays a recorded call.
//!
//! - **policy**: the stored request goes through [`Guard::evaluate`] (a dry run: nothing
//!   counted, nothing sent) and the decisions are compared with the original ones.
//! - **upstream**: the stored request is sent again through the proxy — same key, same
//!   guardrails, recorded as a new call whose metadata carries `agv_replay_of` and which
//!   the `replays` row links to the original — and the answers are graded by
//!   `domain::replay::compare`. Refused with 423 before anything is sent when the tenant,
//!   the original key or the caller's key is frozen; refused with 409 when the original
//!   key was revoked, has expired or is gone, or when the stored request is incomplete.
//!
//! An upstream replay passes today's guardrails like any call: when one stops it (rate
//! limit, budget, …) the stopped attempt is recorded and graded like any answer, and the
//! report shows it (`replay.blocked`, `replay.blocked_by`, `replay.status`).
//!
//! Every replay is stored (with its report) so a certificate can be issued for it. Errors
//! leave nothing stored.
//!
//! [`Guard::evaluate`]: crate::guard::Guard::evaluate

use crate::domain::call::endpoint;
use crate::domain::replay::{
    ReplayMode, ReplayRecord, ResponseOutcome, Side, compare, decision_changes,
};
use crate::domain::{CallId, CallRecord, KeyId, ReplayId, TenantId, Timestamp};
use crate::error::{ApiError, Code, missing};
use crate::guard::killswitch::FreezeScope;
use crate::guard::{Endpoint as GuardEndpoint, RequestFacts};
use crate::proxy::{Attribution, Incoming, Outcome as ProxyOutcome, Proxy};
use crate::store::run_blocking;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

/// The metadata key that marks a call as the replay of another.
pub const REPLAY_OF_METADATA: &str = "agv_replay_of";

/// The original call of the tenant, with its request parsed.
async fn load_original(
    proxy: &Proxy,
    tenant: &TenantId,
    raw_id: &str,
) -> Result<(CallRecord, Value), ApiError> {
    let id = CallId::parse(raw_id).map_err(|_| ApiError::not_found(format!("no call {raw_id}")))?;
    let store = proxy.store.clone();
    let t = tenant.clone();
    let call = run_blocking(move || store.get_call(Some(&t), &id))
        .await
        .map_err(missing("call", raw_id))?;
    let cannot = |code, why: &str| {
        Err(ApiError::new(
            code,
            format!("call {} cannot be replayed: {why}", call.id),
        ))
    };
    if let Some(at) = call.body_pruned_at {
        return cannot(
            Code::RequestNotStored,
            &format!(
                "retention removed its request and response bodies on {} (only their SHA-256 and the call's metadata are kept)",
                at.to_rfc3339()
            ),
        );
    }
    if call.request_body.is_empty() {
        return cannot(
            Code::RequestNotStored,
            "its tenant stores only the hashes of call bodies (redaction mode hashes_only), so the request was not kept",
        );
    }
    if call.request_truncated {
        return cannot(
            Code::RequestIncomplete,
            "its request body was larger than the stored maximum, so only part of it was kept",
        );
    }
    match serde_json::from_str(&call.request_body) {
        Ok(body @ Value::Object(_)) => Ok((call, body)),
        _ => cannot(
            Code::RequestNotReplayable,
            "its stored request is not a JSON object",
        ),
    }
}

fn guard_endpoint(call: &CallRecord) -> Result<(GuardEndpoint, &'static str), ApiError> {
    match call.endpoint.as_str() {
        endpoint::CHAT_COMPLETIONS => {
            Ok((GuardEndpoint::ChatCompletions, endpoint::CHAT_COMPLETIONS))
        }
        endpoint::EMBEDDINGS => Ok((GuardEndpoint::Embeddings, endpoint::EMBEDDINGS)),
        other => Err(ApiError::new(
            Code::RequestNotReplayable,
            format!("calls to '{other}' cannot be replayed"),
        )),
    }
}

async fn store_replay(proxy: &Proxy, record: ReplayRecord) -> Result<(), ApiError> {
    let store = proxy.store.clone();
    run_blocking(move || store.insert_replay(&record))
        .await
        .map_err(ApiError::from)
}

/// Runs one replay and returns its report.
pub async fn replay(
    proxy: &Arc<Proxy>,
    tenant: &TenantId,
    caller_key: Option<&KeyId>,
    raw_call_id: &str,
    mode: ReplayMode,
) -> Result<Value, ApiError> {
    let (original, body) = load_original(proxy, tenant, raw_call_id).await?;
    match mode {
        ReplayMode::Policy => policy_replay(proxy, original, &body).await,
        ReplayMode::Upstream => upstream_replay(proxy, tenant, caller_key, original, body).await,
    }
}

async fn policy_replay(
    proxy: &Proxy,
    original: CallRecord,
    body: &Value,
) -> Result<Value, ApiError> {
    let (guard_ep, _) = guard_endpoint(&original)?;
    let now = Timestamp::now();
    let model = body.get("model").and_then(Value::as_str);
    let ev = proxy.guard.evaluate(
        &RequestFacts {
            tenant_id: &original.tenant_id,
            key_id: &original.key_id,
            endpoint: guard_ep,
            model,
            body,
        },
        now,
    );
    let changes = decision_changes(&original.decisions, &ev.decisions);
    let would_block = ev.stop.is_some();
    let id = ReplayId::generate();
    let report = json!({
        "id": id,
        "object": "replay",
        "mode": "policy",
        "call_id": original.id,
        "created_at": now,
        "upstream_called": false,
        "policy_version": super::policy_version(&proxy.guard, &original.tenant_id),
        "would_block": would_block,
        "blocked_by": ev.stopped_by(),
        "status": ev.status().unwrap_or(200),
        "decisions": ev.decisions,
        "differs": !changes.is_empty() || original.blocked != would_block,
        "changes": changes,
        "original": {
            "blocked": original.blocked,
            "blocked_by": original.blocked_by,
            "status": original.status,
            "decisions": original.decisions,
        },
    });
    store_replay(
        proxy,
        ReplayRecord {
            id,
            tenant_id: original.tenant_id.clone(),
            call_id: original.id.clone(),
            replay_call_id: None,
            mode: ReplayMode::Policy,
            match_level: None,
            model_drift: false,
            created_at: now,
            report: report.clone(),
        },
    )
    .await?;
    Ok(report)
}

/// Refuses when the kill switch holds the tenant or either key: nothing is sent.
fn refuse_if_frozen(proxy: &Proxy, tenant: &TenantId, keys: &[&KeyId]) -> Result<(), ApiError> {
    for key in keys {
        if let Some(by) = proxy.guard.killswitch().check(tenant, key) {
            let (what, code) = match by.scope {
                FreezeScope::Tenant => ("tenant", Code::TenantFrozen),
                FreezeScope::Key => ("API key", Code::KeyFrozen),
            };
            return Err(ApiError::new(
                code,
                format!(
                    "replay refused: this {what} is frozen by the kill switch ({}); nothing was sent to the upstream. Unfreeze it first",
                    by.reason
                ),
            ));
        }
    }
    Ok(())
}

async fn upstream_replay(
    proxy: &Arc<Proxy>,
    tenant: &TenantId,
    caller_key: Option<&KeyId>,
    original: CallRecord,
    body: Value,
) -> Result<Value, ApiError> {
    let (_, endpoint_name) = guard_endpoint(&original)?;
    // The replay is made with the original key: it must still be usable.
    let store = proxy.store.clone();
    let (t, k) = (tenant.clone(), original.key_id.clone());
    let key = run_blocking(move || store.get_api_key(Some(&t), &k))
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::new(
                Code::OriginalKeyMissing,
                format!(
                    "the key {} that made call {} no longer exists; an upstream replay needs it",
                    original.key_id, original.id
                ),
            ),
            other => other.into(),
        })?;
    let now = Timestamp::now();
    let unusable = match (key.revoked_at, key.is_active(now)) {
        (Some(_), _) => Some((Code::OriginalKeyRevoked, "has been revoked", "a revoked")),
        (None, false) => Some((Code::OriginalKeyExpired, "has expired", "an expired")),
        (None, true) => None,
    };
    if let Some((code, state, adjective)) = unusable {
        return Err(ApiError::new(
            code,
            format!(
                "the key {} that made call {} {state}; an upstream replay is not made with {adjective} key",
                key.id, original.id
            ),
        ));
    }
    let mut keys = vec![&original.key_id];
    keys.extend(caller_key);
    refuse_if_frozen(proxy, tenant, &keys)?;

    let mut metadata = match &original.metadata {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    metadata.insert(
        REPLAY_OF_METADATA.to_owned(),
        Value::String(original.id.to_string()),
    );
    let replay_call_id = CallId::generate();
    let incoming = Incoming {
        call_id: replay_call_id.clone(),
        tenant_id: tenant.clone(),
        key_id: original.key_id.clone(),
        endpoint: endpoint_name,
        received: Instant::now(),
        created_at: now,
        raw: bytes::Bytes::from(original.request_body.clone()),
        body,
        attribution: Attribution {
            end_user: original.end_user.clone(),
            session_id: original.session_id.clone(),
            metadata: Some(Value::Object(metadata)),
        },
    };
    match proxy.handle(incoming).await {
        ProxyOutcome::Stream(mut stream) => {
            // Drain it: the relay records the call before it sends the last event.
            while let Some(item) = stream.next().await {
                if item.is_err() {
                    break;
                }
            }
        }
        ProxyOutcome::Error(e) if e.code == Code::RecordingFailed => return Err(e),
        ProxyOutcome::Full { .. } | ProxyOutcome::Error(_) => {}
    }
    let store = proxy.store.clone();
    let (t, rid) = (tenant.clone(), replay_call_id.clone());
    let replayed = run_blocking(move || store.get_call(Some(&t), &rid))
        .await
        .map_err(|e| {
            ApiError::internal(format!(
                "the replay call was not found after it was recorded: {e}"
            ))
        })?;

    let original_outcome = ResponseOutcome::of_call(&original);
    let replay_outcome = ResponseOutcome::of_call(&replayed);
    let comparison = compare(
        Side::of(&original, &original_outcome),
        Side::of(&replayed, &replay_outcome),
    );
    let id = ReplayId::generate();
    let side = |c: &CallRecord, content: &Option<String>| {
        json!({
            "call_id": c.id,
            "created_at": c.created_at,
            "status": c.status,
            "blocked": c.blocked,
            "blocked_by": c.blocked_by,
            "model": c.model,
            "request_sha256": c.request_sha256,
            "response_sha256": c.response_sha256,
            "content_sha256": content,
            "latency_us": c.latency_us,
            "upstream_latency_us": c.upstream_latency_us,
            "total_tokens": c.total_tokens,
            "cost": c.cost,
            "decisions": c.decisions,
        })
    };
    let report = json!({
        "id": id,
        "object": "replay",
        "mode": "upstream",
        "call_id": original.id,
        "replay_call_id": replayed.id,
        "replay_of": original.id,
        "created_at": now,
        "upstream_called": replayed.upstream_attempts > 0,
        "policy_version": super::policy_version(&proxy.guard, tenant),
        "match_level": comparison.match_level,
        "model_drift": comparison.drift,
        "comparison": {
            "same_decisions": comparison.same_decisions,
            "same_status": comparison.same_status,
            "same_finish_reasons": comparison.same_finish_reasons,
            "same_tool_calls": comparison.same_tool_calls,
            "same_text": comparison.same_text,
            "same_normalized_text": comparison.same_normalized_text,
            "notes": comparison.notes,
        },
        "original": side(&original, &comparison.original_content_sha256),
        "replay": side(&replayed, &comparison.replay_content_sha256),
    });
    store_replay(
        proxy,
        ReplayRecord {
            id,
            tenant_id: tenant.clone(),
            call_id: original.id.clone(),
            replay_call_id: Some(replayed.id.clone()),
            mode: ReplayMode::Upstream,
            match_level: Some(comparison.match_level),
            model_drift: comparison.drift.detected,
            created_at: now,
            report: report.clone(),
        },
    )
    .await?;
    Ok(report)
}
