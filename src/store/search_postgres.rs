//! Call search on Postgres: a GIN-indexed tsvector per call in `call_search`, filled in
//! the background exactly like SQLite's FTS5 index (see `search_sqlite`), from the same
//! tokens, so both backends answer a search the same way.
//!
//! Calls are followed by their insertion sequence (`calls.search_seq`). Unlike SQLite,
//! Postgres lets several transactions insert at once (several agv-server instances), so a
//! smaller sequence value may commit after a larger one was indexed. The indexer keeps
//! `indexed_seq` (the highest value indexed) and `safe_seq` (everything at or below it is
//! indexed). After a pass it marks `pending_seq = indexed_seq`; at the next pass it notes
//! the snapshot's `xmax`; once the snapshot `xmin` has reached that value, every
//! transaction that could still hold a value at or below `pending_seq` has ended, so the
//! range (`safe_seq`, `pending_seq`] is checked once for calls not yet indexed and
//! `safe_seq` advances. One instance indexes at a time (an advisory lock).
//! This module translates between SQL and domain types; it must not contain policy.

use super::postgres_conn::{INDEXER_LOCK, Manager, PgDb, cells, db_err, pg_param};
use super::rows::MAX_PAGE;
use super::rows::call_from;
use super::search_sql::{
    Dialect, FILTER_DRIVEN_MAX, TextPlan, call_columns, conditions, count_narrow_query,
    has_narrow_filter, page, tsquery, tsvector,
};
use super::sql::{Candidate, Db, Param, Query, SearchPage, TextIndex};
use super::{StoreError, StoreResult};
use crate::domain::search::index_tokens;
use crate::domain::{CallCursor, CallRecord, CallSearch, TenantId, Timestamp};
use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Transaction};
use r2d2::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the background indexer looks for new calls.
const INDEX_EVERY: Duration = Duration::from_millis(300);
/// Calls indexed per transaction.
const INDEX_BATCH: i64 = 2000;

fn search_calls(
    client: &mut impl GenericClient,
    q: SearchPage<'_>,
) -> StoreResult<Vec<CallRecord>> {
    let (tenant, search, after, limit) = (q.tenant, q.search, q.after, q.limit.min(MAX_PAGE));
    let Some(text) = tsquery(&search.text) else {
        return page(&mut PgDb(client), q, TextPlan::None);
    };
    if has_narrow_filter(search) {
        let (sql, args) = count_narrow_query(Dialect::Postgres, tenant, search, FILTER_DRIVEN_MAX);
        let args: Vec<&(dyn ToSql + Sync)> = args.iter().map(pg_param).collect();
        let narrow: i64 = client.query_one(&sql, &args).map_err(db_err)?.get(0);
        if narrow < FILTER_DRIVEN_MAX {
            return page(&mut PgDb(client), q, TextPlan::Check(&text));
        }
    }
    // First the newest calls in time order, checking each one's text: a common word
    // fills the page there. Then, for the rest of the range, the text index once.
    let since = search.filter.since.map(|t| t.millis());
    let until = search.filter.until.map(|t| t.millis());
    let recent = newest_matches(client, tenant, &text, since, until, after)?;
    let mut out = calls_among(client, tenant, search, &recent.ids, limit)?;
    if out.len() < limit as usize
        && let Some(older_than) = recent.older_than
    {
        let ids = indexed_matches(client, tenant, &text, since, &older_than)?;
        let wanted = limit - out.len() as u32;
        out.extend(calls_among(client, tenant, search, &ids, wanted)?);
    }
    Ok(out)
}

impl<C: GenericClient> TextIndex for PgDb<'_, C> {
    fn search_calls(&mut self, page: SearchPage<'_>) -> StoreResult<Vec<CallRecord>> {
        search_calls(self.0, page)
    }

    fn prunable(&mut self) -> StoreResult<(&'static str, &'static str)> {
        // No indexer pass runs meanwhile (they take this lock too): a call it has not
        // indexed yet is indexed after this commits, from the emptied bodies.
        self.serialize(INDEXER_LOCK)?;
        Ok(("c.search_seq", ""))
    }

    fn forget_calls(&mut self, calls: &[&Candidate]) -> StoreResult<()> {
        let seqs: Vec<i64> = calls.iter().map(|c| c.position).collect();
        if !seqs.is_empty() {
            self.0
                .execute("DELETE FROM call_search WHERE call_seq = ANY($1)", &[&seqs])
                .map_err(db_err)?;
        }
        Ok(())
    }
}

/// How many of the newest calls are checked one by one before the text index is used.
const NEWEST_WINDOW: i64 = 1000;

struct Recent {
    /// The matching calls among the window's.
    ids: Vec<String>,
    /// The window's oldest call, when the range goes on past it.
    older_than: Option<CallCursor>,
}

/// Checks the text of the tenant's newest [`NEWEST_WINDOW`] calls in the range (below
/// `until` and the cursor), walking the time index.
fn newest_matches(
    client: &mut impl GenericClient,
    tenant: &TenantId,
    text: &str,
    since: Option<i64>,
    until: Option<i64>,
    after: Option<&CallCursor>,
) -> StoreResult<Recent> {
    let mut q = in_range(
        "SELECT call_id, created_at, doc @@ $2::text::tsquery FROM call_search s WHERE s.tenant_id = $1",
        [tenant.as_str(), text],
        since,
        until,
        after,
    );
    q.add(
        Param::BigInt(NEWEST_WINDOW),
        " ORDER BY s.created_at DESC, s.call_id DESC LIMIT {}",
    );
    let args: Vec<&(dyn ToSql + Sync)> = q.args.iter().map(pg_param).collect();
    let rows = client.query(&q.sql, &args).map_err(db_err)?;
    let ids = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| r.get::<_, String>(0))
        .collect();
    let older_than = match rows.last() {
        Some(last) if rows.len() as i64 == NEWEST_WINDOW => {
            let id: String = last.get(0);
            Some(CallCursor {
                created_at: Timestamp::from_millis(last.get(1)),
                id: crate::domain::CallId::parse(&id)
                    .map_err(|e| StoreError::Database(format!("a stored call id is bad: {e}")))?,
            })
        }
        _ => None,
    };
    Ok(Recent { ids, older_than })
}

/// A `call_search s` query (`select`, whose `$1` is the tenant and `$2` the text) with the
/// conditions of a time range (`since`, below `until`) and of a cursor (strictly older
/// than `after`), binding their values.
fn in_range<'a>(
    select: &str,
    [tenant, text]: [&'a str; 2],
    since: Option<i64>,
    until: Option<i64>,
    after: Option<&'a CallCursor>,
) -> Query<'a> {
    let mut q = Query::new(select.to_owned());
    q.args = vec![Param::Text(tenant), Param::Text(text)];
    if let Some(since) = since {
        q.add(Param::BigInt(since), " AND s.created_at >= {}");
    }
    if let Some(until) = until {
        q.add(Param::BigInt(until), " AND s.created_at < {}");
    }
    if let Some(c) = after {
        q.add(
            Param::BigInt(c.created_at.millis()),
            " AND (s.created_at, s.call_id) < ({}, ",
        );
        q.add(Param::Text(c.id.as_str()), "{})");
    }
    q
}

/// The ids of the tenant's calls from `since` and older than `older_than` whose text
/// matches, read through the text index alone. (Postgres would otherwise walk a time
/// index checking every call's text whenever it guesses a conjunction of common words to
/// be common too, which for one that matches nothing means reading every call.)
fn indexed_matches(
    client: &mut impl GenericClient,
    tenant: &TenantId,
    text: &str,
    since: Option<i64>,
    older_than: &CallCursor,
) -> StoreResult<Vec<String>> {
    let q = in_range(
        "SELECT call_id FROM call_search s WHERE s.tenant_id = $1 AND s.doc @@ $2::text::tsquery",
        [tenant.as_str(), text],
        since,
        None,
        Some(older_than),
    );
    let mut tx = client.transaction().map_err(db_err)?;
    tx.batch_execute(
        "SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off; SET LOCAL enable_seqscan = off",
    )
    .map_err(db_err)?;
    let args: Vec<&(dyn ToSql + Sync)> = q.args.iter().map(pg_param).collect();
    let ids = tx
        .query(&q.sql, &args)
        .map_err(db_err)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    tx.commit().map_err(db_err)?;
    Ok(ids)
}

/// The newest `limit` of the calls `ids` that meet the search's other conditions.
fn calls_among(
    client: &mut impl GenericClient,
    tenant: &TenantId,
    search: &CallSearch,
    ids: &[String],
    limit: u32,
) -> StoreResult<Vec<CallRecord>> {
    if ids.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let mut q = Query::new(format!("SELECT {} FROM calls c WHERE ", call_columns()));
    conditions(&mut q, tenant, search);
    let n = q.args.len();
    q.sql.push_str(&format!(
        " AND c.id = ANY(${}::text[]) ORDER BY c.created_at DESC, c.id DESC LIMIT ${}",
        n + 1,
        n + 2
    ));
    let limit = i64::from(limit);
    let mut args: Vec<&(dyn ToSql + Sync)> = q.args.iter().map(pg_param).collect();
    args.push(&ids);
    args.push(&limit);
    client
        .query(&q.sql, &args)
        .map_err(db_err)?
        .iter()
        .map(|r| call_from(&cells(r)?))
        .collect()
}

/// Indexes every call committed so far; returns how many new calls were read. Two more
/// passes carry a pending re-check through (noting the horizon, then checking once it is
/// passed), so a call that committed late is indexed too when no transaction older than
/// it still runs.
pub(super) fn index_pending(client: &mut Client) -> StoreResult<u64> {
    let mut total = 0u64;
    loop {
        let n = index_pass(client, true)?;
        total += n as u64;
        if n < INDEX_BATCH as usize {
            break;
        }
    }
    for _ in 0..2 {
        total += index_pass(client, true)? as u64;
    }
    Ok(total)
}

struct State {
    indexed: i64,
    safe: i64,
    pending: Option<i64>,
    pending_xmax: Option<i64>,
}

/// One pass: late commits below the watermark when it is safe to look, then up to
/// [`INDEX_BATCH`] new calls. Returns how many new calls were read. `wait`: wait for
/// another indexer instead of leaving the pass to it.
fn index_pass(client: &mut Client, wait: bool) -> StoreResult<usize> {
    let mut tx = client.transaction().map_err(db_err)?;
    if wait {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INDEXER_LOCK])
            .map_err(db_err)?;
    } else {
        let got: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&INDEXER_LOCK])
            .map_err(db_err)?
            .get(0);
        if !got {
            return Ok(0);
        }
    }
    let row = tx
        .query_one(
            "SELECT indexed_seq, safe_seq, pending_seq, pending_xmax,
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint
             FROM call_search_state WHERE id = 1 FOR UPDATE",
            &[],
        )
        .map_err(db_err)?;
    let mut st = State {
        indexed: row.get(0),
        safe: row.get(1),
        pending: row.get(2),
        pending_xmax: row.get(3),
    };
    let (xmin, xmax): (i64, i64) = (row.get(4), row.get(5));

    if let Some(pending) = st.pending {
        match st.pending_xmax {
            None => st.pending_xmax = Some(xmax),
            Some(horizon) if xmin >= horizon => {
                let late = tx
                    .query(
                        "SELECT c.search_seq, c.id, c.request_body, c.response_body, c.tenant_id, c.created_at FROM calls c
                         WHERE c.search_seq > $1 AND c.search_seq <= $2
                           AND NOT EXISTS (SELECT 1 FROM call_search s WHERE s.call_seq = c.search_seq)",
                        &[&st.safe, &pending],
                    )
                    .map_err(db_err)?;
                insert_docs(&mut tx, &late)?;
                st.safe = pending;
                st.pending = None;
                st.pending_xmax = None;
            }
            Some(_) => {}
        }
    }

    let new = tx
        .query(
            "SELECT search_seq, id, request_body, response_body, tenant_id, created_at FROM calls
             WHERE search_seq > $1 ORDER BY search_seq LIMIT $2",
            &[&st.indexed, &INDEX_BATCH],
        )
        .map_err(db_err)?;
    insert_docs(&mut tx, &new)?;
    if let Some(last) = new.last() {
        st.indexed = st.indexed.max(last.get(0));
    }
    if st.pending.is_none() && st.indexed > st.safe {
        st.pending = Some(st.indexed);
        st.pending_xmax = None;
    }
    tx.execute(
        "UPDATE call_search_state SET indexed_seq = $1, safe_seq = $2, pending_seq = $3, pending_xmax = $4 WHERE id = 1",
        &[&st.indexed, &st.safe, &st.pending, &st.pending_xmax],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(new.len())
}

/// Tokenizes calls (`search_seq, id, request_body, response_body, tenant_id, created_at`
/// rows) and stores their
/// documents in one statement.
fn insert_docs(tx: &mut Transaction<'_>, rows: &[Row]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
    let mut ids: Vec<String> = Vec::with_capacity(rows.len());
    let mut docs: Vec<String> = Vec::with_capacity(rows.len());
    let mut tenants: Vec<String> = Vec::with_capacity(rows.len());
    let mut times: Vec<i64> = Vec::with_capacity(rows.len());
    for r in rows {
        let request: String = r.get(2);
        let response: Option<String> = r.get(3);
        seqs.push(r.get(0));
        ids.push(r.get(1));
        docs.push(tsvector(&index_tokens(&request, response.as_deref())));
        tenants.push(r.get(4));
        times.push(r.get(5));
    }
    tx.execute(
        "INSERT INTO call_search (call_seq, call_id, doc, tenant_id, created_at)
         SELECT seq, id, doc::tsvector, tenant, at
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS u(seq, id, doc, tenant, at)
         ON CONFLICT (call_seq) DO NOTHING",
        &[&seqs, &ids, &docs, &tenants, &times],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Starts the background indexer on a connection of `pool`; it stops when `stop` is set.
pub(super) fn spawn_indexer(pool: Pool<Manager>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("agv-search-index".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(INDEX_EVERY);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let result = pool
                    .get()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
                    .and_then(|mut c| {
                        while !stop.load(Ordering::Relaxed) {
                            if index_pass(&mut c, false)? < INDEX_BATCH as usize {
                                break;
                            }
                        }
                        Ok(())
                    });
                match result {
                    Ok(()) => failing = false,
                    Err(e) => {
                        // Once per episode, not every 300 ms.
                        if !failing {
                            tracing::warn!(error = %e, "indexing calls for search failed; retrying");
                        }
                        failing = true;
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
    use super::*;
    use crate::domain::{CallSearch, Tenant, TenantName, Timestamp};
    use crate::store::Store;
    use crate::store::postgres::PostgresStore;

    const INSERT: &str = "INSERT INTO calls (id, tenant_id, key_id, created_at, endpoint, stream, request_body, request_truncated, request_sha256, response_truncated, status, blocked, decisions, latency_us, enforcement_us, upstream_attempts)
         VALUES ($1, $2, 'key_00000000000000000000000000000000', $3, 'chat.completions', false, $4, false, '', false, 200, false, '[]', 0, 0, 0)";

    #[test]
    fn a_call_that_commits_after_a_later_one_was_indexed_is_still_indexed() {
        let Some(db) = crate::store::testing::fresh_postgres_db() else {
            return;
        };
        let store = PostgresStore::open(&db.url).unwrap();
        let tenant = Tenant {
            id: TenantId::generate(),
            name: TenantName::parse("Acme").unwrap(),
            created_at: Timestamp::from_millis(0),
        };
        store.create_tenant(&tenant).unwrap();
        let t = tenant.id.as_str();
        let mut slow = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
        let mut fast = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
        // The slow transaction takes its sequence value first and commits last.
        let (a, b) = (
            "call_0000000000000000000000000000000a",
            "call_0000000000000000000000000000000b",
        );
        let mut tx = slow.transaction().unwrap();
        tx.execute(INSERT, &[&a, &t, &1_i64, &"slow walrus"])
            .unwrap();
        fast.execute(INSERT, &[&b, &t, &2_i64, &"fast walrus"])
            .unwrap();
        store.index_pending_calls().unwrap();
        tx.commit().unwrap();

        let search = CallSearch {
            text: vec![vec!["walrus".to_owned()]],
            ..CallSearch::default()
        };
        // Other tests' transactions on the same server may hold the horizon back a while.
        let mut found = 0;
        for _ in 0..100 {
            store.index_pending_calls().unwrap();
            found = store
                .search_calls(&tenant.id, &search, None, 10)
                .unwrap()
                .len();
            if found == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(found, 2, "the late commit was never indexed");
    }
}
