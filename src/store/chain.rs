//! The hash chains of calls and audit entries, and the audit log, written once for both
//! backends (see [`super::sql`] and `domain::chain`).
//!
//! A chain's head lives in `chain_heads`. Appending reads the head with a row lock (Postgres:
//! `FOR UPDATE`, in chain-key order so two batches never deadlock; SQLite: the write
//! transaction already excludes other writers), links the new records and writes the head
//! back, all in the caller's transaction. So several processes appending at once (several
//! instances on Postgres, the CLI beside the server) still make one unbroken chain, and the
//! unique (tenant, seq) index refuses a fork outright. The cost is two statements per tenant
//! per batch (one more the first time), never per call. SQLite's call recorder saves the
//! read: it starts from the head its own last commit left ([`KnownHeads`]), and the write
//! of the new head checks that the stored one is still that.

use super::rows::{CHAINED_CALL_COLUMNS, CallParams, REQUEST_BODY_AT, RESPONSE_BODY_AT};
use super::sql::{self, Cell, Cells, Db, Param, SqlRow};
use super::{StoreError, StoreResult};
use crate::domain::audit::{AuditEntry, AuditFilter, NewAuditEntry};
use crate::domain::chain::{self, ChainHead, ChainKind, Field, LinkVersion, StoredLink};
use crate::domain::{AuditId, CallRecord, TenantId, Timestamp};
use std::collections::BTreeMap;

/// The fields of a call that its v2 link covers, in `CHAINED_CALL_COLUMNS` order, as
/// stored: each body replaced by the digest of the stored body (see `domain::chain`).
fn call_fields<'a>(p: &'a CallParams<'_>) -> [Field<'a>; 31] {
    let mut fields = call_fields_v1(p);
    fields[REQUEST_BODY_AT] = Field::Text(&p.request_body_sha256);
    fields[RESPONSE_BODY_AT] = Field::from(p.response_body_sha256.as_deref());
    fields
}

/// The fields of a call that a v1 link covers, in `CHAINED_CALL_COLUMNS` order, as stored.
fn call_fields_v1<'a>(p: &'a CallParams<'_>) -> [Field<'a>; 31] {
    let t = |s: &'a std::borrow::Cow<'_, str>| Field::Text(s.as_ref());
    let ot = |s: &'a Option<std::borrow::Cow<'_, str>>| Field::from(s.as_deref());
    [
        Field::Text(p.id),
        Field::Text(p.tenant_id),
        Field::Text(p.key_id),
        Field::Int(p.created_at),
        t(&p.endpoint),
        ot(&p.model),
        Field::Int(i64::from(p.stream)),
        ot(&p.end_user),
        ot(&p.session_id),
        Field::from(p.metadata.as_deref()),
        t(&p.request_body),
        Field::Int(i64::from(p.request_truncated)),
        t(&p.request_sha256),
        ot(&p.response_body),
        Field::Int(i64::from(p.response_truncated)),
        ot(&p.response_sha256),
        Field::Int(i64::from(p.status)),
        ot(&p.error),
        Field::Int(i64::from(p.blocked)),
        ot(&p.blocked_by),
        Field::Text(&p.decisions),
        Field::from(p.prompt_tokens),
        Field::from(p.completion_tokens),
        Field::from(p.cached_tokens),
        Field::from(p.total_tokens),
        Field::from(p.cost_nanos),
        Field::Int(p.latency_us),
        Field::from(p.upstream_latency_us),
        Field::Int(p.enforcement_us),
        Field::Int(i64::from(p.upstream_attempts)),
        ot(&p.upstream),
    ]
}

fn cell_field(c: &Cell) -> Field<'_> {
    match c {
        Cell::Null => Field::Null,
        Cell::Int(v) => Field::Int(*v),
        Cell::Text(s) => Field::Text(s),
    }
}

/// Reads a chain's head, creating it at the genesis if the chain is new, and locks it
/// until the transaction ends. An existing chain costs one statement.
fn lock_head(db: &mut dyn Db, key: &str) -> StoreResult<ChainHead> {
    let sql = format!(
        "SELECT seq, hash FROM chain_heads WHERE chain = $1{}",
        db.lock_rows()
    );
    if let Some(head) = sql::first(db, &sql, &[Param::Text(key)], head_from)? {
        return Ok(head);
    }
    // Two writers may both find the chain new: the second insert does nothing and its
    // SELECT … FOR UPDATE waits for the first transaction, then reads its head.
    db.execute(
        "INSERT INTO chain_heads (chain, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (chain) DO NOTHING",
        &[Param::Text(key), Param::Text(chain::GENESIS)],
    )?;
    sql::first(db, &sql, &[Param::Text(key)], head_from)?
        .ok_or_else(|| StoreError::Database(format!("the head of chain {key} vanished")))
}

fn head_from(row: &SqlRow) -> StoreResult<ChainHead> {
    let c = Cells::new(row, "chain head");
    Ok(ChainHead {
        seq: c.int(0)?,
        hash: c.text(1)?,
    })
}

fn set_head(db: &mut dyn Db, key: &str, head: &ChainHead) -> StoreResult<()> {
    db.execute(
        "UPDATE chain_heads SET seq = $2, hash = $3 WHERE chain = $1",
        &[
            Param::Text(key),
            Param::BigInt(head.seq),
            Param::Text(&head.hash),
        ],
    )?;
    Ok(())
}

/// Moves a chain's head from `from` to `to` only if it is still at `from`; false when it
/// is not (another writer appended since `from` was read). Taking the row's lock as it
/// checks, it stands in for [`lock_head`] and [`set_head`] together.
fn advance_head(db: &mut dyn Db, key: &str, from: &ChainHead, to: &ChainHead) -> StoreResult<bool> {
    let n = db.execute(
        "UPDATE chain_heads SET seq = $2, hash = $3 WHERE chain = $1 AND seq = $4 AND hash = $5",
        &[
            Param::Text(key),
            Param::BigInt(to.seq),
            Param::Text(&to.hash),
            Param::BigInt(from.seq),
            Param::Text(&from.hash),
        ],
    )?;
    Ok(n == 1)
}

/// The heads a writer left its chains at with its own last commit, by chain key: with
/// them it need not read a head before linking. Only a hint — [`link_calls`] checks each
/// one as it writes the new head — and to be replaced by what `link_calls` returns only
/// once that transaction has committed.
pub(super) type KnownHeads = std::collections::HashMap<String, ChainHead>;

/// Calls linked into their chains: each call's (seq, hash), and the heads the chains are
/// left at.
pub(super) struct Linked {
    pub links: Vec<(i64, String)>,
    pub heads: BTreeMap<String, ChainHead>,
}

/// Links a batch of calls into their tenants' chains, in batch order, as v2 links (the
/// bodies' digests, not the bodies), and writes the new heads. Must run in the
/// transaction that inserts them.
///
/// A chain found in `known` starts from that head without reading it; `None` when one of
/// those heads had moved on (another process appended to the chain): the transaction must
/// then be rolled back and the batch linked again without `known`.
pub(super) fn link_calls(
    db: &mut dyn Db,
    calls: &[CallRecord],
    rows: &[CallParams<'_>],
    known: Option<&KnownHeads>,
) -> StoreResult<Option<Linked>> {
    let known_head = |key: &str| known.and_then(|k| k.get(key));
    // BTreeMap: heads are locked in key order, the same in every process.
    let mut heads: BTreeMap<String, ChainHead> = calls
        .iter()
        .map(|c| {
            (
                chain::chain_key(ChainKind::Calls, Some(&c.tenant_id)),
                ChainHead::genesis(),
            )
        })
        .collect();
    for (key, head) in heads.iter_mut() {
        *head = match known_head(key) {
            Some(k) => k.clone(),
            None => lock_head(db, key)?,
        };
    }
    let mut out = Vec::with_capacity(calls.len());
    let mut buf = Vec::with_capacity(4096);
    for (call, row) in calls.iter().zip(rows) {
        let key = chain::chain_key(ChainKind::Calls, Some(&call.tenant_id));
        let head = heads
            .get_mut(&key)
            .ok_or_else(|| StoreError::Database(format!("no head loaded for chain {key}")))?;
        buf.clear();
        chain::encode(&call_fields(row), &mut buf);
        let seq = head.seq + 1;
        let hash = chain::link_hash_as(LinkVersion::V2, &head.hash, seq, &buf);
        *head = ChainHead {
            seq,
            hash: hash.clone(),
        };
        out.push((seq, hash));
    }
    for (key, head) in &heads {
        match known_head(key) {
            Some(from) => {
                if !advance_head(db, key, from, head)? {
                    return Ok(None);
                }
            }
            None => set_head(db, key, head)?,
        }
    }
    Ok(Some(Linked { links: out, heads }))
}

/// A chain's head as stored; `None` when nothing was ever appended to it.
pub(super) fn head(
    db: &mut dyn Db,
    kind: ChainKind,
    tenant: Option<&TenantId>,
) -> StoreResult<Option<ChainHead>> {
    let key = chain::chain_key(kind, tenant);
    sql::first(
        db,
        "SELECT seq, hash FROM chain_heads WHERE chain = $1",
        &[Param::Text(&key)],
        head_from,
    )
}

/// The audit entry columns its link covers, after `seq, hash, prev_hash`.
const AUDIT_CHAIN_FIELDS: &str = "id, chain, tenant_id, actor_kind, actor_id, action, target, source, at, before_json, after_json";

/// Up to `limit` stored links of a chain with seq > `after`, in seq order. Calls recorded
/// before chains existed (seq NULL) are not part of any chain.
pub(super) fn links(
    db: &mut dyn Db,
    kind: ChainKind,
    tenant: Option<&TenantId>,
    after: i64,
    limit: u32,
) -> StoreResult<Vec<StoredLink>> {
    let (sql, key) = match kind {
        ChainKind::Calls => (
            format!(
                "SELECT chain_seq, chain_hash, NULL, {CHAINED_CALL_COLUMNS}, \
                 chain_version, request_body_sha256, response_body_sha256, body_pruned_at FROM calls \
                 WHERE tenant_id = $1 AND chain_seq > $2 ORDER BY chain_seq LIMIT $3"
            ),
            tenant.map_or_else(String::new, |t| t.as_str().to_owned()),
        ),
        ChainKind::Audit => (
            format!(
                "SELECT seq, hash, prev_hash, {AUDIT_CHAIN_FIELDS} FROM audit_entries \
                 WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ),
            audit_chain(tenant).to_owned(),
        ),
    };
    let rows = db.query(
        &sql,
        &[
            Param::Text(&key),
            Param::BigInt(after),
            Param::BigInt(i64::from(limit)),
        ],
    )?;
    match kind {
        ChainKind::Calls => rows.iter().map(stored_call_link).collect(),
        ChainKind::Audit => rows.iter().map(stored_link).collect(),
    }
}

/// Where the columns after the chained ones start in a [`links`] row of calls.
const CALL_EXTRA_AT: usize = 3 + super::rows::CHAINED_CALL_COLUMN_COUNT;

/// A call's stored link: v1 encodes the row as stored; v2 puts the body digests in place
/// of the bodies and checks each body that is there against its digest.
fn stored_call_link(row: &SqlRow) -> StoreResult<StoredLink> {
    let chained = row.get(3..CALL_EXTRA_AT).ok_or_else(|| {
        StoreError::Database("a stored call link row is shorter than expected".into())
    })?;
    let extra = |i: usize| row.get(CALL_EXTRA_AT + i).unwrap_or(&Cell::Null);
    // A version edited to a number no version has is a link that cannot hold: walk it as
    // v1, whose hash then does not match.
    let version = match extra(0) {
        Cell::Int(n) => LinkVersion::from_number(*n).unwrap_or_default(),
        _ => LinkVersion::V1,
    };
    let opt_text = |c: &Cell| match c {
        Cell::Text(s) => Some(s.clone()),
        Cell::Null => None,
        Cell::Int(v) => Some(v.to_string()),
    };
    let mut fields: Vec<Field<'_>> = chained.iter().map(cell_field).collect();
    let mut body_mismatch = None;
    let (request_digest, response_digest) = (opt_text(extra(1)), opt_text(extra(2)));
    if version == LinkVersion::V2 {
        let pruned = !matches!(extra(3), Cell::Null);
        let body = |i: usize| chained.get(i).and_then(opt_text);
        let (request, response) = (body(REQUEST_BODY_AT), body(RESPONSE_BODY_AT));
        body_mismatch = chain::check_body(
            "request",
            request.as_deref(),
            request_digest.as_deref(),
            pruned,
        )
        .and_then(|()| {
            chain::check_body(
                "response",
                response.as_deref(),
                response_digest.as_deref(),
                pruned,
            )
        })
        .err();
        fields[REQUEST_BODY_AT] = Field::from(request_digest.as_deref());
        fields[RESPONSE_BODY_AT] = Field::from(response_digest.as_deref());
    }
    let mut encoded = Vec::new();
    chain::encode(&fields, &mut encoded);
    let mut link = link_header(row, encoded)?;
    link.version = version;
    link.body_mismatch = body_mismatch;
    Ok(link)
}

fn stored_link(row: &SqlRow) -> StoreResult<StoredLink> {
    let fields: Vec<Field<'_>> = row.iter().skip(3).map(cell_field).collect();
    let mut encoded = Vec::new();
    chain::encode(&fields, &mut encoded);
    link_header(row, encoded)
}

/// A link from the first columns of a [`links`] row (seq, hash, prev_hash, id) and the
/// encoded fields, as v1.
fn link_header(row: &SqlRow, encoded: Vec<u8>) -> StoreResult<StoredLink> {
    let c = Cells::new(row, "chained record");
    Ok(StoredLink {
        seq: c.int(0)?,
        id: match row.get(3) {
            Some(Cell::Text(s)) => s.clone(),
            other => format!("{other:?}"),
        },
        // A hash set to NULL or a number by hand is simply a hash that does not match.
        hash: match row.get(1) {
            Some(Cell::Text(s)) => s.clone(),
            other => format!("{other:?}"),
        },
        prev_hash: c.opt_text(2).ok().flatten(),
        encoded,
        version: LinkVersion::V1,
        body_mismatch: None,
    })
}

/// The `chain` column of an audit entry: the tenant id, or `''` for the instance.
fn audit_chain(tenant: Option<&TenantId>) -> &str {
    tenant.map_or("", TenantId::as_str)
}

/// The parameter that stores an audit field. Every nullable audit column is text, so a
/// missing value binds as a text NULL (Postgres checks a NULL's type too).
fn audit_param<'a>(f: &Field<'a>) -> Param<'a> {
    match *f {
        Field::Null => Param::OptText(None),
        Field::Int(v) => Param::BigInt(v),
        Field::Text(s) => Param::Text(s),
    }
}

/// Appends an audit entry to its chain, in the caller's transaction.
pub(super) fn append_audit(db: &mut dyn Db, e: &NewAuditEntry) -> StoreResult<AuditEntry> {
    let key = chain::chain_key(ChainKind::Audit, e.tenant_id.as_ref());
    let prev = lock_head(db, &key)?;
    let id = AuditId::generate();
    let chain_col = audit_chain(e.tenant_id.as_ref());
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
    let (before, after) = (json(&e.before), json(&e.after));
    let tenant = e.tenant_id.as_ref().map(TenantId::as_str);
    let fields = [
        Field::Text(id.as_str()),
        Field::Text(chain_col),
        Field::from(tenant),
        Field::Text(e.actor.kind()),
        Field::Text(e.actor.id()),
        Field::Text(e.action.as_str()),
        Field::Text(&e.target),
        Field::from(e.source.as_deref()),
        Field::Int(e.at.millis()),
        Field::from(before.as_deref()),
        Field::from(after.as_deref()),
    ];
    let mut buf = Vec::new();
    chain::encode(&fields, &mut buf);
    let seq = prev.seq + 1;
    let hash = chain::link_hash(&prev.hash, seq, &buf);
    let mut params = vec![
        Param::BigInt(seq),
        Param::Text(&hash),
        Param::Text(&prev.hash),
    ];
    params.extend(fields.iter().map(audit_param));
    db.execute(
        &format!(
            "INSERT INTO audit_entries (seq, hash, prev_hash, {AUDIT_CHAIN_FIELDS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ),
        &params,
    )?;
    set_head(
        db,
        &key,
        &ChainHead {
            seq,
            hash: hash.clone(),
        },
    )?;
    Ok(AuditEntry {
        id,
        seq,
        tenant_id: e.tenant_id.clone(),
        actor_kind: e.actor.kind().to_owned(),
        actor_id: e.actor.id().to_owned(),
        action: e.action.as_str().to_owned(),
        target: e.target.clone(),
        source: e.source.clone(),
        at: e.at,
        before: e.before.clone(),
        after: e.after.clone(),
        prev_hash: prev.hash,
        hash,
    })
}

const AUDIT_COLUMNS: &str = "id, seq, tenant_id, actor_kind, actor_id, action, target, source, at, before_json, after_json, prev_hash, hash";

fn audit_from(row: &SqlRow) -> StoreResult<AuditEntry> {
    let c = Cells::new(row, "audit entry");
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Database(format!("a stored audit entry has a bad {what}: {e}"))
    };
    let json = |i: usize| -> StoreResult<Option<serde_json::Value>> {
        c.opt_text(i)?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| bad("before/after JSON", &e))
    };
    Ok(AuditEntry {
        id: AuditId::parse(&c.text(0)?).map_err(|e| bad("id", &e))?,
        seq: c.int(1)?,
        tenant_id: c
            .opt_text(2)?
            .map(|t| TenantId::parse(&t))
            .transpose()
            .map_err(|e| bad("tenant", &e))?,
        actor_kind: c.text(3)?,
        actor_id: c.text(4)?,
        action: c.text(5)?,
        target: c.text(6)?,
        source: c.opt_text(7)?,
        at: Timestamp::from_millis(c.int(8)?),
        before: json(9)?,
        after: json(10)?,
        prev_hash: c.text(11)?,
        hash: c.text(12)?,
    })
}

/// A tenant's entries, newest first (seq desc), strictly before seq `before` when given.
pub(super) fn list_audit(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: u32,
) -> StoreResult<Vec<AuditEntry>> {
    let mut q = sql::Query::new(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_entries WHERE chain = $1"
    ));
    q.args.push(Param::Text(audit_chain(tenant)));
    if let Some(a) = filter.action {
        q.add(Param::Text(a.as_str()), " AND action = {}");
    }
    if let Some(a) = filter.actor.as_deref() {
        q.add(Param::Text(a), " AND actor_id = {}");
    }
    if let Some(t) = filter.since {
        q.add(Param::BigInt(t.millis()), " AND at >= {}");
    }
    if let Some(t) = filter.until {
        q.add(Param::BigInt(t.millis()), " AND at < {}");
    }
    if let Some(b) = before {
        q.add(Param::BigInt(b), " AND seq < {}");
    }
    q.add(
        Param::BigInt(i64::from(limit.clamp(1, 1000))),
        " ORDER BY seq DESC LIMIT {}",
    );
    sql::all(db, &q.sql, &q.args, audit_from)
}
