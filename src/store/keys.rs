//! API keys and the kill switch's freeze events. Every change of a key and every freeze
//! event also records a change (see [`super::changes`]) in the same transaction.

use super::changes;
use super::rows::{
    ACTIVE_FREEZES_SQL, FREEZE_COLUMNS, KEY_COLUMNS, MAX_PAGE, TOPIC_API_KEY, TOPIC_KILLSWITCH,
    explain_conflict, freeze_from, key_from, latest_uses,
};
use super::sql::{self, Db, EventSeq, Param};
use super::{StoreError, StoreResult};
use crate::domain::{ApiKeyRecord, FreezeEvent, KeyHash, KeyId, NewApiKey, TenantId, Timestamp};

pub(super) fn create(db: &mut dyn Db, key: &NewApiKey) -> StoreResult<ApiKeyRecord> {
    db.execute(
        "INSERT INTO api_keys (id, tenant_id, name, scope, key_hash, prefix, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Param::Text(key.id.as_str()),
            Param::Text(key.tenant_id.as_str()),
            Param::Text(&key.name),
            Param::Text(key.scope.as_str()),
            Param::Text(key.hash.as_str()),
            Param::Text(&key.prefix),
            Param::BigInt(key.created_at.millis()),
            Param::OptBigInt(key.expires_at.map(Timestamp::millis)),
        ],
    )
    .map_err(|e| {
        explain_conflict(e, || {
            format!(
                "an API key with id {} or the same hash already exists",
                key.id
            )
        })
    })?;
    changes::record(db, TOPIC_API_KEY, key.id.as_str())?;
    get(db, None, &key.id, false)
}

/// A key by id, visible to `tenant` (`None`: any tenant); `lock` locks its row until the
/// transaction ends.
pub(super) fn get(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &KeyId,
    lock: bool,
) -> StoreResult<ApiKeyRecord> {
    sql::owned(
        db,
        "api_keys",
        KEY_COLUMNS,
        id.as_str(),
        tenant,
        lock,
        key_from,
    )
}

pub(super) fn find_by_hash(db: &mut dyn Db, hash: &KeyHash) -> StoreResult<Option<ApiKeyRecord>> {
    sql::first(
        db,
        &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"),
        &[Param::Text(hash.as_str())],
        key_from,
    )
}

pub(super) fn list(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<Vec<ApiKeyRecord>> {
    sql::all(
        db,
        &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"),
        &[Param::Text(tenant.as_str())],
        key_from,
    )
}

pub(super) fn revoke(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &KeyId,
    at: Timestamp,
) -> StoreResult<ApiKeyRecord> {
    let before = get(db, tenant, id, true)?;
    if before.revoked_at.is_some() {
        // Already revoked: keep the first revocation time, record nothing new.
        return Ok(before);
    }
    db.execute(
        "UPDATE api_keys SET revoked_at = $2 WHERE id = $1",
        &[Param::Text(id.as_str()), Param::BigInt(at.millis())],
    )?;
    changes::record(db, TOPIC_API_KEY, id.as_str())?;
    get(db, None, id, false)
}

pub(super) fn set_expiry(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &KeyId,
    expires_at: Option<Timestamp>,
) -> StoreResult<ApiKeyRecord> {
    let changed = db.execute(
        "UPDATE api_keys SET expires_at = $3 WHERE id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2)",
        &[
            Param::Text(id.as_str()),
            Param::OptText(tenant.map(TenantId::as_str)),
            Param::OptBigInt(expires_at.map(Timestamp::millis)),
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    changes::record(db, TOPIC_API_KEY, id.as_str())?;
    get(db, None, id, false)
}

/// One statement per key, in id order (see [`latest_uses`]).
pub(super) fn touch(db: &mut dyn Db, used: &[(KeyId, Timestamp)]) -> StoreResult<()> {
    for (id, at) in latest_uses(used) {
        db.execute(
            "UPDATE api_keys SET last_used_at = $2
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            &[Param::Text(id), Param::BigInt(at)],
        )?;
    }
    Ok(())
}

pub(super) fn record_freeze(db: &mut dyn Db, event: &FreezeEvent) -> StoreResult<()> {
    // The change first: on Postgres it takes the change feed's lock, so events also get
    // their seq in commit order and the later of two same-millisecond events is the later
    // commit (SQLite's write lock orders them anyway).
    changes::record(db, TOPIC_KILLSWITCH, event.tenant_id.as_str())?;
    let sql = match db.event_seq() {
        EventSeq::MaxPlusOne => {
            "INSERT INTO freeze_events (id, seq, tenant_id, key_id, action, actor, reason, at)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM freeze_events), $2, $3, $4, $5, $6, $7)"
        }
        EventSeq::Identity => {
            "INSERT INTO freeze_events (id, tenant_id, key_id, action, actor, reason, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        }
    };
    db.execute(
        sql,
        &[
            Param::Text(event.id.as_str()),
            Param::Text(event.tenant_id.as_str()),
            Param::OptText(event.key_id.as_ref().map(KeyId::as_str)),
            Param::Text(event.action.as_str()),
            Param::Text(&event.actor),
            Param::Text(&event.reason),
            Param::BigInt(event.at.millis()),
        ],
    )
    .map_err(|e| {
        explain_conflict(e, || {
            format!("a freeze event with id {} already exists", event.id)
        })
    })?;
    Ok(())
}

pub(super) fn active_freezes(db: &mut dyn Db) -> StoreResult<Vec<FreezeEvent>> {
    sql::all(db, ACTIVE_FREEZES_SQL, &[], freeze_from)
}

pub(super) fn freeze_events(
    db: &mut dyn Db,
    tenant: &TenantId,
    limit: u32,
) -> StoreResult<Vec<FreezeEvent>> {
    sql::all(
        db,
        &format!(
            "SELECT {FREEZE_COLUMNS} FROM freeze_events WHERE tenant_id = $1 ORDER BY at DESC, seq DESC LIMIT $2"
        ),
        &[
            Param::Text(tenant.as_str()),
            Param::BigInt(i64::from(limit.min(MAX_PAGE))),
        ],
        freeze_from,
    )
}
