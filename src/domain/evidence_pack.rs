//! The incident evidence pack: one signed JSON file holding an incident, its timeline, its
//! calls with their decisions, a fresh incident certificate and, for every call, the proof
//! that ties it to the tenant's tamper-evident call chain (`domain::chain`). Also the CSV
//! form of an incident's calls. Pure: building, signing and verifying; gathering the
//! records and choosing what goes in is `evidence::export`.
//!
//! # Format (version 1)
//! A JSON object whose first members are `"format": "agv-evidence-pack"` and
//! `"version": 1` (that is how `agv-server verify` tells a pack from a certificate), then
//! `generated_at`, `instance_id`, `tenant_id`, `incident`, `events`, `timeline`,
//! `calls_total`, `calls_truncated`, `calls` (each `{"call": …, "proof": …}`),
//! `policy_evaluations`, `certificate`, `chain_head`, `public_key` and `signature`.
//!
//! # What the signature covers
//! The pack object **without its `signature` member**, in the canonical JSON of
//! `domain::certificate` (members sorted by key, no whitespace, serde_json string
//! escapes, numbers as serde_json writes them: the shortest form that reads back to the
//! same value), signed with Ed25519 (RFC 8032, verified strictly); `signature` and
//! `public_key` are base64 (standard alphabet, padded) of the 64-byte signature and the
//! raw 32-byte key. Reformatting a pack or reordering its members keeps it valid; changing
//! any value breaks it.
//!
//! # Chain proofs
//! A call's `proof` is `{"seq", "prev_hash", "hash"}`: its link in the tenant's call
//! chain. A verifier recomputes `hash = link_hash(prev_hash, seq, canonical(fields))` from
//! the exported call's fields (see [`call_chain_bytes`], the same encoding the store
//! chains) — so a call changed after export fails its own proof, naming the call, even
//! before the signature is checked. A proof is `{"omitted": "<reason>"}` when the exported
//! fields cannot reproduce the link (a field redacted at export, a call recorded before
//! chains existed); the verifier skips that link and still checks the signature.
//! A proof of a version 2 link (`domain::chain`) also carries `"version": 2`: its hash
//! covers the exported `request_body_sha256` / `response_body_sha256` instead of the
//! bodies, and each body the call still carries must hash to its digest — so a call
//! whose bodies retention removed (`body_pruned_at` set, bodies empty) still proves its
//! link. Without `version`, a proof is version 1 (every pack made before version 2).
//! `chain_head` (`<seq>:<hash>`) is the tenant's chain head when the pack was made: an
//! operator can run `agv-server audit verify` on the instance to show the chain still
//! leads to it.

use super::certificate::{
    CertSigningKey, Certificate, CertificateError, CertificateKind, MALFORMED_SIGNATURE, PublicKey,
    SignatureFault, signed_bytes,
};
use super::chain::{self, Field, LinkVersion};
use super::{CallRecord, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The `format` member of every pack.
pub const PACK_FORMAT: &str = "agv-evidence-pack";
/// The pack format this code writes and reads.
pub const PACK_VERSION: u64 = 1;

/// A call's place in its tenant's chain, or why the pack cannot show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChainProof {
    Linked {
        seq: i64,
        /// The hash of link `seq - 1` (64 zeros for the first link).
        prev_hash: String,
        /// This call's link hash as stored.
        hash: String,
        /// The link's formula: 1 (absent) or 2 (see the module docs).
        #[serde(default = "version_one", skip_serializing_if = "is_version_one")]
        version: i64,
    },
    Omitted {
        /// Why no proof is given (e.g. a field was redacted at export).
        omitted: String,
    },
}

fn version_one() -> i64 {
    1
}

fn is_version_one(v: &i64) -> bool {
    *v == 1
}

/// One exported call and its proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedCall {
    pub call: CallRecord,
    pub proof: ChainProof,
}

/// How often one policy decided each way over the incident's exported calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEvaluation {
    pub policy: String,
    pub pass: u64,
    pub block: u64,
    pub throttle: u64,
    pub freeze: u64,
}

/// The pack. Member order is the documented one; the signature covers the canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidencePack {
    pub format: String,
    pub version: u64,
    /// RFC 3339, UTC, milliseconds.
    pub generated_at: String,
    pub instance_id: String,
    pub tenant_id: String,
    /// The incident record as `GET /v1/incidents/{id}` shows it.
    pub incident: Value,
    /// The incident's history (opened, acknowledged, notes, …), oldest first.
    pub events: Value,
    /// The decision timeline, root cause and summary (`GET /v1/incidents/{id}/timeline`).
    pub timeline: Value,
    /// Distinct calls among the incident's signals (may exceed the calls exported).
    pub calls_total: i64,
    /// True when more calls exist than the pack holds.
    pub calls_truncated: bool,
    pub calls: Vec<ExportedCall>,
    pub policy_evaluations: Vec<PolicyEvaluation>,
    /// A certificate for the incident, issued with the pack.
    pub certificate: Certificate,
    /// The tenant's call chain head when the pack was made, `<seq>:<hash>`.
    pub chain_head: Option<String>,
    pub public_key: String,
    pub signature: String,
}

/// Why a pack is not valid; each message names what is wrong and, where it helps, what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error(
        "the evidence pack is not valid JSON ({0}); it may be truncated — use the complete file as downloaded"
    )]
    NotJson(String),
    #[error(
        "unknown evidence pack version {0}; this agv-server understands version {PACK_VERSION} — use a newer agv-server to verify it"
    )]
    UnknownVersion(String),
    #[error("the evidence pack is malformed: {0}")]
    Invalid(String),
    #[error(
        "wrong key: the evidence pack was signed with public key {found}, not with the trusted key {trusted}"
    )]
    WrongKey { found: String, trusted: String },
    #[error(
        "call {call_id} (chain seq {seq}) does not match its chain proof: {reason} — the call's exported fields were changed after export"
    )]
    CallChanged {
        call_id: String,
        seq: i64,
        reason: String,
    },
    #[error("the embedded incident certificate is not valid: {0}")]
    Certificate(String),
    #[error(
        "bad signature: the pack's signature does not match its contents — a field was changed after export, or the signature belongs to another pack"
    )]
    BadSignature,
}

/// The canonical chain encoding of a call's fields, exactly as the store links it: every
/// stored column of `calls` in `CALL_COLUMNS` order (see `domain::chain`), with JSON
/// members serialised by serde_json, money in nano-dollars, booleans as 0/1 and U+0000 in
/// text stored as U+FFFD.
pub fn call_chain_bytes(c: &CallRecord) -> Result<Vec<u8>, String> {
    call_chain_bytes_as(c, LinkVersion::V1)
}

/// The canonical chain encoding of a call's fields for a link of `version`: for v2, the
/// stored bodies' digests in place of the bodies (an error when the call carries none).
pub fn call_chain_bytes_as(c: &CallRecord, version: LinkVersion) -> Result<Vec<u8>, String> {
    fn text(s: &str) -> Cow<'_, str> {
        if s.contains('\0') {
            Cow::Owned(s.replace('\0', "\u{FFFD}"))
        } else {
            Cow::Borrowed(s)
        }
    }
    fn opt(s: &Option<String>) -> Option<Cow<'_, str>> {
        s.as_deref().map(text)
    }
    let json_err = |e: serde_json::Error| format!("call {} cannot be serialised: {e}", c.id);
    let metadata = c
        .metadata
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(json_err)?;
    let decisions = serde_json::to_string(&c.decisions).map_err(json_err)?;
    let (endpoint, model, end_user, session) = (
        text(&c.endpoint),
        opt(&c.model),
        opt(&c.end_user),
        opt(&c.session_id),
    );
    let (request, request_sha, response, response_sha) = (
        text(&c.request_body),
        text(&c.request_sha256),
        opt(&c.response_body),
        opt(&c.response_sha256),
    );
    let (error, blocked_by, upstream) = (opt(&c.error), opt(&c.blocked_by), opt(&c.upstream));
    let (request_field, response_field) = match version {
        LinkVersion::V1 => (Field::Text(&request), Field::from(response.as_deref())),
        LinkVersion::V2 => (
            Field::Text(c.request_body_sha256.as_deref().ok_or_else(|| {
                format!(
                    "call {} has a version 2 chain link but no request_body_sha256",
                    c.id
                )
            })?),
            Field::from(c.response_body_sha256.as_deref()),
        ),
    };
    let fields = [
        Field::Text(c.id.as_str()),
        Field::Text(c.tenant_id.as_str()),
        Field::Text(c.key_id.as_str()),
        Field::Int(c.created_at.millis()),
        Field::Text(&endpoint),
        Field::from(model.as_deref()),
        Field::Int(i64::from(c.stream)),
        Field::from(end_user.as_deref()),
        Field::from(session.as_deref()),
        Field::from(metadata.as_deref()),
        request_field,
        Field::Int(i64::from(c.request_truncated)),
        Field::Text(&request_sha),
        response_field,
        Field::Int(i64::from(c.response_truncated)),
        Field::from(response_sha.as_deref()),
        Field::Int(i64::from(c.status)),
        Field::from(error.as_deref()),
        Field::Int(i64::from(c.blocked)),
        Field::from(blocked_by.as_deref()),
        Field::Text(&decisions),
        Field::from(c.prompt_tokens),
        Field::from(c.completion_tokens),
        Field::from(c.cached_tokens),
        Field::from(c.total_tokens),
        Field::from(c.cost.map(super::Money::nanos)),
        Field::Int(c.latency_us),
        Field::from(c.upstream_latency_us),
        Field::Int(c.enforcement_us),
        Field::Int(i64::from(c.upstream_attempts)),
        Field::from(upstream.as_deref()),
    ];
    let mut out = Vec::with_capacity(c.request_body.len() + 1024);
    chain::encode(&fields, &mut out);
    Ok(out)
}

/// Reads the `created_at` (milliseconds) out of a call's stored chain encoding: the fourth
/// field, after three text fields. `None` when the bytes are not a call's encoding.
pub fn created_at_of_encoded(encoded: &[u8]) -> Option<i64> {
    let mut at = 0usize;
    for _ in 0..3 {
        if *encoded.get(at)? != 2 {
            return None;
        }
        let len: [u8; 8] = encoded.get(at + 1..at + 9)?.try_into().ok()?;
        at = at
            .checked_add(9)?
            .checked_add(usize::try_from(u64::from_be_bytes(len)).ok()?)?;
    }
    if *encoded.get(at)? != 1 {
        return None;
    }
    let v: [u8; 8] = encoded.get(at + 1..at + 9)?.try_into().ok()?;
    Some(i64::from_be_bytes(v))
}

/// For a v2 link: each body the exported call carries must hash to its digest (after
/// retention, an empty or absent body is expected).
fn check_bodies(c: &CallRecord) -> Result<(), String> {
    let pruned = c.body_pruned_at.is_some();
    let stored = |s: &str| s.replace('\0', "\u{FFFD}");
    let request = stored(&c.request_body);
    let response = c.response_body.as_deref().map(stored);
    chain::check_body(
        "request",
        Some(&request),
        c.request_body_sha256.as_deref(),
        pruned,
    )
    .and_then(|()| {
        chain::check_body(
            "response",
            response.as_deref(),
            c.response_body_sha256.as_deref(),
            pruned,
        )
    })
    .map_err(|m| m.reason)
}

/// The proof for an exported call, given its stored link `(seq, prev_hash, hash,
/// version)`: linked when the exported fields reproduce the stored hash (and, for v2, the
/// bodies their digests), omitted (with the reason) when not.
pub fn prove(call: &CallRecord, link: Option<(i64, &str, &str, LinkVersion)>) -> ChainProof {
    let Some((seq, prev, hash, version)) = link else {
        return ChainProof::Omitted {
            omitted: "the call is not in the tenant's call chain near its time (recorded before chains existed, or the chain was not readable)".into(),
        };
    };
    match call_chain_bytes_as(call, version) {
        Ok(bytes) if chain::link_hash_as(version, prev, seq, &bytes) == hash => {
            if version == LinkVersion::V2
                && let Err(why) = check_bodies(call)
            {
                return ChainProof::Omitted {
                    omitted: format!(
                        "the exported bodies differ from those chained at seq {seq} (redacted at export, or the stored record changed: run `agv-server audit verify`): {why}"
                    ),
                };
            }
            ChainProof::Linked {
                seq,
                prev_hash: prev.to_owned(),
                hash: hash.to_owned(),
                version: version.number(),
            }
        }
        Ok(_) => ChainProof::Omitted {
            omitted: format!(
                "the exported fields differ from those chained at seq {seq} (redacted at export, or the stored record changed: run `agv-server audit verify`)"
            ),
        },
        Err(e) => ChainProof::Omitted { omitted: e },
    }
}

/// Pass / block / throttle / freeze counts per policy over `calls`, by policy id.
pub fn policy_evaluations<'a>(
    calls: impl IntoIterator<Item = &'a CallRecord>,
) -> Vec<PolicyEvaluation> {
    let mut by: BTreeMap<&str, PolicyEvaluation> = BTreeMap::new();
    for c in calls {
        for d in &c.decisions {
            let e = by
                .entry(d.policy.as_str())
                .or_insert_with(|| PolicyEvaluation {
                    policy: d.policy.clone(),
                    ..PolicyEvaluation::default()
                });
            match d.outcome {
                Outcome::Pass => e.pass += 1,
                Outcome::Block => e.block += 1,
                Outcome::Throttle => e.throttle += 1,
                Outcome::Freeze => e.freeze += 1,
            }
        }
    }
    by.into_values().collect()
}

fn unserialisable(e: serde_json::Error) -> PackError {
    PackError::Invalid(format!("cannot serialise: {e}"))
}

impl EvidencePack {
    /// The pack as a JSON object with `public_key` set, and its signature.
    fn signed_object(&self, key: &CertSigningKey) -> Result<(Value, String), PackError> {
        let mut value = serde_json::to_value(self).map_err(unserialisable)?;
        let Value::Object(map) = &mut value else {
            return Err(PackError::Invalid(
                "a pack must serialise to an object".into(),
            ));
        };
        // Members keep their place when replaced (the map preserves insertion order).
        map.insert("public_key".into(), Value::String(key.public().to_base64()));
        let signature = key.sign_detached(&signed_bytes(map));
        Ok((value, signature))
    }

    /// Fills in `public_key` and `signature`.
    pub fn sign(mut self, key: &CertSigningKey) -> Result<Self, PackError> {
        let (_, signature) = self.signed_object(key)?;
        self.public_key = key.public().to_base64();
        self.signature = signature;
        Ok(self)
    }

    /// Signs the pack and writes it as pretty JSON, as handed out, serialising it once.
    pub fn into_signed_json(self, key: &CertSigningKey) -> Result<Vec<u8>, PackError> {
        let (mut value, signature) = self.signed_object(key)?;
        value["signature"] = Value::String(signature);
        serde_json::to_vec_pretty(&value).map_err(unserialisable)
    }

    /// Pretty JSON, as handed out.
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, PackError> {
        serde_json::to_vec_pretty(self).map_err(unserialisable)
    }
}

/// Whether `bytes` look like an evidence pack (rather than a certificate), also when they
/// are truncated: the `format` member comes first.
pub fn looks_like_pack(bytes: &[u8]) -> bool {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) {
        return map.get("format").and_then(Value::as_str) == Some(PACK_FORMAT);
    }
    let head = &bytes[..bytes.len().min(512)];
    let needle = format!("\"{PACK_FORMAT}\"");
    head.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Checks a pack's bytes: its shape and version, the key (`trusted` when given), every
/// call's chain proof, the embedded certificate, then the signature. Returns the pack and
/// how many proofs were omitted.
pub fn verify(
    bytes: &[u8],
    trusted: Option<&PublicKey>,
) -> Result<(EvidencePack, usize), PackError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| PackError::NotJson(e.to_string()))?;
    let Value::Object(map) = &value else {
        return Err(PackError::Invalid("expected a JSON object".into()));
    };
    if map.get("format").and_then(Value::as_str) != Some(PACK_FORMAT) {
        return Err(PackError::Invalid(format!(
            "its \"format\" member is not \"{PACK_FORMAT}\""
        )));
    }
    match map.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(PACK_VERSION) => {}
        Some(other) => return Err(PackError::UnknownVersion(other.to_string())),
        None => return Err(PackError::Invalid("it has no \"version\" member".into())),
    }
    // The signed bytes are taken before the typed read consumes the value.
    let signed = signed_bytes(map);
    let pack: EvidencePack =
        serde_json::from_value(value).map_err(|e| PackError::Invalid(e.to_string()))?;
    let key = PublicKey::parse(&pack.public_key)
        .map_err(|e| PackError::Invalid(format!("public_key: {e}")))?;
    if let Some(t) = trusted
        && *t != key
    {
        return Err(PackError::WrongKey {
            found: key.to_base64(),
            trusted: t.to_base64(),
        });
    }
    let mut omitted = 0;
    for (i, ex) in pack.calls.iter().enumerate() {
        let ChainProof::Linked {
            seq,
            prev_hash,
            hash,
            version,
        } = &ex.proof
        else {
            omitted += 1;
            continue;
        };
        let version = LinkVersion::from_number(*version).ok_or_else(|| {
            PackError::UnknownVersion(format!("(chain link version {version} of calls[{i}])"))
        })?;
        let bytes = call_chain_bytes_as(&ex.call, version)
            .map_err(|e| PackError::Invalid(format!("calls[{i}]: {e}")))?;
        let expected = chain::link_hash_as(version, prev_hash, *seq, &bytes);
        let changed = |reason| PackError::CallChanged {
            call_id: ex.call.id.to_string(),
            seq: *seq,
            reason,
        };
        if expected != *hash {
            return Err(changed(format!(
                "its fields hash to {expected}, the chain link is {hash}"
            )));
        }
        if version == LinkVersion::V2 {
            check_bodies(&ex.call).map_err(changed)?;
        }
    }
    let cert_bytes = serde_json::to_vec(&pack.certificate)
        .map_err(|e| PackError::Invalid(format!("certificate: {e}")))?;
    super::certificate::verify(&cert_bytes, Some(&key)).map_err(|e| match e {
        CertificateError::BadSignature => PackError::Certificate(
            "its signature does not match its contents (a certificate field was changed)".into(),
        ),
        other => PackError::Certificate(other.to_string()),
    })?;
    let incident_id = pack.incident.get("id").and_then(Value::as_str);
    if pack.certificate.kind != CertificateKind::Incident
        || incident_id != Some(pack.certificate.subject_id.as_str())
    {
        return Err(PackError::Certificate(
            "it does not certify the pack's incident".into(),
        ));
    }
    key.check(&signed, &pack.signature)
        .map_err(|fault| match fault {
            SignatureFault::Malformed => PackError::Invalid(MALFORMED_SIGNATURE.into()),
            SignatureFault::Mismatch => PackError::BadSignature,
        })?;
    Ok((pack, omitted))
}

/// The CSV header of [`calls_csv`].
pub const CSV_HEADER: &str = "id,created_at,key_id,end_user,session_id,model,status,blocked,blocked_by,prompt_tokens,completion_tokens,total_tokens,cost_usd,latency_ms,request_sha256,response_sha256";

/// RFC 4180: a field with a comma, quote, CR or LF is quoted, quotes doubled. A field a
/// spreadsheet would run as a formula (starting with `= + - @`, tab or CR) gets a leading
/// `'` so it reads as text.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    let s: Cow<'_, str> = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        s
    }
}

/// Dollars from nano-dollars, exactly: `0.000123450`.
fn usd(m: super::Money) -> String {
    let n = m.nanos();
    let sign = if n < 0 { "-" } else { "" };
    let a = n.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

/// One row per call, header first, CRLF line ends.
pub fn calls_csv<'a>(calls: impl IntoIterator<Item = &'a CallRecord>) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push_str("\r\n");
    let n = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    for c in calls {
        let fields = [
            c.id.to_string(),
            c.created_at.to_rfc3339(),
            c.key_id.to_string(),
            c.end_user.clone().unwrap_or_default(),
            c.session_id.clone().unwrap_or_default(),
            c.model.clone().unwrap_or_default(),
            c.status.to_string(),
            c.blocked.to_string(),
            c.blocked_by.clone().unwrap_or_default(),
            n(c.prompt_tokens),
            n(c.completion_tokens),
            n(c.total_tokens),
            c.cost.map(usd).unwrap_or_default(),
            format!("{:.3}", c.latency_us as f64 / 1000.0),
            c.request_sha256.clone(),
            c.response_sha256.clone().unwrap_or_default(),
        ];
        let row: Vec<Cow<'_, str>> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::certificate::{self, IncidentEvidence, canonical_json};
    use crate::domain::{Decision, IncidentId, KeyId, Money, TenantId, Timestamp};
    use serde_json::json;

    fn call(tenant: &TenantId, end_user: &str) -> CallRecord {
        let mut d = Decision::pass("dg-002", "within the limit");
        d.value = Some(0.1 + 0.2);
        d.threshold = Some(16_000.0);
        CallRecord {
            model: Some("gpt-4o-mini".into()),
            end_user: Some(end_user.into()),
            metadata: Some(json!({"team": "search", "n": 1.5})),
            request_body: "{\"messages\":[]}\u{0}".into(),
            request_sha256: "ab".repeat(32),
            response_body: Some("{}".into()),
            response_sha256: Some("cd".repeat(32)),
            status: 200,
            decisions: vec![d, Decision::new("dg-005", Outcome::Block, "injection")],
            prompt_tokens: Some(12),
            completion_tokens: Some(34),
            total_tokens: Some(46),
            cost: Some(Money::from_nanos(123_456)),
            latency_us: 812_345,
            upstream_latency_us: Some(800_000),
            enforcement_us: 42,
            upstream_attempts: 1,
            upstream: Some("https://api.openai.com/v1".into()),
            ..CallRecord::new(
                tenant.clone(),
                KeyId::generate(),
                Timestamp::from_millis(1_763_900_000_123),
            )
        }
    }

    /// A signed pack of two chained calls and one whose proof is omitted.
    fn pack(key: &CertSigningKey) -> EvidencePack {
        let tenant = TenantId::generate();
        let incident = IncidentId::generate();
        let calls = [
            call(&tenant, "cust_1"),
            call(&tenant, "cust_2"),
            call(&tenant, "x"),
        ];
        let mut prev = chain::GENESIS.to_owned();
        let mut exported = Vec::new();
        for (i, c) in calls.into_iter().enumerate() {
            let seq = i as i64 + 1;
            let hash = chain::link_hash(&prev, seq, &call_chain_bytes(&c).unwrap());
            let proof = if i == 2 {
                prove(&c, None)
            } else {
                prove(
                    &c,
                    Some((seq, prev.as_str(), hash.as_str(), LinkVersion::V1)),
                )
            };
            prev = hash;
            exported.push(ExportedCall { call: c, proof });
        }
        let cert = Certificate {
            kind: CertificateKind::Incident,
            tenant_id: tenant.clone(),
            subject_id: incident.to_string(),
            original: None,
            incident: Some(IncidentEvidence {
                incident_id: incident.clone(),
                rule: "dg-005".into(),
                status: "open".into(),
                severity: "high".into(),
                first_signal_at: "2026-11-23T18:00:00.000Z".into(),
                last_signal_at: "2026-11-23T18:00:00.000Z".into(),
                signal_count: 3,
                record_sha256: "ee".repeat(32),
                call_ids: exported.iter().map(|e| e.call.id.clone()).collect(),
            }),
            model: None,
            chain_head: Some(format!("3:{prev}")),
            ..certificate::tests::unsigned(key)
        }
        .sign(key)
        .unwrap();
        EvidencePack {
            format: PACK_FORMAT.into(),
            version: PACK_VERSION,
            generated_at: "2026-11-23T18:00:02.000Z".into(),
            instance_id: key.public().instance_id(),
            tenant_id: tenant.to_string(),
            incident: json!({"id": incident, "title": "Prompt injection"}),
            events: json!([]),
            timeline: json!({"steps": [{"value": 0.30000000000000004}]}),
            calls_total: 3,
            calls_truncated: false,
            policy_evaluations: policy_evaluations(exported.iter().map(|e| &e.call)),
            calls: exported,
            certificate: cert,
            chain_head: Some(format!("3:{prev}")),
            public_key: String::new(),
            signature: String::new(),
        }
        .sign(key)
        .unwrap()
    }

    fn text(p: &EvidencePack) -> Vec<u8> {
        p.to_json_pretty().unwrap()
    }

    #[test]
    fn signing_into_json_gives_the_same_pack_as_signing_then_writing() {
        let key = CertSigningKey::generate();
        let mut unsigned = pack(&key);
        unsigned.public_key = String::new();
        unsigned.signature = String::new();
        let once = unsigned.clone().into_signed_json(&key).unwrap();
        assert_eq!(once, text(&unsigned.sign(&key).unwrap()));
        assert!(verify(&once, Some(&key.public())).is_ok());
    }

    #[test]
    fn the_signed_bytes_are_the_canonical_form_without_the_signature() {
        let v = json!({"signature": "x", "b": [1, {"d": 0.5, "c": "\u{e9}"}], "a": null});
        let Value::Object(map) = &v else { panic!() };
        let mut want = String::new();
        canonical_json(
            &json!({"a": null, "b": [1, {"c": "\u{e9}", "d": 0.5}]}),
            &mut want,
        );
        assert_eq!(String::from_utf8(signed_bytes(map)).unwrap(), want);
    }

    #[test]
    fn a_signed_pack_verifies_after_reformatting_and_skips_omitted_proofs() {
        let key = CertSigningKey::generate();
        let p = pack(&key);
        let bytes = text(&p);
        assert!(looks_like_pack(&bytes));
        let (back, omitted) = verify(&bytes, Some(&key.public())).unwrap();
        assert_eq!(back, p);
        assert_eq!(omitted, 1);
        let compact =
            serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
        assert!(verify(&compact, None).is_ok());
        assert_eq!(
            p.policy_evaluations,
            vec![
                PolicyEvaluation {
                    policy: "dg-002".into(),
                    pass: 3,
                    ..PolicyEvaluation::default()
                },
                PolicyEvaluation {
                    policy: "dg-005".into(),
                    block: 3,
                    ..PolicyEvaluation::default()
                },
            ]
        );
    }

    #[test]
    fn an_edited_call_names_the_call_and_other_edits_break_the_signature() {
        let key = CertSigningKey::generate();
        let p = pack(&key);
        // The pack with the member at `pointer` set to `value`, checked.
        let edited = |pointer: &str, value: Value| {
            let mut v: Value = serde_json::from_slice(&text(&p)).unwrap();
            *v.pointer_mut(pointer).unwrap() = value;
            verify(v.to_string().as_bytes(), None).unwrap_err()
        };
        let err = edited("/calls/1/call/status", json!(500));
        match &err {
            PackError::CallChanged { call_id, seq, .. } => {
                assert_eq!(call_id, p.calls[1].call.id.as_str());
                assert_eq!(*seq, 2);
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(p.calls[1].call.id.as_str()));
        // The call without a proof is still covered by the signature.
        assert_eq!(
            edited("/calls/2/call/end_user", json!("someone else")),
            PackError::BadSignature
        );
        assert_eq!(
            edited("/incident/title", json!("Nothing happened")),
            PackError::BadSignature
        );
        assert!(matches!(
            edited("/certificate/incident/signal_count", json!(1)),
            PackError::Certificate(_)
        ));
    }

    #[test]
    fn truncation_versions_and_keys_are_named() {
        let key = CertSigningKey::generate();
        let bytes = text(&pack(&key));
        let cut = &bytes[..bytes.len() / 2];
        assert!(looks_like_pack(cut));
        assert!(matches!(
            verify(cut, None).unwrap_err(),
            PackError::NotJson(_)
        ));
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["version"] = json!(2);
        assert!(matches!(
            verify(v.to_string().as_bytes(), None).unwrap_err(),
            PackError::UnknownVersion(_)
        ));
        let other = CertSigningKey::generate();
        assert!(matches!(
            verify(&bytes, Some(&other.public())).unwrap_err(),
            PackError::WrongKey { .. }
        ));
        assert!(!looks_like_pack(br#"{"version":1,"kind":"call"}"#));
    }

    #[test]
    fn the_encoding_gives_back_its_time_and_csv_defuses_formulas() {
        let tenant = TenantId::generate();
        let c = call(&tenant, "=HYPERLINK(\"x\")");
        assert_eq!(
            created_at_of_encoded(&call_chain_bytes(&c).unwrap()),
            Some(1_763_900_000_123)
        );
        assert_eq!(created_at_of_encoded(&[2, 0]), None);
        let csv = calls_csv([&c]);
        let mut lines = csv.split("\r\n");
        assert_eq!(lines.next(), Some(CSV_HEADER));
        let row = lines.next().unwrap();
        assert!(row.contains(",\"'=HYPERLINK(\"\"x\"\")\","), "{row}");
        assert!(row.contains(",0.000123456,"), "{row}");
        assert!(row.contains(",812.345,"), "{row}");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field("@a,b"), "\"'@a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
