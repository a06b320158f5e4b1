//! Managing people: the one implementation behind `agv-server user disable|enable|role|
//! delete|logout|revoke-invitation` and the console's people endpoints (`/api/users/{id}…`,
//! `/api/invitations/{id}/revoke`).
//!
//! Each change and its audit entry are made here so that both doors apply the same rules
//! and record the same thing. The rules: nobody disables, deletes or changes the role of
//! their own account (someone else must, so one slip cannot lock the last person out); the
//! operator's role belongs to the instance and a tenant's people change only among owner,
//! admin and viewer; and the store refuses, in the changing transaction, to take away a
//! tenant's last enabled owner or the instance's last enabled operator. Blocking (the
//! store's synchronous API): the server calls it through `run_blocking`. Whether the caller
//! may manage people at all is the caller's check, not this module's.

use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::user::{Invitation, Role, User};
use crate::domain::{InvitationId, TenantId, Timestamp, UserId};
use crate::error::{ApiError, Code};
use crate::store::{Store, StoreError};
use serde_json::json;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who acts, and on whose people.
#[derive(Debug, Clone)]
pub struct Manager {
    pub actor: Actor,
    /// `Some(tenant)`: only that tenant's people are visible (an owner, or the operator
    /// looking at one tenant); `None`: everyone on the instance (the operator, the CLI).
    pub scope: Option<TenantId>,
    /// The client's address, for the audit entry.
    pub source: Option<String>,
}

/// A change to one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// They cannot sign in any more and every session of theirs ends at once.
    Disable,
    Enable,
    /// Another role in their tenant: owner, admin or viewer.
    Role(Role),
    Delete,
    /// Every session of theirs ends; they may sign in again.
    EndSessions,
}

impl Change {
    fn on_oneself_refused(self) -> Option<&'static str> {
        match self {
            Self::Disable => Some("disable"),
            Self::Role(_) => Some("change the role of"),
            Self::Delete => Some("delete"),
            Self::Enable | Self::EndSessions => None,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct Done {
    /// The person before the change.
    pub before: User,
    /// The person after it; `None` once deleted.
    pub after: Option<User>,
    /// Sessions ended ([`Change::EndSessions`] only).
    pub sessions_ended: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeopleError {
    /// No such person (or invitation) among those the manager sees.
    #[error("not found")]
    NotFound,
    /// The manager tried to disable, delete or re-role their own account.
    #[error("you cannot {0} your own account: ask another owner of the tenant or the operator")]
    OwnAccount(&'static str),
    /// A role change involving the operator's role.
    #[error(
        "the operator belongs to the instance, a tenant's people to their tenant: a role changes only between owner, admin and viewer (make a new operator with `agv-server user create --role operator`)"
    )]
    OperatorRole,
    /// The change would leave nobody in charge; the message names the person and what to do.
    #[error("{message}")]
    LastInCharge { operator: bool, message: String },
    /// The invitation was accepted already.
    #[error("{0}")]
    InvitationAccepted(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for PeopleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            other => Self::Store(other),
        }
    }
}

/// A person as the audit log shows them before a deletion (never the password hash).
fn person_state(u: &User) -> serde_json::Value {
    json!({
        "id": u.id, "email": u.email, "role": u.role, "tenant_id": u.tenant_id,
        "created_at": u.created_at, "disabled_at": u.disabled_at,
    })
}

/// Applies `change` to the person `id`, as `by`, and records it in the audit log (in the
/// person's tenant's chain; an operator's in the instance-wide one).
pub fn change(
    store: &dyn Store,
    by: &Manager,
    id: &UserId,
    change: Change,
) -> Result<Done, PeopleError> {
    let seen = store.get_user(id)?;
    if let Some(scope) = &by.scope
        && seen.tenant_id.as_ref() != Some(scope)
    {
        return Err(PeopleError::NotFound);
    }
    if let (Actor::User(me), Some(what)) = (&by.actor, change.on_oneself_refused())
        && me == id
    {
        return Err(PeopleError::OwnAccount(what));
    }
    if let Change::Role(role) = change
        && (seen.role == Role::Operator || !role.is_tenant_role())
    {
        return Err(PeopleError::OperatorRole);
    }
    let scope = by.scope.as_ref();
    let last = |e: StoreError| match e {
        StoreError::Conflict(message) => PeopleError::LastInCharge {
            operator: seen.role == Role::Operator,
            message,
        },
        other => other.into(),
    };
    let now = Timestamp::now();
    let (action, done) = match change {
        Change::Disable => {
            let before = store
                .set_user_disabled(scope, id, Some(now))
                .map_err(last)?;
            let after = User {
                disabled_at: before.disabled_at.or(Some(now)),
                ..before.clone()
            };
            (AuditAction::UserDisable, done(before, Some(after), None))
        }
        Change::Enable => {
            let before = store.set_user_disabled(scope, id, None).map_err(last)?;
            let after = User {
                disabled_at: None,
                ..before.clone()
            };
            (AuditAction::UserEnable, done(before, Some(after), None))
        }
        Change::Role(role) => {
            let before = store.set_user_role(scope, id, role).map_err(last)?;
            let after = User {
                role,
                ..before.clone()
            };
            (AuditAction::UserRoleChange, done(before, Some(after), None))
        }
        Change::Delete => {
            let before = store.delete_user(scope, id).map_err(last)?;
            (AuditAction::UserDelete, done(before, None, None))
        }
        Change::EndSessions => {
            let ended = store.end_user_sessions(scope, id)?;
            (
                AuditAction::UserSessionsEnd,
                done(seen.clone(), Some(seen.clone()), Some(ended)),
            )
        }
    };
    let b = &done.before;
    let mut entry = NewAuditEntry::new(b.tenant_id.clone(), by.actor.clone(), action, id.as_str())
        .source(by.source.clone());
    entry = match (change, &done.after) {
        (Change::Disable | Change::Enable, Some(a)) => entry
            .before(json!({"email": b.email, "disabled_at": b.disabled_at}))
            .after(json!({"email": a.email, "disabled_at": a.disabled_at})),
        (Change::Role(_), Some(a)) => entry
            .before(json!({"email": b.email, "role": b.role}))
            .after(json!({"email": a.email, "role": a.role})),
        (Change::EndSessions, _) => {
            entry.after(json!({"email": b.email, "sessions_ended": done.sessions_ended}))
        }
        _ => entry.before(person_state(b)),
    };
    crate::evidence::audit::record(store, &entry);
    Ok(done)
}

fn done(before: User, after: Option<User>, sessions_ended: Option<u64>) -> Done {
    Done {
        before,
        after,
        sessions_ended,
    }
}

/// Revokes an invitation that was not accepted, as `by`, and records it in the audit log of
/// the invitation's tenant. Revoking twice keeps the first time (and records both).
pub fn revoke_invitation(
    store: &dyn Store,
    by: &Manager,
    id: &InvitationId,
) -> Result<Invitation, PeopleError> {
    let inv = store
        .revoke_invitation(by.scope.as_ref(), id, Timestamp::now())
        .map_err(|e| match e {
            StoreError::Conflict(m) => PeopleError::InvitationAccepted(m),
            other => other.into(),
        })?;
    crate::evidence::audit::record(
        store,
        &NewAuditEntry::new(
            Some(inv.tenant_id.clone()),
            by.actor.clone(),
            AuditAction::InvitationRevoke,
            inv.id.as_str(),
        )
        .source(by.source.clone())
        .before(json!({"email": inv.email, "role": inv.role, "expires_at": inv.expires_at}))
        .after(json!({"revoked_at": inv.revoked_at})),
    );
    Ok(inv)
}

/// How long the first-run setup link works.
const SETUP_VALID: Duration = Duration::from_secs(30 * 60);

/// The one-time setup token while no user exists.
#[derive(Default)]
pub struct SetupToken {
    inner: Mutex<Option<(String, Instant)>>,
}

impl SetupToken {
    /// Makes a new token (replacing any earlier one) and returns it.
    pub fn issue(&self) -> String {
        let mut raw = [0u8; 24];
        rand::fill(&mut raw);
        let token = hex::encode(raw);
        self.put_back(&token);
        token
    }

    /// Takes the token if `given` matches and it has not expired: it works once.
    pub fn take(&self, given: &str) -> Result<(), ApiError> {
        let Ok(mut g) = self.inner.lock() else {
            return Err(ApiError::internal("setup token lock poisoned"));
        };
        match g.as_ref() {
            Some((hash, until)) if *hash == crate::proxy::sha256_hex(given.as_bytes()) => {
                let expired = Instant::now() > *until;
                *g = None;
                if expired {
                    return Err(ApiError::new(
                        Code::SetupTokenExpired,
                        "the setup link has expired; restart agv-server for a new one, or run `agv-server user create --role operator`",
                    ));
                }
                Ok(())
            }
            _ => Err(ApiError::new(
                Code::InvalidSetupToken,
                "this setup link is not valid: use the URL agv-server printed at start",
            )
            .param("token")),
        }
    }

    /// Makes `given` the token, valid for [`SETUP_VALID`] from now.
    pub fn put_back(&self, given: &str) {
        if let Ok(mut g) = self.inner.lock() {
            *g = Some((
                crate::proxy::sha256_hex(given.as_bytes()),
                Instant::now() + SETUP_VALID,
            ));
        }
    }
}
