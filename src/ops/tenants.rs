//! Making a tenant: the one implementation behind `agv-server tenant create` and the
//! operator console's "Create tenant" (`POST /api/operator/tenants`).
//!
//! The tenant row and its audit entry are written here so that both doors record the same
//! thing. Blocking (the store's synchronous API): the server calls it through
//! `run_blocking`. It must not decide who may create a tenant: the callers check that.

use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::{Tenant, TenantId, TenantName, Timestamp};
use crate::store::{Store, StoreResult};

/// Creates a tenant named `name` and records `tenant.create` in the instance-wide audit
/// chain (the tenant did not exist before the action), by `actor` from `source`.
pub fn create(
    store: &dyn Store,
    name: TenantName,
    actor: Actor,
    source: Option<String>,
) -> StoreResult<Tenant> {
    let tenant = Tenant {
        id: TenantId::generate(),
        name,
        created_at: Timestamp::now(),
    };
    store.create_tenant(&tenant)?;
    crate::evidence::audit::record(
        store,
        &NewAuditEntry::new(None, actor, AuditAction::TenantCreate, tenant.id.as_str())
            .source(source)
            .after(serde_json::json!({"id": tenant.id, "name": tenant.name})),
    );
    Ok(tenant)
}
