//! People signing in to the console: `POST /api/auth/login`, `POST /api/auth/logout`,
//! `GET /api/auth/me`. A session is a random 256-bit token in an HttpOnly, SameSite=Strict
//! cookie (`Secure` when the request came over TLS); the store keeps only its SHA-256.
//! Every state-changing `/api` call also needs the `x-csrf-token` header, derived from the
//! session token (`csrf_token`, given at sign-in and by `/api/auth/me`). Failed sign-ins
//! are throttled per email and per address. Sign-in and sign-out are audited. Sign-in with
//! the identity provider (`api::oidc`) starts its sessions here too ([`start_session`]).

use super::audit::{Console, ConsoleChange, Source, on_own_account, record};
use super::error::{ApiError, required_json};
use crate::api::state::AppState;
use crate::domain::audit::AuditAction;
use crate::domain::user::{Email, NewSession, PasswordHash, User};
use crate::domain::{SessionId, Timestamp};
use crate::error::Code;
use crate::store::run_blocking;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "agv_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const SESSION_HOURS: i64 = 12;
/// Failed sign-ins allowed per account from one address, and per address, within the
/// window. An account is never locked for everyone: that would let anyone lock its owner
/// out. Past [`MAX_FAILURES_PER_EMAIL`] failures from all addresses together, each attempt
/// on the account is slowed instead (see [`slow_down`]).
const MAX_FAILURES_PER_EMAIL: usize = 5;
const MAX_FAILURES_PER_ADDRESS: usize = 20;

/// Password hashes made or checked at once (argon2: tens of milliseconds of CPU and
/// 19 MiB each). They run on the blocking pool, never on the async workers that serve
/// every other request, and at most this many at a time, so a flood of sign-ins or set-ups
/// costs at most this many cores.
const PASSWORD_WORKERS: usize = 2;
static PASSWORD_PERMITS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(PASSWORD_WORKERS);
/// How long a request waits for its turn before it is told to come back.
const PASSWORD_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Runs `work`, which makes or checks password hashes, on the blocking pool once one of
/// the [`PASSWORD_WORKERS`] turns is free; 503 when none frees up in time.
pub async fn password_work<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = match tokio::time::timeout(PASSWORD_QUEUE_WAIT, PASSWORD_PERMITS.acquire()).await {
        Ok(Ok(turn)) => turn,
        _ => {
            return Err(ApiError::new(
                Code::PasswordWorkBusy,
                "the server is checking too many passwords at once; retry in a few seconds",
            ));
        }
    };
    Ok(run_blocking(work).await?)
}

/// Verified against when the email is unknown, so that both answers take as long.
static DUMMY_HASH: std::sync::LazyLock<Option<PasswordHash>> =
    std::sync::LazyLock::new(|| PasswordHash::create("a password nobody has, for timing").ok());

pub fn sha256_hex(s: &str) -> String {
    crate::proxy::sha256_hex(s.as_bytes())
}

/// The CSRF token of a session: derived from its secret token, so nothing more is stored.
pub fn csrf_token(session_token: &str) -> String {
    sha256_hex(&format!("agv-csrf\n{session_token}"))
}

pub fn user_json(u: &User) -> serde_json::Value {
    json!({"id": u.id, "email": u.email, "role": u.role, "tenant_id": u.tenant_id})
}

/// A person as the people list shows them: [`user_json`] plus when they joined and, while
/// disabled, since when.
pub fn person_json(u: &User) -> serde_json::Value {
    let mut j = user_json(u);
    if let serde_json::Value::Object(m) = &mut j {
        m.insert("created_at".into(), json!(u.created_at));
        m.insert("disabled_at".into(), json!(u.disabled_at));
    }
    j
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(Code::NotSignedIn, message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

#[post("/api/auth/login")]
pub async fn login(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = required_json::<LoginBody>(&raw, "send {\"email\": \"…\", \"password\": \"…\"}")?;
    let email = Email::parse(&body.email).map_err(|e| ApiError::new(Code::InvalidEmail, e.0))?;
    if body.password.is_empty() {
        return Err(ApiError::new(
            Code::InvalidPassword,
            "the password is empty",
        ));
    }
    let now = Instant::now();
    let addr = source.0.clone().unwrap_or_default();
    let account = format!("email:{}", email.as_str());
    // Locked: this account from this address, and this address for every account. The
    // account alone is only counted (usize::MAX never locks), to slow attempts on it.
    let keys = vec![
        (
            format!("email+addr:{}|{addr}", email.as_str()),
            MAX_FAILURES_PER_EMAIL,
        ),
        (format!("addr:{addr}"), MAX_FAILURES_PER_ADDRESS),
        (account.clone(), usize::MAX),
    ];
    if let Err(retry) = state.login_throttle.check(&keys, now) {
        return Err(ApiError::too_many_requests(
            format!(
                "too many failed sign-ins for this account from this address, or from this address; retry in {retry} s"
            ),
            retry,
        ));
    }
    let delay = slow_down(state.login_throttle.recent(&account, now));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let store = state.store.clone();
    let (e, password) = (email.clone(), body.password);
    let user = password_work(move || -> Result<Option<User>, crate::store::StoreError> {
        let user = store.find_user_by_email(&e)?;
        let ok = match &user {
            Some(u) => u.password.verify(&password),
            None => {
                // The same work for an unknown email, so timing tells nothing.
                if let Some(dummy) = DUMMY_HASH.as_ref() {
                    let _ = dummy.verify(&password);
                }
                false
            }
        };
        Ok(user.filter(|_| ok))
    })
    .await?;
    let Some(user) = user else {
        state.login_throttle.fail(&keys, now);
        return Err(ApiError::new(
            Code::InvalidCredentials,
            "the email or the password is wrong",
        ));
    };
    state.login_throttle.clear(&keys[0].0);
    // Said only to whoever knows the password: to a guesser a disabled account answers
    // like any wrong password.
    if user.is_disabled() {
        return Err(ApiError::new(
            Code::AccountDisabled,
            "this account is disabled; ask an owner of your tenant or the operator to enable it",
        ));
    }
    sign_in(&state, &req, &source, &user).await
}

/// How long an attempt on an account waits after `failures` recent failed sign-ins on it
/// from all addresses together: nothing up to the per-address limit, then half a second
/// more for each failure, at most five seconds. A guesser spread over many addresses is
/// slowed; the owner, from an address of their own, still gets in.
fn slow_down(failures: usize) -> Duration {
    let over = failures.saturating_sub(MAX_FAILURES_PER_EMAIL - 1) as u64;
    Duration::from_millis((over * 500).min(5_000))
}

/// Starts a session for `user`: the cookie, the CSRF token, and the audit entry.
pub async fn sign_in(
    state: &AppState,
    req: &HttpRequest,
    source: &Source,
    user: &User,
) -> Result<HttpResponse, ApiError> {
    let (cookie, csrf) = start_session(state, req, source, user, None).await?;
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({"user": user_json(user), "csrf_token": csrf})))
}

/// Starts a session for `user` and records the sign-in (`via` names how they signed in
/// when it was not with a password): the cookie to set, and the session's CSRF token.
/// The one place sessions begin — a password, the first-run setup, an invitation or the
/// identity provider.
pub async fn start_session(
    state: &AppState,
    req: &HttpRequest,
    source: &Source,
    user: &User,
    via: Option<&str>,
) -> Result<(Cookie<'static>, String), ApiError> {
    let mut raw_token = [0u8; 32];
    rand::fill(&mut raw_token);
    let token = hex::encode(raw_token);
    let created = Timestamp::now();
    let session = NewSession {
        id: SessionId::generate(),
        user_id: user.id.clone(),
        token_hash: sha256_hex(&token),
        created_at: created,
        expires_at: created.plus_millis(SESSION_HOURS * 3_600_000),
    };
    state
        .with_store(move |store| store.create_session(&session))
        .await?;
    let mut entry = on_own_account(user, source, AuditAction::UserSignIn);
    if let Some(via) = via {
        entry = entry.after(json!({ "via": via }));
    }
    record(state, entry).await;
    let secure = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(COOKIE, token.clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(actix_web::cookie::time::Duration::hours(SESSION_HOURS))
        .finish();
    Ok((cookie, csrf_token(&token)))
}

/// Whether `token` is a live session (for the address limiter, which exempts only those).
pub async fn is_signed_in(state: &AppState, token: &str) -> bool {
    let hash = sha256_hex(token);
    state
        .with_store(move |store| store.find_session(&hash, Timestamp::now()))
        .await
        .is_ok_and(|s| s.is_some())
}

/// The signed-in user of a request, with the session's token.
pub async fn current(state: &AppState, req: &HttpRequest) -> Result<(User, String), ApiError> {
    let token = req
        .cookie(COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("sign in first (POST /api/auth/login)"))?;
    let hash = sha256_hex(&token);
    let user = state
        .with_store(move |store| {
            let session = store.find_session(&hash, Timestamp::now())?;
            session.map(|s| store.get_user(&s.user_id)).transpose()
        })
        .await?
        .ok_or_else(|| unauthorized("the session has expired or was signed out; sign in again"))?;
    Ok((user, token))
}

/// For state-changing `/api` calls: the `x-csrf-token` header must match the session.
pub fn require_csrf(req: &HttpRequest, token: &str) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !given.is_empty() && given == csrf_token(token) {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::CsrfTokenMissing,
            "this change needs the x-csrf-token header given at sign-in (GET /api/auth/me)",
        ))
    }
}

#[get("/api/auth/me")]
pub async fn me((state, req): Console) -> Result<HttpResponse, ApiError> {
    let (user, token) = current(&state, &req).await?;
    let tenant = match user.tenant_id.clone() {
        Some(t) => {
            let tenant = state.with_store(move |store| store.get_tenant(&t)).await?;
            json!({"id": tenant.id, "name": tenant.name})
        }
        None => serde_json::Value::Null,
    };
    Ok(HttpResponse::Ok().json(
        json!({"user": user_json(&user), "csrf_token": csrf_token(&token), "tenant": tenant}),
    ))
}

#[post("/api/auth/logout")]
pub async fn logout((state, req, source): ConsoleChange) -> Result<HttpResponse, ApiError> {
    let (user, token) = current(&state, &req).await?;
    require_csrf(&req, &token)?;
    let hash = sha256_hex(&token);
    state
        .with_store(move |store| store.delete_session(&hash))
        .await?;
    record(
        &state,
        on_own_account(&user, &source, AuditAction::UserSignOut),
    )
    .await;
    let mut gone = Cookie::build(COOKIE, "").path("/").http_only(true).finish();
    gone.make_removal();
    Ok(HttpResponse::Ok()
        .cookie(gone)
        .json(json!({"signed_out": true})))
}
