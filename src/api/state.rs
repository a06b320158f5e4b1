//! The state every request handler shares, built once by `startup`.
//!
//! Lower layers never see it: the job handlers get the parts they use ([`Tasks`], the
//! backups' own), so only handlers and `startup` depend on this module.

use crate::api::key_cache::KeyCache;
use crate::api::limits::{AddressRateLimiter, LoginThrottle};
use crate::config::Settings;
use crate::domain::TenantId;
use crate::domain::secret_box::MasterKey;
use crate::evidence::tasks::Tasks;
use crate::incidents::alerts::Alerts;
use crate::jobs::Queue;
use crate::proxy::Proxy;
use crate::store::{DynStore, run_blocking};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

/// Shared by every request handler.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: DynStore,
    pub keys: Arc<KeyCache>,
    pub proxy: Arc<Proxy>,
    pub queue: Queue,
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub unauth_limiter: AddressRateLimiter,
    /// Failed console sign-ins, by email and address.
    pub login_throttle: LoginThrottle,
    /// Held from reading (or writing) a tenant's stored settings — its policy, its own
    /// upstream — until they are applied in memory, so the change feed can never apply an
    /// older read over a newer local change.
    pub settings_lock: tokio::sync::Mutex<()>,
    pub started_at: Instant,
    /// Encrypts tenants' provider keys at rest.
    pub master_key: MasterKey,
    /// The last change-feed entry this process has applied (see `spawn_change_feed`).
    pub change_seq: AtomicI64,
    /// Schedules alert deliveries (test alerts from the API too).
    pub alerts: Arc<Alerts>,
    /// Signs certificates (`<data>/certificate-signing.key`).
    pub signing_key: crate::domain::certificate::CertSigningKey,
    /// The one-time first-run setup token, while no user exists.
    pub setup: crate::ops::people::SetupToken,
    /// Sign-in with the identity provider: its documents and the sign-ins in progress.
    pub sso: crate::ops::oidc::Sso,
    /// The operator's "back up now" job, while it runs.
    pub backup_now: BackupNow,
    /// The operator console's cached update check.
    pub update_check: crate::ops::update::UpdateCheck,
    /// This process among the instances sharing the database (host name and a random id).
    pub instance: String,
}

impl AppState {
    /// What evidence tasks need, for starting one or for the worker that runs them.
    pub fn tasks(&self) -> Tasks {
        Tasks {
            store: self.store.clone(),
            queue: self.queue.clone(),
            proxy: self.proxy.clone(),
            signing_key: self.signing_key.clone(),
        }
    }

    /// Runs `work` with the store on the blocking pool (see [`run_blocking`]).
    pub async fn with_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&DynStore) -> T + Send + 'static,
    ) -> T {
        let store = self.store.clone();
        run_blocking(move || work(&store)).await
    }

    /// [`with_store`](Self::with_store) with the tenant too, as a handler reads or changes
    /// its caller's tenant's records.
    pub async fn with_tenant<T: Send + 'static>(
        &self,
        tenant: &TenantId,
        work: impl FnOnce(&DynStore, &TenantId) -> T + Send + 'static,
    ) -> T {
        let tenant = tenant.clone();
        self.with_store(move |store| work(store, &tenant)).await
    }
}

/// The "back up now" job of this process, while it is queued or running.
#[derive(Default)]
pub struct BackupNow {
    pub job: std::sync::Mutex<Option<crate::jobs::JobId>>,
}
