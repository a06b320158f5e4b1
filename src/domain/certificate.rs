//! Signed certificates: a JSON statement about a call, a replay or an incident, signed with
//! the instance's Ed25519 key so that anyone holding the public key can check it offline.
//!
//! Pure: building, signing and verifying; reading or creating the key file is the caller's
//! business (`evidence::signing`). A signing key never appears in `Debug` output.
//!
//! # Canonical form (what the signature covers)
//! The certificate JSON object **without its `signature` member**, written as canonical
//! JSON: object members sorted by key (byte order of the UTF-8 key), no whitespace
//! anywhere, strings escaped as serde_json writes them (`"` `\` and control characters
//! only; other characters as UTF-8), integers in decimal. Every member is present
//! (`null` when empty) and a certificate holds no floating-point numbers, so this form is
//! unambiguous. The signature is Ed25519 (RFC 8032, verified strictly) over those bytes,
//! base64 (standard alphabet, padded); `public_key` is the raw 32-byte key in the same
//! base64 and is itself covered by the signature.
//!
//! Verification canonicalises the members *as received*, so reordering members or adding
//! whitespace keeps a certificate valid, while changing any value breaks it.

use super::replay::MatchLevel;
use super::{CallId, CertificateId, IncidentId, ReplayId, TenantId};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

/// The certificate format this code writes and reads.
pub const CERTIFICATE_VERSION: u64 = 1;

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum CertificateKind {
        Replay => "replay",
        Call => "call",
        Incident => "incident",
    }
}

impl CertificateKind {
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_name(s)
    }
}

/// What a certificate says about one recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallEvidence {
    pub call_id: CallId,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    pub model: Option<String>,
    pub status: u16,
    /// SHA-256 (hex) of the whole request body.
    pub request_sha256: String,
    /// SHA-256 (hex) of the whole response body sent to the client.
    pub response_sha256: Option<String>,
    /// SHA-256 (hex) of the response's content (see `domain::replay`).
    pub content_sha256: Option<String>,
}

/// What a certificate says about a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayEvidence {
    pub replay_id: ReplayId,
    /// `policy` or `upstream`.
    pub mode: String,
    /// RFC 3339, UTC, milliseconds.
    pub replayed_at: String,
    /// The new call an upstream replay made.
    pub call: Option<CallEvidence>,
    pub model_drift: Option<bool>,
    /// Policy mode: whether today's guardrails would stop the call.
    pub would_block: Option<bool>,
    /// Policy mode: whether any decision came out differently.
    pub decisions_differ: Option<bool>,
}

/// What a certificate says about an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentEvidence {
    pub incident_id: IncidentId,
    pub rule: String,
    pub status: String,
    pub severity: String,
    pub first_signal_at: String,
    pub last_signal_at: String,
    pub signal_count: i64,
    /// SHA-256 (hex) of the incident record as stored when the certificate was issued.
    pub record_sha256: String,
    /// The calls among its signals (at most the first 1,000).
    pub call_ids: Vec<CallId>,
}

/// A certificate, signed or about to be. Field order is the documented one; the signature
/// covers the canonical form (see the module docs), not this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub version: u64,
    pub certificate_id: CertificateId,
    pub kind: CertificateKind,
    pub tenant_id: TenantId,
    /// The id certified: a call, replay or incident id.
    pub subject_id: String,
    pub original: Option<CallEvidence>,
    pub replay: Option<ReplayEvidence>,
    pub incident: Option<IncidentEvidence>,
    pub model: Option<String>,
    /// The tenant's guardrail configuration in force when the certificate was issued.
    pub policy_version: String,
    pub match_level: Option<MatchLevel>,
    pub instance_id: String,
    /// RFC 3339, UTC, milliseconds.
    pub issued_at: String,
    /// The head of the tenant's call chain when the certificate was issued, as
    /// `<seq>:<sha256 hex>` (see `domain::chain`); `null` while the tenant has no chained call.
    pub chain_head: Option<String>,
    pub public_key: String,
    pub signature: String,
}

/// The instance's signing key. `Debug` shows only the public half.
#[derive(Clone)]
pub struct CertSigningKey(SigningKey);

impl fmt::Debug for CertSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertSigningKey(public {})", self.public().to_base64())
    }
}

impl CertSigningKey {
    pub const SEED_LEN: usize = 32;

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Self::from_seed(seed)
    }

    /// Parses the key file's text: the 32-byte seed as 64 hex characters.
    pub fn parse(text: &str) -> Result<Self, super::ParseError> {
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                super::ParseError::new("expected the 32-byte Ed25519 seed as 64 hex characters")
            })?;
        Ok(Self::from_seed(seed))
    }

    /// The key file's text (keep it secret).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// A detached signature (base64) over any bytes, e.g. a backup's manifest.
    pub fn sign_detached(&self, message: &[u8]) -> String {
        B64.encode(self.0.sign(message).to_bytes())
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    /// Parses a key given by a person: base64 (44 characters) or hex (64 characters) of
    /// the raw 32 bytes, or the JSON of `GET /v1/certificates/public-key`.
    pub fn parse(text: &str) -> Result<Self, super::ParseError> {
        let text = text.trim();
        if text.starts_with('{') {
            let v: Value = serde_json::from_str(text).map_err(|e| {
                super::ParseError::new(format!("the public key JSON is not valid: {e}"))
            })?;
            let inner = v.get("public_key").and_then(Value::as_str).ok_or_else(|| {
                super::ParseError::new("the public key JSON has no \"public_key\" string")
            })?;
            return Self::parse(inner);
        }
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            B64.decode(text).ok()
        };
        let bad = || {
            super::ParseError::new(
                "not an Ed25519 public key: expected 32 bytes as base64 (44 characters, as GET /v1/certificates/public-key gives it) or as 64 hex characters",
            )
        };
        let raw: [u8; 32] = bytes.ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        VerifyingKey::from_bytes(&raw).map(Self).map_err(|_| bad())
    }

    /// Checks a detached signature made by [`CertSigningKey::sign_detached`].
    pub fn verify_detached(&self, message: &[u8], signature_b64: &str) -> bool {
        self.check(message, signature_b64).is_ok()
    }

    /// Checks a base64 signature over `message`, strictly.
    pub(crate) fn check(&self, message: &[u8], signature_b64: &str) -> Result<(), SignatureFault> {
        let raw: [u8; 64] = B64
            .decode(signature_b64.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignatureFault::Malformed)?;
        let signature = Signature::from_bytes(&raw);
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| SignatureFault::Mismatch)
    }

    /// `ins_` and the first 32 hex characters of the key's SHA-256: names the instance
    /// that holds the key.
    pub fn instance_id(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.0.to_bytes()));
        format!("ins_{}", &digest[..32])
    }
}

/// Writes `v` in the canonical form of the module docs.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(k) {
                    canonical_json(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The bytes a signature covers: the object without `signature`, canonical (the same
/// bytes as `canonical_json` of a copy without it, written without copying the object).
pub(crate) fn signed_bytes(object: &serde_json::Map<String, Value>) -> Vec<u8> {
    let mut keys: Vec<&String> = object.keys().filter(|k| *k != "signature").collect();
    keys.sort();
    let mut out = String::new();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical_json(&Value::String(k.clone()), &mut out);
        out.push(':');
        if let Some(v) = object.get(k) {
            canonical_json(v, &mut out);
        }
    }
    out.push('}');
    out.into_bytes()
}

/// Why a signature does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureFault {
    /// Not a 64-byte signature in base64.
    Malformed,
    /// Not this key's signature of the message.
    Mismatch,
}

/// The message of a [`SignatureFault::Malformed`] signature.
pub(crate) const MALFORMED_SIGNATURE: &str =
    "signature: expected a 64-byte Ed25519 signature in base64";

impl Certificate {
    /// Fills in `public_key` and `signature`.
    pub fn sign(mut self, key: &CertSigningKey) -> Result<Self, CertificateError> {
        self.public_key = key.public().to_base64();
        self.signature = String::new();
        let value = serde_json::to_value(&self)
            .map_err(|e| CertificateError::Invalid(format!("cannot serialise: {e}")))?;
        let Value::Object(map) = value else {
            return Err(CertificateError::Invalid(
                "a certificate must serialise to an object".into(),
            ));
        };
        self.signature = key.sign_detached(&signed_bytes(&map));
        Ok(self)
    }

    /// Pretty JSON, as handed out.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Why a certificate is not valid; each message says what was found and, where it helps,
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error(
        "the certificate is not valid JSON ({0}); it may be truncated — use the complete file as downloaded"
    )]
    NotJson(String),
    #[error(
        "unknown certificate version {0}; this agv-server understands version {CERTIFICATE_VERSION} — use a newer agv-server to verify it"
    )]
    UnknownVersion(String),
    #[error("the certificate is malformed: {0}")]
    Invalid(String),
    #[error(
        "wrong key: the certificate was signed with public key {found}, not with the trusted key {trusted}"
    )]
    WrongKey { found: String, trusted: String },
    #[error(
        "bad signature: the signature does not match the certificate's contents — a field was changed after signing, or the signature belongs to another certificate"
    )]
    BadSignature,
}

/// Checks a certificate's bytes. With `trusted`, the certificate must be signed by that
/// key; without it, only its own embedded key is checked (which proves integrity, not
/// origin — callers decide whether to trust that key).
pub fn verify(bytes: &[u8], trusted: Option<&PublicKey>) -> Result<Certificate, CertificateError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CertificateError::NotJson(e.to_string()))?;
    let Value::Object(map) = &value else {
        return Err(CertificateError::Invalid(
            "expected a JSON object".to_owned(),
        ));
    };
    match map.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(CERTIFICATE_VERSION) => {}
        Some(other) => return Err(CertificateError::UnknownVersion(other.to_string())),
        None => {
            return Err(CertificateError::Invalid(
                "it has no \"version\" member".to_owned(),
            ));
        }
    }
    let cert: Certificate = serde_json::from_value(value.clone())
        .map_err(|e| CertificateError::Invalid(e.to_string()))?;
    let key = PublicKey::parse(&cert.public_key)
        .map_err(|e| CertificateError::Invalid(format!("public_key: {e}")))?;
    if let Some(t) = trusted
        && *t != key
    {
        return Err(CertificateError::WrongKey {
            found: key.to_base64(),
            trusted: t.to_base64(),
        });
    }
    key.check(&signed_bytes(map), &cert.signature)
        .map_err(|fault| match fault {
            SignatureFault::Malformed => CertificateError::Invalid(MALFORMED_SIGNATURE.to_owned()),
            SignatureFault::Mismatch => CertificateError::BadSignature,
        })?;
    Ok(cert)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An unsigned call certificate issued by `key`, for tests to adjust and sign.
    pub(crate) fn unsigned(key: &CertSigningKey) -> Certificate {
        Certificate {
            version: CERTIFICATE_VERSION,
            certificate_id: CertificateId::generate(),
            kind: CertificateKind::Call,
            tenant_id: TenantId::generate(),
            subject_id: "call_0123456789abcdef0123456789abcdef".into(),
            original: Some(CallEvidence {
                call_id: CallId::parse("call_0123456789abcdef0123456789abcdef").unwrap(),
                created_at: "2026-11-23T18:00:00.000Z".into(),
                model: Some("gpt-4o-mini".into()),
                status: 200,
                request_sha256: "aa".repeat(32),
                response_sha256: Some("bb".repeat(32)),
                content_sha256: Some("cc".repeat(32)),
            }),
            replay: None,
            incident: None,
            model: Some("gpt-4o-mini".into()),
            policy_version: "p1".into(),
            match_level: None,
            instance_id: key.public().instance_id(),
            issued_at: "2026-11-23T18:00:01.000Z".into(),
            chain_head: None,
            public_key: String::new(),
            signature: String::new(),
        }
    }

    fn sample(key: &CertSigningKey) -> Certificate {
        unsigned(key).sign(key).unwrap()
    }

    #[test]
    fn a_signed_certificate_verifies_with_its_key_and_after_reformatting() {
        let key = CertSigningKey::generate();
        let cert = sample(&key);
        let pretty = cert.to_json_pretty();
        assert_eq!(
            verify(pretty.as_bytes(), Some(&key.public())).unwrap(),
            cert
        );
        // Compact, and members in another order: the same certificate.
        let mut v: Value = serde_json::from_str(&pretty).unwrap();
        let obj = v.as_object_mut().unwrap();
        let version = obj.shift_remove("version").unwrap();
        obj.insert("version".into(), version);
        assert!(verify(v.to_string().as_bytes(), None).is_ok());
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let key = CertSigningKey::generate();
        let cert = sample(&key);
        let mut v: Value = serde_json::to_value(&cert).unwrap();
        v["original"]["response_sha256"] = Value::String("dd".repeat(32));
        let err = verify(v.to_string().as_bytes(), Some(&key.public())).unwrap_err();
        assert_eq!(err, CertificateError::BadSignature);
        let mut v: Value = serde_json::to_value(&cert).unwrap();
        v["chain_head"] = Value::String("x".into());
        assert_eq!(
            verify(v.to_string().as_bytes(), None).unwrap_err(),
            CertificateError::BadSignature
        );
    }

    #[test]
    fn another_key_is_named_as_the_wrong_key() {
        let key = CertSigningKey::generate();
        let other = CertSigningKey::generate();
        let cert = sample(&key);
        let err = verify(cert.to_json_pretty().as_bytes(), Some(&other.public())).unwrap_err();
        assert!(matches!(err, CertificateError::WrongKey { .. }), "{err}");
        // Re-signed by another key but claiming the original key: bad signature.
        let mut forged = sample(&other);
        forged.public_key = key.public().to_base64();
        assert_eq!(
            verify(forged.to_json_pretty().as_bytes(), Some(&key.public())).unwrap_err(),
            CertificateError::BadSignature
        );
    }

    #[test]
    fn truncated_json_unknown_versions_and_extra_members_are_refused() {
        let key = CertSigningKey::generate();
        let text = sample(&key).to_json_pretty();
        let cut = &text.as_bytes()[..text.len() / 2];
        assert!(matches!(
            verify(cut, None).unwrap_err(),
            CertificateError::NotJson(_)
        ));
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["version"] = Value::from(2);
        let err = verify(v.to_string().as_bytes(), None).unwrap_err();
        assert!(matches!(err, CertificateError::UnknownVersion(_)), "{err}");
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["extra"] = Value::from(1);
        assert!(matches!(
            verify(v.to_string().as_bytes(), None).unwrap_err(),
            CertificateError::Invalid(_)
        ));
    }

    #[test]
    fn canonical_json_sorts_members_and_has_no_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, {"d": null, "c": "x\"y"}], "a": true}"#).unwrap();
        let mut out = String::new();
        canonical_json(&v, &mut out);
        assert_eq!(out, r#"{"a":true,"b":[1,{"c":"x\"y","d":null}]}"#);
    }

    #[test]
    fn keys_round_trip_and_debug_hides_the_secret() {
        let key = CertSigningKey::generate();
        let again = CertSigningKey::parse(&key.to_hex()).unwrap();
        assert_eq!(again.public(), key.public());
        assert!(!format!("{key:?}").contains(&key.to_hex()));
        let public = key.public();
        assert_eq!(PublicKey::parse(&public.to_base64()).unwrap(), public);
        let hex_form = hex::encode(B64.decode(public.to_base64()).unwrap());
        assert_eq!(PublicKey::parse(&hex_form).unwrap(), public);
        let json = format!("{{\"public_key\":\"{}\"}}", public.to_base64());
        assert_eq!(PublicKey::parse(&json).unwrap(), public);
        assert!(PublicKey::parse("nope").is_err());
        assert!(public.instance_id().starts_with("ins_"));
    }
}
