//! Issuing, reading and checking certificates for calls, replays and incidents.
//!
//! A certificate is built from the stored records, signed with the instance key
//! (`domain::certificate`) and stored exactly as handed out, so the copy a person
//! downloads and the one the public check reads are the same bytes.

use crate::domain::certificate::{
    CERTIFICATE_VERSION, CallEvidence, CertSigningKey, Certificate, CertificateError,
    CertificateKind, IncidentEvidence, ReplayEvidence, verify,
};
use crate::domain::chain::ChainKind;
use crate::domain::incident::distinct_calls;
use crate::domain::replay::ResponseOutcome;
use crate::domain::{CallId, CallRecord, CertificateId, IncidentId, ReplayId, TenantId, Timestamp};
use crate::error::{ApiError, missing};
use crate::store::{DynStore, StoreError, StoredCertificate, run_blocking};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a certificate is requested for.
#[derive(Debug, Clone)]
pub enum Subject {
    Call(CallId),
    Replay(ReplayId),
    Incident(IncidentId),
}

/// The most calls an incident certificate lists.
const INCIDENT_CALLS: u32 = 1_000;

pub fn call_evidence(c: &CallRecord) -> CallEvidence {
    CallEvidence {
        call_id: c.id.clone(),
        created_at: c.created_at.to_rfc3339(),
        model: c.model.clone(),
        status: c.status,
        request_sha256: c.request_sha256.clone(),
        response_sha256: c.response_sha256.clone(),
        content_sha256: ResponseOutcome::of_call(c).content_sha256(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    run_blocking(f).await
}

/// Builds, signs and stores a certificate for `subject` of `tenant`. Another tenant's id
/// is "not found"; nothing is stored on error.
pub async fn issue(
    store: &DynStore,
    key: &CertSigningKey,
    policy_version: String,
    tenant: &TenantId,
    subject: Subject,
) -> Result<Certificate, ApiError> {
    let now = Timestamp::now();
    let public = key.public();
    let mut cert = Certificate {
        version: CERTIFICATE_VERSION,
        certificate_id: CertificateId::generate(),
        kind: CertificateKind::Call,
        tenant_id: tenant.clone(),
        subject_id: String::new(),
        original: None,
        replay: None,
        incident: None,
        model: None,
        policy_version,
        match_level: None,
        instance_id: public.instance_id(),
        issued_at: now.to_rfc3339(),
        chain_head: None,
        public_key: String::new(),
        signature: String::new(),
    };
    match subject {
        Subject::Call(id) => {
            let (s, t, i) = (store.clone(), tenant.clone(), id.clone());
            let call = blocking(move || s.get_call(Some(&t), &i))
                .await
                .map_err(missing("call", id.as_str()))?;
            cert.kind = CertificateKind::Call;
            cert.subject_id = call.id.to_string();
            cert.model = call.model.clone();
            cert.original = Some(call_evidence(&call));
        }
        Subject::Replay(id) => {
            let (s, t, i) = (store.clone(), tenant.clone(), id.clone());
            let (replay, original, replayed) = blocking(move || {
                let r = s.get_replay(&t, &i)?;
                let original = s.get_call(Some(&t), &r.call_id)?;
                let replayed = r
                    .replay_call_id
                    .as_ref()
                    .map(|c| s.get_call(Some(&t), c))
                    .transpose()?;
                Ok((r, original, replayed))
            })
            .await
            .map_err(missing("replay", id.as_str()))?;
            cert.kind = CertificateKind::Replay;
            cert.subject_id = replay.id.to_string();
            cert.model = replayed
                .as_ref()
                .and_then(|c| c.model.clone())
                .or_else(|| original.model.clone());
            cert.match_level = replay.match_level;
            cert.original = Some(call_evidence(&original));
            let flag = |k: &str| replay.report.get(k).and_then(Value::as_bool);
            cert.replay = Some(ReplayEvidence {
                replay_id: replay.id.clone(),
                mode: replay.mode.as_str().to_owned(),
                replayed_at: replay.created_at.to_rfc3339(),
                call: replayed.as_ref().map(call_evidence),
                model_drift: replayed.as_ref().map(|_| replay.model_drift),
                would_block: flag("would_block"),
                decisions_differ: flag("differs"),
            });
        }
        Subject::Incident(id) => {
            let (s, t, i) = (store.clone(), tenant.clone(), id.clone());
            let (incident, signals) = blocking(move || {
                let inc = s.get_incident(Some(&t), &i)?;
                let signals = s.incident_signals(Some(&t), &i, INCIDENT_CALLS)?;
                Ok((inc, signals))
            })
            .await
            .map_err(missing("incident", id.as_str()))?;
            let record = serde_json::to_string(&incident).map_err(ApiError::internal)?;
            cert.kind = CertificateKind::Incident;
            cert.subject_id = incident.id.to_string();
            cert.incident = Some(IncidentEvidence {
                incident_id: incident.id.clone(),
                rule: incident.rule.clone(),
                status: incident.status.as_str().to_owned(),
                severity: incident.severity.as_str().to_owned(),
                first_signal_at: incident.first_signal_at.to_rfc3339(),
                last_signal_at: incident.last_signal_at.to_rfc3339(),
                signal_count: incident.signal_count,
                record_sha256: hex::encode(Sha256::digest(record.as_bytes())),
                call_ids: distinct_calls(signals),
            });
        }
    }
    // The head of the tenant's call chain as of now: whoever holds the certificate can
    // later ask `audit verify` whether the chain still leads to it.
    let (s, t) = (store.clone(), tenant.clone());
    let head = blocking(move || s.chain_head(ChainKind::Calls, Some(&t))).await?;
    cert.chain_head = head.map(|h| h.label());
    let cert = cert
        .sign(key)
        .map_err(|e| ApiError::internal(format!("signing a certificate failed: {e}")))?;
    let row = StoredCertificate {
        id: cert.certificate_id.clone(),
        tenant_id: tenant.clone(),
        kind: cert.kind,
        subject_id: cert.subject_id.clone(),
        issued_at: now,
        body: serde_json::to_string(&cert).map_err(ApiError::internal)?,
    };
    let s = store.clone();
    blocking(move || s.insert_certificate(&row)).await?;
    Ok(cert)
}

/// The result of the public check: no content, only whether it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublicCheck {
    pub valid: bool,
    pub kind: CertificateKind,
    /// RFC 3339, UTC.
    pub issued_at: String,
    pub reason: String,
}

/// Checks a stored certificate against this instance's key.
pub fn check_stored(row: &StoredCertificate, key: &CertSigningKey) -> PublicCheck {
    let result = verify(row.body.as_bytes(), Some(&key.public())).and_then(|c| {
        if c.certificate_id == row.id {
            Ok(c)
        } else {
            Err(CertificateError::Invalid(
                "the stored certificate carries another certificate's id".into(),
            ))
        }
    });
    PublicCheck {
        valid: result.is_ok(),
        kind: row.kind,
        issued_at: row.issued_at.to_rfc3339(),
        reason: match result {
            Ok(_) => "the signature is valid and was made with this instance's key".into(),
            Err(e) => e.to_string(),
        },
    }
}
