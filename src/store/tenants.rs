//! Tenants and what is stored per tenant for the gateway: guardrail overrides and a
//! tenant's own upstream (and the instance upstream the operator sets in the console).

use super::rows::{
    TENANT_COLUMNS, TOPIC_POLICY, TOPIC_UPSTREAM, UPSTREAM_COLUMNS, explain_conflict,
    policy_overrides, tenant_from, upstream_row,
};
use super::sql::{self, Cells, Db, Param, SqlRow};
use super::{
    INSTANCE_UPSTREAM_REF, InstanceUpstreamRow, StoreError, StoreResult, TenantUpstreamRow, changes,
};
use crate::domain::{Tenant, TenantId, Timestamp};

pub(super) fn create(db: &mut dyn Db, tenant: &Tenant) -> StoreResult<()> {
    db.execute(
        "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
        &[
            Param::Text(tenant.id.as_str()),
            Param::Text(tenant.name.as_str()),
            Param::BigInt(tenant.created_at.millis()),
        ],
    )
    .map_err(|e| {
        explain_conflict(e, || {
            format!("a tenant with id {} already exists", tenant.id)
        })
    })?;
    Ok(())
}

pub(super) fn get(db: &mut dyn Db, id: &TenantId) -> StoreResult<Tenant> {
    sql::one(
        db,
        &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"),
        &[Param::Text(id.as_str())],
        tenant_from,
    )
}

/// NotFound unless the tenant exists: what writing a row for an unknown tenant is.
pub(super) fn require(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<()> {
    let args = [Param::Text(tenant.as_str())];
    if sql::exists(db, "SELECT 1 FROM tenants WHERE id = $1", &args)? {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

pub(super) fn list(db: &mut dyn Db) -> StoreResult<Vec<Tenant>> {
    sql::all(
        db,
        &format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id"),
        &[],
        tenant_from,
    )
}

fn tenant_id(stored: &str) -> StoreResult<TenantId> {
    TenantId::parse(stored).map_err(|e| super::rows::corrupt("tenant id", e))
}

pub(super) fn policy(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<Option<serde_json::Value>> {
    sql::first(
        db,
        "SELECT overrides FROM tenant_policies WHERE tenant_id = $1",
        &[Param::Text(tenant.as_str())],
        |r| policy_overrides(tenant.as_str(), &Cells::new(r, "policy").text(0)?),
    )
}

pub(super) fn put_policy(
    db: &mut dyn Db,
    tenant: &TenantId,
    overrides: &serde_json::Value,
    at: Timestamp,
) -> StoreResult<()> {
    let json = overrides.to_string();
    db.execute(
        "INSERT INTO tenant_policies (tenant_id, overrides, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
        &[
            Param::Text(tenant.as_str()),
            Param::Text(&json),
            Param::BigInt(at.millis()),
        ],
    )?;
    changes::record(db, TOPIC_POLICY, tenant.as_str())
}

pub(super) fn policies(db: &mut dyn Db) -> StoreResult<Vec<(TenantId, serde_json::Value)>> {
    sql::all(
        db,
        "SELECT tenant_id, overrides FROM tenant_policies ORDER BY tenant_id",
        &[],
        |row| {
            let c = Cells::new(row, "policy");
            let tenant = c.text(0)?;
            let overrides = policy_overrides(&tenant, &c.text(1)?)?;
            Ok((tenant_id(&tenant)?, overrides))
        },
    )
}

fn upstream_from(row: &SqlRow) -> StoreResult<TenantUpstreamRow> {
    let c = Cells::new(row, "tenant upstream");
    upstream_row(&c.text(0)?, c.text(1)?, c.opt_text(2)?, c.int(3)?)
}

pub(super) fn upstream(
    db: &mut dyn Db,
    tenant: &TenantId,
) -> StoreResult<Option<TenantUpstreamRow>> {
    sql::first(
        db,
        &format!("SELECT {UPSTREAM_COLUMNS} FROM tenant_upstreams WHERE tenant_id = $1"),
        &[Param::Text(tenant.as_str())],
        upstream_from,
    )
}

pub(super) fn put_upstream(db: &mut dyn Db, row: &TenantUpstreamRow) -> StoreResult<()> {
    db.execute(
        "INSERT INTO tenant_upstreams (tenant_id, base_url, api_key_ciphertext, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id) DO UPDATE SET base_url = excluded.base_url,
             api_key_ciphertext = excluded.api_key_ciphertext, updated_at = excluded.updated_at",
        &[
            Param::Text(row.tenant_id.as_str()),
            Param::Text(&row.base_url),
            Param::OptText(row.api_key_ciphertext.as_deref()),
            Param::BigInt(row.updated_at.millis()),
        ],
    )?;
    changes::record(db, TOPIC_UPSTREAM, row.tenant_id.as_str())
}

pub(super) fn delete_upstream(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<bool> {
    let removed = db.execute(
        "DELETE FROM tenant_upstreams WHERE tenant_id = $1",
        &[Param::Text(tenant.as_str())],
    )?;
    if removed > 0 {
        changes::record(db, TOPIC_UPSTREAM, tenant.as_str())?;
    }
    Ok(removed > 0)
}

pub(super) fn upstreams(db: &mut dyn Db) -> StoreResult<Vec<TenantUpstreamRow>> {
    sql::all(
        db,
        &format!("SELECT {UPSTREAM_COLUMNS} FROM tenant_upstreams ORDER BY tenant_id"),
        &[],
        upstream_from,
    )
}

pub(super) fn instance_upstream(db: &mut dyn Db) -> StoreResult<Option<InstanceUpstreamRow>> {
    sql::first(
        db,
        "SELECT base_url, api_key_ciphertext, updated_at FROM instance_upstream WHERE id = 1",
        &[],
        |row| {
            let c = Cells::new(row, "instance upstream");
            Ok(InstanceUpstreamRow {
                base_url: c.text(0)?,
                api_key_ciphertext: c.opt_text(1)?,
                updated_at: Timestamp::from_millis(c.int(2)?),
            })
        },
    )
}

pub(super) fn put_instance_upstream(db: &mut dyn Db, row: &InstanceUpstreamRow) -> StoreResult<()> {
    db.execute(
        "INSERT INTO instance_upstream (id, base_url, api_key_ciphertext, updated_at) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET base_url = excluded.base_url,
             api_key_ciphertext = excluded.api_key_ciphertext, updated_at = excluded.updated_at",
        &[
            Param::Text(&row.base_url),
            Param::OptText(row.api_key_ciphertext.as_deref()),
            Param::BigInt(row.updated_at.millis()),
        ],
    )?;
    changes::record(db, TOPIC_UPSTREAM, INSTANCE_UPSTREAM_REF)
}

pub(super) fn delete_instance_upstream(db: &mut dyn Db) -> StoreResult<bool> {
    let removed = db.execute("DELETE FROM instance_upstream WHERE id = 1", &[])?;
    if removed > 0 {
        changes::record(db, TOPIC_UPSTREAM, INSTANCE_UPSTREAM_REF)?;
    }
    Ok(removed > 0)
}
