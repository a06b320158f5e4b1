//! Postgres backend (placeholder until the backend lands).
use super::{DynStore, StoreError, StoreResult};

/// Opens the store and applies migrations.
pub fn open_store(_url: &str) -> StoreResult<DynStore> {
    Err(StoreError::Unavailable("backend not built yet".into()))
}
