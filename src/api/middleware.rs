//! Cross-cutting HTTP layers: request ids and access logs, request metrics, and the
//! per-address rate limit on unauthenticated endpoints.
//!
//! These run on every request, so they take no locks but a short map lookup and do no I/O.

use super::error::ApiError;
use crate::api::state::AppState;
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
///
/// The buckets live in two generations: new addresses go into the current one, and when it
/// holds [`MAX_TRACKED_ADDRESSES`] it becomes the previous one and the one before is
/// dropped. An address found only in the previous generation moves forward. So each
/// request costs O(1) however many addresses an attacker brings, memory stays below twice
/// the limit, and an address is forgotten (its bucket back to full) only after a whole
/// generation of other addresses went by without it.
pub struct AddressRateLimiter {
    per_minute: u32,
    buckets: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<IpAddr, (f64, Instant)>,
    previous: HashMap<IpAddr, (f64, Instant)>,
}

const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl AddressRateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(Generations::default()),
        }
    }

    /// How many addresses are remembered.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .map_or(0, |g| g.current.len() + g.previous.len())
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
        let known = match buckets.previous.remove(&addr) {
            Some(bucket) => bucket,
            None => buckets
                .current
                .get(&addr)
                .copied()
                .unwrap_or((capacity, now)),
        };
        if !buckets.current.contains_key(&addr) && buckets.current.len() >= MAX_TRACKED_ADDRESSES {
            buckets.previous = std::mem::take(&mut buckets.current);
        }
        let (tokens, at) = buckets.current.entry(addr).or_insert(known);
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

/// The client's address: the TCP peer, or behind a reverse proxy listed in
/// `trusted_proxies` the address it forwarded (see `domain::trusted_proxies`).
pub fn client_ip(req: &actix_web::HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
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

/// The answer to an address over its budget of unauthenticated requests.
pub fn address_limited(ip: IpAddr, per_minute: u32, retry: u64) -> ApiError {
    ApiError::too_many_requests(
        format!(
            "too many requests from {ip}: the limit is {per_minute} per minute; retry in {retry} s"
        ),
        retry,
    )
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
    fn many_addresses_cost_a_bounded_memory_and_no_scan() {
        let l = AddressRateLimiter::new(1);
        let t0 = Instant::now();
        // Every address drains its bucket, so none could be forgotten as refilled.
        for i in 0..(5 * MAX_TRACKED_ADDRESSES as u32 / 2) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check(addr, t0).is_ok());
        }
        assert!(
            l.tracked() <= 2 * MAX_TRACKED_ADDRESSES,
            "{} addresses remembered",
            l.tracked()
        );
        // A recent address is still held to its budget.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + 5 * MAX_TRACKED_ADDRESSES as u32 / 2 - 1,
        ));
        assert!(l.check(last, t0).is_err());
    }

    #[test]
    fn a_zero_limit_means_off() {
        let l = AddressRateLimiter::new(0);
        for _ in 0..1000 {
            assert!(l.check("10.0.0.1".parse().unwrap(), Instant::now()).is_ok());
        }
    }
}
