//! A small common ground for statements that both backends run word for word.
//!
//! Newer parts of the store (incidents, …) are written once against [`Db`]: SQL with
//! `$1`-style placeholders (SQLite takes them as `?1`), typed parameters ([`Param`], as elsewhere in the store) and rows
//! of plain values ([`Cell`]). Each backend implements `Db` on its transaction, so the
//! logic — and its bugs — exist once.
//!
//! This is the bottom of the store's SQL: it knows neither backend. Each backend's
//! implementation of `Db` lives with its connections (`sqlite_conn`, `postgres_conn`).

use super::{StoreError, StoreResult};
use crate::domain::{CallCursor, CallRecord, CallSearch, TenantId};

/// A query parameter, typed so that each backend binds it to its column's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Param<'a> {
    Text(&'a str),
    BigInt(i64),
    Int(i32),
    Bool(bool),
    /// NULL when `None` (typed, because Postgres checks a NULL's type too).
    OptText(Option<&'a str>),
    OptBigInt(Option<i64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Whose SQL a statement is, for the few expressions that differ.
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub(super) fn placeholder(self, n: usize) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}"),
        }
    }
}

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

pub(super) type SqlRow = Vec<Cell>;

pub(super) trait Db {
    fn execute(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<u64>;
    fn query(&mut self, sql: &str, args: &[Param<'_>]) -> StoreResult<Vec<SqlRow>>;
    /// What a `SELECT` appends to lock the rows it reads until the transaction ends:
    /// nothing on SQLite (a write transaction already excludes every other writer).
    fn lock_rows(&self) -> &'static str {
        ""
    }
    /// How an append-only log's `seq` is filled: SQLite numbers rows itself, under its write
    /// lock; Postgres's columns are identity columns.
    fn event_seq(&self) -> EventSeq {
        EventSeq::MaxPlusOne
    }
    /// Takes the transaction-scoped lock `key`, so that one writer at a time runs what
    /// follows across every instance sharing the database (a Postgres advisory lock);
    /// nothing on SQLite, whose write transaction already excludes every other writer.
    fn serialize(&mut self, _key: i64) -> StoreResult<()> {
        Ok(())
    }
    /// Tells every instance listening that the change feed moved, at commit (Postgres
    /// NOTIFY, see `postgres::ChangeListener`); nothing on SQLite, whose readers poll.
    fn announce_change(&mut self, _topic: &str) -> StoreResult<()> {
        Ok(())
    }
    /// Removes a tenant's entries from the text index, in this transaction (each backend
    /// keeps its own index, see `search_sqlite` and `search_postgres`).
    fn forget_tenant_text(&mut self, tenant: &str) -> StoreResult<()>;
    /// This backend's text index, on this connection or transaction.
    fn text(&mut self) -> &mut dyn TextIndex;
    /// Whose SQL this is, for the few expressions that differ (JSON functions, and the
    /// expression indexes built on them, see `search_sql::STOPPED_BY`).
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

/// What the shared store methods need of a backend's own text index, implemented beside
/// it (`search_sqlite`, `search_postgres`) for that backend's [`Db`].
pub(super) trait TextIndex {
    /// One page of a call search.
    fn search_calls(&mut self, page: SearchPage<'_>) -> StoreResult<Vec<CallRecord>>;
    /// Where a retention batch may read calls from (see `retention::prune_batch`): the
    /// column of `c` that places a call in the text index, and what narrows the calls
    /// further (SQL on `c`, or nothing). Takes whatever lock keeps the text indexer from
    /// writing the calls' documents again before the transaction ends.
    fn prunable(&mut self) -> StoreResult<(&'static str, &'static str)>;
    /// Removes these calls' documents from the text index, in this transaction.
    fn forget_calls(&mut self, calls: &[&Candidate]) -> StoreResult<()>;
}

/// One page of a call search: whose calls, what they must match, where the page starts
/// (strictly after `after`, newest first) and at most how many.
#[derive(Clone, Copy)]
pub(super) struct SearchPage<'a> {
    pub tenant: &'a TenantId,
    pub search: &'a CallSearch,
    pub after: Option<&'a CallCursor>,
    pub limit: u32,
}

/// A call read by a retention batch: its id, time, position in the text index (SQLite:
/// rowid; Postgres: `search_seq`) and whether something refers to it.
pub(super) struct Candidate {
    pub id: String,
    pub created_at: i64,
    pub position: i64,
    pub protected: bool,
}

/// The next row's place in an append-only log's insertion order (`seq`).
pub(super) enum EventSeq {
    /// `seq` is filled by `MAX(seq) + 1` under the write lock.
    MaxPlusOne,
    /// The column is an identity column.
    Identity,
}

/// A stored value that does not read back: "a stored `what`: `e`".
pub(super) fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("a stored {what}: {e}"))
}

/// Reads the cells of a row by position, with errors that name the column.
pub(super) struct Cells<'r> {
    row: &'r [Cell],
    what: &'static str,
}

impl<'r> Cells<'r> {
    pub(super) fn new(row: &'r [Cell], what: &'static str) -> Self {
        Self { row, what }
    }

    fn bad(&self, i: usize, expected: &str) -> StoreError {
        StoreError::Database(format!(
            "column {i} of a stored {} is not {expected}: {:?}",
            self.what,
            self.row.get(i)
        ))
    }

    pub(super) fn text(&self, i: usize) -> StoreResult<String> {
        match self.row.get(i) {
            Some(Cell::Text(s)) => Ok(s.clone()),
            _ => Err(self.bad(i, "text")),
        }
    }

    pub(super) fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.row.get(i) {
            Some(Cell::Text(s)) => Ok(Some(s.clone())),
            Some(Cell::Null) => Ok(None),
            _ => Err(self.bad(i, "text or NULL")),
        }
    }

    pub(super) fn int(&self, i: usize) -> StoreResult<i64> {
        match self.row.get(i) {
            Some(Cell::Int(v)) => Ok(*v),
            _ => Err(self.bad(i, "an integer")),
        }
    }

    /// A boolean, stored as an integer on SQLite (0 or 1).
    pub(super) fn bool(&self, i: usize) -> StoreResult<bool> {
        Ok(self.int(i)? != 0)
    }

    pub(super) fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.row.get(i) {
            Some(Cell::Int(v)) => Ok(Some(*v)),
            Some(Cell::Null) => Ok(None),
            _ => Err(self.bad(i, "an integer or NULL")),
        }
    }
}

/// A statement put together from the conditions that apply, and its parameters.
pub(super) struct Query<'a> {
    pub sql: String,
    pub args: Vec<Param<'a>>,
    /// How the placeholders are spelled.
    pub dialect: Dialect,
}

impl<'a> Query<'a> {
    /// A statement with `$n` placeholders, as every statement run through [`Db`] has them.
    pub(super) fn new(sql: String) -> Self {
        Self::of(Dialect::Postgres, sql)
    }

    /// A statement with `dialect`'s placeholders.
    pub(super) fn of(dialect: Dialect, sql: String) -> Self {
        Self {
            sql,
            args: Vec::new(),
            dialect,
        }
    }

    /// Appends `text` and the parameter `p` it adds, which `text` names `{}` (each `{}`
    /// becomes that parameter's placeholder).
    pub(super) fn add(&mut self, p: Param<'a>, text: &str) {
        self.args.push(p);
        let placeholder = self.dialect.placeholder(self.args.len());
        self.sql.push_str(&text.replace("{}", &placeholder));
    }

    pub(super) fn into_parts(self) -> (String, Vec<Param<'a>>) {
        (self.sql, self.args)
    }
}

/// The rows `sql` returns, each read by `read`.
pub(super) fn all<T>(
    db: &mut dyn Db,
    sql: &str,
    args: &[Param<'_>],
    read: impl Fn(&SqlRow) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    db.query(sql, args)?.iter().map(read).collect()
}

/// The first row `sql` returns, read by `read`; `None` when it returns none.
pub(super) fn first<T>(
    db: &mut dyn Db,
    sql: &str,
    args: &[Param<'_>],
    read: impl Fn(&SqlRow) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    db.query(sql, args)?.first().map(read).transpose()
}

/// The first row `sql` returns, read by `read`; `NotFound` when it returns none.
pub(super) fn one<T>(
    db: &mut dyn Db,
    sql: &str,
    args: &[Param<'_>],
    read: impl Fn(&SqlRow) -> StoreResult<T>,
) -> StoreResult<T> {
    first(db, sql, args, read)?.ok_or(StoreError::NotFound)
}

/// Whether `sql` returns any row.
pub(super) fn exists(db: &mut dyn Db, sql: &str, args: &[Param<'_>]) -> StoreResult<bool> {
    Ok(!db.query(sql, args)?.is_empty())
}

/// The row of `table` whose id is `id`, its `columns` read by `read`: only a row of
/// `tenant` (`None`: of any tenant, as the operator sees them), else NotFound. `lock`
/// locks it until the transaction ends (see [`Db::lock_rows`]).
pub(super) fn owned<T>(
    db: &mut dyn Db,
    table: &str,
    columns: &str,
    id: &str,
    tenant: Option<&TenantId>,
    lock: bool,
    read: impl Fn(&SqlRow) -> StoreResult<T>,
) -> StoreResult<T> {
    let lock = if lock { db.lock_rows() } else { "" };
    let sql = format!(
        "SELECT {columns} FROM {table} WHERE id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2){lock}"
    );
    let args = [
        Param::Text(id),
        Param::OptText(tenant.map(TenantId::as_str)),
    ];
    one(db, &sql, &args, read)
}

/// The integer of the first column of the first row `sql` returns (a count, a sum, a
/// maximum); 0 when it returns no row.
pub(super) fn number(db: &mut dyn Db, sql: &str, args: &[Param<'_>]) -> StoreResult<i64> {
    first(db, sql, args, |r| Cells::new(r, "number").int(0)).map(Option::unwrap_or_default)
}

/// `$1` → `?1`: SQLite's numbered form of the same placeholder.
pub(super) fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_for_sqlite_only_where_they_are_placeholders() {
        assert_eq!(
            sqlite_placeholders("SELECT a FROM t WHERE x = $1 AND y = $12 AND z = '$'"),
            "SELECT a FROM t WHERE x = ?1 AND y = ?12 AND z = '$'"
        );
    }
}
