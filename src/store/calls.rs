//! Reading recorded calls back (writing them is the recorder's, in each backend).

use super::rows::{CALL_COLUMNS, call_from, list_calls_query};
use super::sql::{self, Cells, Db, Dialect, Param};
use super::{CallCounts, StoreResult};
use crate::domain::{CallCursor, CallFilter, CallId, CallRecord, Money, TenantId, Timestamp};

pub(super) fn get(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &CallId,
) -> StoreResult<CallRecord> {
    sql::owned(
        db,
        "calls",
        CALL_COLUMNS,
        id.as_str(),
        tenant,
        false,
        call_from,
    )
}

pub(super) fn list(
    db: &mut dyn Db,
    tenant: &TenantId,
    filter: &CallFilter,
    after: Option<&CallCursor>,
    limit: u32,
) -> StoreResult<Vec<CallRecord>> {
    let (sql, args) = list_calls_query(tenant, filter, after, limit, Dialect::Postgres);
    sql::all(db, &sql, &args, call_from)
}

pub(super) fn counts(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
) -> StoreResult<CallCounts> {
    let counts = sql::first(
        db,
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE blocked), COUNT(*) FILTER (WHERE status >= 500)
         FROM calls WHERE tenant_id = $1 AND created_at >= $2",
        &[Param::Text(tenant.as_str()), Param::BigInt(since.millis())],
        |row| {
            let c = Cells::new(row, "call counts");
            Ok(CallCounts {
                total: c.int(0)?,
                blocked: c.int(1)?,
                upstream_errors: c.int(2)?,
            })
        },
    )?;
    Ok(counts.unwrap_or_default())
}

pub(super) fn spend_since(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
) -> StoreResult<Money> {
    sql::number(
        db,
        "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM calls WHERE tenant_id = $1 AND created_at >= $2",
        &[Param::Text(tenant.as_str()), Param::BigInt(since.millis())],
    )
    .map(Money::from_nanos)
}
