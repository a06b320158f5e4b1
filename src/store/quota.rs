//! Shared quota rows (rate limits and budgets that hold across instances), written once for
//! both backends (see [`super::sql`]). Each lease or give-back locks its row for one short
//! transaction, so parallel instances are serialized on it and the arithmetic of
//! [`crate::domain::quota`] sees every earlier grant.

use super::StoreResult;
use super::sql::{Cells, Db, Param};
use crate::domain::quota::{self, LeaseGrant, LeaseRequest, QuotaRow};

fn read(db: &mut dyn Db, name: &str) -> StoreResult<Option<QuotaRow>> {
    let sql = format!(
        "SELECT cap, level, per_minute, updated_ms FROM shared_quotas WHERE name = $1{}",
        db.lock_rows()
    );
    super::sql::first(db, &sql, &[Param::Text(name)], |r| {
        let c = Cells::new(r, "shared quota");
        Ok(QuotaRow {
            cap: c.int(0)?,
            level: c.int(1)?,
            per_minute: c.int(2)?,
            updated_ms: c.int(3)?,
        })
    })
}

fn write(db: &mut dyn Db, name: &str, row: &QuotaRow, expires_ms: Option<i64>) -> StoreResult<()> {
    db.execute(
        "UPDATE shared_quotas SET cap = $2, level = $3, per_minute = $4, updated_ms = $5,
             expires_ms = COALESCE($6, expires_ms)
         WHERE name = $1",
        &[
            Param::Text(name),
            Param::BigInt(row.cap),
            Param::BigInt(row.level),
            Param::BigInt(row.per_minute),
            Param::BigInt(row.updated_ms),
            Param::OptBigInt(expires_ms),
        ],
    )?;
    Ok(())
}

/// Takes a slice of the allowance `req.name`, creating its row at `req.initial` when it is
/// missing. Call inside a transaction.
pub(super) fn lease(db: &mut dyn Db, req: &LeaseRequest) -> StoreResult<LeaseGrant> {
    let fresh = QuotaRow::new(req);
    db.execute(
        "INSERT INTO shared_quotas (name, cap, level, per_minute, updated_ms, expires_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        &[
            Param::Text(&req.name),
            Param::BigInt(fresh.cap),
            Param::BigInt(fresh.level),
            Param::BigInt(fresh.per_minute),
            Param::BigInt(fresh.updated_ms),
            Param::BigInt(req.expires_ms),
        ],
    )?;
    let row = read(db, &req.name)?.unwrap_or(fresh);
    let (next, grant) = quota::lease(row, req);
    if next != row {
        write(db, &req.name, &next, Some(req.expires_ms))?;
    }
    Ok(grant)
}

/// Gives back what leases of these allowances left unused (negative: spent beyond them),
/// and deletes rows whose time is over. Call inside a transaction.
pub(super) fn give_back(
    db: &mut dyn Db,
    returns: &[(String, i64)],
    now_ms: i64,
) -> StoreResult<()> {
    for (name, amount) in returns {
        if let Some(row) = read(db, name)? {
            write(db, name, &quota::give_back(row, *amount, now_ms), None)?;
        }
    }
    db.execute(
        "DELETE FROM shared_quotas WHERE expires_ms < $1",
        &[Param::BigInt(now_ms)],
    )?;
    Ok(())
}

/// The stored level of an allowance (tests and inspection).
pub(super) fn level(db: &mut dyn Db, name: &str) -> StoreResult<Option<i64>> {
    Ok(read(db, name)?.map(|r| r.level))
}
