//! Postgres connections as every part of the store uses them: the pool's connection
//! manager, how the client's errors become the store's, how a [`Param`] binds, the
//! advisory locks and channel the store shares across instances, and the shared SQL layer
//! ([`Db`]) on a client.
//!
//! The Postgres store (`postgres`), its text index (`search_postgres`), migrations and
//! dumps all build on this module; it must import none of them, so that they form layers
//! rather than a circle.

use super::sql::{Cell, Db, Dialect, EventSeq, Param, SqlRow, TextIndex};
use super::{StoreError, StoreResult};
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;

pub(super) type Manager = PostgresConnectionManager<NoTls>;

/// The LISTEN/NOTIFY channel of the change feed.
pub(super) const CHANGE_CHANNEL: &str = "agv_changes";

/// Advisory lock: one indexer at a time across instances ("agv_srch" in ASCII).
pub(super) const INDEXER_LOCK: i64 = 0x6167_765f_7372_6368;

/// Maps a postgres error to the store's error: uniqueness → `Conflict`, a missing
/// referenced row → `NotFound`, a full disk → `Full`, a lost connection or a server that is
/// shutting down, starting or out of connections → `Unavailable`.
pub(super) fn db_err(e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db.message().to_owned());
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            return StoreError::NotFound;
        }
        if *code == SqlState::DISK_FULL {
            return StoreError::Full(format!(
                "the Postgres server's disk is full: {} — free space on the database server; writing resumes by itself once there is room",
                db.message()
            ));
        }
        // The server is shutting down, starting up, out of connections or otherwise
        // refusing work for now: a retry later can succeed.
        let class = code.code().get(..2).unwrap_or("");
        if matches!(class, "08" | "53" | "57") || *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return StoreError::Unavailable(format!(
                "Postgres cannot serve requests now: {} ({}) — is the server running and accepting connections?",
                db.message(),
                code.code()
            ));
        }
        return StoreError::Database(format!("{} ({})", db.message(), code.code()));
    }
    // A closed connection, or a socket error on the way to or from the server.
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        return StoreError::Unavailable(format!(
            "lost the connection to Postgres: {} — is the server running?",
            crate::telemetry::error_chain(&e)
        ));
    }
    StoreError::Database(crate::telemetry::error_chain(&e))
}

/// A parameter as the client binds it: each variant matches its column's Postgres type.
pub(super) fn pg_param<'b>(p: &'b Param<'_>) -> &'b (dyn ToSql + Sync) {
    match p {
        Param::Text(s) => s,
        Param::BigInt(i) => i,
        Param::Int(i) => i,
        Param::Bool(b) => b,
        Param::OptText(s) => s,
        Param::OptBigInt(i) => i,
    }
}

/// The cells of a row, of whatever query.
pub(super) fn cells(row: &postgres::Row) -> StoreResult<SqlRow> {
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_();
            let cell = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::Int))
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)
                    .map(|v| v.map(|v| Cell::Int(i64::from(v))))
            } else if *ty == Type::INT2 {
                row.try_get::<_, Option<i16>>(i)
                    .map(|v| v.map(|v| Cell::Int(i64::from(v))))
            } else if *ty == Type::BOOL {
                row.try_get::<_, Option<bool>>(i)
                    .map(|v| v.map(|v| Cell::Int(i64::from(v))))
            } else if *ty == Type::NUMERIC {
                return Err(StoreError::Database(
                    "a NUMERIC column reached the common SQL layer; cast it to BIGINT in the statement".into(),
                ));
            } else {
                row.try_get::<_, Option<String>>(i).map(|v| v.map(Cell::Text))
            };
            cell.map(|c| c.unwrap_or(Cell::Null))
                .map_err(db_err)
        })
        .collect()
}

pub(super) struct PgDb<'c, C: GenericClient>(pub &'c mut C);

impl<C: GenericClient> Db for PgDb<'_, C> {
    fn lock_rows(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn event_seq(&self) -> EventSeq {
        EventSeq::Identity
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn serialize(&mut self, key: i64) -> StoreResult<()> {
        self.execute("SELECT pg_advisory_xact_lock($1)", &[Param::BigInt(key)])
            .map(drop)
    }

    fn announce_change(&mut self, topic: &str) -> StoreResult<()> {
        self.execute(
            "SELECT pg_notify($1, $2)",
            &[Param::Text(CHANGE_CHANNEL), Param::Text(topic)],
        )
        .map(drop)
    }

    fn forget_tenant_text(&mut self, tenant: &str) -> StoreResult<()> {
        // No indexer pass overlaps: one that read the tenant's calls before this commits
        // would otherwise write their text-index rows after it.
        self.serialize(INDEXER_LOCK)?;
        self.execute(
            "DELETE FROM call_search WHERE tenant_id = $1",
            &[Param::Text(tenant)],
        )
        .map(drop)
    }

    fn text(&mut self) -> &mut dyn TextIndex {
        self
    }

    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<u64> {
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(pg_param).collect();
        self.0.execute(sql, &params).map_err(db_err)
    }

    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Vec<SqlRow>> {
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(pg_param).collect();
        let rows = self.0.query(sql, &params).map_err(db_err)?;
        rows.iter().map(cells).collect()
    }
}
