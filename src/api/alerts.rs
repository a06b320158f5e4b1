//! Alert routes under `/v1/alerts/routes`: list, create, edit, delete, send a test alert. Admin
//! keys only; everything is scoped to the key's tenant (another tenant's route is a 404).
//! A route's URL and signing secret are sealed with the master key before they are
//! stored; the signing secret is shown once, in the answer to the create call.

use super::audit::record;
use super::auth::by_key;
use super::auth::{AdminAction, AdminCall, AdminKey};
use super::error::{ApiError, missing, path_id};
use crate::api::state::AppState;
use crate::domain::alert::{
    self, AlertRoute, DEFAULT_GROUP_WAIT_MS, DEFAULT_REPEAT_INTERVAL_MS, MAX_GROUP_WAIT_MS,
    MAX_REPEAT_INTERVAL_MS, MIN_REPEAT_INTERVAL_MS, Reason, RouteKind,
};
use crate::domain::audit::AuditAction;
use crate::domain::{AlertRouteId, Severity, TenantId, Timestamp};
use crate::error::Code;
use crate::incidents::alerts::{Delivery, check_route_url};
use crate::store::{StoreError, run_blocking};
use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use serde_json::json;

const MAX_NAME: usize = 200;
const MAX_SECRET: usize = 512;
const MAX_ROUTES: usize = 50;

fn no_route(raw: &str) -> ApiError {
    ApiError::not_found(format!("no alert route {raw}"))
}

/// The tenant's route of the id `raw`: 404 when it has none such (or `raw` is no id).
async fn load_route(
    state: &AppState,
    tenant: &TenantId,
    raw: &str,
) -> Result<AlertRoute, ApiError> {
    let id = path_id("alert route", raw, AlertRouteId::parse)?;
    state
        .with_tenant(tenant, move |store, tenant| {
            store.get_alert_route(tenant, &id)
        })
        .await
        .map_err(missing("alert route", raw))
}

#[get("/v1/alerts/routes")]
pub async fn list_routes((state, AdminKey(caller)): AdminCall) -> Result<HttpResponse, ApiError> {
    let routes = state
        .with_store(move |store| store.list_alert_routes(&caller.tenant_id))
        .await?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": routes})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    name: Option<String>,
    kind: String,
    /// Slack and generic webhooks: where to post. PagerDuty: PagerDuty's Events API v2
    /// unless given (e.g. its EU region).
    url: Option<String>,
    /// Generic webhooks: the HMAC secret; omitted, one is generated and returned once.
    secret: Option<String>,
    /// PagerDuty: the integration key of an Events API v2 integration (`secret` is taken
    /// as the same).
    routing_key: Option<String>,
    min_severity: Option<String>,
    group_wait_seconds: Option<f64>,
    repeat_interval_seconds: Option<f64>,
}

/// A route's group wait and repeat interval in milliseconds, from the seconds given; a
/// value not given keeps its `current` one.
fn timings(secs: [Option<f64>; 2], current: [i64; 2]) -> Result<[i64; 2], ApiError> {
    let limits = [
        ("group_wait_seconds", 0, MAX_GROUP_WAIT_MS),
        (
            "repeat_interval_seconds",
            MIN_REPEAT_INTERVAL_MS,
            MAX_REPEAT_INTERVAL_MS,
        ),
    ];
    let mut out = current;
    for ((field, min, max), (secs, out)) in limits.into_iter().zip(secs.into_iter().zip(&mut out)) {
        let Some(s) = secs else { continue };
        let ms = (s * 1000.0).round();
        if !ms.is_finite() || ms < min as f64 || ms > max as f64 {
            return Err(ApiError::new(
                Code::InvalidRoute,
                format!(
                    "{field} must be between {} and {} seconds",
                    min as f64 / 1000.0,
                    max as f64 / 1000.0
                ),
            ));
        }
        *out = ms as i64;
    }
    Ok(out)
}

/// Seals a route's URL or secret with the master key, for the tenant.
fn seal(state: &AppState, tenant: &TenantId, plain: &str) -> Result<String, ApiError> {
    state
        .master_key
        .seal(tenant.as_str(), plain)
        .map_err(ApiError::internal)
}

/// A route's URL, checked against the allowed hosts.
async fn route_url(state: &AppState, raw: &str) -> Result<reqwest::Url, ApiError> {
    check_route_url(raw, &state.settings.alert_webhook_allowed_hosts)
        .await
        .map_err(|e| ApiError::new(Code::InvalidWebhookUrl, e))
}

/// Refuses a `routing_key` on a route that is not PagerDuty.
fn routing_key_fits(kind: RouteKind, given: &Option<String>) -> Result<(), ApiError> {
    if given.is_some() && kind != RouteKind::PagerDuty {
        return Err(ApiError::new(
            Code::InvalidRoute,
            "routing_key is for pagerduty routes only",
        ));
    }
    Ok(())
}

#[post("/v1/alerts/routes")]
pub async fn create_route(
    (state, AdminKey(caller), source): AdminAction,
    body: web::Json<RouteBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let invalid = |m: String| ApiError::new(Code::InvalidRoute, m);
    let kind = RouteKind::parse(&b.kind).map_err(|e| invalid(e.0))?;
    let min_severity =
        Severity::parse(b.min_severity.as_deref().unwrap_or("medium")).map_err(|e| invalid(e.0))?;
    let [group_wait_ms, repeat_interval_ms] = timings(
        [b.group_wait_seconds, b.repeat_interval_seconds],
        [DEFAULT_GROUP_WAIT_MS, DEFAULT_REPEAT_INTERVAL_MS],
    )?;
    let name = checked_name(b.name)?;
    let raw_url = match (kind, b.url) {
        (_, Some(u)) => u,
        (RouteKind::PagerDuty, None) => alert::PAGERDUTY_EVENTS_URL.to_owned(),
        (_, None) => {
            return Err(invalid(
                "url is required for a slack or webhook route".into(),
            ));
        }
    };
    let url = route_url(&state, &raw_url).await?;
    routing_key_fits(kind, &b.routing_key)?;
    let secret = match (kind, b.routing_key.or(b.secret)) {
        (kind, Some(s)) => Some(checked_secret(kind, &s)?),
        (RouteKind::PagerDuty, None) => {
            return Err(invalid(
                "a pagerduty route needs routing_key: the integration key of an Events API v2 integration".into(),
            ));
        }
        (RouteKind::Slack, None) => None,
        (RouteKind::Webhook, None) => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            Some(format!("whsec_{}", hex::encode(bytes)))
        }
    };
    let seal = |plain: &str| seal(&state, &caller.tenant_id, plain);
    let target = alert::display_target(&url);
    let route = AlertRoute {
        id: AlertRouteId::generate(),
        tenant_id: caller.tenant_id.clone(),
        name: Some(name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| target.clone()),
        kind,
        target,
        min_severity,
        group_wait_ms,
        repeat_interval_ms,
        created_at: Timestamp::now(),
        url_ciphertext: seal(url.as_str())?,
        secret_ciphertext: secret.as_deref().map(seal).transpose()?,
    };
    let to_store = route.clone();
    state
        .with_store(move |store| {
            if store.list_alert_routes(&to_store.tenant_id)?.len() >= MAX_ROUTES {
                return Err(StoreError::Conflict(format!(
                    "a tenant may have at most {MAX_ROUTES} alert routes; delete one first"
                )));
            }
            store.create_alert_route(&to_store)
        })
        .await?;
    let mut out = serde_json::to_value(&route).map_err(ApiError::internal)?;
    record(
        &state,
        by_key(
            &caller,
            &source,
            AuditAction::AlertRouteCreate,
            route.id.as_str(),
        )
        .after(out.clone()),
    )
    .await;
    if let Some(s) = secret.filter(|_| kind != RouteKind::PagerDuty) {
        // Shown once: only its ciphertext is kept. (A PagerDuty key is PagerDuty's to show.)
        out["secret"] = json!(s);
    }
    Ok(HttpResponse::Created().json(out))
}

fn checked_name(name: Option<String>) -> Result<String, ApiError> {
    let name = name.unwrap_or_default().trim().to_owned();
    if name.len() > MAX_NAME {
        return Err(ApiError::new(
            Code::InvalidRoute,
            format!("name may be at most {MAX_NAME} bytes"),
        ));
    }
    Ok(name)
}

fn checked_secret(kind: RouteKind, secret: &str) -> Result<String, ApiError> {
    let invalid = |m: String| ApiError::new(Code::InvalidRoute, m);
    let secret = secret.trim();
    match kind {
        RouteKind::Slack => Err(invalid(
            "a Slack route takes no secret: Slack webhooks are not signed (the URL itself is the secret)".into(),
        )),
        RouteKind::Webhook if secret.len() < 16 || secret.len() > MAX_SECRET => Err(invalid(format!(
            "secret must be 16 to {MAX_SECRET} characters; omit it to have one generated"
        ))),
        RouteKind::Webhook => Ok(secret.to_owned()),
        RouteKind::PagerDuty => alert::parse_routing_key(secret).map_err(invalid),
    }
}

/// Changes to a route; a field left out keeps its value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePatch {
    name: Option<String>,
    kind: Option<String>,
    url: Option<String>,
    secret: Option<String>,
    routing_key: Option<String>,
    min_severity: Option<String>,
    group_wait_seconds: Option<f64>,
    repeat_interval_seconds: Option<f64>,
}

/// Edits a route in place: its id, and the alerts it already sent, stay.
#[patch("/v1/alerts/routes/{id}")]
pub async fn update_route(
    (state, AdminKey(caller), source): AdminAction,
    path: web::Path<String>,
    body: web::Json<RoutePatch>,
) -> Result<HttpResponse, ApiError> {
    let mut route = load_route(&state, &caller.tenant_id, &path).await?;
    let b = body.into_inner();
    let invalid = |m: String| ApiError::new(Code::InvalidRoute, m);
    let before = serde_json::to_value(&route).map_err(ApiError::internal)?;
    if let Some(kind) = &b.kind
        && RouteKind::parse(kind).map_err(|e| invalid(e.0))? != route.kind
    {
        return Err(invalid(format!(
            "a route's kind cannot change (this one is {}); create a new route instead",
            route.kind.as_str()
        )));
    }
    if let Some(s) = &b.min_severity {
        route.min_severity = Severity::parse(s).map_err(|e| invalid(e.0))?;
    }
    [route.group_wait_ms, route.repeat_interval_ms] = timings(
        [b.group_wait_seconds, b.repeat_interval_seconds],
        [route.group_wait_ms, route.repeat_interval_ms],
    )?;
    let seal = |plain: &str| seal(&state, &caller.tenant_id, plain);
    routing_key_fits(route.kind, &b.routing_key)?;
    if let Some(s) = b.routing_key.as_ref().or(b.secret.as_ref()) {
        route.secret_ciphertext = Some(seal(&checked_secret(route.kind, s)?)?);
    }
    // A name that was the URL's host follows a new URL unless a name is given.
    let named_after_target = route.name == route.target;
    if let Some(raw) = &b.url {
        let url = route_url(&state, raw).await?;
        route.target = alert::display_target(&url);
        route.url_ciphertext = seal(url.as_str())?;
        if named_after_target {
            route.name = route.target.clone();
        }
    }
    if b.name.is_some() {
        let name = Some(checked_name(b.name)?).filter(|n| !n.is_empty());
        route.name = name.unwrap_or_else(|| route.target.clone());
    }
    let to_store = route.clone();
    let updated = state
        .with_store(move |store| store.update_alert_route(&to_store))
        .await?;
    if !updated {
        return Err(no_route(&path));
    }
    record(
        &state,
        by_key(
            &caller,
            &source,
            AuditAction::AlertRouteUpdate,
            route.id.as_str(),
        )
        .before(before)
        .after(serde_json::to_value(&route).map_err(ApiError::internal)?),
    )
    .await;
    Ok(HttpResponse::Ok().json(&route))
}

#[delete("/v1/alerts/routes/{id}")]
pub async fn delete_route(
    (state, AdminKey(caller), source): AdminAction,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id("alert route", &path, AlertRouteId::parse)?;
    let before = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let before = match store.get_alert_route(tenant, &id) {
                Ok(r) => Some(r),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(e),
            };
            let removed = store.delete_alert_route(tenant, &id)?;
            Ok(before.filter(|_| removed))
        })
        .await?;
    let Some(before) = before else {
        return Err(no_route(&path));
    };
    record(
        &state,
        by_key(
            &caller,
            &source,
            AuditAction::AlertRouteDelete,
            before.id.as_str(),
        )
        .before(serde_json::to_value(&before).map_err(ApiError::internal)?),
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({"id": path.as_str(), "deleted": true})))
}

/// Queues a test alert through the route; answers 202 with the delivery job's id.
#[post("/v1/alerts/routes/{id}/test")]
pub async fn test_route(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let route = load_route(&state, &caller.tenant_id, &path).await?;
    let now = Timestamp::now();
    let delivery = Delivery {
        route_id: route.id.to_string(),
        tenant_id: Some(caller.tenant_id.clone()),
        incident_id: None,
        reason: Reason::Test,
        scheduled_at: now.millis(),
        system: None,
    };
    let alerts = state.alerts.clone();
    let job = run_blocking(move || alerts.enqueue(&delivery, now))
        .await
        .map_err(|e| ApiError::new(Code::QueueUnavailable, e))?;
    Ok(HttpResponse::Accepted().json(json!({"job_id": job, "route_id": route.id})))
}
