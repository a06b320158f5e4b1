//! Call retention in the store: one batch of a sweep that removes the bodies of old calls
//! and their text from the search index, written once for both backends (see
//! [`super::sql`]); the sweep itself, its schedule and its settings are `ops::retention`.
//!
//! A batch reads up to `limit` calls in (created_at, id) order after a cursor, from the
//! partial index of calls that still hold their bodies (migration 0012), and empties the
//! bodies of those that may go, all in one short write transaction:
//! - only chain v2 calls (`chain_version = 2`): their links cover the bodies' digests, so
//!   the chain still verifies without the bodies; v1 calls are never touched;
//! - not a call among the signals of an open or acknowledged incident;
//! - not a call a certificate refers to: a call certificate, the original or the new call
//!   of a certified replay, or a call among the signals of a certified incident.
//!
//! The request body becomes `''` (the column is NOT NULL), the response body `''` (or
//! stays NULL when there was none), `body_pruned_at` is set; everything else — metadata,
//! tokens, cost, status, decisions, every SHA-256 — stays. The calls' documents leave the
//! text index in the same transaction, so pruned text is no longer found. This module
//! decides nothing about ages or schedules: it must not read settings.

use super::sql::{Candidate, Cell, Cells, Db, Param};
use super::{StoreError, StoreResult};
use crate::domain::{CallCursor, CallId, Timestamp};

/// What one batch of a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneBatch {
    /// Calls read (pruned or kept).
    pub examined: u64,
    /// Calls whose bodies were removed.
    pub pruned: u64,
    /// Calls kept because an open incident or a certificate refers to them.
    pub protected: u64,
    /// Where the next batch starts; `None` when the sweep is done.
    pub next: Option<CallCursor>,
}

/// The condition that keeps a call `c`: an unresolved incident's signal or a certificate
/// refers to it. Each branch is served by an index (incident_signals_call, certificates_subject,
/// replays_call, replays_replay_call).
const PROTECTED: &str = "EXISTS (SELECT 1 FROM incident_signals s JOIN incidents i ON i.id = s.incident_id
             WHERE s.call_id = c.id AND i.status IN ('open', 'acknowledged'))
    OR EXISTS (SELECT 1 FROM certificates ce
             WHERE ce.tenant_id = c.tenant_id AND ce.subject_id = c.id AND ce.kind = 'call')
    OR EXISTS (SELECT 1 FROM replays r JOIN certificates ce
               ON ce.tenant_id = r.tenant_id AND ce.subject_id = r.id AND ce.kind = 'replay'
             WHERE r.tenant_id = c.tenant_id AND r.call_id = c.id)
    OR EXISTS (SELECT 1 FROM replays r JOIN certificates ce
               ON ce.tenant_id = r.tenant_id AND ce.subject_id = r.id AND ce.kind = 'replay'
             WHERE r.replay_call_id = c.id)
    OR EXISTS (SELECT 1 FROM incident_signals s JOIN certificates ce
               ON ce.tenant_id = s.tenant_id AND ce.subject_id = s.incident_id AND ce.kind = 'incident'
             WHERE s.call_id = c.id)";

/// The calls a sweep still has to look at: v2, bodies kept, created before `cutoff`.
/// Matches the partial index `calls_bodies_kept` word for word.
const PRUNABLE: &str = "c.body_pruned_at IS NULL AND c.chain_version = 2 AND c.created_at < $1";

/// How many calls a sweep with this cutoff has to look at (protected ones included).
pub(super) fn count(db: &mut dyn Db, cutoff: Timestamp) -> StoreResult<i64> {
    let rows = db.query(
        &format!("SELECT COUNT(*) FROM calls c WHERE {PRUNABLE}"),
        &[Param::BigInt(cutoff.millis())],
    )?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Database("COUNT(*) returned no row".into()))?;
    Cells::new(row, "count").int(0)
}

/// One batch of a sweep, in the caller's write transaction (see `Store::prune_call_bodies`):
/// reads the candidates after `after`, empties the bodies of those nothing refers to, and
/// removes their documents from the text index.
pub(super) fn prune_batch(
    db: &mut dyn Db,
    cutoff: Timestamp,
    after: Option<&CallCursor>,
    limit: u32,
    now: Timestamp,
) -> StoreResult<PruneBatch> {
    let (position, extra) = db.text().prunable()?;
    let read = candidates(db, position, extra, cutoff, after, limit)?;
    let go: Vec<&Candidate> = read.iter().filter(|c| !c.protected).collect();
    let ids: Vec<&str> = go.iter().map(|c| c.id.as_str()).collect();
    let pruned = prune(db, &ids, now)?;
    db.text().forget_calls(&go)?;
    outcome(&read, pruned, limit)
}

/// Reads the next batch of candidates after `after`. `position` is the column (of `c`)
/// that places a call in the text index; `extra` narrows the calls further (SQL on `c`).
fn candidates(
    db: &mut dyn Db,
    position: &str,
    extra: &str,
    cutoff: Timestamp,
    after: Option<&CallCursor>,
    limit: u32,
) -> StoreResult<Vec<Candidate>> {
    let (after_at, after_id) =
        after.map_or((i64::MIN, ""), |c| (c.created_at.millis(), c.id.as_str()));
    let sql = format!(
        "SELECT c.id, c.created_at, {position}, CASE WHEN {PROTECTED} THEN 1 ELSE 0 END
         FROM calls c
         WHERE {PRUNABLE} AND (c.created_at, c.id) > ($2, $3){extra}
         ORDER BY c.created_at, c.id LIMIT $4"
    );
    let rows = db.query(
        &sql,
        &[
            Param::BigInt(cutoff.millis()),
            Param::BigInt(after_at),
            Param::Text(after_id),
            Param::BigInt(i64::from(limit.max(1))),
        ],
    )?;
    rows.iter()
        .map(|row| {
            let c = Cells::new(row, "retention candidate");
            Ok(Candidate {
                id: c.text(0)?,
                created_at: c.int(1)?,
                position: c.int(2)?,
                protected: matches!(row.get(3), Some(Cell::Int(1))),
            })
        })
        .collect()
}

/// Empties the bodies of `ids` and marks them pruned at `now` (calls pruned meanwhile are
/// left as they are); returns how many were changed.
fn prune(db: &mut dyn Db, ids: &[&str], now: Timestamp) -> StoreResult<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let list: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "UPDATE calls SET request_body = '',
                response_body = CASE WHEN response_body IS NULL THEN NULL ELSE '' END,
                body_pruned_at = $1
         WHERE body_pruned_at IS NULL AND id IN ({})",
        list.join(", ")
    );
    let mut args = vec![Param::BigInt(now.millis())];
    args.extend(ids.iter().map(|id| Param::Text(id)));
    db.execute(&sql, &args)
}

/// The batch's result after `read` candidates, of which `pruned` were pruned.
fn outcome(read: &[Candidate], pruned: u64, limit: u32) -> StoreResult<PruneBatch> {
    let next = match read.last() {
        Some(last) if read.len() >= limit.max(1) as usize => Some(CallCursor {
            created_at: Timestamp::from_millis(last.created_at),
            id: CallId::parse(&last.id)
                .map_err(|e| StoreError::Database(format!("a stored call id is bad: {e}")))?,
        }),
        _ => None,
    };
    let protected = read.iter().filter(|c| c.protected).count() as u64;
    Ok(PruneBatch {
        examined: read.len() as u64,
        pruned,
        protected,
        next,
    })
}
