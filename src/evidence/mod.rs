//! Evidence: replays of recorded calls, signed certificates, incident exports (signed
//! JSON pack, PDF report, CSV), the audit log and the check of the tamper-evident chains.
//!
//! This layer orchestrates — it loads records through the store, runs the guard's dry run
//! or the proxy for a replay, asks `domain::replay` to grade the result and
//! `domain::certificate` to sign — and must not hold rules of its own: the comparison and
//! the certificate format are pure domain code. Errors are [`ApiError`]s, like the proxy's,
//! because every caller is an HTTP handler.
//!
//! [`ApiError`]: crate::error::ApiError

pub mod audit;
pub mod certificates;
pub mod export;
pub mod pdf;
pub mod replay;
pub mod signing;
pub mod tasks;

use crate::domain::TenantId;
use crate::guard::Guard;
use sha2::{Digest, Sha256};

/// The guardrail configuration in force for a tenant, named: the price table's version and
/// the first 16 hex characters of the SHA-256 of the effective policy as JSON. Two
/// replays or certificates with the same policy version were judged by the same rules.
pub fn policy_version(guard: &Guard, tenant: &TenantId) -> String {
    let policy = guard.policy(tenant);
    let json = serde_json::to_string(&*policy).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(json.as_bytes()));
    format!(
        "prices-{}+policy-{}",
        crate::domain::pricing::PRICE_TABLE_VERSION,
        &digest[..16]
    )
}
