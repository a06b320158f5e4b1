//! Freezing and unfreezing: the event is written durably first, then applied to the
//! in-memory switch, so that when the caller gets its answer the very next request is
//! blocked — on this instance at once, on others when they read the change feed.

use crate::domain::{FreezeAction, FreezeEvent, FreezeId, KeyId, TenantId, Timestamp};
use crate::guard::Guard;
use crate::store::{DynStore, StoreResult, run_blocking};

pub async fn set(
    proxy: &super::Proxy,
    tenant: &TenantId,
    key: Option<&KeyId>,
    action: FreezeAction,
    actor: &str,
    reason: &str,
) -> StoreResult<FreezeEvent> {
    let event = FreezeEvent {
        id: FreezeId::generate(),
        tenant_id: tenant.clone(),
        key_id: key.cloned(),
        action,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        at: Timestamp::now(),
    };
    let store = proxy.store.clone();
    let to_store = event.clone();
    run_blocking(move || store.record_freeze_event(&to_store)).await?;
    proxy.guard.killswitch().apply(&event);
    tracing::warn!(tenant = %tenant, key = ?key, action = action.as_str(), actor, reason, "kill switch changed");
    metrics::counter!("agv_killswitch_changes_total", "action" => action.as_str()).increment(1);
    // Noted on the tenant's open incidents, in the background.
    proxy
        .incidents
        .send(crate::incidents::Input::Freeze(event.clone()));
    Ok(event)
}

/// Loads every active freeze into the in-memory switch (at start, and when another
/// process changed one).
pub async fn reload(guard: &Guard, store: &DynStore) -> StoreResult<()> {
    let store = store.clone();
    let active = run_blocking(move || store.active_freezes()).await?;
    guard.killswitch().load(&active);
    Ok(())
}
