//! Creating, revoking and rotating API keys: the one implementation behind
//! `agv-server key create|revoke|rotate` and the console's Keys page
//! (`POST /api/keys`, `POST /api/keys/{id}/revoke`).
//!
//! The key row and its audit entry are written here so that both doors record the same
//! thing, with the key's state before and after (never its secret). Blocking (the store's
//! synchronous API): the server calls these through `run_blocking`. Who may change keys is
//! the callers' to check; the server's key cache is the callers' to refresh.

use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::{ApiKeyRecord, KeyId, NewApiKey, TenantId, Timestamp};
use crate::store::{Store, StoreResult};
use serde_json::{Value, json};

/// A key as the audit log shows it before and after a change (never the secret).
pub fn audit_state(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id, "name": k.name, "scope": k.scope, "prefix": k.prefix,
        "expires_at": k.expires_at.map(Timestamp::to_rfc3339),
        "revoked_at": k.revoked_at.map(Timestamp::to_rfc3339),
    })
}

/// Who changes a key, and from where (the audit entry's actor and source).
#[derive(Debug, Clone)]
pub struct By {
    pub actor: Actor,
    pub source: Option<String>,
}

impl By {
    /// An audit entry by this author about key `id` of `tenant`.
    fn entry(&self, tenant: &TenantId, action: AuditAction, id: &KeyId) -> NewAuditEntry {
        NewAuditEntry::new(
            Some(tenant.clone()),
            self.actor.clone(),
            action,
            id.as_str(),
        )
    }

    fn record(&self, store: &dyn Store, entry: NewAuditEntry) {
        crate::evidence::audit::record(store, &entry.source(self.source.clone()));
    }
}

/// Stores a generated key and records `key.create`. `NotFound` when its tenant does not
/// exist.
pub fn create(store: &dyn Store, row: &NewApiKey, by: &By) -> StoreResult<ApiKeyRecord> {
    let created = store.create_api_key(row)?;
    by.record(
        store,
        by.entry(&created.tenant_id, AuditAction::KeyCreate, &created.id)
            .after(audit_state(&created)),
    );
    Ok(created)
}

/// Revokes a key (of `tenant`, or of any tenant for `None`) and records `key.revoke`.
/// `NotFound` when there is no such key.
pub fn revoke(
    store: &dyn Store,
    tenant: Option<&TenantId>,
    id: &KeyId,
    by: &By,
) -> StoreResult<ApiKeyRecord> {
    let before = store.get_api_key(tenant, id)?;
    let revoked = store.revoke_api_key(tenant, id, Timestamp::now())?;
    by.record(
        store,
        by.entry(&revoked.tenant_id, AuditAction::KeyRevoke, &revoked.id)
            .before(audit_state(&before))
            .after(audit_state(&revoked)),
    );
    Ok(revoked)
}

/// What a rotation made: the new key, and the old one with its shortened life.
pub struct Rotated {
    pub new_key: ApiKeyRecord,
    pub old_key: ApiKeyRecord,
    /// When the old key stops working.
    pub old_until: Timestamp,
}

/// Replaces an active key by a new one with the same tenant, name, scope and expiry (the
/// generated `row`); the old key keeps working until `old_until` (or its own expiry, if
/// sooner). Records `key.rotate` with both keys.
pub fn rotate(
    store: &dyn Store,
    old: &ApiKeyRecord,
    row: &NewApiKey,
    old_until: Timestamp,
    by: &By,
) -> StoreResult<Rotated> {
    let new_key = store.create_api_key(row)?;
    let old_until = old.expires_at.map_or(old_until, |e| e.min(old_until));
    let old_key = store.set_api_key_expiry(None, &old.id, Some(old_until))?;
    by.record(
        store,
        by.entry(&old.tenant_id, AuditAction::KeyRotate, &old.id)
            .before(json!({"old_key": audit_state(old)}))
            .after(json!({"old_key": audit_state(&old_key), "new_key": audit_state(&new_key)})),
    );
    Ok(Rotated {
        new_key,
        old_key,
        old_until,
    })
}
