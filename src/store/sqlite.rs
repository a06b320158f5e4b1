//! SQLite backend (placeholder until the backend lands).
use super::{DynStore, StoreError, StoreResult};
use std::path::Path;

pub const DB_FILE: &str = "agv.db";

/// Opens the store and applies migrations.
pub fn open_store(_path: &Path) -> StoreResult<DynStore> {
    Err(StoreError::Unavailable("backend not built yet".into()))
}
