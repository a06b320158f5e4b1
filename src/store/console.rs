//! What the console reads and writes beyond the API's own records, written once for both
//! backends (see [`super::sql`]): call series, usage and the cost of blocked calls for the
//! overview and the usage history, the operator's log of blocked calls across tenants,
//! people (listing,
//! password change, disabling, roles, deletion, ending sessions) and invitations. Every
//! tenant-owned read takes the tenant id. The rules that keep someone in charge — a tenant
//! keeps an enabled owner once it has one, the instance an enabled operator — are checked
//! here, inside the transaction that makes the change, so that two people acting at once
//! cannot both remove the last one.

use super::rows::{MAX_PAGE, USER_COLUMNS, explain_conflict, user_from};
use super::search_sql::STOPPED_BY;
use super::sql::{self, Cells, Db, Dialect, Param, SqlRow, bad};
use super::{StoreError, StoreResult};
use crate::domain::decision::policy;
use crate::domain::user::{Email, Invitation, NewUser, PasswordHash, Role, User};
use crate::domain::{
    CallCursor, CallId, Decision, InvitationId, KeyId, TenantId, Timestamp, UserId,
};

/// One bucket of a tenant's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesPoint {
    /// Start of the bucket.
    pub t: Timestamp,
    pub calls: i64,
    /// Calls that ended in an upstream error (status >= 500).
    pub errors: i64,
    pub blocked: i64,
    /// Tokens the calls used (as the upstream reported them).
    pub tokens: i64,
    /// Known cost in nano-dollars (calls of unknown price add nothing).
    pub cost_nanos: i64,
}

/// What usage is grouped by (see [`usage_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    Key,
    Model,
    EndUser,
}

impl UsageBy {
    fn column(self) -> &'static str {
        match self {
            Self::Key => "key_id",
            Self::Model => "model",
            Self::EndUser => "end_user",
        }
    }
}

/// Calls, tokens and known cost of one key, model or end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub name: String,
    pub calls: i64,
    pub tokens: i64,
    pub cost_nanos: i64,
    /// Calls whose price was unknown (their cost is not in `cost_nanos`).
    pub unknown_cost: i64,
}

/// The calls one policy stopped for one model, and what the guard estimated they would
/// have cost (see [`blocked_costs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedCost {
    /// The policy that stopped them (`blocked_by`).
    pub policy: String,
    pub model: Option<String>,
    pub calls: i64,
    /// Calls whose max-cost check (dg-001) ran and recorded its estimate.
    pub estimated_calls: i64,
    /// The sum of those estimates, in nano-dollars.
    pub estimate_nanos: i64,
    /// Request characters of the other calls (stopped before dg-001, such as by the kill
    /// switch or the token limit, or of a model without a price), for an estimate by size.
    pub unestimated_chars: i64,
}

/// The guard's cost estimate of a call, in USD, as recorded in its decisions: the value of
/// the max-cost check (dg-001), which the pipeline runs third, after the kill switch and
/// the token limit. A call stopped before it, or whose price was unknown, has none (NULL).
/// The position is checked, not assumed: another decision there counts as no estimate.
fn recorded_estimate(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "CASE WHEN json_extract(c.decisions, '$[2].policy') = 'dg-001'
                  THEN json_extract(c.decisions, '$[2].value') END"
        }
        Dialect::Postgres => {
            "CASE WHEN (c.decisions::json -> 2 ->> 'policy') = 'dg-001'
                  THEN CAST(c.decisions::json -> 2 ->> 'value' AS DOUBLE PRECISION) END"
        }
    }
}

/// The tenant's calls stopped by a policy since `since`, by policy and model.
///
/// It reads the partial index of stopped calls (migration 0019, `calls_tenant_stopped_by`,
/// keyed by tenant, stopping policy and time), which holds only those, instead of every
/// call of the window: its condition and key are repeated word for word so that both
/// databases may use it, and naming the policies lets each read one range of it per
/// policy. Without them Postgres cannot tell how few calls the index holds and reads the
/// whole table (1,000,000 calls, 700,000 of one tenant in 30 days and 3% of them stopped,
/// on a busy 2-core machine: 0.37 s on Postgres against 0.54 s in parallel workers; SQLite
/// reads the same ranges in 0.13 s, against 0.5 s through the time index).
pub(super) fn blocked_costs(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
) -> StoreResult<Vec<BlockedCost>> {
    let dialect = db.dialect();
    let (stopped, by) = STOPPED_BY.of(dialect);
    let estimate = recorded_estimate(dialect);
    let policies = (3..3 + policy::STOPPING.len())
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut args = vec![Param::Text(tenant.as_str()), Param::BigInt(since.millis())];
    args.extend(policy::STOPPING.iter().map(|p| Param::Text(p)));
    // Each stopped call is reduced to four small values first (MATERIALIZED keeps Postgres
    // from sorting the whole rows, request bodies and all, for the grouping).
    sql::all(
        db,
        &format!(
            "WITH s AS MATERIALIZED (
                 SELECT c.blocked_by AS policy, c.model AS model,
                        LENGTH(c.request_body) AS chars, {estimate} AS estimate
                 FROM calls c
                 WHERE c.tenant_id = $1 AND ({stopped}) AND {by} IN ({policies})
                   AND c.blocked_by IS NOT NULL AND c.created_at >= $2)
             SELECT policy, model, COUNT(*), COUNT(estimate),
                    CAST(COALESCE(SUM(estimate), 0) * 1000000000 AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN estimate IS NULL THEN chars ELSE 0 END), 0) AS BIGINT)
             FROM s GROUP BY policy, model ORDER BY policy, model"
        ),
        &args,
        |row| {
            let c = Cells::new(row, "blocked cost");
            Ok(BlockedCost {
                policy: c.text(0)?,
                model: c.opt_text(1)?,
                calls: c.int(2)?,
                estimated_calls: c.int(3)?,
                estimate_nanos: c.int(4)?,
                unestimated_chars: c.int(5)?,
            })
        },
    )
}

/// `buckets` consecutive buckets of `bucket_ms` from `since`, empty ones included.
pub(super) fn call_series(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
    bucket_ms: i64,
    buckets: u32,
) -> StoreResult<Vec<SeriesPoint>> {
    let bucket_ms = bucket_ms.max(1);
    let until = since.millis() + bucket_ms * i64::from(buckets);
    let rows = db.query(
        "SELECT (created_at - $2) / $3, COUNT(*),
                CAST(COALESCE(SUM(CASE WHEN status >= 500 THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN blocked THEN 1 ELSE 0 END), 0) AS BIGINT),
                CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT),
                CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT)
         FROM calls WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $4
         GROUP BY 1",
        &[
            Param::Text(tenant.as_str()),
            Param::BigInt(since.millis()),
            Param::BigInt(bucket_ms),
            Param::BigInt(until),
        ],
    )?;
    let mut out: Vec<SeriesPoint> = (0..i64::from(buckets))
        .map(|i| SeriesPoint {
            t: Timestamp::from_millis(since.millis() + i * bucket_ms),
            calls: 0,
            errors: 0,
            blocked: 0,
            tokens: 0,
            cost_nanos: 0,
        })
        .collect();
    for row in &rows {
        let c = Cells::new(row, "call series");
        let i = c.int(0)?;
        if let Some(p) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            p.calls = c.int(1)?;
            p.errors = c.int(2)?;
            p.blocked = c.int(3)?;
            p.cost_nanos = c.int(4)?;
            p.tokens = c.int(5)?;
        }
    }
    Ok(out)
}

/// Usage from `since` (until before `until`, when given) grouped by key, model or end
/// user, busiest first, then by name; at most `limit` groups when given. Calls without a
/// model or an end user form one group, named "" (and sorted as such on both backends).
pub(super) fn usage_by(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
    until: Option<Timestamp>,
    by: UsageBy,
    limit: Option<u32>,
) -> StoreResult<Vec<UsageRow>> {
    let column = by.column();
    sql::all(
        db,
        &format!(
            "SELECT {column}, COUNT(*),
                    CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT),
                    CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN cost_nanos IS NULL AND NOT blocked THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM calls WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
             GROUP BY {column} ORDER BY 2 DESC, COALESCE({column}, '') LIMIT $4"
        ),
        &[
            Param::Text(tenant.as_str()),
            Param::BigInt(since.millis()),
            Param::BigInt(until.map_or(i64::MAX, Timestamp::millis)),
            Param::BigInt(limit.map_or(i64::MAX, i64::from)),
        ],
        |row| {
            let c = Cells::new(row, "usage");
            Ok(UsageRow {
                name: c.opt_text(0)?.unwrap_or_default(),
                calls: c.int(1)?,
                tokens: c.int(2)?,
                cost_nanos: c.int(3)?,
                unknown_cost: c.int(4)?,
            })
        },
    )
}

/// What the operator's enforcement log lists: calls a policy stopped, of one tenant or
/// of all, by one policy or any, from `since`, before `until`.
#[derive(Debug, Clone, Default)]
pub struct BlockedFilter {
    pub tenant: Option<TenantId>,
    pub policy: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// One call a policy stopped, as the enforcement log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockedCall {
    pub id: CallId,
    pub tenant_id: TenantId,
    pub key_id: String,
    /// The key's name; `None` when the key is gone.
    pub key_name: Option<String>,
    pub end_user: Option<String>,
    pub created_at: Timestamp,
    pub policy: String,
    pub status: u16,
    /// Why: the stopping decision's sentence, else the error the client was given.
    pub reason: Option<String>,
}

impl BlockedCall {
    pub fn cursor(&self) -> CallCursor {
        CallCursor {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// The stopping decision's reason among a call's recorded decisions (JSON text).
fn stop_reason(decisions: &str, policy: &str) -> Option<String> {
    let decisions: Vec<Decision> = serde_json::from_str(decisions).ok()?;
    let stopped = |d: &&Decision| d.outcome != crate::domain::Outcome::Pass;
    decisions
        .iter()
        .filter(stopped)
        .find(|d| d.policy == policy)
        .or_else(|| decisions.iter().rev().find(stopped))
        .map(|d| d.reason.clone())
}

/// Calls a policy stopped, newest first (`created_at` desc, then id desc), strictly after
/// `after` when given.
///
/// Like [`blocked_costs`] it reads the partial index of stopped calls (migration 0019,
/// keyed by tenant, stopping policy and time), its condition repeated word for word. With
/// no tenant named, every tenant's range of it is read (`tenant_id IN (…tenants)`, always
/// true) rather than every call.
pub(super) fn blocked_calls<'a>(
    db: &mut dyn Db,
    filter: &'a BlockedFilter,
    after: Option<&'a CallCursor>,
    limit: u32,
) -> StoreResult<Vec<BlockedCall>> {
    let (stopped, by) = STOPPED_BY.of(db.dialect());
    let mut q = sql::Query::new(format!(
        "SELECT c.id, c.tenant_id, c.key_id, k.name, c.end_user, c.created_at, c.blocked_by,
                c.status, c.error, c.decisions
         FROM calls c LEFT JOIN api_keys k ON k.id = c.key_id
         WHERE ({stopped}) AND c.blocked_by IS NOT NULL"
    ));
    if filter.tenant.is_none() {
        q.sql
            .push_str(" AND c.tenant_id IN (SELECT id FROM tenants)");
    }
    if let Some(t) = &filter.tenant {
        q.add(Param::Text(t.as_str()), " AND c.tenant_id = {}");
    }
    if let Some(p) = &filter.policy {
        q.add(Param::Text(p), &format!(" AND {by} = {{}}"));
    }
    if let Some(t) = filter.since {
        q.add(Param::BigInt(t.millis()), " AND c.created_at >= {}");
    }
    if let Some(t) = filter.until {
        q.add(Param::BigInt(t.millis()), " AND c.created_at < {}");
    }
    if let Some(c) = after {
        q.add(
            Param::BigInt(c.created_at.millis()),
            " AND (c.created_at, c.id) < ({}, ",
        );
        q.add(Param::Text(c.id.as_str()), "{})");
    }
    q.add(
        Param::BigInt(i64::from(limit.clamp(1, MAX_PAGE))),
        " ORDER BY c.created_at DESC, c.id DESC LIMIT {}",
    );
    sql::all(db, &q.sql, &q.args, |row| {
        let c = Cells::new(row, "blocked call");
        let policy = c.text(6)?;
        let reason = stop_reason(&c.text(9)?, &policy).or(c.opt_text(8)?);
        Ok(BlockedCall {
            id: CallId::parse(&c.text(0)?).map_err(|e| bad("call id", e))?,
            tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| bad("tenant id", e))?,
            key_id: c.text(2)?,
            key_name: c.opt_text(3)?,
            end_user: c.opt_text(4)?,
            created_at: Timestamp::from_millis(c.int(5)?),
            policy,
            status: u16::try_from(c.int(7)?).map_err(|e| bad("call status", e))?,
            reason,
        })
    })
}

/// A tenant's people (`None`: everyone on the instance), oldest first.
pub(super) fn list_users(db: &mut dyn Db, tenant: Option<&TenantId>) -> StoreResult<Vec<User>> {
    sql::all(
        db,
        &format!(
            "SELECT {USER_COLUMNS} FROM users WHERE (CAST($1 AS TEXT) IS NULL OR tenant_id = $1) ORDER BY created_at, id"
        ),
        &[Param::OptText(tenant.map(TenantId::as_str))],
        user_from,
    )
}

/// Sets a new password and ends every other session of the user (the one whose token
/// hash is `keep` stays). An unknown user is NotFound.
pub(super) fn set_password(
    db: &mut dyn Db,
    user: &UserId,
    password: &PasswordHash,
    keep: Option<&str>,
) -> StoreResult<()> {
    let n = db.execute(
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        &[Param::Text(user.as_str()), Param::Text(password.as_str())],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    db.execute(
        "DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2",
        &[Param::Text(user.as_str()), Param::Text(keep.unwrap_or(""))],
    )?;
    Ok(())
}

const INVITATION_COLUMNS: &str = "id, tenant_id, email, role, token_hash, created_by, created_at, expires_at, accepted_at, revoked_at";

fn invitation_from(row: &SqlRow) -> StoreResult<Invitation> {
    let c = Cells::new(row, "invitation");
    Ok(Invitation {
        id: InvitationId::parse(&c.text(0)?).map_err(|e| bad("invitation id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| bad("invitation tenant", e))?,
        email: Email::parse(&c.text(2)?).map_err(|e| bad("invitation email", e))?,
        role: Role::parse(&c.text(3)?).map_err(|e| bad("invitation role", e))?,
        token_hash: c.text(4)?,
        created_by: c.text(5)?,
        created_at: Timestamp::from_millis(c.int(6)?),
        expires_at: Timestamp::from_millis(c.int(7)?),
        accepted_at: c.opt_int(8)?.map(Timestamp::from_millis),
        revoked_at: c.opt_int(9)?.map(Timestamp::from_millis),
    })
}

/// An unknown tenant is NotFound.
pub(super) fn insert_invitation(db: &mut dyn Db, inv: &Invitation) -> StoreResult<()> {
    super::tenants::require(db, &inv.tenant_id)?;
    db.execute(
        &format!(
            "INSERT INTO invitations ({INVITATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ),
        &[
            Param::Text(inv.id.as_str()),
            Param::Text(inv.tenant_id.as_str()),
            Param::Text(inv.email.as_str()),
            Param::Text(inv.role.as_str()),
            Param::Text(&inv.token_hash),
            Param::Text(&inv.created_by),
            Param::BigInt(inv.created_at.millis()),
            Param::BigInt(inv.expires_at.millis()),
            Param::OptBigInt(inv.accepted_at.map(Timestamp::millis)),
            Param::OptBigInt(inv.revoked_at.map(Timestamp::millis)),
        ],
    )
    .map_err(|e| explain_conflict(e, || format!("invitation {} exists already", inv.id)))?;
    Ok(())
}

pub(super) fn find_invitation(
    db: &mut dyn Db,
    token_hash: &str,
) -> StoreResult<Option<Invitation>> {
    let lock = db.lock_rows();
    sql::first(
        db,
        &format!("SELECT {INVITATION_COLUMNS} FROM invitations WHERE token_hash = $1{lock}"),
        &[Param::Text(token_hash)],
        invitation_from,
    )
}

/// Newest first.
pub(super) fn list_invitations(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<Vec<Invitation>> {
    sql::all(
        db,
        &format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC"
        ),
        &[Param::Text(tenant.as_str())],
        invitation_from,
    )
}

/// Accepts an open invitation: creates its user with the invitation's email, role and
/// tenant, and marks it accepted, in one transaction. An unknown token is NotFound; an
/// accepted or expired one, or an email already in use, is Conflict.
pub(super) fn accept_invitation(
    db: &mut dyn Db,
    token_hash: &str,
    id: &UserId,
    password: &PasswordHash,
    now: Timestamp,
) -> StoreResult<User> {
    let inv = find_invitation(db, token_hash)?.ok_or(StoreError::NotFound)?;
    if !inv.is_open(now) {
        return Err(StoreError::Conflict(if inv.accepted_at.is_some() {
            "this invitation has been used already; sign in instead".to_owned()
        } else if inv.revoked_at.is_some() {
            REVOKED.to_owned()
        } else {
            "this invitation has expired; ask for a new one".to_owned()
        }));
    }
    let user = NewUser {
        id: id.clone(),
        email: inv.email.clone(),
        password: password.clone(),
        role: inv.role,
        tenant_id: Some(inv.tenant_id.clone()),
        created_at: now,
    };
    let created = super::users::create(db, &user).map_err(|e| {
        explain_conflict(e, || {
            format!(
                "a user with the email {} already exists; sign in instead",
                user.email.as_str()
            )
        })
    })?;
    db.execute(
        "UPDATE invitations SET accepted_at = $2 WHERE id = $1",
        &[Param::Text(inv.id.as_str()), Param::BigInt(now.millis())],
    )?;
    Ok(created)
}

/// What accepting a revoked invitation says.
pub(super) const REVOKED: &str =
    "this invitation was revoked by an owner of the tenant or the operator; ask them for a new one";

/// Which people a manager may act on: `Some(tenant)` is an owner, who sees that tenant's
/// people only; `None` is the operator, who sees everyone.
fn managed_user(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &UserId,
    lock: bool,
) -> StoreResult<User> {
    sql::owned(
        db,
        "users",
        USER_COLUMNS,
        id.as_str(),
        tenant,
        lock,
        user_from,
    )
}

/// The user `id` as it is now, after locking everyone who keeps the user's tenant (its
/// enabled owners) or the instance (its enabled operators) in someone's charge. Every
/// change that could remove the last of them takes these locks first and in id order, so
/// that two such changes at once run one after the other (on Postgres; a SQLite write
/// transaction already excludes every other writer) and the second sees the first's result.
fn lock_for_change(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &UserId,
) -> StoreResult<(User, Vec<String>)> {
    // A user's tenant, and whether they are the operator, never change: safe to read first.
    let seen = managed_user(db, tenant, id, false)?;
    let lock = db.lock_rows();
    let in_charge = match &seen.tenant_id {
        None => db.query(
            &format!(
                "SELECT id FROM users WHERE role = 'operator' AND disabled_at IS NULL ORDER BY id{lock}"
            ),
            &[],
        )?,
        Some(t) => db.query(
            &format!(
                "SELECT id FROM users WHERE tenant_id = $1 AND role = 'owner' AND disabled_at IS NULL ORDER BY id{lock}"
            ),
            &[Param::Text(t.as_str())],
        )?,
    };
    let in_charge = in_charge
        .iter()
        .map(|r| Cells::new(r, "user").text(0))
        .collect::<StoreResult<_>>()?;
    let now = managed_user(db, tenant, id, true)?;
    Ok((now, in_charge))
}

/// Refuses a change that takes `user` out of those in charge (see [`lock_for_change`])
/// when nobody else is left.
fn keep_someone_in_charge(user: &User, in_charge: &[String]) -> StoreResult<()> {
    let counted = in_charge.iter().any(|i| i == user.id.as_str());
    if !counted || in_charge.len() > 1 {
        return Ok(());
    }
    Err(StoreError::Conflict(if user.role == Role::Operator {
        format!(
            "{} is the last enabled operator of this instance: make or enable another operator first (agv-server user create --role operator)",
            user.email.as_str()
        )
    } else {
        format!(
            "{} is the last enabled owner of this tenant: make another person owner first",
            user.email.as_str()
        )
    }))
}

fn delete_sessions(db: &mut dyn Db, user: &UserId) -> StoreResult<u64> {
    db.execute(
        "DELETE FROM sessions WHERE user_id = $1",
        &[Param::Text(user.as_str())],
    )
}

/// Disables the user (`Some(at)`; disabling twice keeps the first time) and deletes every
/// session of theirs, or enables them again (`None`). Returns the user as they were.
pub(super) fn set_user_disabled(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &UserId,
    disabled: Option<Timestamp>,
) -> StoreResult<User> {
    let (user, in_charge) = lock_for_change(db, tenant, id)?;
    match disabled {
        Some(at) => {
            keep_someone_in_charge(&user, &in_charge)?;
            db.execute(
                "UPDATE users SET disabled_at = COALESCE(disabled_at, $2) WHERE id = $1",
                &[Param::Text(id.as_str()), Param::BigInt(at.millis())],
            )?;
            delete_sessions(db, id)?;
        }
        None => {
            db.execute(
                "UPDATE users SET disabled_at = NULL WHERE id = $1",
                &[Param::Text(id.as_str())],
            )?;
        }
    }
    Ok(user)
}

/// Gives a tenant's person another role of that tenant. The operator's role belongs to the
/// instance and is not changed here (Conflict). Returns the user as they were.
pub(super) fn set_user_role(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &UserId,
    role: Role,
) -> StoreResult<User> {
    let (user, in_charge) = lock_for_change(db, tenant, id)?;
    if user.role == Role::Operator || !role.is_tenant_role() {
        return Err(StoreError::Conflict(
            "the operator belongs to the instance and a tenant's people to their tenant: a role changes only between owner, admin and viewer".to_owned(),
        ));
    }
    if role != Role::Owner {
        keep_someone_in_charge(&user, &in_charge)?;
    }
    db.execute(
        "UPDATE users SET role = $2 WHERE id = $1",
        &[Param::Text(id.as_str()), Param::Text(role.as_str())],
    )?;
    Ok(user)
}

/// Deletes the user and their sessions. What they did stays in the audit log, which names
/// them by id. Returns the user as they were.
pub(super) fn delete_user(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &UserId,
) -> StoreResult<User> {
    let (user, in_charge) = lock_for_change(db, tenant, id)?;
    keep_someone_in_charge(&user, &in_charge)?;
    delete_sessions(db, id)?;
    db.execute(
        "DELETE FROM users WHERE id = $1",
        &[Param::Text(id.as_str())],
    )?;
    Ok(user)
}

/// Ends every session of the user; returns how many there were.
pub(super) fn end_user_sessions(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &UserId,
) -> StoreResult<u64> {
    managed_user(db, tenant, id, true)?;
    delete_sessions(db, id)
}

/// Revokes an invitation that was not accepted (revoking twice keeps the first time); an
/// accepted one is Conflict. `tenant: None` is the operator. Returns it as it is now.
pub(super) fn revoke_invitation(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &InvitationId,
    at: Timestamp,
) -> StoreResult<Invitation> {
    let mut inv = sql::owned(
        db,
        "invitations",
        INVITATION_COLUMNS,
        id.as_str(),
        tenant,
        true,
        invitation_from,
    )?;
    if inv.accepted_at.is_some() {
        return Err(StoreError::Conflict(format!(
            "the invitation of {} was accepted already: disable or delete the person instead",
            inv.email.as_str()
        )));
    }
    if inv.revoked_at.is_none() {
        db.execute(
            "UPDATE invitations SET revoked_at = $2 WHERE id = $1",
            &[Param::Text(id.as_str()), Param::BigInt(at.millis())],
        )?;
        inv.revoked_at = Some(at);
    }
    Ok(inv)
}

/// Key ids of a usage list, for joining with the key list.
pub fn key_of(row: &UsageRow) -> Option<KeyId> {
    KeyId::parse(&row.name).ok()
}
