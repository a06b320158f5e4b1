//! Call search on SQLite: FTS5 over the readable text of calls, in a file of its own,
//! filled in the background.
//!
//! The index is `agv.search.db` beside the database ([`search_path`]); every pooled
//! connection attaches it as `search`, so queries join `call_fts` to `calls` as if they
//! were one database. Writing it never takes the main database's write lock, which the
//! call recorder (on the proxy's hot path) waits for. It is derived data: [`prepare`]
//! rebuilds it when it is missing, of another version, or built from another database.
//!
//! [`spawn_indexer`] runs a thread that, every [`INDEX_EVERY`], indexes the calls past a
//! watermark (`call_search_state.indexed_rowid`) in batches of [`INDEX_BATCH`]: bodies
//! are read from the main database and tokenized outside any transaction, then inserted
//! into `call_fts` in transactions of a hundred calls, and the index's segments are merged
//! a little after each batch. A new call is therefore searchable within about half a
//! second; [`index_pending`] does the same work at once (tests, and callers that must see
//! their last write). SQLite has one writer at a time and assigns rowids past the largest
//! one, so rowid order is commit order and a watermark cannot skip a call.
//!
//! The index's own rowids are time keys (`search_sql::time_key`), so a search walks a
//! word's matches newest first and stops after a page. With a narrow filter (an end
//! user, a session, a key) of fewer than `FILTER_DRIVEN_MAX` calls, the filter's index is
//! walked instead and each call checked against the text index.
//! This module translates between SQL and domain types; it must not contain policy.

use super::Durability;
use super::StoreResult;
use super::rows::MAX_PAGE;
use super::rows::call_from;
use super::search_sql::{
    Dialect, FILTER_DRIVEN_MAX, TextPlan, count_narrow_query, fts5_match, fts5_match_in,
    has_narrow_filter, has_phrases, next_slot, page, search_calls_query, tenant_token, time_key,
};
use super::sql::{Candidate, SearchPage, TextIndex};
use super::sqlite_conn::{BUSY_TIMEOUT, SqliteDb, cells, db_err, init_connection};
use crate::domain::CallRecord;
use crate::domain::search::{contains_phrases, index_tokens};
use rusqlite::{Connection, TransactionBehavior, params, params_from_iter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the background indexer looks for new calls.
pub(super) const INDEX_EVERY: Duration = Duration::from_millis(300);
/// Calls indexed per write transaction: small enough that the recorder, which waits for
/// the same write lock, is held up for milliseconds only.
pub(super) const INDEX_BATCH: usize = 2000;
/// Calls inserted into the index per write transaction.
const INSERT_CHUNK: usize = 100;
/// Pages of segment merging after each batch: keeps the number of segments a query
/// reads small while calls keep arriving.
const MERGE_PAGES: i64 = 200;
/// Version of the index's layout; another version is rebuilt.
const SEARCH_VERSION: i64 = 2;

/// The index file of the database at `db`: `agv.db` → `agv.search.db`.
pub(super) fn search_path(db: &Path) -> PathBuf {
    db.with_extension("search.db")
}

/// Attaches the index file as `search` to a connection of the main database.
pub(super) fn attach(conn: &Connection, search: &Path) -> rusqlite::Result<()> {
    let attached: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_database_list WHERE name = 'search')",
        [],
        |r| r.get(0),
    )?;
    if !attached {
        conn.execute(
            "ATTACH DATABASE ?1 AS search",
            params![search.to_string_lossy()],
        )?;
    }
    let _mode: String = conn.query_row("PRAGMA search.journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA search.synchronous = NORMAL")
}

/// Opens the index file alone, for writing it without touching the main database's locks.
fn open_index(search: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(search)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Creates the index's tables on a connection with the index attached, or drops and
/// recreates them (to be refilled in the background) when they are of another version,
/// were built from another database, or are ahead of its calls (a restored backup).
pub(super) fn prepare(conn: &mut Connection) -> StoreResult<()> {
    // IMMEDIATE: several processes opening at once must not rebuild it twice.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let token: String = tx
        .query_row(
            "SELECT token FROM main.call_search_source WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let version: i64 = tx
        .query_row("PRAGMA search.user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version == SEARCH_VERSION {
        let state: Option<(String, i64)> = tx
            .query_row(
                "SELECT source, indexed_rowid FROM search.call_search_state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_or_else(
                |e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(db_err(e)),
                },
                |s| Ok(Some(s)),
            )?;
        let newest: i64 = tx
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM main.calls", [], |r| {
                r.get(0)
            })
            .map_err(db_err)?;
        if state.is_some_and(|(source, at)| source == token && at <= newest) {
            return Ok(());
        }
        tracing::info!(
            "the search index was built from other data; rebuilding it in the background"
        );
    }
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS search.call_fts;
         -- Dropping the table leaves its content shadow table behind when the unindexed
         -- column is stored (contentless_unindexed): drop what is left by name.
         DROP TABLE IF EXISTS search.call_fts_data;
         DROP TABLE IF EXISTS search.call_fts_idx;
         DROP TABLE IF EXISTS search.call_fts_content;
         DROP TABLE IF EXISTS search.call_fts_docsize;
         DROP TABLE IF EXISTS search.call_fts_config;
         DROP TABLE IF EXISTS search.call_search_state;
         -- rowid: a time key (see search_sql::time_key). call_id is kept to join a hit to
         -- its call; tenant holds the tenant id as one token, so a tenant's search can
         -- intersect with its own calls inside the index. detail = none: no positions,
         -- a third of the size and several times faster to intersect; phrases are checked
         -- on the calls found. Diacritics are kept because agv-server tokenizes the text
         -- itself, identically for SQLite and Postgres.
         CREATE VIRTUAL TABLE search.call_fts USING fts5(
             call_id UNINDEXED,
             tenant,
             body,
             content = '',
             detail = none,
             contentless_delete = 1,
             contentless_unindexed = 1,
             tokenize = 'unicode61 remove_diacritics 0'
         );
         CREATE TABLE search.call_search_state (
             id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
             indexed_rowid BIGINT NOT NULL,
             source        TEXT NOT NULL
         );
         PRAGMA search.user_version = {SEARCH_VERSION};"
    ))
    .map_err(db_err)?;
    tx.execute(
        "INSERT INTO search.call_search_state (id, indexed_rowid, source) VALUES (1, 0, ?1)",
        params![token],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

impl TextIndex for SqliteDb<'_> {
    fn search_calls(&mut self, page: SearchPage<'_>) -> StoreResult<Vec<CallRecord>> {
        search_calls(self.0, page)
    }

    fn prunable(&mut self) -> StoreResult<(&'static str, &'static str)> {
        // Only calls the text indexer has passed: it never indexes them again, so their
        // documents, removed in the same batch, stay removed.
        Ok((
            "c.rowid",
            " AND c.rowid <= (SELECT indexed_rowid FROM search.call_search_state WHERE id = 1)",
        ))
    }

    fn forget_calls(&mut self, calls: &[&Candidate]) -> StoreResult<()> {
        forget(self.0, calls)
    }
}

fn search_calls(conn: &Connection, q: SearchPage<'_>) -> StoreResult<Vec<CallRecord>> {
    let (tenant, search, after) = (q.tenant, q.search, q.after);
    let limit = q.limit.min(MAX_PAGE) as usize;
    let Some(anywhere) = fts5_match(&search.text) else {
        return page(&mut SqliteDb(conn), q, TextPlan::None);
    };
    // The index keeps no positions: a phrase's order is checked on the calls read.
    let phrases = has_phrases(&search.text);
    let keep = |c: &CallRecord| {
        !phrases
            || contains_phrases(
                &search.text,
                &index_tokens(&c.request_body, c.response_body.as_deref()),
            )
    };
    if has_narrow_filter(search) {
        let (sql, args) = count_narrow_query(Dialect::Sqlite, tenant, search, FILTER_DRIVEN_MAX);
        let narrow: i64 = conn
            .prepare_cached(&sql)
            .map_err(db_err)?
            .query_row(params_from_iter(args.iter()), |r| r.get(0))
            .map_err(db_err)?;
        if narrow < FILTER_DRIVEN_MAX {
            let (sql, args) = search_calls_query(
                Dialect::Sqlite,
                tenant,
                search,
                TextPlan::Check(&anywhere),
                after,
                limit as u32,
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let mut rows = stmt.query(params_from_iter(args.iter())).map_err(db_err)?;
            let mut out = Vec::new();
            while out.len() < limit
                && let Some(row) = rows.next().map_err(db_err)?
            {
                let call = call_from(&cells(row).map_err(db_err)?)?;
                if keep(&call) {
                    out.push(call);
                }
            }
            return Ok(out);
        }
    }
    // Restricting the walk to the tenant's token pays only when other tenants have calls.
    let tenants: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM tenants")
        .map_err(db_err)?
        .query_row([], |r| r.get(0))
        .map_err(db_err)?;
    let in_tenant;
    let expr = if tenants > 1 {
        in_tenant = fts5_match_in(tenant, &search.text).unwrap_or_default();
        in_tenant.as_str()
    } else {
        anywhere.as_str()
    };
    // Matches come newest first (time-keyed rowids, ties in any order): read until the
    // page is full and the millisecond changes, then order the page exactly.
    let (sql, args) = search_calls_query(
        Dialect::Sqlite,
        tenant,
        search,
        TextPlan::SqliteWalk(expr),
        after,
        limit as u32,
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt.query(params_from_iter(args.iter())).map_err(db_err)?;
    let mut out: Vec<CallRecord> = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let call = call_from(&cells(row).map_err(db_err)?)?;
        if out.len() >= limit
            && out
                .last()
                .is_some_and(|last| call.created_at < last.created_at)
        {
            break;
        }
        if keep(&call) {
            out.push(call);
        }
    }
    out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    out.truncate(limit);
    Ok(out)
}

/// Indexes every call recorded so far in the database at `db`; returns how many were
/// indexed.
pub(super) fn index_pending(db: &Path) -> StoreResult<u64> {
    let (calls, mut index) = open_pair(db).map_err(db_err)?;
    let mut total = 0u64;
    loop {
        let n = index_batch(&calls, &mut index, INDEX_BATCH)?;
        total += n as u64;
        if n < INDEX_BATCH {
            return Ok(total);
        }
    }
}

/// Slots of one millisecond looked at for a call's document (see `search_sql::next_slot`):
/// a call moves to a later slot only when another one of the same millisecond took its own.
const FORGET_SLOTS: usize = 8;

/// Removes the documents of `calls` (already indexed: at or below the watermark) from the
/// text index, in the caller's transaction on a connection with the index attached.
fn forget(tx: &Connection, calls: &[&Candidate]) -> StoreResult<()> {
    let mut at = tx
        .prepare_cached("SELECT call_id FROM search.call_fts WHERE rowid = ?1")
        .map_err(db_err)?;
    let mut delete = tx
        .prepare_cached("DELETE FROM search.call_fts WHERE rowid = ?1")
        .map_err(db_err)?;
    for c in calls {
        let mut key = time_key(c.created_at, c.position);
        for _ in 0..FORGET_SLOTS {
            let found: Option<String> = match at.query_row(params![key], |r| r.get(0)) {
                Ok(id) => Some(id),
                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(db_err(e)),
            };
            if found.as_deref() == Some(c.id.as_str()) {
                delete.execute(params![key]).map_err(db_err)?;
                break;
            }
            key = next_slot(key);
        }
    }
    Ok(())
}

/// Merges the whole index into one segment, after bulk indexing.
pub(super) fn optimize(db: &Path) -> StoreResult<()> {
    let mut index = open_index(&search_path(db)).map_err(db_err)?;
    let tx = index
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute("INSERT INTO call_fts (call_fts) VALUES ('optimize')", [])
        .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

/// A connection of the main database, to read calls, and one of the index alone, to
/// write it.
fn open_pair(db: &Path) -> rusqlite::Result<(Connection, Connection)> {
    let mut calls = Connection::open(db)?;
    // It only reads: its `synchronous` never applies to a commit.
    init_connection(&mut calls, Durability::Process)?;
    Ok((calls, open_index(&search_path(db))?))
}

fn watermark(index: &Connection) -> StoreResult<i64> {
    index
        .query_row(
            "SELECT indexed_rowid FROM call_search_state WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)
}

/// A call ready for the text index.
struct Doc {
    rowid: i64,
    key: i64,
    id: String,
    tenant: String,
    body: String,
}

/// Lets a waiting thread have the CPU every [`YIELD_EVERY`] documents. At nice 19 (where
/// the indexer starts, see `background`) the scheduler lets a running thread finish its
/// time slice: a batch held a CPU for up to 2.9–11 ms at 1,000 req/s, and a request thread
/// woken on that CPU waited for it (`perf sched timehist`); with the yields, at most
/// 1.5–1.7 ms. Costs a system call when nobody is waiting.
fn yield_every(n: usize) {
    if n % YIELD_EVERY == YIELD_EVERY - 1 {
        std::thread::yield_now();
    }
}

/// Documents tokenized or inserted between two yields (~8 µs each at 1,000 req/s).
const YIELD_EVERY: usize = 16;

/// Indexes up to `batch` calls past the watermark; returns how many were read.
fn index_batch(calls: &Connection, index: &mut Connection, batch: usize) -> StoreResult<usize> {
    let docs = read_docs(calls, index, batch)?;
    if docs.is_empty() {
        return Ok(0);
    }
    write_docs(calls, index, &docs)?;
    Ok(docs.len())
}

/// The next `batch` calls past the watermark, tokenized.
fn read_docs(calls: &Connection, index: &Connection, batch: usize) -> StoreResult<Vec<Doc>> {
    let from = watermark(index)?;
    // Read first, ending the read transaction at once (a reader of the calls keeps the
    // WAL from starting over), then tokenize, outside any transaction.
    let rows: Vec<(i64, String, String, i64, String, Option<String>)> = calls
        .prepare_cached(
            "SELECT rowid, id, tenant_id, created_at, request_body, response_body FROM calls WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )
        .map_err(db_err)?
        .query_map(params![from, batch as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })
        .map_err(db_err)?
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let mut docs = Vec::with_capacity(rows.len());
    for (n, (rowid, id, tenant, created_at, request, response)) in rows.into_iter().enumerate() {
        let tenant = tenant_token(&tenant);
        docs.push(Doc {
            rowid,
            key: time_key(created_at, rowid),
            id,
            tenant,
            body: index_tokens(&request, response.as_deref()).join(" "),
        });
        yield_every(n);
    }
    Ok(docs)
}

/// Writes `docs` into the index, leaving out the calls that no longer exist: a tenant
/// erased since they were read takes its calls' documents out of the index in one
/// transaction that also holds the index's write lock, so a call is either still there
/// when this looks (inside its own write transaction on the index; that erase then
/// removes the document too) or is left out here.
fn write_docs(calls: &Connection, index: &mut Connection, docs: &[Doc]) -> StoreResult<()> {
    let mut exists = calls
        .prepare_cached("SELECT 1 FROM calls WHERE rowid = ?1 AND id = ?2")
        .map_err(db_err)?;
    // In small transactions, so a search reading the index never waits long for a
    // checkpoint of a large one.
    for chunk in docs.chunks(INSERT_CHUNK) {
        let Some(last) = chunk.last().map(|d| d.rowid) else {
            continue;
        };
        let tx = index
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        // Another indexer (the background thread, or a caller of index_pending) may have
        // indexed some of these meanwhile: skip what is at or below the current watermark.
        let now_at = watermark(&tx)?;
        {
            let mut taken = tx
                .prepare_cached("SELECT 1 FROM call_fts WHERE rowid = ?1")
                .map_err(db_err)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO call_fts (rowid, call_id, tenant, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(db_err)?;
            for (n, d) in chunk.iter().filter(|d| d.rowid > now_at).enumerate() {
                if !exists.exists(params![d.rowid, d.id]).map_err(db_err)? {
                    continue;
                }
                // Two calls of one millisecond share a slot only when their rowids are
                // 2^20 apart; the later one moves to the next free slot of that millisecond.
                let mut key = d.key;
                while taken.exists(params![key]).map_err(db_err)? {
                    key = next_slot(key);
                }
                insert
                    .execute(params![key, d.id, d.tenant, d.body])
                    .map_err(db_err)?;
                yield_every(n);
            }
        }
        tx.execute(
            "UPDATE call_search_state SET indexed_rowid = MAX(indexed_rowid, ?1) WHERE id = 1",
            params![last],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        std::thread::yield_now();
    }
    // A little merging after each batch keeps the segments a query reads few.
    index
        .execute(
            "INSERT INTO call_fts (call_fts, rank) VALUES ('merge', ?1)",
            params![MERGE_PAGES],
        )
        .map_err(db_err)?;
    Ok(())
}

/// Starts the background indexer on its own connections; it stops when `stop` is set.
pub(super) fn spawn_indexer(db: PathBuf, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("agv-search-index".into())
        .spawn(move || {
            let mut background = super::background::Background::start();
            let (calls, mut index) = match open_pair(&db) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!(error = %e, path = %db.display(), "the search indexer could not open the database; new calls will not be found by text search until a restart");
                    return;
                }
            };
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(INDEX_EVERY);
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let started = Instant::now();
                    match index_batch(&calls, &mut index, INDEX_BATCH) {
                        Ok(n) => {
                            failing = false;
                            // A full batch: more are waiting.
                            background.round(n >= INDEX_BATCH, started.elapsed());
                            if n < INDEX_BATCH {
                                break;
                            }
                        }
                        Err(e) => {
                            // Once per episode, not every 300 ms.
                            if !failing {
                                tracing::warn!(error = %e, "indexing calls for search failed; retrying");
                            }
                            failing = true;
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the search indexer thread; new calls will not be found by text search");
    }
}

#[cfg(test)]
mod tests {
    use super::super::search_sql::KEY_SHIFT;
    use super::SEARCH_VERSION;
    use crate::domain::{CallSearch, Tenant, TenantId, TenantName, Timestamp};
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;
    use rusqlite::{Connection, params};

    const INSERT: &str = "INSERT INTO calls (rowid, id, tenant_id, key_id, created_at, endpoint, stream, request_body, request_truncated, request_sha256, response_truncated, status, blocked, decisions, latency_us, enforcement_us, upstream_attempts)
         VALUES (?1, ?2, ?3, 'key_00000000000000000000000000000000', ?4, 'chat.completions', 0, ?5, 0, '', 0, 200, 0, '[]', 0, 0, 0)";

    fn acme(store: &SqliteStore) -> Tenant {
        let tenant = Tenant {
            id: TenantId::generate(),
            name: TenantName::parse("Acme").unwrap(),
            created_at: Timestamp::from_millis(0),
        };
        store.create_tenant(&tenant).unwrap();
        tenant
    }

    fn add_call(path: &std::path::Path, rowid: i64, tenant: &TenantId, text: &str) {
        let raw = Connection::open(path).unwrap();
        let id = format!("call_{rowid:032x}");
        raw.execute(
            INSERT,
            params![rowid, id, tenant.as_str(), 1_000 + rowid, text],
        )
        .unwrap();
    }

    /// The ids of the tenant's calls whose text holds "walrus", newest first.
    fn walrus_ids(store: &SqliteStore, tenant: &TenantId) -> Vec<String> {
        let search = CallSearch {
            text: vec![vec!["walrus".to_owned()]],
            ..CallSearch::default()
        };
        store
            .search_calls(tenant, &search, None, 100)
            .unwrap()
            .into_iter()
            .map(|c| c.id.as_str().to_owned())
            .collect()
    }

    /// The first column of every row `sql` selects from `conn`.
    fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_search_by_policy_status_or_model_reads_only_the_calls_its_index_names() {
        use super::super::search_sql::{Dialect, TextPlan, search_calls_query};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agv.db");
        let store = SqliteStore::open(&path).unwrap();
        let t = acme(&store);
        let raw = Connection::open(&path).unwrap();
        let plan = |q: &str| -> Vec<String> {
            let search = crate::domain::SearchQuery::parse(q, Timestamp::now())
                .and_then(|q| q.to_call_search())
                .unwrap();
            let (sql, args) =
                search_calls_query(Dialect::Sqlite, &t.id, &search, TextPlan::None, None, 50);
            let mut stmt = raw.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let uses = |q: &str, index: &str| {
            let plan = plan(q);
            assert!(plan.iter().any(|p| p.contains(index)), "{q}: {plan:?}");
            assert!(
                !plan.iter().any(|p| p.contains("TEMP B-TREE")),
                "{q}: {plan:?}"
            );
        };
        uses("policy:dg-002", "calls_tenant_stopped_by");
        uses("policy:killswitch since:7d", "calls_tenant_stopped_by");
        // A rare or absent status reads the calls that did not answer 200.
        uses("status:418", "calls_tenant_status_unusual");
        // An end user's own calls are fewer than a common policy's.
        uses("policy:dg-003 user:nobody", "calls_tenant_end_user");
        // A model with few or no calls reads that model's calls only.
        uses("model:gpt-4-32k", "calls_tenant_model");
        uses("model:gpt-4-32k since:7d", "calls_tenant_model");
    }

    /// The indexer reads calls, then writes their documents: a tenant erased in between
    /// must not leave its calls' text in the index.
    #[test]
    fn a_tenant_erased_while_its_calls_are_being_indexed_leaves_no_text_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agv.db");
        let store = SqliteStore::open(&path).unwrap();
        let gone = acme(&store);
        let kept = acme(&store);
        add_call(&path, 1, &gone.id, "erase me walrus");
        add_call(&path, 2, &kept.id, "keep me walrus");
        let (calls, mut index) = super::open_pair(&path).unwrap();
        let docs = super::read_docs(&calls, &index, 100).unwrap();
        assert_eq!(docs.len(), 2);
        store.erase_tenant(&gone.id).unwrap();
        super::write_docs(&calls, &mut index, &docs).unwrap();
        let left: Vec<String> = column(&index, "SELECT call_id FROM call_fts");
        assert_eq!(left, [format!("call_{:032x}", 2)]);
        assert_eq!(walrus_ids(&store, &kept.id).len(), 1);
    }

    #[test]
    fn a_deleted_index_file_is_rebuilt_from_the_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agv.db");
        let tenant = {
            let store = SqliteStore::open(&path).unwrap();
            let tenant = acme(&store);
            add_call(&path, 1, &tenant.id, "walrus one");
            add_call(&path, 2, &tenant.id, "walrus two");
            store.index_pending_calls().unwrap();
            assert_eq!(walrus_ids(&store, &tenant.id).len(), 2);
            tenant
        };
        let index = super::search_path(&path);
        assert!(index.exists(), "the index is a file of its own");
        for f in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{f}", index.display()));
        }
        let store = SqliteStore::open(&path).unwrap();
        assert!(walrus_ids(&store, &tenant.id).is_empty(), "not indexed yet");
        assert_eq!(store.index_pending_calls().unwrap(), 2);
        assert_eq!(walrus_ids(&store, &tenant.id).len(), 2);
    }

    #[test]
    fn an_index_built_from_another_database_is_rebuilt() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (path_a, path_b) = (a.path().join("agv.db"), b.path().join("agv.db"));
        {
            let store = SqliteStore::open(&path_a).unwrap();
            let theirs = acme(&store);
            for rowid in 1..=3 {
                add_call(&path_a, rowid, &theirs.id, "walrus theirs");
            }
            assert_eq!(store.index_pending_calls().unwrap(), 3);
        }
        // Another database's index is in place before this one is first opened (a copied
        // data directory).
        let (from, to) = (super::search_path(&path_a), super::search_path(&path_b));
        std::fs::copy(&from, &to).unwrap();
        let wal = format!("{}-wal", from.display());
        if std::path::Path::new(&wal).exists() {
            std::fs::copy(&wal, format!("{}-wal", to.display())).unwrap();
        }
        let copied = Connection::open(&to).unwrap();
        let (version, watermark): (i64, i64) = copied
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version), indexed_rowid FROM call_search_state",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (version, watermark),
            (SEARCH_VERSION, 3),
            "a complete index of the other data"
        );
        drop(copied);
        let store = SqliteStore::open(&path_b).unwrap();
        let mine = acme(&store);
        add_call(&path_b, 1, &mine.id, "walrus mine");
        store.index_pending_calls().unwrap();
        assert_eq!(
            walrus_ids(&store, &mine.id),
            vec![format!("call_{:032x}", 1)]
        );
    }

    #[test]
    fn two_calls_of_one_millisecond_whose_rowids_share_a_slot_both_get_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agv.db");
        let store = SqliteStore::open(&path).unwrap();
        let tenant = acme(&store);
        let raw = Connection::open(&path).unwrap();
        let index = Connection::open(super::search_path(&path)).unwrap();
        let at = 1_700_000_000_123_i64;
        for (rowid, id, text) in [
            (7_i64, "call_0000000000000000000000000000000a", "walrus one"),
            (
                7 + (1 << KEY_SHIFT),
                "call_0000000000000000000000000000000b",
                "walrus two",
            ),
            (
                8 + (1 << KEY_SHIFT),
                "call_0000000000000000000000000000000c",
                "walrus three",
            ),
        ] {
            raw.execute(INSERT, params![rowid, id, tenant.id.as_str(), at, text])
                .unwrap();
        }
        store.index_pending_calls().unwrap();
        let keys: Vec<i64> = column(&index, "SELECT rowid FROM call_fts ORDER BY rowid");
        let base = at << KEY_SHIFT;
        assert_eq!(
            keys,
            vec![base + 7, base + 8, base + 9],
            "the later call moved on"
        );
        assert_eq!(
            walrus_ids(&store, &tenant.id),
            vec![
                "call_0000000000000000000000000000000c",
                "call_0000000000000000000000000000000b",
                "call_0000000000000000000000000000000a",
            ],
            "ties in a millisecond are ordered by id, newest first"
        );
    }
}
