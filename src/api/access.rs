//! Who a console request acts as, and on which tenant: the signed-in person (with the
//! CSRF check on every change), their role's limits, the tenant an operator names, and
//! the rewrite that lets every shared `/v1` endpoint answer under `/api` too.

use super::error::ApiError;
use super::session::{current, require_csrf};
use crate::api::state::AppState;
use crate::domain::TenantId;
use crate::domain::user::{Role, User};
use crate::error::Code;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, Uri};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest};

/// Marks a request that came in under `/api` and was rewritten to its `/v1` twin.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleRequest;

pub const TENANT_HEADER: &str = "x-agv-tenant";

/// The `/v1` paths a signed-in person may reach under `/api` (the proxy endpoints are not
/// among them: those are for API keys).
const SHARED_PREFIXES: &[&str] = &[
    "status",
    "killswitch/",
    "policies/",
    "policies",
    "upstream",
    "calls",
    "incidents",
    "alerts/",
    "audit",
    "replay/",
    "replays/",
    "certificates",
    "tasks",
];

fn shared(rest: &str) -> bool {
    SHARED_PREFIXES.iter().any(|p| {
        rest.strip_prefix(p)
            .is_some_and(|after| p.ends_with('/') || after.is_empty() || after.starts_with('/'))
    })
}

/// Rewrites `/api/X` to `/v1/X` for the shared endpoints, before routing.
pub async fn route_console(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if let Some(rest) = req.path().strip_prefix("/api/")
        && shared(rest)
    {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("/v1/{rest}?{q}"),
            None => format!("/v1/{rest}"),
        };
        if let Ok(uri) = path_and_query.parse::<Uri>() {
            req.head_mut().uri = uri.clone();
            req.match_info_mut().get_mut().update(&uri);
            req.extensions_mut().insert(ConsoleRequest);
        }
    }
    next.call(req).await
}

pub fn safe(req: &HttpRequest) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The signed-in person of a console request. A state-changing request must carry the
/// CSRF header.
pub async fn person(state: &AppState, req: &HttpRequest) -> Result<User, ApiError> {
    let (user, token) = current(state, req).await?;
    if !safe(req) {
        require_csrf(req, &token)?;
    }
    Ok(user)
}

pub fn role_not_allowed(what: &str) -> ApiError {
    ApiError::new(Code::RoleNotAllowed, format!("your role may not {what}"))
}

/// The tenant a person acts on: their own, or for the operator the one named by the
/// `x-agv-tenant` header (or `named`, from a query). An unknown tenant is 404.
pub async fn tenant_for(
    state: &AppState,
    req: &HttpRequest,
    user: &User,
    named: Option<&str>,
) -> Result<TenantId, ApiError> {
    if user.role != Role::Operator {
        return user
            .tenant_id
            .clone()
            .ok_or_else(|| ApiError::new(Code::NoTenant, "this account belongs to no tenant"));
    }
    let raw = req
        .headers()
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(named)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                Code::TenantRequired,
                "an operator names the tenant to act on with the x-agv-tenant header",
            )
        })?;
    let id = TenantId::parse(raw).map_err(|_| ApiError::not_found(format!("no tenant {raw}")))?;
    state
        .with_tenant(&id, move |store, t| store.get_tenant(t))
        .await
        .map_err(super::error::missing("tenant", raw))?;
    Ok(id)
}

/// The signed-in person and the tenant they act on. A viewer may only read.
pub async fn acting(state: &AppState, req: &HttpRequest) -> Result<(User, TenantId), ApiError> {
    let user = person(state, req).await?;
    if !safe(req) && user.role == Role::Viewer {
        return Err(role_not_allowed("change anything (viewers only read)"));
    }
    let tenant = tenant_for(state, req, &user, None).await?;
    Ok((user, tenant))
}

/// The operator only.
pub async fn operator(state: &AppState, req: &HttpRequest) -> Result<User, ApiError> {
    let user = person(state, req).await?;
    if user.role != Role::Operator {
        return Err(role_not_allowed("use the operator console"));
    }
    Ok(user)
}

/// Maps a form field's parse error to a 400 that names the field.
pub fn field(code: Code, field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message).param(field)
}

#[cfg(test)]
mod tests {
    use super::shared;

    #[test]
    fn only_the_listed_v1_endpoints_are_shared_with_the_console() {
        for yes in [
            "status",
            "incidents",
            "incidents/inc_1/timeline",
            "calls",
            "calls/call_1",
            "killswitch/tenant",
            "policies/active",
            "policies",
            "alerts/routes",
            "audit",
            "replay/call_1",
            "certificates/public-key",
            "tasks/tsk_1/download",
            "upstream",
        ] {
            assert!(shared(yes), "{yes}");
        }
        for no in [
            "chat/completions",
            "embeddings",
            "models",
            "auth/login",
            "overview",
            "keys",
            "statusx",
            "callsign",
            "operator/health",
            "",
        ] {
            assert!(!shared(no), "{no}");
        }
    }
}
