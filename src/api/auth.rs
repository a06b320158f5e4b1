//! API-key authentication for `/v1/*`: an in-memory cache in front of the store, and the
//! extractors handlers use (`ProxyKey` for any valid key, `AdminKey` for admin scope).
//!
//! A hit costs one SHA-256 and one map lookup. A miss goes to the store, so a key created
//! from the CLI while the server runs works at once. Every key change in any process is
//! written to the store's change feed; the server's change-feed poller (every 250 ms)
//! clears the cache when it sees one, so a revoked key stops working within a second.
//! Last-used times are collected in memory and written in batches, off the request path.

use super::console::ConsoleRequest;
use super::error::ApiError;
use crate::api::state::AppState;
use crate::domain::audit::Actor;
use crate::domain::{ApiKeyRecord, KeyHash, KeyId, KeySecret, Scope, TenantId, Timestamp, UserId};
use crate::error::Code;
use crate::guard::killswitch::FrozenBy;
use crate::store::{DynStore, StoreResult, run_blocking};
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use futures_util::future::LocalBoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many unknown keys are remembered before the negative cache is cleared.
const NEGATIVE_CACHE_MAX: usize = 10_000;

pub struct KeyCache {
    store: DynStore,
    /// Known keys by hash, active or not; `None` remembers that a hash is unknown.
    entries: RwLock<HashMap<KeyHash, Option<Arc<CachedKey>>>>,
    negatives: AtomicI64,
    /// Last-used times of entries dropped by an invalidation before they were written.
    unflushed: Mutex<Vec<(KeyId, Timestamp)>>,
}

/// A known key and when this process last saw it used. Noting a use is one atomic store,
/// so authentication takes no lock but the map's read lock.
pub struct CachedKey {
    pub record: ApiKeyRecord,
    /// Milliseconds since the epoch of the last use; 0 = not used since loaded.
    last_used: AtomicI64,
    /// The last-used time already written to the store.
    flushed: AtomicI64,
}

impl CachedKey {
    /// A last-used time not yet written, marking it written.
    fn take_unflushed(&self) -> Option<(KeyId, Timestamp)> {
        let used = self.last_used.load(Ordering::Relaxed);
        let before = self.flushed.swap(used, Ordering::Relaxed);
        (used > before).then(|| (self.record.id.clone(), Timestamp::from_millis(used)))
    }
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> Self {
        match f {
            AuthFailure::Missing => ApiError::new(
                Code::MissingApiKey,
                "No API key provided. Send your agv-server key as 'Authorization: Bearer agv_…' (create one with `agv-server key create --tenant ID`).",
            ),
            AuthFailure::Malformed => ApiError::new(
                Code::InvalidApiKey,
                "Malformed API key: agv-server keys look like 'agv_' followed by 64 hex characters.",
            ),
            AuthFailure::Unknown => {
                ApiError::new(Code::InvalidApiKey, "Incorrect API key provided.")
            }
            AuthFailure::Revoked => ApiError::new(
                Code::ApiKeyRevoked,
                "This API key has been revoked; create a new one.",
            ),
            AuthFailure::Expired => ApiError::new(
                Code::ApiKeyExpired,
                "This API key has expired; use its replacement or create a new one.",
            ),
        }
    }
}

pub enum AuthError {
    Failed(AuthFailure),
    Store(crate::store::StoreError),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Failed(f) => f.into(),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl KeyCache {
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            entries: RwLock::new(HashMap::new()),
            negatives: AtomicI64::new(0),
            unflushed: Mutex::new(Vec::new()),
        }
    }

    /// Authenticates the value of an `Authorization` header (or `None` when absent).
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Arc<CachedKey>, AuthError> {
        let raw = header.ok_or(AuthError::Failed(AuthFailure::Missing))?;
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(AuthError::Failed(AuthFailure::Missing))?;
        let secret =
            KeySecret::parse(token).map_err(|_| AuthError::Failed(AuthFailure::Malformed))?;
        let hash = secret.hash();
        let cached = self.entries.read().ok().and_then(|m| m.get(&hash).cloned());
        let record = match cached {
            Some(r) => r,
            None => self.load(hash).await.map_err(AuthError::Store)?,
        };
        let key = record.ok_or(AuthError::Failed(AuthFailure::Unknown))?;
        let now = Timestamp::now();
        if key.record.revoked_at.is_some() {
            return Err(AuthError::Failed(AuthFailure::Revoked));
        }
        if !key.record.is_active(now) {
            return Err(AuthError::Failed(AuthFailure::Expired));
        }
        key.last_used.fetch_max(now.millis(), Ordering::Relaxed);
        Ok(key)
    }

    async fn load(&self, hash: KeyHash) -> StoreResult<Option<Arc<CachedKey>>> {
        let store = self.store.clone();
        let lookup = hash.clone();
        let found = run_blocking(move || store.find_api_key_by_hash(&lookup))
            .await?
            .map(|record| {
                Arc::new(CachedKey {
                    record,
                    last_used: AtomicI64::new(0),
                    flushed: AtomicI64::new(0),
                })
            });
        if let Ok(mut map) = self.entries.write() {
            if found.is_none()
                && self.negatives.fetch_add(1, Ordering::Relaxed) >= NEGATIVE_CACHE_MAX as i64
            {
                // Someone is trying many keys: forget the old misses rather than grow forever.
                map.retain(|_, v| v.is_some());
                self.negatives.store(0, Ordering::Relaxed);
            }
            map.insert(hash, found.clone());
        }
        Ok(found)
    }

    pub fn invalidate_all(&self) {
        if let Ok(mut map) = self.entries.write() {
            // Keep the uses not yet written; the next flush writes them.
            let pending: Vec<_> = map
                .values()
                .flatten()
                .filter_map(|k| k.take_unflushed())
                .collect();
            if !pending.is_empty()
                && let Ok(mut unflushed) = self.unflushed.lock()
            {
                unflushed.extend(pending);
            }
            map.clear();
        }
        self.negatives.store(0, Ordering::Relaxed);
    }

    /// Writes the collected last-used times in one batch.
    pub async fn flush_last_used(&self) -> StoreResult<()> {
        let mut batch: Vec<(KeyId, Timestamp)> = match self.unflushed.lock() {
            Ok(mut unflushed) => std::mem::take(&mut *unflushed),
            Err(_) => Vec::new(),
        };
        if let Ok(map) = self.entries.read() {
            batch.extend(map.values().flatten().filter_map(|k| k.take_unflushed()));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        run_blocking(move || store.touch_api_keys(&batch)).await
    }
}

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
        return super::console::session_caller(&state, &req).await;
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
            if let Some(client) = super::middleware::client_ip(&req)
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
        && !matches!(
            *req.method(),
            actix_web::http::Method::GET
                | actix_web::http::Method::HEAD
                | actix_web::http::Method::OPTIONS
        )
        && let Some(by) = state
            .proxy
            .guard
            .killswitch()
            .tenant_status(&record.tenant_id)
            .keys
            .into_iter()
            .find_map(|(k, by)| (k == record.id).then_some(by))
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

/// Any valid key (proxy or admin scope).
pub struct ProxyKey(pub Caller);

/// A valid key with admin scope.
pub struct AdminKey(pub Caller);

impl FromRequest for ProxyKey {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(req, Scope::Proxy).await.map(ProxyKey) })
    }
}

impl FromRequest for AdminKey {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(req, Scope::Admin).await.map(AdminKey) })
    }
}
