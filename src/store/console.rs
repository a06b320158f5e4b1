//! What the console reads and writes beyond the API's own records, written once for both
//! backends (see [`super::sql`]): call series and usage for the overview, people (listing,
//! password change) and invitations. Every tenant-owned read takes the tenant id.

use super::rows::{Param, UserRow, explain_conflict};
use super::sql::{Cells, Db, SqlRow};
use super::{StoreError, StoreResult};
use crate::domain::user::{Email, Invitation, NewUser, PasswordHash, Role, User};
use crate::domain::{InvitationId, KeyId, TenantId, Timestamp, UserId};

/// One bucket of a tenant's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesPoint {
    /// Start of the bucket.
    pub t: Timestamp,
    pub calls: i64,
    /// Calls that ended in an upstream error (status >= 500).
    pub errors: i64,
    pub blocked: i64,
    /// Known cost in nano-dollars (calls of unknown price add nothing).
    pub cost_nanos: i64,
}

/// Calls, tokens and known cost of one key or one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub name: String,
    pub calls: i64,
    pub tokens: i64,
    pub cost_nanos: i64,
    /// Calls whose price was unknown (their cost is not in `cost_nanos`).
    pub unknown_cost: i64,
}

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("a stored {what}: {e}"))
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
                CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT)
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
        }
    }
    Ok(out)
}

fn usage_rows(rows: &[SqlRow]) -> StoreResult<Vec<UsageRow>> {
    rows.iter()
        .map(|row| {
            let c = Cells::new(row, "usage");
            Ok(UsageRow {
                name: c.opt_text(0)?.unwrap_or_default(),
                calls: c.int(1)?,
                tokens: c.int(2)?,
                cost_nanos: c.int(3)?,
                unknown_cost: c.int(4)?,
            })
        })
        .collect()
}

/// Usage since `since` grouped by `key_id` or by `model`, busiest first.
pub(super) fn usage_by(
    db: &mut dyn Db,
    tenant: &TenantId,
    since: Timestamp,
    by_model: bool,
) -> StoreResult<Vec<UsageRow>> {
    let column = if by_model { "model" } else { "key_id" };
    let rows = db.query(
        &format!(
            "SELECT {column}, COUNT(*),
                    CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT),
                    CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT),
                    CAST(COALESCE(SUM(CASE WHEN cost_nanos IS NULL AND NOT blocked THEN 1 ELSE 0 END), 0) AS BIGINT)
             FROM calls WHERE tenant_id = $1 AND created_at >= $2
             GROUP BY {column} ORDER BY 2 DESC"
        ),
        &[Param::Text(tenant.as_str()), Param::BigInt(since.millis())],
    )?;
    usage_rows(&rows)
}

const USER_COLUMNS: &str = "id, email, password_hash, role, tenant_id, created_at";

fn user_from(row: &SqlRow) -> StoreResult<User> {
    let c = Cells::new(row, "user");
    UserRow {
        id: c.text(0)?,
        email: c.text(1)?,
        password_hash: c.text(2)?,
        role: c.text(3)?,
        tenant_id: c.opt_text(4)?,
        created_at: c.int(5)?,
    }
    .into_user()
}

/// A tenant's people (`None`: everyone on the instance), oldest first.
pub(super) fn list_users(db: &mut dyn Db, tenant: Option<&TenantId>) -> StoreResult<Vec<User>> {
    let rows = match tenant {
        Some(t) => db.query(
            &format!(
                "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY created_at, id"
            ),
            &[Param::Text(t.as_str())],
        )?,
        None => db.query(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"),
            &[],
        )?,
    };
    rows.iter().map(user_from).collect()
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

const INVITATION_COLUMNS: &str =
    "id, tenant_id, email, role, token_hash, created_by, created_at, expires_at, accepted_at";

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
    })
}

/// An unknown tenant is NotFound.
pub(super) fn insert_invitation(db: &mut dyn Db, inv: &Invitation) -> StoreResult<()> {
    if db
        .query(
            "SELECT id FROM tenants WHERE id = $1",
            &[Param::Text(inv.tenant_id.as_str())],
        )?
        .is_empty()
    {
        return Err(StoreError::NotFound);
    }
    db.execute(
        &format!(
            "INSERT INTO invitations ({INVITATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
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
    let rows = db.query(
        &format!("SELECT {INVITATION_COLUMNS} FROM invitations WHERE token_hash = $1{lock}"),
        &[Param::Text(token_hash)],
    )?;
    rows.first().map(invitation_from).transpose()
}

/// Newest first.
pub(super) fn list_invitations(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<Vec<Invitation>> {
    let rows = db.query(
        &format!(
            "SELECT {INVITATION_COLUMNS} FROM invitations WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC"
        ),
        &[Param::Text(tenant.as_str())],
    )?;
    rows.iter().map(invitation_from).collect()
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
    db.execute(
        &format!("INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
        &[
            Param::Text(user.id.as_str()),
            Param::Text(user.email.as_str()),
            Param::Text(user.password.as_str()),
            Param::Text(user.role.as_str()),
            Param::OptText(user.tenant_id.as_ref().map(TenantId::as_str)),
            Param::BigInt(now.millis()),
        ],
    )
    .map_err(|e| {
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
    Ok(User {
        id: user.id,
        email: user.email,
        password: user.password,
        role: user.role,
        tenant_id: user.tenant_id,
        created_at: now,
    })
}

/// Key ids of a usage list, for joining with the key list.
pub fn key_of(row: &UsageRow) -> Option<KeyId> {
    KeyId::parse(&row.name).ok()
}
