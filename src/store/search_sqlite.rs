//! Call search on SQLite: FTS5 over the readable text of calls, filled in the background.
//!
//! The recorder's insert into `calls` does no indexing work (it is on the proxy's hot
//! path). Instead [`spawn_indexer`] runs a thread that, every [`INDEX_EVERY`], indexes the
//! calls past a watermark (`call_search_state.indexed_rowid`) in batches of
//! [`INDEX_BATCH`]: bodies are read and tokenized outside any write lock, and the inserts
//! into `call_fts` go in transactions of a hundred calls under the process's writer lock. A new call is therefore searchable within about half
//! a second; [`index_pending`] does the same work at once (tests, and callers that must
//! see their last write). SQLite has one writer at a time and assigns rowids past the
//! largest one, so rowid order is commit order and a watermark cannot skip a call.
//!
//! The index's own rowids are time keys (`search_sql::time_key`), so a search walks a
//! word's matches newest first and stops after a page. With a narrow filter (an end
//! user, a session, a key) of fewer than `FILTER_DRIVEN_MAX` calls, the filter's index is
//! walked instead and each call checked against the text index.
//! This module translates between SQL and domain types; it must not contain policy.

use super::StoreResult;
use super::rows::MAX_PAGE;
use super::search_sql::{
    Dialect, FILTER_DRIVEN_MAX, TextPlan, count_narrow_query, fts5_match, fts5_match_in,
    has_narrow_filter, next_slot, search_calls_query, tenant_token, time_key,
};
use super::sqlite::{WriterLock, begin_write, call_row, db_err, init_connection};
use crate::domain::search::index_tokens;
use crate::domain::{CallCursor, CallRecord, CallSearch, TenantId};
use rusqlite::{Connection, params, params_from_iter};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the background indexer looks for new calls.
pub(super) const INDEX_EVERY: Duration = Duration::from_millis(300);
/// Calls indexed per write transaction: small enough that the recorder, which waits for
/// the same write lock, is held up for milliseconds only.
pub(super) const INDEX_BATCH: usize = 2000;
/// Calls inserted into the index per write transaction.
const INSERT_CHUNK: usize = 100;

pub(super) fn search_calls(
    conn: &Connection,
    tenant: &TenantId,
    search: &CallSearch,
    after: Option<&CallCursor>,
    limit: u32,
) -> StoreResult<Vec<CallRecord>> {
    let limit = limit.min(MAX_PAGE);
    let (Some(anywhere), Some(in_tenant)) = (
        fts5_match(&search.text),
        fts5_match_in(tenant, &search.text),
    ) else {
        return page(conn, tenant, search, TextPlan::None, after, limit);
    };
    if has_narrow_filter(search) {
        let (sql, args) = count_narrow_query(Dialect::Sqlite, tenant, search, FILTER_DRIVEN_MAX);
        let narrow: i64 = conn
            .prepare_cached(&sql)
            .map_err(db_err)?
            .query_row(params_from_iter(args.iter()), |r| r.get(0))
            .map_err(db_err)?;
        if narrow < FILTER_DRIVEN_MAX {
            return page(
                conn,
                tenant,
                search,
                TextPlan::Check(&anywhere),
                after,
                limit,
            );
        }
    }
    // Matches come newest first (time-keyed rowids, ties in any order): read until the
    // page is full and the millisecond changes, then order the page exactly.
    let (sql, args) = search_calls_query(
        Dialect::Sqlite,
        tenant,
        search,
        TextPlan::SqliteWalk(&in_tenant),
        after,
        limit,
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt.query(params_from_iter(args.iter())).map_err(db_err)?;
    let mut out: Vec<CallRecord> = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let call = call_row(row).map_err(db_err)?.into_record()?;
        if out.len() >= limit as usize
            && out
                .last()
                .is_some_and(|last| call.created_at < last.created_at)
        {
            break;
        }
        out.push(call);
    }
    out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    out.truncate(limit as usize);
    Ok(out)
}

fn page(
    conn: &Connection,
    tenant: &TenantId,
    search: &CallSearch,
    text: TextPlan<'_>,
    after: Option<&CallCursor>,
    limit: u32,
) -> StoreResult<Vec<CallRecord>> {
    let (sql, args) = search_calls_query(Dialect::Sqlite, tenant, search, text, after, limit);
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let rows = stmt
        .query_map(params_from_iter(args.iter()), call_row)
        .map_err(db_err)?;
    rows.map(|r| r.map_err(db_err)?.into_record()).collect()
}

/// Indexes every call recorded so far; returns how many were indexed.
pub(super) fn index_pending(
    conn: &mut Connection,
    lock: &std::sync::Mutex<()>,
) -> StoreResult<u64> {
    let mut total = 0u64;
    loop {
        let n = index_batch(conn, lock, INDEX_BATCH)?;
        total += n as u64;
        if n < INDEX_BATCH {
            return Ok(total);
        }
    }
}

fn watermark(conn: &Connection) -> StoreResult<i64> {
    conn.query_row(
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

/// Indexes up to `batch` calls past the watermark; returns how many were read.
fn index_batch(
    conn: &mut Connection,
    lock: &std::sync::Mutex<()>,
    batch: usize,
) -> StoreResult<usize> {
    let from = watermark(conn)?;
    // Read and tokenize before taking the write lock, which the recorder waits for.
    let docs: Vec<Doc> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT rowid, id, tenant_id, created_at, request_body, response_body FROM calls WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![from, batch as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(db_err)?;
        rows.map(|r| {
            let (rowid, id, tenant, created_at, request, response) = r.map_err(db_err)?;
            let tenant = tenant_token(&tenant);
            Ok(Doc {
                rowid,
                key: time_key(created_at, rowid),
                id,
                tenant,
                body: index_tokens(&request, response.as_deref()).join(" "),
            })
        })
        .collect::<StoreResult<_>>()?
    };
    if docs.is_empty() {
        return Ok(0);
    }
    // Written in small transactions, each under this process's writer lock (see
    // `sqlite::WriterLock`): the recorder, whose commit is on the proxy's hot path, waits
    // at most one chunk's inserts (about a millisecond) for it, never the whole batch.
    for chunk in docs.chunks(INSERT_CHUNK) {
        let Some(last) = chunk.last().map(|d| d.rowid) else {
            continue;
        };
        let tx = begin_write(lock, conn)?;
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
            for d in chunk.iter().filter(|d| d.rowid > now_at) {
                // Two calls of one millisecond share a slot only when their rowids are
                // 2^20 apart; the later one moves to the next free slot of that millisecond.
                let mut key = d.key;
                while taken.exists(params![key]).map_err(db_err)? {
                    key = next_slot(key);
                }
                insert
                    .execute(params![key, d.id, d.tenant, d.body])
                    .map_err(db_err)?;
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
    Ok(docs.len())
}

/// Starts the background indexer on its own connection; it stops when `stop` is set.
pub(super) fn spawn_indexer(path: PathBuf, stop: Arc<AtomicBool>, lock: WriterLock) {
    let spawned = std::thread::Builder::new()
        .name("agv-search-index".into())
        .spawn(move || {
            super::sqlite::background_priority();
            let mut conn = match Connection::open(&path)
                .and_then(|mut c| init_connection(&mut c).map(|()| c))
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "the search indexer could not open the database; new calls will not be found by text search until a restart");
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
                    match index_batch(&mut conn, &lock, INDEX_BATCH) {
                        Ok(n) => {
                            failing = false;
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
    use crate::domain::{CallSearch, Tenant, TenantId, TenantName, Timestamp};
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;
    use rusqlite::{Connection, params};

    const INSERT: &str = "INSERT INTO calls (rowid, id, tenant_id, key_id, created_at, endpoint, stream, request_body, request_truncated, request_sha256, response_truncated, status, blocked, decisions, latency_us, enforcement_us, upstream_attempts)
         VALUES (?1, ?2, ?3, 'key_00000000000000000000000000000000', ?4, 'chat.completions', 0, ?5, 0, '', 0, 200, 0, '[]', 0, 0, 0)";

    #[test]
    fn two_calls_of_one_millisecond_whose_rowids_share_a_slot_both_get_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agv.db");
        let store = SqliteStore::open(&path).unwrap();
        let tenant = Tenant {
            id: TenantId::generate(),
            name: TenantName::parse("Acme").unwrap(),
            created_at: Timestamp::from_millis(0),
        };
        store.create_tenant(&tenant).unwrap();
        let raw = Connection::open(&path).unwrap();
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
        let keys: Vec<i64> = raw
            .prepare("SELECT rowid FROM call_fts ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let base = at << KEY_SHIFT;
        assert_eq!(
            keys,
            vec![base + 7, base + 8, base + 9],
            "the later call moved on"
        );
        let search = CallSearch {
            text: vec![vec!["walrus".to_owned()]],
            ..CallSearch::default()
        };
        let found: Vec<String> = store
            .search_calls(&tenant.id, &search, None, 10)
            .unwrap()
            .into_iter()
            .map(|c| c.id.as_str().to_owned())
            .collect();
        assert_eq!(
            found,
            vec![
                "call_0000000000000000000000000000000c",
                "call_0000000000000000000000000000000b",
                "call_0000000000000000000000000000000a",
            ],
            "ties in a millisecond are ordered by id, newest first"
        );
    }
}
