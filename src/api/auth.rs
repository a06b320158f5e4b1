//! API-key authentication for `/v1/*`: an in-memory cache in front of the store, and the
//! extractors handlers use (`ProxyKey` for any valid key, `AdminKey` for admin scope).
//!
//! A hit costs one SHA-256 and one map lookup. A miss goes to the store, so a key created
//! from the CLI while the server runs works at once. Every key change in any process is
//! written to the store's change feed; the server's change-feed poller (every 250 ms)
//! clears the cache when it sees one, so a revoked key stops working within a second.
//! Last-used times are collected in memory and written in batches, off the request path.

use super::access::{ConsoleRequest, acting, safe};
use super::error::ApiError;
pub use super::key_cache::{AuthError, AuthFailure, CachedKey, KeyCache};
use crate::api::state::AppState;
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::user::Role;
use crate::domain::{ApiKeyRecord, KeyId, Scope, TenantId, UserId};
use crate::error::Code;
use crate::guard::killswitch::FrozenBy;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use futures_util::future::LocalBoxFuture;

/// The authenticated caller of a `/v1` endpoint: an API key, or a person signed in to the
/// console (the same endpoints under `/api`, see `api::console`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub scope: Scope,
    /// The API key; `None` for a person.
    pub key_id: Option<KeyId>,
    /// The signed-in person; `None` for an API key.
    pub user_id: Option<UserId>,
    /// The instance operator (a person); an API key never is.
    pub operator: bool,
}

impl From<&ApiKeyRecord> for Caller {
    fn from(r: &ApiKeyRecord) -> Self {
        Self {
            tenant_id: r.tenant_id.clone(),
            scope: r.scope,
            key_id: Some(r.id.clone()),
            user_id: None,
            operator: false,
        }
    }
}

impl Caller {
    /// Who acted, for the audit log.
    pub fn actor(&self) -> Actor {
        match (&self.key_id, &self.user_id) {
            (Some(k), _) => Actor::Key(k.clone()),
            (None, Some(u)) => Actor::User(u.clone()),
            (None, None) => Actor::System("unknown".to_owned()),
        }
    }

    /// Who acted, as the `kind:id` text incidents, tasks and freezes record.
    pub fn label(&self) -> String {
        match (&self.key_id, &self.user_id) {
            (Some(k), _) => format!("key:{k}"),
            (None, Some(u)) => format!("user:{u}"),
            (None, None) => "unknown".to_owned(),
        }
    }

    /// What holds this caller under the kill switch: its tenant, or its key.
    pub fn frozen_by(&self, ks: &crate::guard::killswitch::KillSwitch) -> Option<FrozenBy> {
        match &self.key_id {
            Some(k) => ks.check(&self.tenant_id, k),
            None => ks.tenant_status(&self.tenant_id).tenant,
        }
    }
}

async fn authenticate(req: HttpRequest, required: Scope) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("application state missing"))?;
    if req.extensions().get::<ConsoleRequest>().is_some() {
        return session_caller(&state, &req).await;
    }
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let key = match state.keys.authenticate(header).await {
        Ok(key) => key,
        Err(e @ AuthError::Failed(_)) => {
            // A failed key is an unauthenticated request: it draws on the address's budget,
            // so that guessing keys (each a database lookup) is throttled too.
            if let Some(client) = super::audit::client_ip(&req)
                && let Err(retry) = state
                    .unauth_limiter
                    .check(client, std::time::Instant::now())
            {
                return Err(super::middleware::address_limited(
                    client,
                    state.settings.unauth_rate_limit_per_minute,
                    retry,
                ));
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let record = &key.record;
    if !record.scope.allows(required) {
        return Err(ApiError::new(
            Code::InsufficientScope,
            format!(
                "this endpoint needs an {} key; this key has scope '{}'",
                required.as_str(),
                record.scope
            ),
        ));
    }
    if required == Scope::Admin
        && !safe(&req)
        && let Some(by) = key_freeze(&state, &record.tenant_id, &record.id)
    {
        return Err(ApiError::new(
            Code::KeyFrozenReadOnly,
            format!(
                "this key is frozen ({}, by {}): a frozen key can only read; another admin of the tenant, or the operator, lifts the freeze",
                by.reason, by.actor
            ),
        ));
    }
    Ok(Caller::from(record))
}

/// The freeze of one key of the tenant itself (not the tenant's), if any.
pub(crate) fn key_freeze(state: &AppState, tenant: &TenantId, key: &KeyId) -> Option<FrozenBy> {
    let status = state.proxy.guard.killswitch().tenant_status(tenant);
    status
        .keys
        .into_iter()
        .find_map(|(k, by)| (&k == key).then_some(by))
}

/// Any valid key (proxy or admin scope).
pub struct ProxyKey(pub Caller);

/// A valid key with admin scope.
pub struct AdminKey(pub Caller);

/// What a handler for an admin key takes first: the state and the key.
pub type AdminCall = (actix_web::web::Data<super::state::AppState>, AdminKey);

/// What a handler of an admin key's change takes: the state, the key, and where the
/// request came from for the audit log.
pub type AdminAction = (
    actix_web::web::Data<super::state::AppState>,
    AdminKey,
    super::audit::Source,
);

/// Each key extractor authenticates the request for its scope.
macro_rules! key_extractors {
    ($($extractor:ident: $scope:ident),*) => {$(
        impl FromRequest for $extractor {
            type Error = ApiError;
            type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                let req = req.clone();
                Box::pin(async move { authenticate(req, Scope::$scope).await.map($extractor) })
            }
        }
    )*};
}

key_extractors!(ProxyKey: Proxy, AdminKey: Admin);

/// An entry for an action of an API key on its own tenant.
pub fn by_key(
    caller: &Caller,
    source: &super::audit::Source,
    action: AuditAction,
    target: impl Into<String>,
) -> NewAuditEntry {
    NewAuditEntry::new(
        Some(caller.tenant_id.clone()),
        caller.actor(),
        action,
        target,
    )
    .source(source.0.clone())
}

/// An entry for an action of the caller on its tenant as a whole.
pub fn on_own_tenant(
    caller: &Caller,
    source: &super::audit::Source,
    action: AuditAction,
) -> NewAuditEntry {
    by_key(caller, source, action, caller.tenant_id.as_str())
}

/// A person acting on a tenant: the caller of a shared `/v1` endpoint under `/api`. A
/// viewer may only read.
pub async fn session_caller(state: &AppState, req: &HttpRequest) -> Result<Caller, ApiError> {
    let (user, tenant) = acting(state, req).await?;
    Ok(Caller {
        tenant_id: tenant,
        scope: Scope::Admin,
        key_id: None,
        operator: user.role == Role::Operator,
        user_id: Some(user.id),
    })
}
