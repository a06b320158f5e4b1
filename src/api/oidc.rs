//! Sign-in with the company's identity provider over OpenID Connect, next to passwords:
//! `GET /api/auth/methods` (what the sign-in page offers), `GET /api/auth/oidc/start`
//! (a redirect to the provider) and `GET /api/auth/oidc/callback` (back from it).
//!
//! The flow and its checks are `ops::oidc`'s; the session is started by
//! `session::start_session`, as for a password. These handlers answer browsers that are
//! navigating, so every outcome is a redirect: into the console when signed in, else to
//! the sign-in page with the reason (`/#/login?sso_error=…`) — never an error page. The
//! sign-in's `state` rides in a SameSite=Lax cookie (the callback is a navigation from the
//! provider's site, which a Strict cookie would not come back with), scoped to these paths.

use super::audit::{Console, ConsoleChange, Source};
use super::session::start_session;
use crate::api::state::AppState;
use crate::config::Oidc;
use crate::ops::oidc::SsoError;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{CACHE_CONTROL, LOCATION};
use actix_web::{HttpRequest, HttpResponse, get, web};
use serde_json::json;
use std::collections::HashMap;

/// The cookie holding the `state` of the sign-in this browser started.
pub const STATE_COOKIE: &str = "agv_oidc";
const COOKIE_PATH: &str = "/api/auth/oidc";
/// Where the browser goes once signed in: the sign-in page picks up the new session.
pub const SIGNED_IN: &str = "/#/login?sso=done";
const START: &str = "/api/auth/oidc/start";
const CALLBACK: &str = "/api/auth/oidc/callback";
const NOT_SET_UP: &str = "single sign-on is not set up on this server: sign in with your email and password, or ask the operator to set oidc_issuer and oidc_client_id";

/// What the sign-in page offers: passwords always, and the identity provider when set up.
#[get("/api/auth/methods")]
pub async fn methods(state: web::Data<AppState>) -> HttpResponse {
    let sso = state.settings.oidc.as_ref().map(|o| {
        json!({
            "name": o.provider_name,
            "label": format!("Sign in with {}", o.provider_name),
            "start": START,
        })
    });
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({"password": true, "sso": sso}))
}

/// Sends the browser to the identity provider.
#[get("/api/auth/oidc/start")]
pub async fn start((state, req): Console) -> HttpResponse {
    let Some(cfg) = state.settings.oidc.as_ref() else {
        return back_to_sign_in(NOT_SET_UP);
    };
    let redirect_uri = cfg.redirect_url.clone().unwrap_or_else(|| {
        let info = req.connection_info();
        format!("{}://{}{CALLBACK}", info.scheme(), info.host())
    });
    match state.sso.start(cfg, redirect_uri).await {
        Ok((url, sign_in_state)) => HttpResponse::Found()
            .insert_header((LOCATION, url))
            .insert_header((CACHE_CONTROL, "no-store"))
            .cookie(state_cookie(&req, sign_in_state))
            .finish(),
        Err(e) => {
            log(&e);
            back_to_sign_in(&e.to_string())
        }
    }
}

/// Back from the identity provider: checks the answer, signs the person in (making their
/// account at the first sign-in) and sends the browser into the console.
#[get("/api/auth/oidc/callback")]
pub async fn callback((state, req, source): ConsoleChange) -> HttpResponse {
    let query: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let mut res = match complete(&state, &req, &source, &query).await {
        Ok(res) => res,
        Err(message) => back_to_sign_in(&message),
    };
    // The sign-in is over, either way.
    let mut gone = Cookie::build(STATE_COOKIE, "").path(COOKIE_PATH).finish();
    gone.make_removal();
    let _ = res.add_cookie(&gone);
    res
}

async fn complete(
    state: &AppState,
    req: &HttpRequest,
    source: &Source,
    query: &HashMap<String, String>,
) -> Result<HttpResponse, String> {
    let Some(cfg) = state.settings.oidc.as_ref() else {
        return Err(NOT_SET_UP.to_owned());
    };
    if let Some(error) = query.get("error") {
        let detail = query
            .get("error_description")
            .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        return Err(match error.as_str() {
            "access_denied" => {
                format!("the sign-in was cancelled or refused at the identity provider{detail}")
            }
            other => format!(
                "the identity provider did not sign you in: {}{detail}",
                other.chars().take(100).collect::<String>()
            ),
        });
    }
    let (Some(sign_in_state), Some(code)) = (query.get("state"), query.get("code")) else {
        return Err(
            "the identity provider's answer lacks its state or code; start the sign-in again from the sign-in page"
                .to_owned(),
        );
    };
    let cookie = req.cookie(STATE_COOKIE).map(|c| c.value().to_owned());
    let who = state
        .sso
        .finish(
            cfg,
            sign_in_state,
            cookie.as_deref(),
            code,
            query.get("iss").map(String::as_str),
        )
        .await
        .map_err(|e| failure(&e))?;
    let user = person(state, cfg, who, source)
        .await
        .map_err(|e| failure(&e))?;
    let (session, _csrf) = start_session(state, req, source, &user, Some("oidc"))
        .await
        .map_err(|e| format!("the sign-in could not be completed: {}", e.message))?;
    Ok(HttpResponse::Found()
        .insert_header((LOCATION, SIGNED_IN))
        .insert_header((CACHE_CONTROL, "no-store"))
        .cookie(session)
        .finish())
}

async fn person(
    state: &AppState,
    cfg: &Oidc,
    who: crate::ops::oidc::Identity,
    source: &Source,
) -> Result<crate::domain::user::User, SsoError> {
    let (cfg, addr) = (cfg.clone(), source.0.clone());
    state
        .with_store(move |store| crate::ops::oidc::person(store.as_ref(), &cfg, &who, addr))
        .await
}

fn failure(e: &SsoError) -> String {
    log(e);
    e.to_string()
}

fn log(e: &SsoError) {
    match e {
        SsoError::Provider(_) | SsoError::Store(_) => {
            tracing::warn!(error = %e, "single sign-on failed");
        }
        SsoError::Refused(_) | SsoError::Flow(_) => {
            tracing::info!(reason = %e, "single sign-on refused");
        }
    }
}

/// The sign-in page, showing why the sign-in with the identity provider did not work.
fn back_to_sign_in(message: &str) -> HttpResponse {
    let shown: String = message.chars().take(500).collect();
    let encoded: String = url::form_urlencoded::byte_serialize(shown.as_bytes()).collect();
    HttpResponse::Found()
        .insert_header((LOCATION, format!("/#/login?sso_error={encoded}")))
        .insert_header((CACHE_CONTROL, "no-store"))
        .finish()
}

fn state_cookie(req: &HttpRequest, value: String) -> Cookie<'static> {
    Cookie::build(STATE_COOKIE, value)
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(req.connection_info().scheme() == "https")
        .max_age(actix_web::cookie::time::Duration::seconds(
            crate::ops::oidc::PENDING_TTL.as_secs() as i64,
        ))
        .finish()
}
