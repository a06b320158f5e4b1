//! People who sign in to the console, and their sessions (managing them: see
//! [`super::console`]).

use super::StoreResult;
use super::rows::{
    LIVE_SESSION, SESSION_COLUMNS, USER_COLUMNS, explain_conflict, session_from, user_from,
};
use super::sql::{self, Db, Param};
use crate::domain::{Email, NewSession, NewUser, Session, TenantId, Timestamp, User, UserId};

pub(super) fn create(db: &mut dyn Db, user: &NewUser) -> StoreResult<User> {
    db.execute(
        "INSERT INTO users (id, email, password_hash, role, tenant_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            Param::Text(user.id.as_str()),
            Param::Text(user.email.as_str()),
            Param::Text(user.password.as_str()),
            Param::Text(user.role.as_str()),
            Param::OptText(user.tenant_id.as_ref().map(TenantId::as_str)),
            Param::BigInt(user.created_at.millis()),
        ],
    )
    .map_err(|e| {
        explain_conflict(e, || {
            format!("a user with the email {} already exists", user.email.as_str())
        })
    })?;
    Ok(User {
        id: user.id.clone(),
        email: user.email.clone(),
        password: user.password.clone(),
        role: user.role,
        tenant_id: user.tenant_id.clone(),
        created_at: user.created_at,
        disabled_at: None,
    })
}

pub(super) fn find_by_email(db: &mut dyn Db, email: &Email) -> StoreResult<Option<User>> {
    sql::first(
        db,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
        &[Param::Text(email.as_str())],
        user_from,
    )
}

pub(super) fn get(db: &mut dyn Db, id: &UserId) -> StoreResult<User> {
    sql::one(
        db,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
        &[Param::Text(id.as_str())],
        user_from,
    )
}

pub(super) fn count(db: &mut dyn Db) -> StoreResult<i64> {
    sql::number(db, "SELECT COUNT(*) FROM users", &[])
}

pub(super) fn create_session(db: &mut dyn Db, session: &NewSession) -> StoreResult<()> {
    db.execute(
        "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            Param::Text(session.id.as_str()),
            Param::Text(session.user_id.as_str()),
            Param::Text(&session.token_hash),
            Param::BigInt(session.created_at.millis()),
            Param::BigInt(session.expires_at.millis()),
        ],
    )
    .map_err(|e| {
        explain_conflict(e, || {
            "a session with this id or token already exists".to_owned()
        })
    })?;
    Ok(())
}

pub(super) fn find_session(
    db: &mut dyn Db,
    token_hash: &str,
    now: Timestamp,
) -> StoreResult<Option<Session>> {
    sql::first(
        db,
        &format!("SELECT {SESSION_COLUMNS} FROM {LIVE_SESSION}"),
        &[Param::Text(token_hash), Param::BigInt(now.millis())],
        session_from,
    )
}

pub(super) fn delete_session(db: &mut dyn Db, token_hash: &str) -> StoreResult<()> {
    db.execute(
        "DELETE FROM sessions WHERE token_hash = $1",
        &[Param::Text(token_hash)],
    )?;
    Ok(())
}

pub(super) fn purge_expired_sessions(db: &mut dyn Db, now: Timestamp) -> StoreResult<u64> {
    db.execute(
        "DELETE FROM sessions WHERE expires_at <= $1",
        &[Param::BigInt(now.millis())],
    )
}
