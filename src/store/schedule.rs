//! Claims of scheduled runs, written once for both backends (see [`super::sql`]): when
//! several instances share one database, the first to insert `(schedule, slot)` runs it and
//! the others skip it. The primary key does the arbitration; no lock is held.

use super::StoreResult;
use super::sql::{Cells, Db, Param};

/// Claims are kept this long (for inspection), then deleted by later claims.
const KEEP_MS: i64 = 7 * 86_400_000;

/// True when this instance claimed the run; false when another one had.
pub(super) fn claim(
    db: &mut dyn Db,
    name: &str,
    slot: i64,
    instance: &str,
    at: i64,
) -> StoreResult<bool> {
    db.execute(
        "DELETE FROM schedule_claims WHERE name = $1 AND claimed_at < $2",
        &[Param::Text(name), Param::BigInt(at - KEEP_MS)],
    )?;
    let n = db.execute(
        "INSERT INTO schedule_claims (name, slot, instance, claimed_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name, slot) DO NOTHING",
        &[
            Param::Text(name),
            Param::BigInt(slot),
            Param::Text(instance),
            Param::BigInt(at),
        ],
    )?;
    Ok(n == 1)
}

/// `(slot, instance)` of a schedule's kept claims, oldest first.
pub(super) fn list(db: &mut dyn Db, name: &str) -> StoreResult<Vec<(i64, String)>> {
    let rows = db.query(
        "SELECT slot, instance FROM schedule_claims WHERE name = $1 ORDER BY slot",
        &[Param::Text(name)],
    )?;
    rows.iter()
        .map(|r| {
            let c = Cells::new(r, "schedule claim");
            Ok((c.int(0)?, c.text(1)?))
        })
        .collect()
}
