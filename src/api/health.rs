//! `/health` (the process answers), `/ready` (store and queue usable, see [`Readiness`])
//! and `/metrics`.

use crate::api::state::AppState;
use crate::error::Code;
use crate::store::run_blocking;
use actix_web::{HttpResponse, get, web};
use serde_json::json;

#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// What `/ready` checks, each failure with why: the store answers (`database`), the call
/// recorder's latest commit held (`recorder`: a failed commit is reported for up to 30 s
/// unless one succeeds sooner), and the job queue accepts work (`queue`). The operator's
/// health banner reads the same.
pub struct Readiness {
    pub database: Result<(), String>,
    pub recorder: Option<String>,
    pub queue: Result<(), String>,
}

impl Readiness {
    pub async fn check(state: &AppState) -> Self {
        let database = state
            .with_store(move |store| store.ping())
            .await
            .map_err(|e| e.to_string());
        // A store that answers a query may still be unable to write (a full disk): the
        // call recorder's latest commit tells.
        let recorder = state.proxy.recorder.recent_failure().map(|e| e.to_string());
        // After a storage failure this is also what reopens the queue's database once the
        // disk has room again (at most every second), so a polling load balancer sees it
        // recover.
        let queue = state.queue.clone();
        let queue = run_blocking(move || queue.check_capacity())
            .await
            .map_err(|e| e.to_string());
        Self {
            database,
            recorder,
            queue,
        }
    }

    /// Why the store is not usable: it does not answer, or the latest commit failed.
    pub fn store_error(&self) -> Option<String> {
        match (&self.database, &self.recorder) {
            (Err(e), _) => Some(e.clone()),
            (Ok(()), Some(e)) => Some(format!(
                "the latest call records could not be committed: {e}"
            )),
            (Ok(()), None) => None,
        }
    }
}

/// 200 when the store answers, the latest call records were committed and the job queue
/// accepts work (see [`Readiness`]); else 503 naming what failed.
#[get("/ready")]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let backend = state.store.backend().as_str();
    let checked = Readiness::check(&state).await;
    let store_check = match checked.store_error() {
        None => json!({"ok": true, "backend": backend}),
        Some(e) => json!({"ok": false, "backend": backend, "error": e}),
    };
    let queue_check = match &checked.queue {
        Ok(()) => {
            // Read after the check: a reopen recounts the jobs.
            let stats = state.queue.stats();
            json!({"ok": true, "pending": stats.pending, "dead": stats.dead})
        }
        Err(e) => json!({"ok": false, "error": e}),
    };
    let ok = store_check["ok"] == true && queue_check["ok"] == true;
    let body = json!({"status": if ok { "ready" } else { "unavailable" }, "checks": {"store": store_check, "queue": queue_check}});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Who may read `/metrics`, which names every tenant, its models and its spend: with a
/// `metrics_token` set, whoever sends it as a bearer token; without one, only a client on
/// this machine (the TCP peer is a loopback address, whatever a header claims).
fn may_read_metrics(
    token: Option<&str>,
    peer: Option<std::net::IpAddr>,
    authorization: Option<&str>,
) -> Result<(), crate::api::error::ApiError> {
    use crate::api::error::ApiError;
    match token {
        Some(want) => {
            let given = authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or_default();
            // Digests compared, so the time taken says nothing about the token's bytes.
            let digest = |t: &str| crate::proxy::sha256_hex(t.as_bytes());
            if digest(given) == digest(want) {
                Ok(())
            } else {
                Err(ApiError::new(
                    Code::MetricsTokenRequired,
                    "/metrics needs the metrics token: send it as Authorization: Bearer <metrics_token>",
                ))
            }
        }
        None if peer
            .is_some_and(|ip| crate::domain::trusted_proxies::canonical(ip).is_loopback()) =>
        {
            Ok(())
        }
        None => Err(ApiError::new(
            Code::MetricsLoopbackOnly,
            "/metrics answers only on this machine while no metrics_token is set: set metrics_token (AGV_METRICS_TOKEN) and scrape with it as a bearer token",
        )),
    }
}

/// Prometheus text. Gauges that describe current state are refreshed at scrape time.
#[get("/metrics")]
pub async fn prometheus_metrics(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> HttpResponse {
    use actix_web::ResponseError;
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = may_read_metrics(
        state.settings.metrics_token.as_deref(),
        req.peer_addr().map(|a| a.ip()),
        authorization,
    ) {
        return e.error_response();
    }
    let pool = state.store.pool_stats();
    metrics::gauge!("agv_store_pool_connections").set(f64::from(pool.connections));
    metrics::gauge!("agv_store_pool_idle").set(f64::from(pool.idle));
    metrics::gauge!("agv_store_pool_in_use")
        .set(f64::from(pool.connections.saturating_sub(pool.idle)));
    let q = state.queue.stats();
    metrics::gauge!("agv_queue_depth").set(q.pending as f64);
    metrics::gauge!("agv_queue_running").set(q.running as f64);
    metrics::gauge!("agv_queue_dead_letters").set(q.dead as f64);
    metrics::gauge!("agv_uptime_seconds").set(state.started_at.elapsed().as_secs_f64());
    let body = match &state.prometheus {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics recorder unavailable in this process\n".to_owned(),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_need_the_token_when_one_is_set_and_loopback_otherwise() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let token = Some("0123456789abcdef0123");
        assert!(
            may_read_metrics(token, ip("10.0.0.5"), Some("Bearer 0123456789abcdef0123")).is_ok()
        );
        assert!(
            may_read_metrics(token, ip("127.0.0.1"), None).is_err(),
            "the token counts everywhere"
        );
        assert!(
            may_read_metrics(token, ip("10.0.0.5"), Some("Bearer 0123456789abcdef012")).is_err()
        );
        assert!(may_read_metrics(token, ip("10.0.0.5"), Some("0123456789abcdef0123")).is_err());
        assert!(may_read_metrics(None, ip("127.0.0.1"), None).is_ok());
        assert!(may_read_metrics(None, ip("::1"), None).is_ok());
        assert!(may_read_metrics(None, ip("::ffff:127.0.0.1"), None).is_ok());
        assert!(may_read_metrics(None, ip("10.0.0.5"), None).is_err());
        assert!(may_read_metrics(None, ip("10.0.0.5"), Some("Bearer anything")).is_err());
        assert!(may_read_metrics(None, None, None).is_err());
    }
}
