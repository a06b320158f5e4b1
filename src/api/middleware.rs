//! Cross-cutting HTTP layers: request ids and access logs, request metrics, and the
//! per-address rate limit on unauthenticated endpoints.
//!
//! These run on every request, so they take no locks but a short map lookup and do no I/O.

use super::error::ApiError;
use crate::startup::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
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

/// A token bucket per client address.
pub struct AddressRateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl AddressRateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` if `addr` may make a request now, else `Err(seconds until it may)`.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            // Forget addresses whose bucket has refilled; they lose nothing by it.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < capacity
            });
        }
        let (tokens, at) = buckets.entry(addr).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil() as u64)
        }
    }
}

/// Whether a request counts against the per-address limit: not `/v1` (authenticated by
/// key), not the console's own files (served from memory), and not a console API call that
/// carries a session cookie (authenticated; sign-in has its own throttle).
fn limited(req: &ServiceRequest) -> bool {
    let path = req.path();
    if path.starts_with("/v1/") {
        return false;
    }
    if path.starts_with("/api/") {
        return req.cookie(crate::api::session::COOKIE).is_none();
    }
    matches!(path, "/health" | "/ready" | "/metrics" | "/v1")
}

/// Applies the per-address limit to unauthenticated requests (see [`limited`]).
pub async fn limit_unauthenticated(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, Error> {
    if limited(&req)
        && let (Some(state), Some(peer)) = (req.app_data::<web::Data<AppState>>(), req.peer_addr())
        && let Err(retry) = state.unauth_limiter.check(peer.ip(), Instant::now())
    {
        let err = ApiError::too_many_requests(
            format!(
                "too many requests from {}: the limit is {} per minute; retry in {retry} s",
                peer.ip(),
                state.settings.unauth_rate_limit_per_minute
            ),
            retry,
        );
        let res = err.error_response();
        return Ok(req.into_response(res));
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_limiter_allows_the_budget_then_refuses_then_refills() {
        let l = AddressRateLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(a, t0).is_ok());
        }
        let retry = l.check(a, t0).unwrap_err();
        assert!((1..=20).contains(&retry), "{retry}");
        assert!(
            l.check(b, t0).is_ok(),
            "other addresses have their own budget"
        );
        assert!(
            l.check(a, t0 + Duration::from_secs(20)).is_ok(),
            "one token refills in 20 s at 3/min"
        );
    }

    #[test]
    fn a_zero_limit_means_off() {
        let l = AddressRateLimiter::new(0);
        for _ in 0..1000 {
            assert!(l.check("10.0.0.1".parse().unwrap(), Instant::now()).is_ok());
        }
    }
}
