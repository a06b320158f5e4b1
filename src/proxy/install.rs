//! What the proxy enforces, installed from where it is kept: the instance upstream and
//! tenants' own upstreams (their keys decrypted), and tenants' policies with the spend
//! their budgets count against. `startup` installs them at start and when the change feed
//! reports a change; handlers install what they have just saved.

use crate::config::Settings;
use crate::domain::secret_box::MasterKey;
use crate::domain::upstream_url::UpstreamAllowlist;
use crate::domain::{Money, PolicyConfig, TenantId, Timestamp};
use crate::guard::Guard;
use crate::proxy::Proxy;
use crate::proxy::upstream::UpstreamTarget;
use crate::store::{DynStore, InstanceUpstreamRow, StoreError, TenantUpstreamRow, run_blocking};
use std::sync::Arc;

/// The upstream a stored row describes, after checking it against today's allowlist and
/// decrypting its key. An error says why the row is not usable.
pub fn tenant_upstream_target(
    master_key: &MasterKey,
    allowlist: &UpstreamAllowlist,
    row: &TenantUpstreamRow,
) -> Result<UpstreamTarget, String> {
    let url = allowlist.check(&row.base_url)?;
    let sealed = row.api_key_ciphertext.as_deref();
    Ok(UpstreamTarget {
        base_url: url.as_str().to_owned(),
        api_key: open_key(master_key, row.tenant_id.as_str(), sealed)?,
    })
}

/// A stored upstream key, decrypted with the reference it was sealed under.
fn open_key(
    master_key: &MasterKey,
    reference: &str,
    sealed: Option<&str>,
) -> Result<Option<String>, String> {
    let secret = sealed.map(|s| master_key.open(reference, s));
    let secret = secret.transpose().map_err(|e| e.to_string())?;
    Ok(secret.map(|s| s.expose().to_owned()))
}

/// Installs (or removes, for `None` or an unusable row) a tenant's own upstream.
pub fn install_tenant_upstream(
    proxy: &Proxy,
    master_key: &MasterKey,
    allowlist: &UpstreamAllowlist,
    tenant: &TenantId,
    row: Option<&TenantUpstreamRow>,
) {
    let target = row.and_then(|row| {
        tenant_upstream_target(master_key, allowlist, row)
            .inspect_err(|e| tracing::error!(tenant = %tenant, error = %e, "the tenant's own upstream is not usable; its calls go to the instance upstream"))
            .ok()
    });
    proxy.set_tenant_upstream(tenant, target);
}

/// The instance upstream as configured: flags, environment, config.toml or the default.
pub fn configured_upstream(settings: &Settings) -> UpstreamTarget {
    UpstreamTarget {
        base_url: settings.upstream_url.clone(),
        api_key: settings.upstream_api_key.clone(),
    }
}

/// The upstream the operator's stored row describes, with its key decrypted.
pub fn instance_upstream_target(
    master_key: &MasterKey,
    row: &InstanceUpstreamRow,
) -> Result<UpstreamTarget, String> {
    let sealed = row.api_key_ciphertext.as_deref();
    Ok(UpstreamTarget {
        base_url: row.base_url.clone(),
        api_key: open_key(master_key, crate::store::INSTANCE_UPSTREAM_REF, sealed)?,
    })
}

/// Installs the instance upstream in force: the one set in the console (`row`) overrides
/// the configured one; without a row, or with one whose key does not decrypt (logged),
/// the configured upstream applies.
pub fn install_instance_upstream(
    proxy: &Proxy,
    master_key: &MasterKey,
    settings: &Settings,
    row: Option<&InstanceUpstreamRow>,
) {
    let target = row.and_then(|row| {
        instance_upstream_target(master_key, row)
            .inspect_err(|e| tracing::error!(error = %e, "the instance upstream set in the console is not usable; the configured upstream applies"))
            .ok()
    });
    proxy.set_instance_upstream(target.unwrap_or_else(|| configured_upstream(settings)));
}

/// Installs a tenant's policy; when it has budgets, seeds them with the spend so far.
pub async fn apply_policy(
    guard: &Arc<Guard>,
    store: &DynStore,
    tenant: &TenantId,
    cfg: PolicyConfig,
) {
    if let Err(e) = set_policy_and_seed(guard, store, tenant, cfg).await {
        tracing::error!(tenant = %tenant, error = %e, "could not load the spend for the tenant's budget");
    }
}

pub async fn set_policy_and_seed(
    guard: &Arc<Guard>,
    store: &DynStore,
    tenant: &TenantId,
    cfg: PolicyConfig,
) -> Result<(), StoreError> {
    let has_budget = cfg.budget_daily_usd.is_some() || cfg.budget_monthly_usd.is_some();
    guard.set_policy(tenant, Arc::new(cfg));
    if has_budget {
        let now = Timestamp::now();
        let (day, month) = recorded_spend(store, tenant, now).await?;
        guard.budgets().seed(tenant, day, month, now);
    }
    Ok(())
}

/// The tenant's recorded spend of the UTC day and month that contain `now`: what its
/// budgets count against.
pub async fn recorded_spend(
    store: &DynStore,
    tenant: &TenantId,
    now: Timestamp,
) -> Result<(Money, Money), StoreError> {
    let (day_start, month_start) = crate::guard::budget::period_starts(now);
    let (s, t) = (store.clone(), tenant.clone());
    run_blocking(move || {
        Ok((
            s.spend_since(&t, day_start)?,
            s.spend_since(&t, month_start)?,
        ))
    })
    .await
}
