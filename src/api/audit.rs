//! Recording what people and keys change: the client's address as the audit log sees it
//! ([`Source`]) and appending an entry ([`record`]). Reading the log is `api::audit_log`.

use super::error::ApiError;
use crate::api::state::AppState;
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::user::User;
use crate::domain::{TenantId, UserId};
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use std::future::{Ready, ready};

/// What a console handler takes first: the state, and the request whose signed-in person
/// it checks.
pub type Console = (web::Data<AppState>, HttpRequest);

/// What a console handler of a change takes first: [`Console`] and where the request came
/// from, for the audit log.
pub type ConsoleChange = (web::Data<AppState>, HttpRequest, Source);

/// The client's address as the audit log and the sign-in throttle see it: the TCP peer, or
/// behind a reverse proxy listed in `trusted_proxies` the address that proxy forwarded
/// (`X-Forwarded-For` from anyone else is ignored: anyone can send one).
#[derive(Debug, Clone)]
pub struct Source(pub Option<String>);

impl FromRequest for Source {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(Source(client_ip(req).map(|ip| ip.to_string()))))
    }
}

/// The client's address: the TCP peer, or behind a reverse proxy listed in
/// `trusted_proxies` the address it forwarded (see `domain::trusted_proxies`).
pub fn client_ip(req: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    let Some(state) = req.app_data::<actix_web::web::Data<AppState>>() else {
        return Some(peer);
    };
    let trusted = &state.settings.trusted_proxies;
    if trusted.is_empty() {
        return Some(peer);
    }
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(trusted.client(peer, &forwarded))
}

/// An entry for an action of a signed-in person on `tenant` (`None`: on the instance).
pub fn by_person(
    tenant: Option<TenantId>,
    person: &UserId,
    source: &Source,
    action: AuditAction,
    target: impl Into<String>,
) -> NewAuditEntry {
    NewAuditEntry::new(tenant, Actor::User(person.clone()), action, target).source(source.0.clone())
}

/// An entry for what a signed-in person did to their own account (signing in or out, a
/// new password): on their tenant, with them as both actor and target.
pub fn on_own_account(user: &User, source: &Source, action: AuditAction) -> NewAuditEntry {
    by_person(
        user.tenant_id.clone(),
        &user.id,
        source,
        action,
        user.id.as_str(),
    )
}

/// Appends an entry on the blocking pool. A failure is logged (see
/// `evidence::audit::record`) and does not fail the request: the change was made.
pub async fn record(state: &AppState, entry: NewAuditEntry) {
    state
        .with_store(move |store| {
            crate::evidence::audit::record(store.as_ref(), &entry);
        })
        .await;
}
