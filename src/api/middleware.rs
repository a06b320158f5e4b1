//! Cross-cutting HTTP layers: request ids and access logs, request metrics, and the
//! per-address rate limit on unauthenticated endpoints.
//!
//! These run on every request, so they take no locks but a short map lookup and do no I/O.

use super::audit::client_ip;
use super::error::ApiError;
pub use super::limits::AddressRateLimiter;
use crate::api::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use std::net::IpAddr;
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, available to handlers as request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a caller's `x-request-id` if it is short and printable, else makes one.
fn request_id_for(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Request id, tracing span, access log and request metrics.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = request_id_for(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let span =
        tracing::info_span!("request", request_id = %id, method = %method, path = %req.path());
    let mut res = next.call(req).instrument(span.clone()).await?;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    metrics::counter!("agv_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("agv_http_request_duration_seconds", "route" => route.clone(), "method" => method).record(elapsed.as_secs_f64());
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if quiet_probe(&route, status) {
            tracing::debug!(status, route = %route, latency_ms, "request");
        } else {
            tracing::info!(status, route = %route, latency_ms, "request");
        }
    });
    Ok(res)
}

/// A successful health or readiness probe. Container runtimes, orchestrators and load
/// balancers poll these every few seconds, so they are logged at DEBUG: at INFO they would
/// bury the requests that matter. A failing probe is still logged at INFO.
fn quiet_probe(route: &str, status: u16) -> bool {
    matches!(route, "/health" | "/ready") && (200..300).contains(&status)
}

/// Whether a request counts against the per-address limit.
enum Budget {
    /// `/v1` (authenticated by key: a failed key draws on the budget where it fails, in
    /// `auth::authenticate`) and the console's own files (served from memory).
    Exempt,
    /// Unauthenticated: health, readiness, metrics, the public certificate check, and
    /// console API calls without a session cookie.
    Charged,
    /// A console API call with a session cookie: exempt only when the session is valid
    /// (sign-in and set-up have their own throttles; a made-up cookie earns nothing).
    UnlessSignedIn(String),
}

fn budget(req: &ServiceRequest) -> Budget {
    let path = req.path();
    if path.starts_with("/v1/") {
        return if path.starts_with("/v1/certificates/") && path.ends_with("/verify") {
            Budget::Charged
        } else {
            Budget::Exempt
        };
    }
    if path.starts_with("/api/") {
        return match req.cookie(crate::api::session::COOKIE) {
            Some(c) if !c.value().is_empty() => Budget::UnlessSignedIn(c.value().to_owned()),
            _ => Budget::Charged,
        };
    }
    if matches!(path, "/health" | "/ready" | "/metrics" | "/v1") {
        Budget::Charged
    } else {
        Budget::Exempt
    }
}

/// Applies the per-address limit to unauthenticated requests (see [`Budget`]).
pub async fn limit_unauthenticated(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>().cloned()
        && state.settings.unauth_rate_limit_per_minute > 0
    {
        let charged = match budget(&req) {
            Budget::Exempt => false,
            Budget::Charged => true,
            Budget::UnlessSignedIn(token) => {
                !crate::api::session::is_signed_in(&state, &token).await
            }
        };
        if charged
            && let Some(client) = client_ip(req.request())
            && let Err(retry) = state.unauth_limiter.check(client, Instant::now())
        {
            let res = address_limited(client, state.settings.unauth_rate_limit_per_minute, retry)
                .error_response();
            return Ok(req.into_response(res));
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// The answer to an address over its budget of unauthenticated requests.
pub fn address_limited(ip: IpAddr, per_minute: u32, retry: u64) -> ApiError {
    ApiError::too_many_requests(
        format!(
            "too many requests from {ip}: the limit is {per_minute} per minute; retry in {retry} s"
        ),
        retry,
    )
}
