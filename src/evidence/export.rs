//! Incident exports: the signed JSON evidence pack, the PDF report and the CSV of calls.
//!
//! This layer gathers the records through the store (the incident, its events and
//! signals, the calls among them, their links in the tenant's call chain), issues a fresh
//! incident certificate, and hands everything to the pure formats: `domain::evidence_pack`
//! (pack and CSV) and [`super::pdf`] (the report). It holds no format rules of its own.
//!
//! [`build_export`] is the one entry point, callable from an HTTP handler or a background
//! job alike; every exported call passes through [`exported_call`].

use super::certificates::{self, Subject};
use super::pdf;
use crate::domain::certificate::{CertSigningKey, Certificate};
use crate::domain::chain::{ChainHead, ChainKind, GENESIS, LinkVersion};
use crate::domain::evidence_pack::{
    self, EvidencePack, ExportedCall, PACK_FORMAT, PACK_VERSION, created_at_of_encoded,
};
use crate::domain::incident::{IncidentEvent, StoredSignal};
use crate::domain::redaction::Redactor;
use crate::domain::{CallId, CallRecord, Incident, IncidentId, ParseError, TenantId, Timestamp};
use crate::error::{ApiError, missing};
use crate::incidents::timeline;
use crate::store::{DynStore, Store, StoreError, StoreResult, run_blocking};
use std::collections::{HashMap, HashSet};

/// The most calls one export holds (the pack says when there were more).
pub const EXPORT_CALLS: u32 = 10_000;

/// How far before the earliest and after the latest exported call the chain is searched:
/// a call's link is appended when it is recorded, which is after it arrived (its
/// `created_at`) by up to its latency.
const CHAIN_SLACK_MS: i64 = 15 * 60 * 1000;

/// Chain links read per query while looking for the exported calls.
const CHAIN_PAGE: u32 = 500;

crate::domain::named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ExportFormat {
        Json => "json",
        Pdf => "pdf",
        Csv => "csv",
    }
}

impl ExportFormat {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Self::from_name(&s.to_ascii_lowercase()).ok_or_else(|| {
            ParseError::new(format!(
                "unknown export format '{}': use format=json (signed evidence pack), format=pdf (report) or format=csv (one row per call)",
                s.chars().take(32).collect::<String>()
            ))
        })
    }
}

/// A finished export, ready to send or store.
#[derive(Debug, Clone)]
pub struct ExportFile {
    pub content_type: &'static str,
    pub filename: String,
    pub bytes: Vec<u8>,
    /// The incident certificate issued with the export (JSON and PDF).
    pub certificate_id: Option<String>,
    pub calls: usize,
}

/// Every call leaves the instance through here: the tenant's redaction as it is now is
/// applied (it may be stricter than when the call was stored). A call whose exported
/// fields then differ from what was chained gets an `omitted` chain proof instead of
/// failing the export; the pack's signature still covers what it holds.
fn exported_call(mut call: CallRecord, redactor: Option<&Redactor>) -> CallRecord {
    if let Some(r) = redactor {
        r.apply(&mut call);
    }
    call
}

/// What an export is made from.
struct Gathered {
    incident: Incident,
    events: Vec<IncidentEvent>,
    signals: Vec<StoredSignal>,
    /// Oldest signal first; already passed through [`exported_call`].
    calls: Vec<CallRecord>,
    truncated: bool,
    /// The people its history names, to show by email.
    people: timeline::People,
}

fn gather(
    store: &dyn Store,
    tenant: &TenantId,
    id: &IncidentId,
    redactor: Option<&Redactor>,
) -> StoreResult<Gathered> {
    let incident = store.get_incident(Some(tenant), id)?;
    let events = store.incident_events(Some(tenant), id)?;
    let signals = store.incident_signals(Some(tenant), id, EXPORT_CALLS)?;
    let mut seen: HashSet<&CallId> = HashSet::new();
    let mut calls = Vec::new();
    for c in signals.iter().filter_map(|s| s.call_id.as_ref()) {
        if !seen.insert(c) {
            continue;
        }
        match store.get_call(Some(tenant), c) {
            Ok(call) => calls.push(exported_call(call, redactor)),
            // Removed by retention since the signal: the pack has what still exists.
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let truncated = signals.len() >= EXPORT_CALLS as usize
        || incident.call_count > i64::try_from(calls.len()).unwrap_or(i64::MAX);
    let people = timeline::People::of_incidents(store, tenant, &[&incident], &events)?;
    Ok(Gathered {
        incident,
        events,
        signals,
        calls,
        truncated,
        people,
    })
}

/// Call id → its stored link `(seq, prev_hash, hash, version)`.
type Links = HashMap<String, (i64, String, String, LinkVersion)>;

/// The stored links `(seq, prev_hash, hash, version)` of `calls` in the tenant's call chain, and
/// the chain head. The chain is searched only around the calls' times: a binary search
/// by time for the first link, then a walk forward until every call is found or the
/// links are past the last call's time.
fn find_links(
    store: &dyn Store,
    tenant: &TenantId,
    calls: &[CallRecord],
) -> StoreResult<(Links, Option<ChainHead>)> {
    let head = store.chain_head(ChainKind::Calls, Some(tenant))?;
    let mut found = HashMap::new();
    let (Some(end), Some(first), Some(last)) = (
        head.as_ref().map(|h| h.seq),
        calls.iter().map(|c| c.created_at.millis()).min(),
        calls.iter().map(|c| c.created_at.millis()).max(),
    ) else {
        return Ok((found, head));
    };
    let (from, until) = (
        first.saturating_sub(CHAIN_SLACK_MS),
        last.saturating_add(CHAIN_SLACK_MS),
    );
    let time_at = |seq: i64| -> StoreResult<Option<i64>> {
        let link = store.chain_links(ChainKind::Calls, Some(tenant), seq - 1, 1)?;
        Ok(link.first().and_then(|l| created_at_of_encoded(&l.encoded)))
    };
    // The first link at or after `from` (times along the chain are nearly sorted).
    let (mut lo, mut hi) = (1i64, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match time_at(mid)? {
            Some(t) if t < from => lo = mid + 1,
            _ => hi = mid,
        }
    }
    let mut prev = if lo <= 1 {
        GENESIS.to_owned()
    } else {
        store
            .chain_links(ChainKind::Calls, Some(tenant), lo - 2, 1)?
            .first()
            .map_or_else(|| GENESIS.to_owned(), |l| l.hash.clone())
    };
    let wanted: HashSet<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    let mut after = lo - 1;
    'walk: loop {
        let page = store.chain_links(ChainKind::Calls, Some(tenant), after, CHAIN_PAGE)?;
        if page.is_empty() {
            break;
        }
        for link in page {
            if wanted.contains(link.id.as_str()) {
                found.insert(
                    link.id.clone(),
                    (link.seq, prev.clone(), link.hash.clone(), link.version),
                );
            }
            after = link.seq;
            let past = created_at_of_encoded(&link.encoded).is_some_and(|t| t > until);
            prev = link.hash;
            if found.len() == wanted.len() || past || after >= end {
                break 'walk;
            }
        }
    }
    Ok((found, head))
}

/// Builds the export of `incident_id` of `tenant` in `format`. Another tenant's incident
/// is "not found". JSON and PDF issue (and store) a fresh incident certificate.
pub async fn build_export(
    store: &DynStore,
    key: &CertSigningKey,
    policy_version: String,
    tenant: &TenantId,
    incident_id: &IncidentId,
    format: ExportFormat,
    redactor: Option<std::sync::Arc<Redactor>>,
) -> Result<ExportFile, ApiError> {
    let (s, t, i) = (store.clone(), tenant.clone(), incident_id.clone());
    let g = run_blocking(move || gather(s.as_ref(), &t, &i, redactor.as_deref()))
        .await
        .map_err(missing("incident", incident_id.as_str()))?;
    let calls = g.calls.len();
    let certify = || {
        certificates::issue(
            store,
            key,
            policy_version.clone(),
            tenant,
            Subject::Incident(incident_id.clone()),
        )
    };
    let (content_type, bytes, certificate_id) = match format {
        ExportFormat::Csv => {
            let bytes = evidence_pack::calls_csv(&g.calls).into_bytes();
            ("text/csv; charset=utf-8", bytes, None)
        }
        ExportFormat::Json => {
            let cert = certify().await?;
            let certificate_id = Some(cert.certificate_id.to_string());
            let (s, t, k) = (store.clone(), tenant.clone(), key.clone());
            let bytes = run_blocking(move || {
                let (links, head) = find_links(s.as_ref(), &t, &g.calls)?;
                Ok::<_, StoreError>(pack_bytes(g, links, head, cert, &k))
            })
            .await??;
            ("application/json", bytes, certificate_id)
        }
        ExportFormat::Pdf => {
            let cert = certify().await?;
            let certificate_id = Some(cert.certificate_id.to_string());
            let bytes = run_blocking(move || pdf_bytes(&g, &cert)).await;
            ("application/pdf", bytes, certificate_id)
        }
    };
    Ok(ExportFile {
        content_type,
        filename: format!("incident-{incident_id}.{}", format.as_str()),
        bytes,
        certificate_id,
        calls,
    })
}

fn incident_timeline(g: &Gathered) -> timeline::IncidentTimeline {
    let last_call = g.signals.iter().rev().find_map(|s| s.call_id.as_ref());
    let example = last_call.and_then(|id| g.calls.iter().find(|c| &c.id == id));
    timeline::for_incident_naming(&g.incident, &g.signals, &g.events, example, &g.people)
}

fn pack_bytes(
    g: Gathered,
    links: Links,
    head: Option<ChainHead>,
    certificate: Certificate,
    key: &CertSigningKey,
) -> Result<Vec<u8>, ApiError> {
    let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(ApiError::internal);
    let timeline = incident_timeline(&g);
    let policy_evaluations = evidence_pack::policy_evaluations(&g.calls);
    let calls_total = g
        .incident
        .call_count
        .max(i64::try_from(g.calls.len()).unwrap_or(i64::MAX));
    let pack = EvidencePack {
        format: PACK_FORMAT.to_owned(),
        version: PACK_VERSION,
        generated_at: Timestamp::now().to_rfc3339(),
        instance_id: key.public().instance_id(),
        tenant_id: g.incident.tenant_id.to_string(),
        incident: json(serde_json::to_value(&g.incident))?,
        events: json(serde_json::to_value(&g.events))?,
        timeline: json(serde_json::to_value(&timeline))?,
        calls_total,
        calls_truncated: g.truncated,
        calls: g
            .calls
            .into_iter()
            .map(|call| {
                let link = links
                    .get(call.id.as_str())
                    .map(|(seq, prev, hash, version)| {
                        (*seq, prev.as_str(), hash.as_str(), *version)
                    });
                let proof = evidence_pack::prove(&call, link);
                ExportedCall { call, proof }
            })
            .collect(),
        policy_evaluations,
        certificate,
        chain_head: head.map(|h| h.label()),
        public_key: String::new(),
        signature: String::new(),
    };
    pack.into_signed_json(key)
        .map_err(|e| ApiError::internal(format!("building the evidence pack failed: {e}")))
}

fn pdf_bytes(g: &Gathered, certificate: &Certificate) -> Vec<u8> {
    let timeline = incident_timeline(g);
    let evaluations = evidence_pack::policy_evaluations(&g.calls);
    pdf::render(&pdf::Report {
        incident: &g.incident,
        timeline: &timeline,
        evaluations: &evaluations,
        certificate,
        calls_exported: g.calls.len(),
        calls_truncated: g.truncated,
        generated_at: Timestamp::now().to_rfc3339(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_unknown_ones_list_the_choices() {
        assert_eq!(ExportFormat::parse("json").unwrap(), ExportFormat::Json);
        assert_eq!(ExportFormat::parse("PDF").unwrap(), ExportFormat::Pdf);
        assert_eq!(ExportFormat::parse("csv").unwrap(), ExportFormat::Csv);
        let err = ExportFormat::parse("xlsx").unwrap_err().0;
        for f in ["json", "pdf", "csv", "xlsx"] {
            assert!(err.contains(f), "{err}");
        }
    }
}
