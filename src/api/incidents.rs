//! Incidents under `/v1/incidents` and the decision timeline of a call. Admin keys only;
//! everything is scoped to the key's tenant (another tenant's id is a 404).

use super::audit::{Source, record};
use super::auth::by_key;
use super::auth::{AdminAction, AdminCall, AdminKey, Caller};
use super::error::{ApiError, missing, optional_json, path_id};
use super::page;
use super::v1::{given, query_time, query_value};
use crate::api::state::AppState;
use crate::domain::audit::AuditAction;
use crate::domain::incident::{Change, IncidentCursor, IncidentFilter};
use crate::domain::incident::{Incident, IncidentEvent};
use crate::domain::{IncidentId, IncidentStatus, KeyId, Severity};
use crate::error::Code;
use crate::incidents::timeline::{self, People};
use crate::store::{StoreError, run_blocking};
use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::{Value, json};

/// The most signals a timeline shows (the counts on the incident cover them all).
const TIMELINE_SIGNALS: u32 = 200;

fn incident_id(raw: &str) -> Result<IncidentId, ApiError> {
    path_id("incident", raw, IncidentId::parse)
}

/// One incident of the caller's tenant: 404 when it has none such (or `raw` is no id).
pub(crate) async fn load_incident(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<Incident, ApiError> {
    let id = incident_id(raw)?;
    state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.get_incident(Some(tenant), &id)
        })
        .await
        .map_err(missing("incident", raw))
}

/// An incident as answered: its fields, and `assignee_email` when the assignee is a
/// person known by id.
fn incident_json(incident: &Incident, people: &People) -> Result<Value, ApiError> {
    let assignee = incident.assignee.as_deref().and_then(|a| people.email(a));
    super::names::with_emails(incident, &[("assignee_email", assignee)])
}

/// An event of an incident's history as answered, with `actor_email` when its actor is a
/// person.
fn event_json(event: &IncidentEvent, people: &People) -> Result<Value, ApiError> {
    super::names::with_emails(event, &[("actor_email", people.email(&event.actor))])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    status: Option<String>,
    severity: Option<String>,
    min_severity: Option<String>,
    policy: Option<String>,
    user: Option<String>,
    key: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Words that must appear in the title.
    text: Option<String>,
    /// The query syntax: `user:cust_1 policy:prompt_injection severity:high state:open
    /// since:24h refund` (words match the title).
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[get("/v1/incidents")]
pub async fn list(
    (state, AdminKey(caller)): AdminCall,
    q: web::Query<IncidentQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let mut filter = IncidentFilter {
        status: query_value(q.status.as_deref(), IncidentStatus::parse)?,
        severity: query_value(q.severity.as_deref(), Severity::parse)?,
        min_severity: query_value(q.min_severity.as_deref(), Severity::parse)?,
        rule: q.policy,
        end_user: q.user,
        key_id: query_value(q.key.as_deref(), KeyId::parse)?,
        since: query_time("since", q.since.as_deref())?,
        until: query_time("until", q.until.as_deref())?,
        text: q
            .text
            .as_deref()
            .map(|t| t.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    if let Some(text) = q.q.as_deref() {
        merge_query(&mut filter, text)?;
    }
    let cursor = page::cursor(q.cursor.as_deref(), IncidentCursor::parse)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let (list, people) = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let list = store.list_incidents(Some(tenant), &filter, cursor.as_ref(), limit)?;
            let people = People::of_incidents(
                store.as_ref(),
                tenant,
                &list.iter().collect::<Vec<_>>(),
                &[],
            )?;
            Ok::<_, StoreError>((list, people))
        })
        .await?;
    let next_cursor = page::next_cursor(&list, limit, |i| {
        IncidentCursor {
            created_at: i.created_at,
            id: i.id.clone(),
        }
        .encode()
    });
    let data = list
        .iter()
        .map(|i| incident_json(i, &people))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page::json_page(data, next_cursor))
}

/// Folds a typed query into the filter. A filter given both ways must agree; words and
/// phrases match the title. Filters that only mean something for calls are refused.
fn merge_query(filter: &mut IncidentFilter, text: &str) -> Result<(), ApiError> {
    use crate::domain::search::{SearchQuery, merge_filter, narrower};
    let q = SearchQuery::parse(text, crate::domain::Timestamp::now())
        .map_err(|e| ApiError::new(Code::InvalidQuery, e.0))?;
    let calls_only = [
        ("session", q.session_id.is_some()),
        ("model", q.model.is_some()),
        ("status", q.status.is_some()),
        ("blocked", q.blocked.is_some()),
    ];
    if let Some((what, _)) = calls_only.iter().find(|(_, given)| *given) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            format!("'{what}:' filters calls, not incidents; search calls with GET /v1/calls?q=…"),
        ));
    }
    let bad = |e: crate::domain::ParseError| ApiError::new(Code::InvalidQuery, e.0);
    merge_filter("state", &mut filter.status, q.state).map_err(bad)?;
    merge_filter("severity", &mut filter.severity, q.severity).map_err(bad)?;
    merge_filter("policy", &mut filter.rule, q.policy).map_err(bad)?;
    merge_filter("user", &mut filter.end_user, q.end_user).map_err(bad)?;
    merge_filter("key", &mut filter.key_id, q.key_id).map_err(bad)?;
    (filter.since, filter.until) = narrower((filter.since, filter.until), (q.since, q.until));
    filter.text.extend(q.terms);
    filter.text.extend(q.phrases);
    Ok(())
}

/// Counts by status and the mean times to acknowledge and to resolve.
#[get("/v1/incidents/stats")]
pub async fn stats((state, AdminKey(caller)): AdminCall) -> Result<HttpResponse, ApiError> {
    let s = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.incident_stats(tenant)
        })
        .await?;
    Ok(HttpResponse::Ok().json(s))
}

#[get("/v1/incidents/{id}")]
pub async fn get(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = incident_id(&path)?;
    let (incident, events, people) = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let incident = store.get_incident(Some(tenant), &id)?;
            let events = store.incident_events(Some(tenant), &id)?;
            let people = People::of_incidents(store.as_ref(), tenant, &[&incident], &events)?;
            Ok::<_, StoreError>((incident, events, people))
        })
        .await
        .map_err(missing("incident", &path))?;
    let parts = timeline::summary_parts(&incident, &events, &people);
    let mut body = incident_json(&incident, &people)?;
    body["summary"] = json!(timeline::summary_text(&parts));
    // The same words with each moment marked, for the reader's own time zone.
    body["summary_parts"] = json!(parts);
    // Shown beside the template summary, never instead of it; null without an LLM.
    body["narrative"] = json!(crate::incidents::summary_llm::latest_narrative(&events));
    body["events"] = Value::Array(
        events
            .iter()
            .map(|e| event_json(e, &people))
            .collect::<Result<_, _>>()?,
    );
    Ok(HttpResponse::Ok().json(body))
}

#[get("/v1/incidents/{id}/timeline")]
pub async fn incident_timeline(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = incident_id(&path)?;
    let t = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let incident = store.get_incident(Some(tenant), &id)?;
            let signals = store.incident_signals(Some(tenant), &id, TIMELINE_SIGNALS)?;
            let events = store.incident_events(Some(tenant), &id)?;
            let example = match signals.iter().rev().find_map(|s| s.call_id.clone()) {
                Some(call) => match store.get_call(Some(tenant), &call) {
                    Ok(c) => Some(c),
                    Err(StoreError::NotFound) => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let people = People::of_incidents(store.as_ref(), tenant, &[&incident], &events)?;
            Ok(timeline::for_incident_naming(
                &incident,
                &signals,
                &events,
                example.as_ref(),
                &people,
            ))
        })
        .await
        .map_err(missing("incident", &path))?;
    Ok(HttpResponse::Ok().json(t))
}

#[get("/v1/calls/{id}/timeline")]
pub async fn call_timeline(
    (state, AdminKey(caller)): AdminCall,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let call = super::v1::load_call(&state, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(timeline::for_call(&call)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// `null` unassigns.
    assignee: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SeverityBody {
    severity: Option<String>,
}

const MAX_NOTE: usize = 10_000;

/// What a person's change did: the incident after it, its new event and the people they
/// name.
struct Done {
    incident: Incident,
    event: IncidentEvent,
    people: People,
}

/// One change of one incident, as every endpoint that changes incidents applies it: the
/// store's change, PagerDuty routes told of a status change, and the audit entry.
async fn apply_change(
    state: &AppState,
    caller: &Caller,
    source: &Source,
    raw_id: &str,
    change: Change,
) -> Result<Done, ApiError> {
    let id = incident_id(raw_id)?;
    let who = caller.label();
    let action = match &change {
        Change::Acknowledge => AuditAction::IncidentAck,
        Change::Resolve => AuditAction::IncidentResolve,
        Change::Reopen => AuditAction::IncidentReopen,
        Change::Assign(_) => AuditAction::IncidentAssign,
        Change::SetSeverity(_) => AuditAction::IncidentSeverity,
        Change::Note(_) => AuditAction::IncidentNote,
    };
    // PagerDuty routes follow the incident's state; reopened, it pages again.
    let tell_routes = match &change {
        Change::Acknowledge => Some(crate::domain::alert::Reason::Acknowledged),
        Change::Resolve => Some(crate::domain::alert::Reason::Resolved),
        Change::Reopen => Some(crate::domain::alert::Reason::Reopened),
        _ => None,
    };
    let (before, incident, event, people) = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let before = store.get_incident(Some(tenant), &id)?;
            let (incident, event) = store.change_incident(
                Some(tenant),
                &id,
                &change,
                &who,
                crate::domain::Timestamp::now(),
            )?;
            let people = People::of_incidents(
                store.as_ref(),
                tenant,
                &[&incident],
                std::slice::from_ref(&event),
            )?;
            Ok::<_, crate::store::StoreError>((before, incident, event, people))
        })
        .await
        .map_err(missing("incident", raw_id))?;
    if let Some(reason) = tell_routes.filter(|_| before.status != incident.status) {
        tell_routes_of(state, &incident, reason).await;
    }
    let mut after = change_summary(&incident);
    if let Some(text) = &event.note {
        after["note"] = json!(text);
    }
    record(
        state,
        by_key(caller, source, action, incident.id.as_str())
            .before(change_summary(&before))
            .after(after),
    )
    .await;
    Ok(Done {
        incident,
        event,
        people,
    })
}

/// What an audit entry of an incident change keeps of the incident, before and after.
fn change_summary(i: &Incident) -> Value {
    json!({"status": i.status, "severity": i.severity.as_str(), "assignee": i.assignee})
}

/// Tells the tenant's alert routes (PagerDuty) that the incident's status changed.
async fn tell_routes_of(
    state: &AppState,
    incident: &Incident,
    reason: crate::domain::alert::Reason,
) {
    let (alerts, tenant, id) = (
        state.alerts.clone(),
        incident.tenant_id.clone(),
        incident.id.clone(),
    );
    run_blocking(move || alerts.status_changed(&tenant, &id, reason)).await;
}

async fn apply(
    (state, AdminKey(caller), source): AdminAction,
    raw_id: &str,
    change: Change,
) -> Result<HttpResponse, ApiError> {
    let done = apply_change(&state, &caller, &source, raw_id, change).await?;
    Ok(HttpResponse::Ok().json(json!({
        "incident": incident_json(&done.incident, &done.people)?,
        "event": event_json(&done.event, &done.people)?,
    })))
}

/// The most incidents one bulk request moves.
const MAX_BULK: usize = 500;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    ids: Option<Vec<String>>,
    action: Option<String>,
}

/// Acknowledges or resolves many incidents at once, each exactly as its own endpoint
/// would (audit entry, event, PagerDuty). One incident's invalid move, or an id the tenant
/// does not have, is reported for that id and the others go ahead.
#[post("/v1/incidents/bulk")]
pub async fn bulk(
    (state, AdminKey(caller), source): AdminAction,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: BulkBody = optional_json(&raw)?.unwrap_or_default();
    let action = body.action.unwrap_or_default();
    let change = match action.as_str() {
        "ack" => Change::Acknowledge,
        "resolve" => Change::Resolve,
        _ => {
            return Err(ApiError::new(
                Code::InvalidAction,
                "give the action as {\"action\": \"ack\"} or {\"action\": \"resolve\"}",
            )
            .param("action"));
        }
    };
    let ids = body.ids.unwrap_or_default();
    if ids.is_empty() {
        return Err(ApiError::new(
            Code::InvalidIds,
            "give the incidents as {\"ids\": [\"inc_…\", …]}; the list may not be empty",
        )
        .param("ids"));
    }
    if ids.len() > MAX_BULK {
        return Err(ApiError::new(
            Code::InvalidIds,
            format!(
                "at most {MAX_BULK} incidents at once ({} given); send the rest in another request",
                ids.len()
            ),
        )
        .param("ids"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut results = Vec::with_capacity(ids.len());
    let (mut ok, mut failed) = (0, 0);
    for raw_id in ids.iter().filter(|id| seen.insert(id.as_str())) {
        match apply_change(&state, &caller, &source, raw_id, change.clone()).await {
            Ok(done) => {
                ok += 1;
                results.push(json!({"id": raw_id, "ok": true, "status": done.incident.status}));
            }
            Err(e) => {
                failed += 1;
                results.push(json!({
                    "id": raw_id,
                    "ok": false,
                    "error": {"code": e.code, "message": e.message},
                }));
            }
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "action": action, "ok": ok, "failed": failed, "results": results,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    from: Option<Vec<String>>,
}

/// Merges duplicates into this incident: each is resolved as merged into it, its signals
/// (calls, end users, cost) count here too, both sides say so in their history, and the
/// audit log records it. All or nothing.
#[post("/v1/incidents/{id}/merge")]
pub async fn merge(
    (state, AdminKey(caller), source): AdminAction,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    use crate::domain::incident::{MAX_MERGE, MergeRefusal};
    let target = incident_id(&path)?;
    let body: MergeBody = optional_json(&raw)?.unwrap_or_default();
    let from = body.from.unwrap_or_default();
    if from.is_empty() || from.len() > MAX_MERGE {
        return Err(ApiError::new(
            Code::InvalidIds,
            format!(
                "give the duplicates as {{\"from\": [\"inc_…\", …]}}: one to {MAX_MERGE} incidents"
            ),
        )
        .param("from"));
    }
    let from = from
        .iter()
        .map(|raw| incident_id(raw))
        .collect::<Result<Vec<_>, _>>()?;
    if from.contains(&target) {
        return Err(ApiError::new(
            Code::InvalidIds,
            format!("{target} cannot be merged into itself; list only its duplicates"),
        )
        .param("from"));
    }
    let who = caller.label();
    let merged = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            let merged = store.merge_incidents(
                tenant,
                &target,
                &from,
                &who,
                crate::domain::Timestamp::now(),
            )?;
            let people = match &merged {
                Ok(m) => People::of_incidents(store.as_ref(), tenant, &[&m.target], &[])?,
                Err(_) => People::default(),
            };
            Ok::<_, StoreError>(merged.map(|m| (m, people)))
        })
        .await
        .map_err(missing("incident", &path))?;
    let (merged, people) = merged.map_err(|r| match r {
        MergeRefusal::Unknown(_) => ApiError::not_found(r.to_string()),
        _ => ApiError::new(Code::MergeRefused, r.to_string()),
    })?;
    for (before, after) in &merged.merged {
        if before.status != after.status {
            tell_routes_of(&state, after, crate::domain::alert::Reason::Resolved).await;
        }
    }
    // Bigger now, it may be worse: alert routes hear of the escalation as from a signal.
    if merged.target.severity > merged.target_before.severity {
        let applied = crate::domain::incident::Applied {
            incident_id: merged.target.id.clone(),
            tenant_id: merged.target.tenant_id.clone(),
            opened: false,
            reopened: false,
            escalated: Some((merged.target_before.severity, merged.target.severity)),
            severity: merged.target.severity,
        };
        let alerts = state.alerts.clone();
        run_blocking(move || crate::incidents::Listener::applied(alerts.as_ref(), &[applied]))
            .await;
    }
    let ids: Vec<&str> = merged.merged.iter().map(|(_, a)| a.id.as_str()).collect();
    let counts = |i: &Incident| json!({"signal_count": i.signal_count, "call_count": i.call_count, "severity": i.severity.as_str()});
    let mut after = counts(&merged.target);
    after["merged"] = json!(ids);
    record(
        &state,
        by_key(
            &caller,
            &source,
            AuditAction::IncidentMerge,
            merged.target.id.as_str(),
        )
        .before(counts(&merged.target_before))
        .after(after),
    )
    .await;
    let merged_json = merged
        .merged
        .iter()
        .map(|(_, a)| incident_json(a, &People::default()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(json!({
        "incident": incident_json(&merged.target, &people)?,
        "merged": merged_json,
    })))
}

#[post("/v1/incidents/{id}/ack")]
pub async fn ack(on: AdminAction, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    apply(on, &path, Change::Acknowledge).await
}

#[post("/v1/incidents/{id}/resolve")]
pub async fn resolve(on: AdminAction, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    apply(on, &path, Change::Resolve).await
}

/// Opens a resolved incident again, for when it is not over after all.
#[post("/v1/incidents/{id}/reopen")]
pub async fn reopen(on: AdminAction, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    apply(on, &path, Change::Reopen).await
}

#[post("/v1/incidents/{id}/notes")]
pub async fn note(
    on: AdminAction,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: NoteBody = optional_json(&raw)?.unwrap_or_default();
    let note = body.note.unwrap_or_default();
    let note = note.trim();
    if note.is_empty() {
        return Err(ApiError::new(
            Code::InvalidNote,
            "give the note as {\"note\": \"…\"}; it may not be empty",
        ));
    }
    if note.len() > MAX_NOTE {
        return Err(ApiError::new(
            Code::InvalidNote,
            format!("a note may be at most {MAX_NOTE} bytes"),
        ));
    }
    apply(on, &path, Change::Note(note.to_owned())).await
}

#[post("/v1/incidents/{id}/assign")]
pub async fn assign(
    on: AdminAction,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: AssignBody = optional_json(&raw)?.unwrap_or_default();
    let who = given(body.assignee);
    if who.as_ref().is_some_and(|a| a.len() > 256) {
        return Err(ApiError::new(
            Code::InvalidAssignee,
            "an assignee may be at most 256 bytes",
        ));
    }
    apply(on, &path, Change::Assign(who)).await
}

#[post("/v1/incidents/{id}/severity")]
pub async fn severity(
    on: AdminAction,
    path: web::Path<String>,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: SeverityBody = optional_json(&raw)?.unwrap_or_default();
    let sev = Severity::parse(body.severity.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(Code::InvalidSeverity, e.0))?;
    apply(on, &path, Change::SetSeverity(sev)).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    scenario: Option<String>,
}

/// Makes a deterministic, [DEMO]-marked incident from a scenario. Demo tenants only
/// (made by `agv-server demo`): a real tenant's evidence is never mixed with made-up calls.
#[post("/v1/demo/simulate-incident")]
pub async fn simulate(
    (state, AdminKey(caller)): AdminCall,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: SimulateBody = optional_json(&raw)?.unwrap_or_default();
    let name = body.scenario.unwrap_or_default();
    let is_demo = state
        .with_tenant(&caller.tenant_id, move |store, tenant| {
            store.is_demo_tenant(tenant)
        })
        .await?;
    if !is_demo {
        return Err(ApiError::new(
            Code::DemoOnly,
            "simulated incidents are only for demo tenants (made by `agv-server demo`); this tenant's records are real and stay untouched",
        ));
    }
    // A person simulates with the tenant's first key: demo calls are made by a key.
    let key = match caller.key_id.clone() {
        Some(k) => k,
        None => state
            .with_tenant(&caller.tenant_id, move |store, tenant| {
                store.list_api_keys(tenant)
            })
            .await?
            .into_iter()
            .next()
            .map(|k| k.id)
            .ok_or_else(|| {
                ApiError::new(Code::NoKey, "this tenant has no API key to simulate with")
            })?,
    };
    let (calls, signals) = crate::incidents::demo::scenario(
        &name,
        &caller.tenant_id,
        &key,
        crate::domain::Timestamp::now(),
    )
    .map_err(|e| ApiError::new(Code::InvalidScenario, e.0))?;
    let call_ids: Vec<String> = calls.iter().map(|c| c.id.to_string()).collect();
    let applied = state
        .with_store(move |store| {
            store.insert_calls(&calls)?;
            store.apply_signals(&signals)
        })
        .await?;
    let mut incident_ids: Vec<String> = Vec::new();
    for a in &applied {
        let id = a.incident_id.to_string();
        if !incident_ids.contains(&id) {
            incident_ids.push(id);
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "scenario": name, "demo": true, "calls": call_ids, "incident_ids": incident_ids,
    })))
}
