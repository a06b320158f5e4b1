//! Recorded calls as a policy backtest reads them: only the columns the replay needs (the
//! request, not the response), oldest first, a page at a time; and the key that bounds a
//! replay capped at its newest N calls. Written once against [`Db`] for both backends.
//!
//! A backtest may cover 200,000 calls. It used to read them as whole records, bodies
//! included, and hold them all before the replay began: 54 MB of heap per 1,000 calls of
//! 16 KiB prompts and answers (`bench/memory.py`), gigabytes for the largest range (a
//! paging bug stopped it after 1,000 calls, which hid that). Read this way it holds one
//! page of requests: 50,010 such calls replay within +17–27 MB. This module must not decide
//! anything about policies.

use super::StoreResult;
use super::rows::{CallOrder, CallsPage, calls_page_query, corrupt};
use super::sql::{self, Cells, Db, Dialect};
use crate::domain::{CallCursor, CallFilter, CallId, KeyId, RecordedRequest, TenantId, Timestamp};

/// The columns of `calls` a [`RecordedRequest`] is read from, in the order
/// [`recorded_request`] expects them.
const REQUEST_COLUMNS: &str = "id, key_id, created_at, endpoint, model, end_user, request_body, \
request_truncated, status, blocked, blocked_by, prompt_tokens, completion_tokens, cached_tokens";

/// Up to `limit` of the tenant's calls matching `filter`, oldest first (`created_at`, then
/// id), strictly after `after` when given.
pub(super) fn recorded_requests(
    db: &mut dyn Db,
    tenant: &TenantId,
    filter: &CallFilter,
    after: Option<&CallCursor>,
    limit: u32,
) -> StoreResult<Vec<RecordedRequest>> {
    let page = CallsPage {
        columns: REQUEST_COLUMNS,
        order: CallOrder::OldestFirst,
        skip: 0,
        limit,
    };
    let (sql, args) = calls_page_query(page, tenant, filter, after, Dialect::Postgres);
    sql::all(db, &sql, &args, |row| {
        recorded_request(&Cells::new(row, "call"))
    })
}

/// The key of the tenant's call matching `filter` that has `skip` newer ones before it
/// (newest first: 0 is the newest); `None` when no more than `skip` calls match. Reads
/// the `(tenant_id, created_at, id)` index only.
pub(super) fn call_key_at(
    db: &mut dyn Db,
    tenant: &TenantId,
    filter: &CallFilter,
    skip: u32,
) -> StoreResult<Option<CallCursor>> {
    let page = CallsPage {
        columns: "created_at, id",
        order: CallOrder::NewestFirst,
        skip,
        limit: 1,
    };
    let (sql, args) = calls_page_query(page, tenant, filter, None, Dialect::Postgres);
    sql::first(db, &sql, &args, |row| {
        let cells = Cells::new(row, "call");
        Ok(CallCursor {
            created_at: Timestamp::from_millis(cells.int(0)?),
            id: CallId::parse(&cells.text(1)?).map_err(|e| corrupt("call id", e))?,
        })
    })
}

fn recorded_request(c: &Cells<'_>) -> StoreResult<RecordedRequest> {
    Ok(RecordedRequest {
        id: CallId::parse(&c.text(0)?).map_err(|e| corrupt("call id", e))?,
        key_id: KeyId::parse(&c.text(1)?).map_err(|e| corrupt("key id", e))?,
        created_at: Timestamp::from_millis(c.int(2)?),
        endpoint: c.text(3)?,
        model: c.opt_text(4)?,
        end_user: c.opt_text(5)?,
        request_body: c.text(6)?,
        request_truncated: c.int(7)? != 0,
        status: u16::try_from(c.int(8)?).map_err(|e| corrupt("call status", e))?,
        blocked: c.int(9)? != 0,
        blocked_by: c.opt_text(10)?,
        prompt_tokens: c.opt_int(11)?,
        completion_tokens: c.opt_int(12)?,
        cached_tokens: c.opt_int(13)?,
    })
}
