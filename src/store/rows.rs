//! Rows as both backends read them (plain strings and integers), and their conversion
//! into domain types. Shared so that SQLite and Postgres cannot drift apart in how they
//! interpret a stored value. A stored value that no longer parses is a database error,
//! never a panic.

use super::{StoreError, StoreResult};
use crate::domain::{
    ApiKeyRecord, Email, KeyHash, KeyId, PasswordHash, Role, Scope, Session, SessionId, Tenant,
    TenantId, TenantName, Timestamp, User, UserId,
};
use std::collections::BTreeMap;

/// Columns of `api_keys` in the order [`KeyRow`] expects them.
pub(super) const KEY_COLUMNS: &str = "id, tenant_id, name, scope, key_hash, prefix, created_at, expires_at, revoked_at, last_used_at";
pub(super) const TENANT_COLUMNS: &str = "id, name, created_at";
pub(super) const USER_COLUMNS: &str = "id, email, password_hash, role, tenant_id, created_at";
pub(super) const SESSION_COLUMNS: &str = "id, user_id, created_at, expires_at";

/// The topic of changes recorded for API keys.
pub(super) const TOPIC_API_KEY: &str = "api_key";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("a stored {what} could not be read back: {e}"))
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

pub(super) struct KeyRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub scope: String,
    pub hash: String,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl KeyRow {
    pub fn into_record(self) -> StoreResult<ApiKeyRecord> {
        Ok(ApiKeyRecord {
            id: KeyId::parse(&self.id).map_err(|e| corrupt("key id", e))?,
            tenant_id: TenantId::parse(&self.tenant_id).map_err(|e| corrupt("tenant id", e))?,
            name: self.name,
            scope: Scope::parse(&self.scope).map_err(|e| corrupt("key scope", e))?,
            hash: KeyHash::from_stored(self.hash),
            prefix: self.prefix,
            created_at: Timestamp::from_millis(self.created_at),
            expires_at: ts(self.expires_at),
            revoked_at: ts(self.revoked_at),
            last_used_at: ts(self.last_used_at),
        })
    }
}

pub(super) struct TenantRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

impl TenantRow {
    pub fn into_tenant(self) -> StoreResult<Tenant> {
        Ok(Tenant {
            id: TenantId::parse(&self.id).map_err(|e| corrupt("tenant id", e))?,
            name: TenantName::parse(&self.name).map_err(|e| corrupt("tenant name", e))?,
            created_at: Timestamp::from_millis(self.created_at),
        })
    }
}

pub(super) struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub tenant_id: Option<String>,
    pub created_at: i64,
}

impl UserRow {
    pub fn into_user(self) -> StoreResult<User> {
        Ok(User {
            id: UserId::parse(&self.id).map_err(|e| corrupt("user id", e))?,
            email: Email::parse(&self.email).map_err(|e| corrupt("email", e))?,
            password: PasswordHash::from_stored(self.password_hash),
            role: Role::parse(&self.role).map_err(|e| corrupt("role", e))?,
            tenant_id: self
                .tenant_id
                .map(|t| TenantId::parse(&t))
                .transpose()
                .map_err(|e| corrupt("tenant id", e))?,
            created_at: Timestamp::from_millis(self.created_at),
        })
    }
}

pub(super) struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl SessionRow {
    pub fn into_session(self) -> StoreResult<Session> {
        Ok(Session {
            id: SessionId::parse(&self.id).map_err(|e| corrupt("session id", e))?,
            user_id: UserId::parse(&self.user_id).map_err(|e| corrupt("user id", e))?,
            created_at: Timestamp::from_millis(self.created_at),
            expires_at: Timestamp::from_millis(self.expires_at),
        })
    }
}

/// Collapses a batch of key uses to the latest time per key, sorted by id so that
/// concurrent batches lock rows in the same order.
pub(super) fn latest_uses(used: &[(KeyId, Timestamp)]) -> Vec<(&str, i64)> {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, at) in used {
        let e = latest.entry(id.as_str()).or_insert(at.millis());
        *e = (*e).max(at.millis());
    }
    latest.into_iter().collect()
}

/// Replaces the backend's wording of a uniqueness conflict by one a user understands.
pub(super) fn explain_conflict(e: StoreError, msg: impl FnOnce() -> String) -> StoreError {
    match e {
        StoreError::Conflict(_) => StoreError::Conflict(msg()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_uses_collapse_to_the_latest_time_per_key() {
        let a = KeyId::generate();
        let b = KeyId::generate();
        let t = Timestamp::from_millis;
        let batch = [
            (a.clone(), t(5)),
            (b.clone(), t(1)),
            (a.clone(), t(9)),
            (a.clone(), t(7)),
        ];
        let uses = latest_uses(&batch);
        assert_eq!(uses.len(), 2);
        assert!(uses.contains(&(a.as_str(), 9)));
        assert!(uses.contains(&(b.as_str(), 1)));
        assert!(uses.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn unreadable_stored_values_become_database_errors() {
        let row = TenantRow {
            id: "nope".into(),
            name: "x".into(),
            created_at: 0,
        };
        assert!(matches!(row.into_tenant(), Err(StoreError::Database(_))));
    }
}
