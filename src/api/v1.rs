//! Admin and read endpoints under `/v1`: the kill switch, the active policies, the
//! tenant's own upstream, call records, and the protection summary. Unknown `/v1` paths get a JSON 404 in `web.rs`.

use super::audit::record;
use super::auth::{AdminAction, AdminCall, AdminKey, ProxyKey};
use super::auth::{by_key, on_own_tenant};
use super::call_list::{self, Listing};
use super::error::{ApiError, hinted_json, missing, optional_json, path_id};
use crate::api::state::AppState;
use crate::domain::audit::AuditAction;
use crate::domain::{
    CallCursor, CallFilter, CallId, CallSearch, FreezeAction, KeyId, Money, PolicyConfig,
    SearchQuery, TenantId, Timestamp,
    freeze::parse_reason,
    search::{merge_filter, narrower},
};
use crate::error::Code;
use crate::proxy::killswitch;
use crate::proxy::upstream::UpstreamTarget;
use crate::store::TenantUpstreamRow;
use actix_web::{HttpResponse, delete, get, post, put, web};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    reason: Option<String>,
    tenant_id: Option<String>,
    key_id: Option<String>,
}

/// The tenant an admin key may act on: its own. Naming another tenant is refused (only
/// the instance operator may, through the console).
fn target_tenant(caller: &TenantId, named: Option<&str>) -> Result<TenantId, ApiError> {
    match named {
        None => Ok(caller.clone()),
        Some(s) => {
            let id = TenantId::parse(s).map_err(|e| ApiError::new(Code::InvalidTenantId, e.0))?;
            if &id == caller {
                Ok(id)
            } else {
                Err(ApiError::new(
                    Code::TenantNotAllowed,
                    "an admin key may only act on its own tenant",
                ))
            }
        }
    }
}

fn reason_of(body: &Option<FreezeBody>, action: FreezeAction) -> Result<String, ApiError> {
    match (body.as_ref().and_then(|b| b.reason.as_deref()), action) {
        (Some(r), _) => parse_reason(r).map_err(|e| ApiError::new(Code::InvalidReason, e.0)),
        (None, FreezeAction::Freeze) => Err(ApiError::new(
            Code::InvalidReason,
            "a reason is required: send {\"reason\": \"…\"}",
        )),
        (None, FreezeAction::Unfreeze) => Ok("unfrozen".to_owned()),
    }
}

/// Whether a freeze set by `actor` is the instance's decision, which only the operator may
/// change or lift: one set by the operator, by a policy (`policy:dg-004`) or by the system.
/// A freeze set by one of the tenant's own keys or people is the tenant's.
async fn set_by_the_instance(state: &AppState, actor: &str) -> Result<bool, ApiError> {
    if actor.starts_with("key:") {
        return Ok(false);
    }
    let Some(user) = actor.strip_prefix("user:") else {
        return Ok(true);
    };
    let Ok(user) = crate::domain::UserId::parse(user) else {
        return Ok(true);
    };
    match state.with_store(move |store| store.get_user(&user)).await {
        Ok(u) => Ok(u.role == crate::domain::user::Role::Operator),
        // A person no longer known: only the operator may undo what they did.
        Err(crate::store::StoreError::NotFound) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Refuses a change to a freeze in force that the caller does not own: the operator may
/// change any; a tenant only the freezes its own keys and people set.
async fn check_owner(
    state: &AppState,
    caller: &crate::api::auth::Caller,
    current: Option<&crate::guard::killswitch::FrozenBy>,
    what: &str,
) -> Result<(), ApiError> {
    let Some(by) = current else {
        return Ok(());
    };
    if caller.operator || !set_by_the_instance(state, &by.actor).await? {
        return Ok(());
    }
    let setter = if by.actor.starts_with("user:") {
        format!("the operator ({})", by.actor)
    } else {
        by.actor.clone()
    };
    Err(ApiError::new(
        Code::FreezeNotYours,
        format!(
            "{what} was frozen by {setter} ({}): only the operator can lift or change that freeze",
            by.reason
        ),
    ))
}

fn audit_action(action: FreezeAction) -> AuditAction {
    match action {
        FreezeAction::Freeze => AuditAction::Freeze,
        FreezeAction::Unfreeze => AuditAction::Unfreeze,
    }
}

/// What a kill-switch request freezes or unfreezes: the whole tenant, or one of its keys.
#[derive(Clone, Copy)]
enum Switch {
    Tenant,
    Key,
}

async fn switch(
    (state, AdminKey(caller), source): AdminAction,
    raw: web::Bytes,
    switch: Switch,
    action: FreezeAction,
) -> Result<HttpResponse, ApiError> {
    let body = optional_json::<FreezeBody>(&raw)?;
    let tenant = target_tenant(
        &caller.tenant_id,
        body.as_ref().and_then(|b| b.tenant_id.as_deref()),
    )?;
    let key_id = match switch {
        Switch::Tenant => None,
        Switch::Key => {
            let key_text = body
                .as_ref()
                .and_then(|b| b.key_id.as_deref())
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidKeyId,
                        "send the key to act on as {\"key_id\": \"key_…\", \"reason\": \"…\"}",
                    )
                })?;
            Some(KeyId::parse(key_text).map_err(|e| ApiError::new(Code::InvalidKeyId, e.0))?)
        }
    };
    let reason = reason_of(&body, action)?;
    let current = match &key_id {
        None => state.proxy.guard.killswitch().tenant_status(&tenant).tenant,
        Some(key_id) => {
            // The key must belong to the tenant: another tenant's key is simply not found.
            let k = key_id.clone();
            state
                .with_tenant(&tenant, move |store, t| store.get_api_key(Some(t), &k))
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::NotFound => {
                        ApiError::not_found(format!("no key {key_id} in this tenant"))
                    }
                    other => other.into(),
                })?;
            super::auth::key_freeze(&state, &tenant, key_id)
        }
    };
    let what = match switch {
        Switch::Tenant => "the tenant",
        Switch::Key => "the key",
    };
    check_owner(&state, &caller, current.as_ref(), what).await?;
    let was_frozen = current.is_some();
    let frozen = action == FreezeAction::Freeze;
    let event = killswitch::set(
        &state.proxy,
        &tenant,
        key_id.as_ref(),
        action,
        &caller.label(),
        &reason,
    )
    .await?;
    let target = key_id.as_ref().map_or(tenant.as_str(), KeyId::as_str);
    record(
        &state,
        by_key(&caller, &source, audit_action(action), target)
            .before(json!({"frozen": was_frozen}))
            .after(json!({"frozen": frozen, "reason": reason, "event_id": event.id})),
    )
    .await;
    Ok(HttpResponse::Ok().json(match key_id {
        None => json!({"tenant_id": tenant, "frozen": frozen, "event": event}),
        Some(key_id) => {
            json!({"tenant_id": tenant, "key_id": key_id, "frozen": frozen, "event": event})
        }
    }))
}

#[post("/v1/killswitch/tenant")]
pub async fn freeze_tenant(on: AdminAction, raw: web::Bytes) -> Result<HttpResponse, ApiError> {
    switch(on, raw, Switch::Tenant, FreezeAction::Freeze).await
}

#[delete("/v1/killswitch/tenant")]
pub async fn unfreeze_tenant(on: AdminAction, raw: web::Bytes) -> Result<HttpResponse, ApiError> {
    switch(on, raw, Switch::Tenant, FreezeAction::Unfreeze).await
}

#[post("/v1/killswitch/key")]
pub async fn freeze_key(on: AdminAction, raw: web::Bytes) -> Result<HttpResponse, ApiError> {
    switch(on, raw, Switch::Key, FreezeAction::Freeze).await
}

#[delete("/v1/killswitch/key")]
pub async fn unfreeze_key(on: AdminAction, raw: web::Bytes) -> Result<HttpResponse, ApiError> {
    switch(on, raw, Switch::Key, FreezeAction::Unfreeze).await
}

/// Freeze state of the caller's tenant and its keys, with the recent history.
#[get("/v1/killswitch/status")]
pub async fn killswitch_status(
    (state, AdminKey(caller)): AdminCall,
) -> Result<HttpResponse, ApiError> {
    let snapshot = state
        .proxy
        .guard
        .killswitch()
        .tenant_status(&caller.tenant_id);
    let frozen_keys: Vec<_> = snapshot
        .keys
        .iter()
        .map(|(key_id, by)| json!({"key_id": key_id, "freeze": by}))
        .collect();
    let history = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.list_freeze_events(tenant, 20)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": caller.tenant_id,
        "tenant": {"frozen": snapshot.tenant.is_some(), "freeze": snapshot.tenant},
        "frozen_keys": frozen_keys,
        "history": history,
    })))
}

/// The guardrails in force for the caller's tenant, with their thresholds.
#[get("/v1/policies/active")]
pub async fn active_policies(
    (state, AdminKey(caller)): AdminCall,
) -> Result<HttpResponse, ApiError> {
    let p = state.proxy.guard.policy(&caller.tenant_id);
    // The stored overrides too, so that an editor can change some and keep the rest
    // (`PUT /v1/policies` replaces them all).
    let overrides = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.get_tenant_policy(tenant)
        })
        .await?
        .unwrap_or_else(|| json!({}));
    let (day, month) = period_spend(&state, &caller.tenant_id, Timestamp::now()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": caller.tenant_id,
        "overrides": overrides,
        // What the budgets count against now (UTC day and month), so that an editor can
        // say before saving that a budget would stop the tenant.
        "spend": {"day_usd": day.usd(), "month_usd": month.usd()},
        "price_table_version": crate::domain::pricing::PRICE_TABLE_VERSION,
        "policies": [
            {"id": "killswitch", "name": "Kill switch", "enabled": true, "thresholds": {}},
            {"id": "dg-001", "name": "Max cost per request", "enabled": true, "thresholds": {"max_cost_per_request_usd": p.max_cost_per_request_usd}},
            {"id": "dg-002", "name": "Max tokens per request", "enabled": true, "thresholds": {"max_tokens_per_request": p.max_tokens_per_request}},
            {"id": "dg-003", "name": "Rate limits", "enabled": true, "thresholds": {
                "key_requests_per_minute": p.key_requests_per_minute, "key_tokens_per_minute": p.key_tokens_per_minute,
                "tenant_requests_per_minute": p.tenant_requests_per_minute, "tenant_tokens_per_minute": p.tenant_tokens_per_minute}},
            {"id": "dg-004", "name": "Failure-spike freeze", "enabled": p.failure_spike_enabled, "thresholds": {
                "failure_spike_ratio": p.failure_spike_ratio, "failure_spike_min_calls": p.failure_spike_min_calls,
                "failure_spike_window_secs": p.failure_spike_window_secs}},
            {"id": "dg-005", "name": "Prompt-injection block", "enabled": p.prompt_injection_enabled, "thresholds": {}},
            {"id": "budget", "name": "Budgets", "enabled": p.budget_daily_usd.is_some() || p.budget_monthly_usd.is_some(), "thresholds": {
                "budget_daily_usd": p.budget_daily_usd, "budget_monthly_usd": p.budget_monthly_usd, "budget_soft_ratio": p.budget_soft_ratio}},
        ],
    })))
}

/// The tenant's spend of the current UTC day and month, for its budgets: the larger of the
/// recorded one and the guard's, which holds calls still in flight.
async fn period_spend(
    state: &AppState,
    tenant: &TenantId,
    now: Timestamp,
) -> Result<(Money, Money), ApiError> {
    let (day, month) = crate::proxy::install::recorded_spend(&state.store, tenant, now).await?;
    let live = state.proxy.guard.budgets().status(tenant, now);
    Ok((
        day.max(live.day_spent.saturating_add(live.day_reserved)),
        month.max(live.month_spent.saturating_add(live.month_reserved)),
    ))
}

/// The budgets of `proposed` that the tenant's spend already reaches, so that saving them
/// stops every call at once (see [`crate::guard::budget::stops_at_once`]).
async fn budget_stops(
    state: &AppState,
    tenant: &TenantId,
    proposed: &PolicyConfig,
) -> Result<Vec<crate::guard::budget::BudgetStop>, ApiError> {
    use crate::guard::budget::{BudgetLimits, stops_at_once};
    let proposed = BudgetLimits::of(proposed);
    if proposed.daily.is_none() && proposed.monthly.is_none() {
        return Ok(Vec::new());
    }
    let current = BudgetLimits::of(&state.proxy.guard.policy(tenant));
    let now = Timestamp::now();
    let (day, month) = period_spend(state, tenant, now).await?;
    Ok(stops_at_once(current, proposed, day, month, now))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutPoliciesQuery {
    /// `stop`: save a budget the tenant's spend already reaches, which stops its calls.
    confirm: Option<String>,
    /// `true`: check the overrides and say which budgets would stop the tenant, saving
    /// nothing (what an editor asks before saving).
    #[serde(default)]
    dry_run: bool,
}

/// Replaces the caller's tenant's threshold overrides (fields of `PolicyConfig`; the rest
/// keep their defaults). Takes effect at once. A budget that the spend of its period already
/// reaches would stop every call of the tenant at once: it is refused with 409
/// `budget_stops_tenant`, saying so, until it is sent again with `?confirm=stop`;
/// `?dry_run=true` says so without saving anything.
#[put("/v1/policies")]
pub async fn put_policies(
    (state, AdminKey(caller), source): AdminAction,
    query: web::Query<PutPoliciesQuery>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let overrides = body.into_inner();
    let config = PolicyConfig::with_overrides(&overrides)
        .map_err(|e| ApiError::new(Code::InvalidPolicy, e.0))?;
    let confirmed = match query.confirm.as_deref() {
        None => false,
        Some("stop") => true,
        Some(other) => {
            return Err(ApiError::new(
                Code::InvalidConfirm,
                format!("'confirm' takes only 'stop', not '{other}'"),
            )
            .param("confirm"));
        }
    };
    let stops = budget_stops(&state, &caller.tenant_id, &config).await?;
    if query.dry_run {
        return Ok(HttpResponse::Ok().json(json!({
            "tenant_id": caller.tenant_id, "overrides": overrides, "budget_stops": stops, "saved": false,
        })));
    }
    if let Some(first) = stops.first().filter(|_| !confirmed) {
        return Err(ApiError::new(
            Code::BudgetStopsTenant,
            format!(
                "Not saved: {}. Raise the budget, or send the same request with ?confirm=stop to save it anyway",
                first.message
            ),
        )
        .param(match first.period {
            crate::guard::budget::BudgetPeriod::Daily => "budget_daily_usd",
            crate::guard::budget::BudgetPeriod::Monthly => "budget_monthly_usd",
        }));
    }
    let to_store = overrides.clone();
    let applying = state.settings_lock.lock().await;
    let before = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let before = store.get_tenant_policy(tenant)?;
            store.put_tenant_policy(tenant, &to_store, Timestamp::now())?;
            Ok::<_, crate::store::StoreError>(before)
        })
        .await?;
    record(
        &state,
        on_own_tenant(&caller, &source, AuditAction::PolicyUpdate)
            .before(json!({"overrides": before}))
            .after(json!({"overrides": overrides})),
    )
    .await;
    crate::proxy::install::apply_policy(
        &state.proxy.guard,
        &state.store,
        &caller.tenant_id,
        config,
    )
    .await;
    drop(applying);
    Ok(HttpResponse::Ok().json(
        json!({"tenant_id": caller.tenant_id, "overrides": overrides, "budget_stops": stops}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BacktestBody {
    /// The proposed overrides, exactly as `PUT /v1/policies` would take them.
    policy: serde_json::Value,
    since: Option<String>,
    until: Option<String>,
    max_calls: Option<u32>,
}

/// Default and largest number of recorded calls one backtest replays.
const BACKTEST_DEFAULT_CALLS: u32 = 10_000;
const BACKTEST_MAX_CALLS: u32 = 200_000;
/// Calls one backtest holds at a time (requests only, see `store::backtest`).
const BACKTEST_PAGE: u32 = 250;

/// Runs a proposed guardrail configuration over the tenant's recorded calls of a time range
/// (default: the last 24 hours) and reports the calls it would have decided differently.
/// Nothing is changed: the live policy stays as it is.
#[post("/v1/policies/backtest")]
pub async fn backtest_policies(
    (state, AdminKey(caller), source): AdminAction,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let hint = "send {\"policy\": {…overrides as for PUT /v1/policies…}, \"since\": \"24h\", \"until\": …, \"max_calls\": …}";
    let body = hinted_json::<BacktestBody>(&raw, hint)?;
    let proposed = PolicyConfig::with_overrides(&body.policy)
        .map_err(|e| ApiError::new(Code::InvalidPolicy, e.0))?;
    let now = Timestamp::now();
    let since = match body.since.as_deref() {
        Some(s) => parse_time("since", s)?,
        None => now.plus_millis(-24 * 3_600_000),
    };
    let until = query_time("until", body.until.as_deref())?;
    if until.is_some_and(|u| u <= since) {
        return Err(ApiError::new(
            Code::InvalidRange,
            "'until' must be later than 'since'",
        ));
    }
    let max_calls = body.max_calls.unwrap_or(BACKTEST_DEFAULT_CALLS);
    if max_calls == 0 || max_calls > BACKTEST_MAX_CALLS {
        return Err(ApiError::new(
            Code::InvalidMaxCalls,
            format!(
                "'max_calls' must be between 1 and {BACKTEST_MAX_CALLS}; narrow the time range for more"
            ),
        ));
    }
    let budget_stops = budget_stops(&state, &caller.tenant_id, &proposed).await?;
    let pricing = state.proxy.guard.pricing().clone();
    let filter = CallFilter {
        since: Some(since),
        until,
        ..CallFilter::default()
    };
    // The newest `max_calls` calls of the range, replayed in arrival order a page at a
    // time: the replay starts after the call that has `max_calls` newer ones, if any.
    let (replayed, range_truncated) = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let start = store.call_key_at(tenant, &filter, max_calls)?;
            let truncated = start.is_some();
            let replayed = crate::guard::backtest::run_paged(
                &pricing,
                tenant,
                proposed,
                start,
                u64::from(max_calls),
                BACKTEST_PAGE,
                |after, n| store.recorded_requests(tenant, &filter, after, n),
            )?;
            Ok::<_, crate::store::StoreError>((replayed, truncated))
        })
        .await?;
    let (report, oldest) = (replayed.report, replayed.first_at);
    record(
        &state,
        on_own_tenant(&caller, &source, AuditAction::PolicyBacktest).after(json!({
            "proposed": body.policy,
            "since": since,
            "until": until,
            "evaluated": report.evaluated,
            "changed": report.changed,
        })),
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({
        "object": "policy.backtest",
        "tenant_id": caller.tenant_id,
        "since": since,
        "until": until,
        // When the cap cut the range, the oldest call that was replayed.
        "range_truncated": range_truncated,
        "evaluated_from": if range_truncated { oldest } else { None },
        "proposed": body.policy,
        // Budgets the tenant's spend already reaches: saving them stops it at once.
        "budget_stops": budget_stops,
        "report": report,
    })))
}

/// One call of the caller's tenant. A malformed id cannot exist, in this tenant or any
/// other, and another tenant's call is not this caller's: both are 404.
pub(crate) async fn load_call(
    state: &AppState,
    caller: &super::auth::Caller,
    raw_id: &str,
) -> Result<crate::domain::CallRecord, ApiError> {
    let id = path_id("call", raw_id, CallId::parse)?;
    state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.get_call(Some(tenant), &id)
        })
        .await
        .map_err(missing("call", raw_id))
}

#[get("/v1/calls/{id}")]
pub async fn get_call(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let call = load_call(&state, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(call))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
    session: Option<String>,
    key: Option<String>,
    model: Option<String>,
    status: Option<u16>,
    blocked: Option<bool>,
    cursor: Option<String>,
    limit: Option<u32>,
    /// A search in the query syntax of `domain::search`, combined with the fields above.
    q: Option<String>,
}

/// A value given trimmed, or `None` when it is absent or empty.
pub(crate) fn given(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// An optional query value read by `parse`; a bad one is a 400 `invalid_query` in the
/// parser's words.
pub(crate) fn query_value<T>(
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, crate::domain::ParseError>,
) -> Result<Option<T>, ApiError> {
    raw.map(parse)
        .transpose()
        .map_err(|e| ApiError::new(Code::InvalidQuery, e.0))
}

/// An optional time, read as [`parse_time`] reads it.
pub(crate) fn query_time(field: &str, raw: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    raw.map(|s| parse_time(field, s)).transpose()
}

/// A time given as RFC 3339, as milliseconds since the epoch, or as an age (`24h`).
pub(crate) fn parse_time(field: &str, s: &str) -> Result<Timestamp, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(Timestamp::from_millis(ms));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Timestamp::from_millis(t.timestamp_millis()));
    }
    if let Ok(age) = crate::domain::time::parse_duration(s) {
        return Ok(
            Timestamp::now().plus_millis(-(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
        );
    }
    Err(ApiError::new(
        Code::InvalidQuery,
        format!("'{field}' must be an RFC 3339 time, epoch milliseconds, or an age like 24h"),
    ))
}

#[get("/v1/calls")]
pub async fn list_calls(
    (state, AdminKey(caller)): AdminCall,
    q: web::Query<CallQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let filter = CallFilter {
        since: query_time("since", q.since.as_deref())?,
        until: query_time("until", q.until.as_deref())?,
        end_user: q.user,
        session_id: q.session,
        key_id: query_value(q.key.as_deref(), KeyId::parse)?,
        model: q.model,
        status: q.status,
        blocked: q.blocked,
    };
    let cursor = super::page::cursor(q.cursor.as_deref(), CallCursor::decode)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let search =
        q.q.as_deref()
            .map(|text| call_search(text, filter.clone()))
            .transpose()?;
    let listing = match search {
        Some(search) => Listing::Search(search),
        None => Listing::Filter(filter),
    };
    // Written a slice at a time: memory per request is a slice of records, not `limit`.
    call_list::respond(
        state.store.clone(),
        caller.tenant_id.clone(),
        listing,
        cursor,
        limit,
        state.proxy.guard.redactor(&caller.tenant_id),
    )
    .await
}

/// The search `q` of `GET /v1/calls`, narrowed further by the request's separate filter
/// parameters. A filter given both ways with different values is refused rather than
/// silently picking one; times keep the narrower bound.
fn call_search(q: &str, params: CallFilter) -> Result<CallSearch, ApiError> {
    let bad = |msg: String| ApiError::new(Code::InvalidQuery, format!("invalid q: {msg}"));
    let mut search = SearchQuery::parse(q, Timestamp::now())
        .and_then(|parsed| parsed.to_call_search())
        .map_err(|e| bad(e.0))?;
    let f = &mut search.filter;
    let merged = (|| {
        merge_filter("user", &mut f.end_user, params.end_user)?;
        merge_filter("session", &mut f.session_id, params.session_id)?;
        merge_filter("key", &mut f.key_id, params.key_id)?;
        merge_filter("model", &mut f.model, params.model)?;
        merge_filter("blocked", &mut f.blocked, params.blocked)
    })();
    merged.map_err(|e| bad(e.0))?;
    if search.status_range.is_some() && params.status.is_some() {
        return Err(bad(
            "'status' is given both as a parameter and as a class in q: give it once".to_owned(),
        ));
    }
    merge_filter("status", &mut f.status, params.status).map_err(|e| bad(e.0))?;
    (f.since, f.until) = narrower((f.since, f.until), (params.since, params.until));
    Ok(search)
}

/// The protection summary: calls monitored in the last hour, blocked in the last 24 h,
/// enforcement latency p95, and the freeze state.
#[get("/v1/status")]
pub async fn status(
    state: web::Data<AppState>,
    ProxyKey(caller): ProxyKey,
) -> Result<HttpResponse, ApiError> {
    let now = Timestamp::now();
    let (hour, day) = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            Ok::<_, crate::store::StoreError>((
                store.call_counts(tenant, now.plus_millis(-3_600_000))?,
                store.call_counts(tenant, now.plus_millis(-86_400_000))?,
            ))
        })
        .await?;
    let frozen = caller.frozen_by(state.proxy.guard.killswitch());
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": caller.tenant_id,
        "protected": frozen.is_none(),
        "frozen": frozen.is_some(),
        "freeze": frozen,
        "calls_last_hour": hour.total,
        "blocked_last_24h": day.blocked,
        "upstream_errors_last_24h": day.upstream_errors,
        "enforcement_latency_p95_ms": state.proxy.enforcement_p95_ms(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamBody {
    base_url: String,
    api_key: Option<String>,
}

fn upstream_json(row: &TenantUpstreamRow) -> serde_json::Value {
    json!({
        "base_url": row.base_url,
        "api_key_set": row.api_key_ciphertext.is_some(),
        "updated_at": row.updated_at,
    })
}

/// The tenant's own upstream (never its key), or 404 when it uses the instance upstream.
#[get("/v1/upstream")]
pub async fn get_upstream((state, AdminKey(caller)): AdminCall) -> Result<HttpResponse, ApiError> {
    match state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.get_tenant_upstream(tenant)
        })
        .await?
    {
        Some(row) => Ok(HttpResponse::Ok().json(upstream_json(&row))),
        None => Err(ApiError::not_found(
            "this tenant has no upstream of its own; its calls go to the instance upstream",
        )),
    }
}

/// Points the tenant's calls at its own upstream, which must be under the operator's
/// allowlist (the SSRF guard). The key is stored encrypted and never echoed.
#[put("/v1/upstream")]
pub async fn put_upstream(
    (state, AdminKey(caller), source): AdminAction,
    body: web::Json<UpstreamBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let url = state
        .settings
        .tenant_upstream_allowlist
        .check(&body.base_url)
        .map_err(|e| ApiError::new(Code::UpstreamNotAllowed, e))?;
    let api_key = body
        .api_key
        .as_deref()
        .map(crate::domain::upstream_url::provider_key)
        .transpose()
        .map_err(|e| {
            ApiError::new(
                Code::InvalidProviderKey,
                format!("{e}; omit it when the upstream needs no key"),
            )
        })?;
    let tenant = caller.tenant_id.clone();
    let ciphertext = api_key
        .as_deref()
        .map(|k| state.master_key.seal(tenant.as_str(), k))
        .transpose()
        .map_err(ApiError::internal)?;
    let row = TenantUpstreamRow {
        tenant_id: tenant.clone(),
        base_url: url.as_str().to_owned(),
        api_key_ciphertext: ciphertext,
        updated_at: Timestamp::now(),
    };
    let to_store = row.clone();
    let applying = state.settings_lock.lock().await;
    let before = state
        .with_store(move |store| {
            let before = store.get_tenant_upstream(&to_store.tenant_id)?;
            store.put_tenant_upstream(&to_store)?;
            Ok::<_, crate::store::StoreError>(before)
        })
        .await?;
    record(
        &state,
        on_own_tenant(&caller, &source, AuditAction::UpstreamUpdate)
            .before(before.as_ref().map_or(json!(null), upstream_json))
            .after(upstream_json(&row)),
    )
    .await;
    state.proxy.set_tenant_upstream(
        &tenant,
        Some(UpstreamTarget {
            base_url: row.base_url.clone(),
            api_key,
        }),
    );
    drop(applying);
    Ok(HttpResponse::Ok().json(upstream_json(&row)))
}

/// Sends the tenant's calls back to the instance upstream.
#[delete("/v1/upstream")]
pub async fn delete_upstream(
    (state, AdminKey(caller), source): AdminAction,
) -> Result<HttpResponse, ApiError> {
    let applying = state.settings_lock.lock().await;
    let (before, removed) = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let before = store.get_tenant_upstream(tenant)?;
            let removed = store.delete_tenant_upstream(tenant)?;
            Ok::<_, crate::store::StoreError>((before, removed))
        })
        .await?;
    if let Some(before) = before.filter(|_| removed) {
        record(
            &state,
            on_own_tenant(&caller, &source, AuditAction::UpstreamDelete)
                .before(upstream_json(&before))
                .after(json!({"upstream": "instance"})),
        )
        .await;
    }
    state.proxy.set_tenant_upstream(&caller.tenant_id, None);
    drop(applying);
    // Idempotent: without an upstream of its own the tenant already uses the instance's.
    Ok(HttpResponse::Ok()
        .json(json!({"tenant_id": caller.tenant_id, "upstream": "instance", "removed": removed})))
}
