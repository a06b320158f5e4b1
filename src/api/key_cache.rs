//! The in-memory cache of API keys in front of the store: authenticating the value of an
//! `Authorization` header, and the last-used times written in batches (see `api::auth`).

use super::error::ApiError;
use crate::domain::{ApiKeyRecord, KeyHash, KeyId, KeySecret, Timestamp};
use crate::error::Code;
use crate::store::{DynStore, StoreResult, run_blocking};
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
        let (code, message) = match f {
            AuthFailure::Missing => (
                Code::MissingApiKey,
                "No API key provided. Send your agv-server key as 'Authorization: Bearer agv_…' (create one with `agv-server key create --tenant ID`).",
            ),
            AuthFailure::Malformed => (
                Code::InvalidApiKey,
                "Malformed API key: agv-server keys look like 'agv_' followed by 64 hex characters.",
            ),
            AuthFailure::Unknown => (Code::InvalidApiKey, "Incorrect API key provided."),
            AuthFailure::Revoked => (
                Code::ApiKeyRevoked,
                "This API key has been revoked; create a new one.",
            ),
            AuthFailure::Expired => (
                Code::ApiKeyExpired,
                "This API key has expired; use its replacement or create a new one.",
            ),
        };
        ApiError::new(code, message)
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
