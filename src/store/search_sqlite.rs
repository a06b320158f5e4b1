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
//! This module translates between SQL and domain types; it must not contain policy.

use super::StoreResult;
use super::search_sql::{Dialect, fts5_match, search_calls_query};
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
    let text = fts5_match(&search.text);
    let (sql, args) = search_calls_query(
        Dialect::Sqlite,
        tenant,
        search,
        text.as_deref(),
        after,
        limit,
    );
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

/// Indexes up to `batch` calls past the watermark; returns how many were read.
fn index_batch(
    conn: &mut Connection,
    lock: &std::sync::Mutex<()>,
    batch: usize,
) -> StoreResult<usize> {
    let from = watermark(conn)?;
    // Read and tokenize before taking the write lock, which the recorder waits for.
    let docs: Vec<(i64, String, String)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT rowid, id, request_body, response_body FROM calls WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![from, batch as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(db_err)?;
        rows.map(|r| {
            let (rowid, id, request, response) = r.map_err(db_err)?;
            Ok((
                rowid,
                id,
                index_tokens(&request, response.as_deref()).join(" "),
            ))
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
        let Some(last) = chunk.last().map(|d| d.0) else {
            continue;
        };
        let tx = begin_write(lock, conn)?;
        // Another indexer (the background thread, or a caller of index_pending) may have
        // indexed some of these meanwhile: skip what is at or below the current watermark.
        let now_at = watermark(&tx)?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO call_fts (rowid, call_id, body) VALUES (?1, ?2, ?3)")
                .map_err(db_err)?;
            for (rowid, id, body) in chunk.iter().filter(|d| d.0 > now_at) {
                insert.execute(params![rowid, id, body]).map_err(db_err)?;
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
