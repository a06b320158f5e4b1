//! The change feed: one row per change that other processes' caches must notice (see
//! [`super::Change`]), written in the transaction of the change itself.

use super::rows::TOPIC_API_KEY;
use super::sql::{self, Cells, Db, Param};
use super::{Change, StoreResult};
use crate::domain::{TenantId, Timestamp};

/// The lock serialising writers of the change feed ("agv_chng" in ASCII), so that
/// sequence numbers become visible in order and a reader polling [`since`] never skips one.
const FEED_LOCK: i64 = 0x6167_765f_6368_6e67;

/// Records a change of `topic` to `ref_id`.
pub(super) fn record(db: &mut dyn Db, topic: &str, ref_id: &str) -> StoreResult<()> {
    // Held to the end of the transaction: the next writer takes its seq only after this
    // one has committed.
    db.serialize(FEED_LOCK)?;
    db.execute(
        "INSERT INTO changes (topic, ref_id, at) VALUES ($1, $2, $3)",
        &[
            Param::Text(topic),
            Param::Text(ref_id),
            Param::BigInt(Timestamp::now().millis()),
        ],
    )?;
    // Delivered at commit to every instance listening, which then reads the feed at once
    // instead of at its next poll.
    db.announce_change(topic)
}

/// The changes an erased tenant leaves: one for each of its `keys` (so that every
/// instance forgets them at once), then one for the tenant.
pub(super) fn erased(db: &mut dyn Db, tenant: &TenantId, keys: &[String]) -> StoreResult<()> {
    for k in keys {
        record(db, TOPIC_API_KEY, k)?;
    }
    record(db, "tenant", tenant.as_str())
}

pub(super) fn latest_seq(db: &mut dyn Db) -> StoreResult<i64> {
    sql::number(
        db,
        "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM changes",
        &[],
    )
}

pub(super) fn since(db: &mut dyn Db, seq: i64, limit: u32) -> StoreResult<Vec<Change>> {
    sql::all(
        db,
        "SELECT seq, topic, ref_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[Param::BigInt(seq), Param::BigInt(i64::from(limit))],
        |row| {
            let c = Cells::new(row, "change");
            Ok(Change {
                seq: c.int(0)?,
                topic: c.text(1)?,
                ref_id: c.text(2)?,
            })
        },
    )
}
