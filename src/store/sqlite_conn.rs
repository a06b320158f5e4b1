//! SQLite connections as every part of the store uses them: the settings each connection
//! gets, how rusqlite's errors become the store's, how a [`Param`] binds, and the shared
//! SQL layer ([`Db`]) on a connection.
//!
//! The SQLite store (`sqlite`), its text index (`search_sqlite`), migrations and dumps all
//! build on this module; it must import none of them, so that they form layers rather than
//! a circle.

use super::sql::{Cell, Db, Param, SqlRow, TextIndex, sqlite_placeholders};
use super::{Durability, StoreError, StoreResult};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql};
use std::time::Duration;

pub(super) const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Settings every connection gets, before it is used for anything else.
pub(super) fn init_connection(
    conn: &mut Connection,
    durability: Durability,
) -> rusqlite::Result<()> {
    // The busy timeout first, so that switching to WAL waits for another process too.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            mode,
            "SQLite refused WAL mode (is the data dir on a network file system?)"
        );
    }
    // In WAL mode NORMAL syncs the WAL only when a checkpoint copies it (every round of
    // the checkpointer, see `sqlite::CHECKPOINT_EVERY`): a commit survives a crash of the process,
    // not necessarily of the machine. FULL syncs the WAL at every commit.
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::Power => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // No checkpoint inside a commit: copying the WAL into the database would stall every
    // request waiting on that commit. The store's checkpointer thread does it instead.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(())
}

/// Maps a rusqlite error to the store's error: uniqueness → `Conflict`, a missing
/// referenced row → `NotFound`, a full disk → `Full`, an unwritable file, an I/O error or a
/// lock held too long → `Unavailable`.
pub(super) fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
        rusqlite::Error::SqliteFailure(f, msg) => match f.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                StoreError::Conflict(msg.clone().unwrap_or_else(|| e.to_string()))
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => StoreError::NotFound,
            _ if matches!(
                f.code,
                ffi::ErrorCode::CannotOpen
                    | ffi::ErrorCode::ReadOnly
                    | ffi::ErrorCode::PermissionDenied
            ) =>
            {
                StoreError::Unavailable(format!(
                    "{e} — check that the data directory exists and is writable by this user"
                ))
            }
            _ if f.code == ffi::ErrorCode::DiskFull => StoreError::Full(format!(
                "the disk holding the database is full ({e}) — free space on the data directory's volume; writing resumes by itself once there is room"
            )),
            _ if f.code == ffi::ErrorCode::SystemIoFailure => StoreError::Unavailable(format!(
                "the database file could not be read or written ({e}) — check the disk holding the data directory: free space, and errors in the system log"
            )),
            _ if matches!(
                f.code,
                ffi::ErrorCode::DatabaseBusy | ffi::ErrorCode::DatabaseLocked
            ) =>
            {
                StoreError::Unavailable(format!(
                    "the database stayed locked by another writer for more than {} s: {e} — retry; if it persists, look for a stuck agv-server process",
                    BUSY_TIMEOUT.as_secs()
                ))
            }
            _ => StoreError::Database(e.to_string()),
        },
        _ => StoreError::Database(e.to_string()),
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::BigInt(i) => ToSqlOutput::Owned(Value::Integer(i)),
            Param::Int(i) => ToSqlOutput::Owned(Value::Integer(i64::from(i))),
            Param::Bool(b) => ToSqlOutput::Owned(Value::Integer(i64::from(b))),
            Param::OptText(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::OptBigInt(Some(i)) => ToSqlOutput::Owned(Value::Integer(i)),
            Param::OptText(None) | Param::OptBigInt(None) => ToSqlOutput::Owned(Value::Null),
        })
    }
}

/// The cells of a row, of whatever query.
pub(super) fn cells(r: &rusqlite::Row<'_>) -> rusqlite::Result<SqlRow> {
    (0..r.as_ref().column_count())
        .map(|i| {
            Ok(match r.get_ref(i)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Real(v) => Cell::Int(v as i64),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Cell::Text(String::from_utf8_lossy(t).into_owned())
                }
            })
        })
        .collect()
}

/// A connection (or a transaction, which derefs to one).
pub(super) struct SqliteDb<'c>(pub &'c Connection);

impl Db for SqliteDb<'_> {
    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<u64> {
        let mut stmt = self
            .0
            .prepare_cached(&sqlite_placeholders(sql))
            .map_err(db_err)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(args.iter()))
            .map_err(db_err)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Vec<SqlRow>> {
        let mut stmt = self
            .0
            .prepare_cached(&sqlite_placeholders(sql))
            .map_err(db_err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), cells)
            .map_err(db_err)?;
        rows.map(|r| r.map_err(db_err)).collect()
    }

    fn forget_tenant_text(&mut self, tenant: &str) -> StoreResult<()> {
        // The text index keeps each call's id.
        self.execute(
            "DELETE FROM search.call_fts WHERE call_id IN (SELECT id FROM main.calls WHERE tenant_id = $1)",
            &[Param::Text(tenant)],
        )
        .map(drop)
    }

    fn text(&mut self) -> &mut dyn TextIndex {
        self
    }
}
