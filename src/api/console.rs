//! The console's JSON API under `/api` (see docs/console-api.md): people signed in with a
//! session cookie instead of an API key.
//!
//! Every `/v1` admin endpoint is also served under `/api`: [`route_console`] rewrites
//! `/api/X` to `/v1/X` for the allowed prefixes and marks the request ([`ConsoleRequest`]),
//! so the `/v1` extractors authenticate the session (`session_caller`) instead of a key.
//! One handler, one behaviour, two doors. The rules for a person: every state-changing
//! call needs the CSRF header; a viewer may only read; an operator names the tenant with
//! `x-agv-tenant`. Console-only tenant views (overview, keys, usage and its history, live
//! events) live here.

use super::access::{TENANT_HEADER, acting, field, tenant_for};
use super::audit::{Console, ConsoleChange};
use super::error::ApiError;
use super::names::usd;
use super::session::current;
use super::v1::{given, query_time};
use crate::api::state::AppState;
use crate::domain::decision::policy;
use crate::domain::user::Role;
use crate::domain::{Money, Scope, TenantId, Timestamp};
use crate::error::Code;
use crate::store::{UsageBy, UsageRow, run_blocking};
use actix_web::{HttpResponse, get, web};
use serde_json::{Value, json};
use std::time::Duration;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Today's figures, the protection state and the freezes: what the overview and its live
/// stream show.
async fn summary(state: &AppState, tenant: &TenantId) -> Result<Value, ApiError> {
    let now = Timestamp::now();
    let (day_start, _) = crate::guard::budget::period_starts(now);
    let (counts, spend, stats) = state
        .with_tenant(tenant, move |store, t| {
            Ok::<_, crate::store::StoreError>((
                store.call_counts(t, day_start)?,
                store.spend_since(t, day_start)?,
                store.incident_stats(t)?,
            ))
        })
        .await?;
    let freezes = state.proxy.guard.killswitch().tenant_status(tenant);
    let policy = state.proxy.guard.policy(tenant);
    let spent = state.proxy.guard.budgets().status(tenant, now);
    let near_budget = |limit: Option<f64>, spent: f64| {
        limit.is_some_and(|l| l > 0.0 && spent >= l * policy.budget_soft_ratio)
    };
    let protection = if freezes.tenant.is_some() {
        "stopped"
    } else if !freezes.keys.is_empty()
        || stats.open > 0
        || near_budget(policy.budget_daily_usd, spent.day_spent.usd())
        || near_budget(policy.budget_monthly_usd, spent.month_spent.usd())
    {
        "at_risk"
    } else {
        "protected"
    };
    Ok(json!({
        "protection": protection,
        "frozen": {
            "tenant": freezes.tenant.is_some(),
            "reason": freezes.tenant.as_ref().map(|f| f.reason.clone()),
            "keys": freezes.keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        },
        "today": {
            "calls": counts.total,
            "blocked": counts.blocked,
            "errors": counts.upstream_errors,
            "spend_usd": spend.usd(),
            "open_incidents": stats.open + stats.acknowledged,
        },
    }))
}

fn series_json(points: &[crate::store::SeriesPoint]) -> Value {
    points
        .iter()
        .map(|p| {
            json!({"t": p.t, "calls": p.calls, "errors": p.errors, "blocked": p.blocked,
                   "tokens": p.tokens, "spend_usd": usd(p.cost_nanos)})
        })
        .collect()
}

/// How far back the overview counts what the guardrails saved.
const SAVED_DAYS: i64 = 30;

/// The groups the overview shows cost avoided in: id, name, and the policies of each.
/// Anything else that stopped a call (a tenant rule) is counted under `other`.
const SAVED_GROUPS: &[(&str, &str, &[&str])] = &[
    ("kill_switch", "Kill switch", &[policy::KILL_SWITCH]),
    ("budget", "Budgets", &[policy::BUDGET]),
    ("rate_limit", "Rate limits", &[policy::RATE_LIMIT]),
    ("injection", "Prompt injection", &[policy::PROMPT_INJECTION]),
    (
        "request_size",
        "Max tokens and cost per request",
        &[policy::MAX_TOKENS, policy::MAX_COST],
    ),
];

/// What the blocked calls would have cost, by group. A call's cost is the guard's own
/// estimate when its max-cost check recorded one (the most the call could have cost at list
/// price). A call stopped before that check (kill switch, token limit) is estimated from
/// the size of its stored request (the guard's four characters per token) at the model's
/// input price: a floor, since no completion is counted. A model without a price adds
/// nothing and is counted as unpriced.
fn saved_json(
    rows: &[crate::store::BlockedCost],
    pricing: &crate::domain::pricing::Pricing,
    since: Timestamp,
) -> Value {
    #[derive(Default)]
    struct Sum {
        calls: i64,
        avoided: Money,
        by_size: i64,
        unpriced: i64,
    }
    let mut groups: Vec<Sum> = (0..=SAVED_GROUPS.len()).map(|_| Sum::default()).collect();
    let mut total = Sum::default();
    let mut from_guard = 0;
    for r in rows {
        let g = SAVED_GROUPS
            .iter()
            .position(|(_, _, ps)| ps.contains(&r.policy.as_str()))
            .unwrap_or(SAVED_GROUPS.len());
        let rest = (r.calls - r.estimated_calls).max(0);
        let by_size = (rest > 0)
            .then(|| {
                let chars = u64::try_from(r.unestimated_chars).unwrap_or(0);
                let model = r.model.as_deref()?;
                pricing.cost(model, crate::guard::tokens::bytes_tokens(chars), 0, 0)
            })
            .flatten();
        let avoided =
            Money::from_nanos(r.estimate_nanos).saturating_add(by_size.unwrap_or(Money::ZERO));
        for s in [&mut groups[g], &mut total] {
            s.calls += r.calls;
            s.avoided = s.avoided.saturating_add(avoided);
            if by_size.is_some() {
                s.by_size += rest;
            } else {
                s.unpriced += rest;
            }
        }
        from_guard += r.estimated_calls;
    }
    let named = SAVED_GROUPS
        .iter()
        .map(|(id, name, ps)| (*id, *name, ps.to_vec()))
        .chain([("other", "Other rules", Vec::new())]);
    let by_policy: Vec<Value> = named
        .zip(&groups)
        .filter(|((id, _, _), s)| *id != "other" || s.calls > 0)
        .map(|((id, name, policies), s)| {
            json!({"id": id, "name": name, "policies": policies, "calls": s.calls,
                   "cost_avoided_usd": s.avoided.usd(), "estimated_by_size_calls": s.by_size,
                   "unpriced_calls": s.unpriced})
        })
        .collect();
    json!({
        "since": since,
        "days": SAVED_DAYS,
        "blocked_calls": total.calls,
        "cost_avoided_usd": total.avoided.usd(),
        "guard_estimate_calls": from_guard,
        "estimated_by_size_calls": total.by_size,
        "unpriced_calls": total.unpriced,
        "by_policy": by_policy,
    })
}

#[get("/api/overview")]
pub async fn overview((state, req): Console) -> Result<HttpResponse, ApiError> {
    let (_, tenant) = acting(&state, &req).await?;
    let mut out = summary(&state, &tenant).await?;
    let now = Timestamp::now().millis();
    let hour_start = now - now.rem_euclid(HOUR);
    let day_start = now - now.rem_euclid(DAY);
    let figures = state.with_tenant(&tenant, move |store, t| {
        Ok::<_, crate::store::StoreError>((
            store.get_tenant(t)?.name,
            store.is_demo_tenant(t)?,
            store.call_series(t, Timestamp::from_millis(hour_start - 23 * HOUR), HOUR, 24)?,
            store.call_series(t, Timestamp::from_millis(day_start - 6 * DAY), DAY, 7)?,
        ))
    });
    // The blocked calls of the month are read at the same time, on a connection of their
    // own; when they cannot be read the rest of the overview still shows.
    let since = Timestamp::from_millis(now - SAVED_DAYS * DAY);
    let blocked = state.with_tenant(&tenant, move |store, t| store.blocked_costs(t, since));
    let (figures, blocked) = futures_util::join!(figures, blocked);
    let (name, demo, hours, days) = figures?;
    let saved = match blocked {
        Ok(rows) => saved_json(&rows, state.proxy.guard.pricing(), since),
        Err(e) => {
            tracing::error!(error = %e, tenant = %tenant, "could not read the blocked calls for the overview");
            json!({"error": "the blocked calls could not be read; reload the page to try again, and if it persists see the server log"})
        }
    };
    if let Value::Object(m) = &mut out {
        m.insert(
            "tenant".into(),
            json!({"id": tenant, "name": name, "mode": if demo { "demo" } else { "live" }}),
        );
        m.insert(
            "series".into(),
            json!({"24h": series_json(&hours), "7d": series_json(&days)}),
        );
        m.insert("saved".into(), saved);
    }
    Ok(HttpResponse::Ok().json(out))
}

#[get("/api/usage")]
pub async fn usage((state, req): Console) -> Result<HttpResponse, ApiError> {
    let (_, tenant) = acting(&state, &req).await?;
    let now = Timestamp::now();
    let (_, month_start) = crate::guard::budget::period_starts(now);
    let by_model = state
        .with_tenant(&tenant, move |store, t| {
            store.usage_by(t, month_start, None, UsageBy::Model, None)
        })
        .await?;
    let policy = state.proxy.guard.policy(&tenant);
    let spent = state.proxy.guard.budgets().status(&tenant, now);
    Ok(HttpResponse::Ok().json(json!({
        "budgets": {
            "daily_usd": policy.budget_daily_usd,
            "monthly_usd": policy.budget_monthly_usd,
            "soft_threshold": policy.budget_soft_ratio,
        },
        "spent": {"today_usd": spent.day_spent.usd(), "month_usd": spent.month_spent.usd()},
        "by_model": by_model.iter().map(|r| usage_json("model", r)).collect::<Vec<_>>(),
    })))
}

/// One group of usage: its name under `label` (null for calls without one), calls,
/// tokens, known spend and the calls of unknown price.
fn usage_json(label: &str, r: &UsageRow) -> Value {
    let name = if r.name.is_empty() {
        Value::Null
    } else {
        Value::String(r.name.clone())
    };
    json!({
        label: name, "calls": r.calls, "tokens": r.tokens, "spend_usd": usd(r.cost_nanos),
        "unknown_cost_calls": r.unknown_cost,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    since: Option<String>,
    until: Option<String>,
}

/// The usage history's default length and its longest, in days; and how many end users
/// it lists (the busiest).
const HISTORY_DAYS: i64 = 30;
const HISTORY_MAX_DAYS: i64 = 366;
const HISTORY_USERS: u32 = 100;

/// `GET /api/usage/history`: the tenant's calls, tokens and spend by day, by key and by end
/// user over whole UTC days: from the start of `since`'s day to the end of `until`'s
/// (default the last 30 days, today included).
#[get("/api/usage/history")]
pub async fn usage_history(
    (state, req): Console,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let (_, tenant) = acting(&state, &req).await?;
    let q = q.into_inner();
    let time = |field: &str, v: Option<String>| {
        query_time(field, given(v).as_deref()).map(|t| t.map(Timestamp::millis))
    };
    let ceil_day = |t: i64| t + (DAY - t.rem_euclid(DAY)) % DAY;
    let until = ceil_day(time("until", q.until)?.unwrap_or_else(|| Timestamp::now().millis()));
    let since =
        time("since", q.since)?.map_or(until - HISTORY_DAYS * DAY, |t| t - t.rem_euclid(DAY));
    if since >= until {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "'since' must be before 'until'",
        ));
    }
    let days = (until - since) / DAY;
    if days > HISTORY_MAX_DAYS {
        return Err(ApiError::new(
            Code::InvalidQuery,
            format!("the range spans {days} days; ask for at most {HISTORY_MAX_DAYS}"),
        ));
    }
    let (from, to) = (Timestamp::from_millis(since), Timestamp::from_millis(until));
    let (by_day, by_key, by_user, keys) = state
        .with_tenant(&tenant, move |store, t| {
            Ok::<_, crate::store::StoreError>((
                store.call_series(t, from, DAY, u32::try_from(days).unwrap_or(0))?,
                store.usage_by(t, from, Some(to), UsageBy::Key, None)?,
                store.usage_by(t, from, Some(to), UsageBy::EndUser, Some(HISTORY_USERS + 1))?,
                store.list_api_keys(t)?,
            ))
        })
        .await?;
    let key_name = |id: &str| {
        keys.iter()
            .find(|k| k.id.as_str() == id)
            .map(|k| k.name.clone())
    };
    let sum = |f: fn(&crate::store::SeriesPoint) -> i64| by_day.iter().map(f).sum::<i64>();
    let users = by_user.len().min(HISTORY_USERS as usize);
    Ok(HttpResponse::Ok().json(json!({
        "since": since,
        "until": until,
        "days": days,
        "totals": {
            "calls": sum(|p| p.calls),
            "tokens": sum(|p| p.tokens),
            "spend_usd": usd(sum(|p| p.cost_nanos)),
        },
        "by_day": series_json(&by_day),
        "by_key": by_key.iter().map(|r| {
            let mut v = usage_json("key_id", r);
            v["name"] = json!(key_name(&r.name));
            v
        }).collect::<Vec<_>>(),
        "by_user": by_user[..users].iter().map(|r| usage_json("end_user", r)).collect::<Vec<_>>(),
        "by_user_truncated": by_user.len() > users,
    })))
}

fn key_json(
    k: &crate::domain::ApiKeyRecord,
    frozen: &[crate::domain::KeyId],
    today: Option<&UsageRow>,
) -> Value {
    json!({
        "id": k.id, "name": k.name, "scope": k.scope, "prefix": k.prefix,
        "created_at": k.created_at, "last_used_at": k.last_used_at,
        "revoked_at": k.revoked_at, "expires_at": k.expires_at,
        "frozen": frozen.contains(&k.id),
        "today": {
            "calls": today.map_or(0, |u| u.calls),
            "spend_usd": usd(today.map_or(0, |u| u.cost_nanos)),
        },
    })
}

fn frozen_keys(state: &AppState, tenant: &TenantId) -> Vec<crate::domain::KeyId> {
    state
        .proxy
        .guard
        .killswitch()
        .tenant_status(tenant)
        .keys
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[get("/api/keys")]
pub async fn list_keys((state, req): Console) -> Result<HttpResponse, ApiError> {
    let (_, tenant) = acting(&state, &req).await?;
    let (day_start, _) = crate::guard::budget::period_starts(Timestamp::now());
    let (keys, today) = state
        .with_tenant(&tenant, move |store, t| {
            Ok::<_, crate::store::StoreError>((
                store.list_api_keys(t)?,
                store.usage_by(t, day_start, None, UsageBy::Key, None)?,
            ))
        })
        .await?;
    let frozen = frozen_keys(&state, &tenant);
    let data: Vec<Value> = keys
        .iter()
        .map(|k| {
            let used = today.iter().find(|u| u.name == k.id.as_str());
            key_json(k, &frozen, used)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: Option<String>,
    scope: Option<String>,
}

/// A signed-in person as the author of a key change.
fn by_user(user: &crate::domain::User, source: super::audit::Source) -> crate::ops::keys::By {
    crate::ops::keys::By {
        actor: crate::domain::audit::Actor::User(user.id.clone()),
        source: source.0,
    }
}

#[actix_web::post("/api/keys")]
pub async fn create_key(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (user, tenant) = acting(&state, &req).await?;
    let body = super::error::optional_json::<NewKeyBody>(&raw)?
        .ok_or_else(|| field(Code::InvalidName, "name", "give the key a name"))?;
    let name = body.name.unwrap_or_default();
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(field(
            Code::InvalidName,
            "name",
            "a key needs a name of 1 to 100 characters",
        ));
    }
    let scope = Scope::parse(body.scope.as_deref().unwrap_or("proxy"))
        .map_err(|e| field(Code::InvalidScope, "scope", e.0))?;
    let (row, secret) = crate::domain::NewApiKey::generate(tenant.clone(), name, scope, None)
        .map_err(|e| field(Code::InvalidName, "name", e.0))?;
    let (store, by) = (state.store.clone(), by_user(&user, source));
    let created = run_blocking(move || crate::ops::keys::create(store.as_ref(), &row, &by)).await?;
    Ok(HttpResponse::Created().json(json!({
        "key": key_json(&created, &[], None),
        "secret": secret.expose(),
    })))
}

#[actix_web::post("/api/keys/{id}/revoke")]
pub async fn revoke_key(
    (state, req, source): ConsoleChange,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (user, tenant) = acting(&state, &req).await?;
    let id = super::error::path_id("key", &path, crate::domain::KeyId::parse)?;
    let (store, by, t) = (state.store.clone(), by_user(&user, source), tenant.clone());
    let revoked =
        run_blocking(move || crate::ops::keys::revoke(store.as_ref(), Some(&t), &id, &by))
            .await
            .map_err(super::error::missing("key", &path))?;
    state.keys.invalidate_all();
    let frozen = frozen_keys(&state, &tenant);
    Ok(HttpResponse::Ok().json(json!({"key": key_json(&revoked, &frozen, None)})))
}

/// How often the live stream looks for changes, and how long one response lasts before
/// the browser reconnects (so a server shutting down never waits on it for long).
const EVENT_TICK: Duration = Duration::from_secs(2);
const EVENT_LIFETIME: Duration = Duration::from_secs(15);

fn sse(event: &str, data: &Value) -> web::Bytes {
    web::Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn incident_event(i: &crate::domain::Incident) -> Value {
    json!({"id": i.id, "tenant_id": i.tenant_id, "status": i.status, "severity": i.severity,
           "title": i.title, "signal_count": i.signal_count, "updated_at": i.updated_at})
}

/// Live-event streams one person may hold open at once (a few browser tabs); each polls
/// the store every tick, so one signed-in person must not be able to open hundreds.
const MAX_EVENT_STREAMS_PER_USER: usize = 8;

/// Open live-event streams per person.
static EVENT_STREAMS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, usize>>,
> = std::sync::LazyLock::new(Default::default);

/// One open stream of a person, counted while it lives.
struct StreamSlot(String);

impl StreamSlot {
    fn take(user: &str) -> Result<Self, ApiError> {
        let mut open = EVENT_STREAMS
            .lock()
            .map_err(|_| ApiError::internal("event stream count lock poisoned"))?;
        let n = open.entry(user.to_owned()).or_insert(0);
        if *n >= MAX_EVENT_STREAMS_PER_USER {
            return Err(ApiError::too_many_requests(
                format!(
                    "this account already has {MAX_EVENT_STREAMS_PER_USER} live-event streams open; close other console tabs"
                ),
                2,
            ));
        }
        *n += 1;
        Ok(Self(user.to_owned()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = EVENT_STREAMS.lock()
            && let Some(n) = open.get_mut(&self.0)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.0);
            }
        }
    }
}

struct Watch {
    _slot: StreamSlot,
    state: web::Data<AppState>,
    tenant: Option<TenantId>,
    operator: bool,
    last_summary: Option<Value>,
    last_incidents: std::collections::HashMap<String, Value>,
    first: bool,
    /// When the browser reconnects, the `id` of the last tick it saw (`Last-Event-ID`, or
    /// `?last_event_id=` from the console's own reconnect: the time of that look): the
    /// first look then sends the incidents changed since, which the stream before may have
    /// missed.
    resume_after: Option<i64>,
    /// The time of the latest look, sent as each chunk's event `id`.
    looked_at: i64,
    ends: tokio::time::Instant,
    /// The SHA-256 of the watcher's session token: the stream ends at the first tick after
    /// the session does (signed out, ended by an owner, the person disabled or deleted).
    session: String,
}

impl Watch {
    async fn session_lives(&self) -> bool {
        let store = self.state.store.clone();
        let hash = self.session.clone();
        run_blocking(move || store.find_session(&hash, Timestamp::now()))
            .await
            .is_ok_and(|s| s.is_some())
    }

    /// The events since the last look (all of them the first time).
    async fn poll(&mut self) -> Result<Vec<web::Bytes>, ApiError> {
        let mut out = Vec::new();
        self.looked_at = Timestamp::now().millis();
        if self.first {
            out.push(web::Bytes::from_static(b"retry: 2000\n\n"));
        }
        if let Some(t) = &self.tenant {
            let s = summary(&self.state, t).await?;
            if self.last_summary.as_ref() != Some(&s) {
                out.push(sse("overview", &s));
                self.last_summary = Some(s);
            }
        }
        if self.operator && self.tenant.is_none() {
            let h = super::operator::health_json(&self.state).await?;
            out.push(sse("health", &h));
        }
        let store = self.state.store.clone();
        let tenant = self.tenant.clone();
        let recent = run_blocking(move || {
            store.list_incidents(
                tenant.as_ref(),
                &crate::domain::incident::IncidentFilter::default(),
                None,
                20,
            )
        })
        .await?;
        for i in recent.iter().rev() {
            let e = incident_event(i);
            let key = i.id.to_string();
            if self.last_incidents.get(&key) != Some(&e) {
                let missed = self
                    .resume_after
                    .is_some_and(|t| i.updated_at.millis() >= t);
                if !self.first || missed {
                    out.push(sse("incident", &e));
                }
                self.last_incidents.insert(key, e);
            }
        }
        self.first = false;
        Ok(out)
    }
}

/// `GET /api/events`: server-sent events for the live overview, incident lists and (for
/// the operator) instance health. See docs/console-api.md.
#[get("/api/events")]
pub async fn events(
    (state, req): Console,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let (user, token) = current(&state, &req).await?;
    let operator = user.role == Role::Operator;
    let named = query.get("tenant").map(String::as_str);
    let tenant = if operator && named.is_none() && req.headers().get(TENANT_HEADER).is_none() {
        None
    } else {
        Some(tenant_for(&state, &req, &user, named).await?)
    };
    let watch = Watch {
        _slot: StreamSlot::take(user.id.as_str())?,
        state: state.clone(),
        tenant,
        operator,
        last_summary: None,
        last_incidents: Default::default(),
        first: true,
        resume_after: req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .or(query.get("last_event_id").map(String::as_str))
            .and_then(|v| v.trim().parse().ok()),
        looked_at: 0,
        ends: tokio::time::Instant::now() + EVENT_LIFETIME,
        session: super::session::sha256_hex(&token),
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        if tokio::time::Instant::now() >= w.ends {
            return None;
        }
        if !w.first {
            tokio::time::sleep(EVENT_TICK).await;
            if !w.session_lives().await {
                return None;
            }
        }
        let chunk = match w.poll().await {
            // Every look carries its time as the event id, so that a reconnecting browser
            // says where it left off.
            Ok(events) if events.is_empty() => format!("id: {}\n: tick\n\n", w.looked_at).into(),
            Ok(events) => [
                format!("id: {}\n\n", w.looked_at).into_bytes(),
                events.concat(),
            ]
            .concat()
            .into(),
            Err(e) => sse("error", &json!({"message": e.message, "code": e.code})),
        };
        Some((Ok::<_, actix_web::Error>(chunk), w))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::saved_json;
    use crate::domain::Timestamp;
    use crate::domain::pricing::Pricing;
    use crate::store::BlockedCost;

    fn row(
        policy: &str,
        model: Option<&str>,
        calls: i64,
        est: i64,
        nanos: i64,
        chars: i64,
    ) -> BlockedCost {
        BlockedCost {
            policy: policy.into(),
            model: model.map(str::to_owned),
            calls,
            estimated_calls: est,
            estimate_nanos: nanos,
            unestimated_chars: chars,
        }
    }

    #[test]
    fn cost_avoided_adds_the_guard_estimates_and_prices_the_rest_by_size() {
        let rows = [
            // Two budget stops with the guard's estimates.
            row("budget", Some("gpt-4o-mini"), 2, 2, 3_000_000, 0),
            // A kill-switch stop: 400 characters = 100 tokens at $0.15 per million.
            row("killswitch", Some("gpt-4o-mini"), 1, 0, 0, 400),
            // A kill-switch stop of a model without a price.
            row("killswitch", Some("no-such-model"), 1, 0, 0, 400),
            // Max tokens and max cost are one group; a tenant rule is "other".
            row("dg-002", Some("gpt-4o-mini"), 1, 0, 0, 40),
            row("dg-001", Some("gpt-4o-mini"), 1, 1, 5_000, 0),
            row("rule-7", None, 4, 0, 0, 100),
        ];
        let v = saved_json(&rows, &Pricing::builtin(), Timestamp::from_millis(0));
        let group = |id: &str| {
            v["by_policy"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == id)
                .unwrap()
                .clone()
        };
        assert_eq!(v["blocked_calls"], 10);
        assert_eq!(group("budget")["cost_avoided_usd"], 0.003);
        assert_eq!(group("kill_switch")["cost_avoided_usd"], 0.000015);
        assert_eq!(group("kill_switch")["unpriced_calls"], 1);
        assert_eq!(group("kill_switch")["estimated_by_size_calls"], 1);
        assert_eq!(group("request_size")["calls"], 2);
        assert_eq!(group("request_size")["cost_avoided_usd"], 0.0000065);
        assert_eq!(group("other")["unpriced_calls"], 4);
        assert_eq!(v["cost_avoided_usd"], 0.0030215);
        assert_eq!(v["guard_estimate_calls"], 3);
        assert_eq!(v["unpriced_calls"], 5);
    }

    #[test]
    fn an_empty_tenant_reads_zero_in_every_group_and_no_other() {
        let v = saved_json(&[], &Pricing::builtin(), Timestamp::from_millis(0));
        assert_eq!(v["cost_avoided_usd"], 0.0);
        let groups = v["by_policy"].as_array().unwrap();
        assert_eq!(groups.len(), 5);
        assert!(groups.iter().all(|g| g["calls"] == 0 && g["id"] != "other"));
    }
}
