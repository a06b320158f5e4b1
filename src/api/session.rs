//! People signing in to the console: `POST /api/auth/login`, `POST /api/auth/logout`,
//! `GET /api/auth/me`. A session is a random 256-bit token in an HttpOnly, SameSite=Strict
//! cookie (`Secure` when the request came over TLS); the store keeps only its SHA-256.
//! Every state-changing `/api` call also needs the `x-csrf-token` header, derived from the
//! session token (`csrf_token`, given at sign-in and by `/api/auth/me`). Failed sign-ins
//! are throttled per email and per address. Sign-in and sign-out are audited.

use super::audit::{Source, record};
use super::error::{ApiError, ErrorKind, optional_json};
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::user::{Email, NewSession, PasswordHash, User};
use crate::domain::{SessionId, Timestamp};
use crate::startup::AppState;
use crate::store::run_blocking;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "agv_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const SESSION_HOURS: i64 = 12;
/// Failed sign-ins allowed per email, and per address, within the window.
const MAX_FAILURES_PER_EMAIL: usize = 5;
const MAX_FAILURES_PER_ADDRESS: usize = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Recent failed sign-ins, by email and by address.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginThrottle {
    /// `Err(seconds)` while `keys` have too many recent failures.
    fn check(&self, keys: &[(String, usize)], now: Instant) -> Result<(), u64> {
        let Ok(mut map) = self.failures.lock() else {
            return Ok(());
        };
        for (key, max) in keys {
            if let Some(times) = map.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < FAILURE_WINDOW);
                if times.len() >= *max
                    && let Some(oldest) = times.first()
                {
                    let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(*oldest));
                    return Err(wait.as_secs().max(1));
                }
            }
        }
        Ok(())
    }

    fn fail(&self, keys: &[(String, usize)], now: Instant) {
        if let Ok(mut map) = self.failures.lock() {
            if map.len() > 100_000 {
                map.retain(|_, v| {
                    v.last()
                        .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
                });
            }
            for (key, _) in keys {
                map.entry(key.clone()).or_default().push(now);
            }
        }
    }

    fn clear(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
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

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, "not_signed_in", message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

#[post("/api/auth/login")]
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    source: Source,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = optional_json::<LoginBody>(&raw)?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_json",
            "send {\"email\": \"…\", \"password\": \"…\"}",
        )
    })?;
    let email =
        Email::parse(&body.email).map_err(|e| ApiError::bad_request("invalid_email", e.0))?;
    if body.password.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_password",
            "the password is empty",
        ));
    }
    let now = Instant::now();
    let keys = vec![
        (format!("email:{}", email.as_str()), MAX_FAILURES_PER_EMAIL),
        (
            format!("addr:{}", source.0.clone().unwrap_or_default()),
            MAX_FAILURES_PER_ADDRESS,
        ),
    ];
    if let Err(retry) = state.login_throttle.check(&keys, now) {
        return Err(ApiError::too_many_requests(
            format!("too many failed sign-ins for this account or address; retry in {retry} s"),
            retry,
        ));
    }
    let store = state.store.clone();
    let (e, password) = (email.clone(), body.password);
    let user = run_blocking(move || -> Result<Option<User>, crate::store::StoreError> {
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
            ErrorKind::Unauthorized,
            "invalid_credentials",
            "the email or the password is wrong",
        ));
    };
    state.login_throttle.clear(&keys[0].0);
    sign_in(&state, &req, &source, &user).await
}

/// Starts a session for `user`: the cookie, the CSRF token, and the audit entry.
pub async fn sign_in(
    state: &AppState,
    req: &HttpRequest,
    source: &Source,
    user: &User,
) -> Result<HttpResponse, ApiError> {
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
    let store = state.store.clone();
    run_blocking(move || store.create_session(&session)).await?;
    record(
        state,
        NewAuditEntry::new(
            user.tenant_id.clone(),
            Actor::User(user.id.clone()),
            AuditAction::UserSignIn,
            user.id.as_str(),
        )
        .source(source.0.clone()),
    )
    .await;
    let secure = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(COOKIE, token.clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(actix_web::cookie::time::Duration::hours(SESSION_HOURS))
        .finish();
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({"user": user_json(user), "csrf_token": csrf_token(&token)})))
}

/// The signed-in user of a request, with the session's token.
pub async fn current(state: &AppState, req: &HttpRequest) -> Result<(User, String), ApiError> {
    let token = req
        .cookie(COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("sign in first (POST /api/auth/login)"))?;
    let store = state.store.clone();
    let hash = sha256_hex(&token);
    let user = run_blocking(move || -> Result<Option<User>, crate::store::StoreError> {
        match store.find_session(&hash, Timestamp::now())? {
            Some(s) => Ok(Some(store.get_user(&s.user_id)?)),
            None => Ok(None),
        }
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
        Err(ApiError::forbidden(
            "csrf_token_missing",
            "this change needs the x-csrf-token header given at sign-in (GET /api/auth/me)",
        ))
    }
}

#[get("/api/auth/me")]
pub async fn me(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (user, token) = current(&state, &req).await?;
    let tenant = match user.tenant_id.clone() {
        Some(t) => {
            let store = state.store.clone();
            let tenant = run_blocking(move || store.get_tenant(&t)).await?;
            json!({"id": tenant.id, "name": tenant.name})
        }
        None => serde_json::Value::Null,
    };
    Ok(HttpResponse::Ok().json(
        json!({"user": user_json(&user), "csrf_token": csrf_token(&token), "tenant": tenant}),
    ))
}

#[post("/api/auth/logout")]
pub async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    source: Source,
) -> Result<HttpResponse, ApiError> {
    let (user, token) = current(&state, &req).await?;
    require_csrf(&req, &token)?;
    let store = state.store.clone();
    let hash = sha256_hex(&token);
    run_blocking(move || store.delete_session(&hash)).await?;
    record(
        &state,
        NewAuditEntry::new(
            user.tenant_id.clone(),
            Actor::User(user.id.clone()),
            AuditAction::UserSignOut,
            user.id.as_str(),
        )
        .source(source.0.clone()),
    )
    .await;
    let mut gone = Cookie::build(COOKIE, "").path("/").http_only(true).finish();
    gone.make_removal();
    Ok(HttpResponse::Ok()
        .cookie(gone)
        .json(json!({"signed_out": true})))
}
