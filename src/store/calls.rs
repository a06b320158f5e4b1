//! Reading recorded calls back (writing them is the recorder's, in each backend).

use super::rows::{CALL_COLUMNS, Param, call_from, list_calls_query};
use super::sql::{Cells, Db};
use super::{CallCounts, StoreError, StoreResult};
use crate::domain::{CallCursor, CallFilter, CallId, CallRecord, Money, TenantId, Timestamp};

pub(super) fn get(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &CallId,
) -> StoreResult<CallRecord> {
    let rows = db.query(
        &format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2)"
        ),
        &[
            Param::Text(id.as_str()),
            Param::OptText(tenant.map(TenantId::as_str)),
        ],
    )?;
    rows.first().map_or(Err(StoreError::NotFound), call_from)
}

pub(super) fn list(
    db: &mut dyn Db,
    tenant: &TenantId,
    filter: &CallFilter,
    after: Option<&CallCursor>,
    limit: u32,
) -> StoreResult<Vec<CallRecord>> {
    let (sql, args) = list_calls_query(tenant, filter, after, limit, |n| format!("${n}"));
    db.query(&sql, &args)?.iter().map(call_from).collect()
}

pub(super) fn counts(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
) -> StoreResult<CallCounts> {
    let rows = db.query(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE blocked), COUNT(*) FILTER (WHERE status >= 500)
         FROM calls WHERE tenant_id = $1 AND created_at >= $2",
        &[Param::Text(tenant.as_str()), Param::BigInt(since.millis())],
    )?;
    let Some(row) = rows.first() else {
        return Ok(CallCounts::default());
    };
    let c = Cells::new(row, "call counts");
    Ok(CallCounts {
        total: c.int(0)?,
        blocked: c.int(1)?,
        upstream_errors: c.int(2)?,
    })
}

pub(super) fn spend_since(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
) -> StoreResult<Money> {
    let rows = db.query(
        "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM calls WHERE tenant_id = $1 AND created_at >= $2",
        &[Param::Text(tenant.as_str()), Param::BigInt(since.millis())],
    )?;
    let nanos = rows
        .first()
        .map_or(Ok(0), |r| Cells::new(r, "spend").int(0))?;
    Ok(Money::from_nanos(nanos))
}
