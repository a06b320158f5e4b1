//! The decision timeline — for one call and for an incident — and the incident's
//! plain-English summary. Pure functions of what is stored: the same records always give
//! the same timeline and the same words.

use crate::domain::decision::policy;
use crate::domain::incident::{
    EventKind, Incident, IncidentEvent, IncidentStatus, StoredSignal, decision_detail, rule,
    rule_name,
};
use crate::domain::user::{Role, User};
use crate::domain::{CallRecord, Outcome, TenantId, Timestamp, UserId};
use crate::store::{Store, StoreError, StoreResult};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub at: String,
    /// Microseconds since the request arrived (calls) or since the first signal (incidents).
    pub offset_us: i64,
    /// `input`, `decision`, `upstream`, `output`, `root_cause`, `signal`, `event`.
    pub kind: &'static str,
    pub title: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The email of the person `actor` names, when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_email: Option<String>,
}

impl Step {
    fn new(
        at: Timestamp,
        offset_us: i64,
        kind: &'static str,
        title: String,
        detail: String,
    ) -> Self {
        Self {
            at: at.to_rfc3339(),
            offset_us,
            kind,
            title,
            detail,
            policy: None,
            outcome: None,
            value: None,
            threshold: None,
            unit: None,
            call_id: None,
            actor: None,
            actor_email: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallTimeline {
    pub call_id: String,
    pub steps: Vec<Step>,
    pub root_cause: String,
}

/// Input received → each check's decision → the upstream call → the output → root cause.
pub fn for_call(call: &CallRecord) -> CallTimeline {
    let t0 = call.created_at;
    let step = |us: i64, kind, title: String, detail: String| Step {
        call_id: Some(call.id.to_string()),
        ..Step::new(
            Timestamp::from_millis(t0.millis() + us / 1000),
            us,
            kind,
            title,
            detail,
        )
    };
    let who = call
        .end_user
        .as_deref()
        .map(|u| format!(", end user {u}"))
        .unwrap_or_default();
    let mut steps = vec![step(
        0,
        "input",
        "Request received".into(),
        format!(
            "{} {}, model {}{who}, key {}, {} bytes{}",
            call.endpoint,
            if call.stream { "(streaming)" } else { "" },
            call.model.as_deref().unwrap_or("not given"),
            call.key_id,
            call.request_body.len(),
            if call.request_truncated {
                " stored (truncated)"
            } else {
                ""
            }
        )
        .replace("  ", " "),
    )];
    let mut offset = 0i64;
    for d in &call.decisions {
        offset += i64::from(d.micros);
        steps.push(Step {
            policy: Some(d.policy.clone()),
            outcome: Some(d.outcome),
            value: d.value,
            threshold: d.threshold,
            unit: d.unit.clone(),
            ..step(
                offset,
                "decision",
                format!("{}: {}", rule_name(&d.policy), d.outcome),
                decision_detail(d),
            )
        });
    }
    let enforcement = call.enforcement_us.max(offset);
    steps.push(match call.upstream_latency_us {
        Some(up) => {
            let mut detail = format!(
                "{} attempt{} to {}, {:.1} ms",
                call.upstream_attempts,
                if call.upstream_attempts == 1 { "" } else { "s" },
                call.upstream.as_deref().unwrap_or("the upstream"),
                up as f64 / 1000.0
            );
            if call.status >= 500 {
                detail.push_str(&format!(
                    ", failed: {}",
                    call.error.as_deref().unwrap_or("no answer")
                ));
            }
            step(enforcement + up, "upstream", "Upstream call".into(), detail)
        }
        None => step(
            enforcement,
            "upstream",
            "Upstream not called".into(),
            match &call.blocked_by {
                Some(p) => format!("stopped by {} before the upstream", rule_name(p)),
                None => "the call ended before the upstream was asked".into(),
            },
        ),
    });
    let tokens = call
        .total_tokens
        .map(|t| format!(", {t} tokens"))
        .unwrap_or_default();
    let cost = match call.cost {
        Some(c) => format!(", cost ${:.6}", c.usd()),
        None if call.upstream_latency_us.is_some() => {
            ", cost unknown (no price for this model)".into()
        }
        None => String::new(),
    };
    steps.push(step(
        call.latency_us,
        "output",
        format!("Answered {}", call.status),
        format!(
            "{}{tokens}{cost}, {:.1} ms in all",
            call.error.as_deref().unwrap_or("success"),
            call.latency_us as f64 / 1000.0
        ),
    ));
    let root_cause = root_cause(call);
    steps.push(step(
        call.latency_us,
        "root_cause",
        "Root cause".into(),
        root_cause.clone(),
    ));
    CallTimeline {
        call_id: call.id.to_string(),
        steps,
        root_cause,
    }
}

/// One plain statement: which policy, which value, what should have happened.
pub fn root_cause(call: &CallRecord) -> String {
    if let Some(d) = call.decisions.iter().find(|d| d.outcome.stops()) {
        let what = decision_detail(d);
        return match d.policy.as_str() {
            policy::KILL_SWITCH => format!(
                "The kill switch was on ({what}). The call was stopped before the upstream, as intended: nothing was sent or charged. Unfreeze the target when it is safe."
            ),
            policy::RATE_LIMIT => format!(
                "Rate limit (dg-003): {what}. The call was throttled with 429 before the upstream, as intended; the client should wait for retry-after, or the tenant's limit should be raised if this traffic is legitimate."
            ),
            policy::BUDGET => format!(
                "Budget exhausted: {what}. The call was refused with 402 before the upstream, as intended; raise the budget or wait for the next period."
            ),
            policy::PROMPT_INJECTION => format!(
                "Prompt injection (dg-005): {what}. The request was blocked before it reached the model, as intended; review the end user's input."
            ),
            p => format!(
                "{} stopped the call: {what}. It never reached the upstream, as the policy intends; change the request or the tenant's threshold if it was legitimate.",
                rule_name(p)
            ),
        };
    }
    if call.status >= 500 {
        return format!(
            "No policy stopped this call; the upstream failed ({}) after {} attempt(s): {}. The call should have succeeded: check the upstream provider's status, the timeouts, or configure a fallback upstream.",
            call.status,
            call.upstream_attempts,
            call.error.as_deref().unwrap_or("no detail")
        );
    }
    if call.status >= 400 {
        return format!(
            "No policy stopped this call; the request was refused with {}: {}. The request itself needs fixing.",
            call.status,
            call.error.as_deref().unwrap_or("no detail")
        );
    }
    "Every check passed and the upstream answered normally; nothing went wrong with this call."
        .into()
}

/// Who the actor labels of an incident's history name, for people to read: the email of
/// each person (`user:usr_…`, or a bare `usr_…` id). Keys, the system and people it does
/// not know (deleted, or of another tenant) are shown by their label.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct People(HashMap<String, String>);

impl People {
    /// Whether `tenant` may see who `user` is: its own people and the instance operator
    /// (who acts on every tenant). Any other id stays as it is, so an id typed into an
    /// assignee never reveals another tenant's address.
    pub fn visible_to(user: &User, tenant: &TenantId) -> bool {
        user.role == Role::Operator || user.tenant_id.as_ref() == Some(tenant)
    }

    /// The emails of the people `ids` name, as `tenant` may see them. Blocking.
    pub fn look_up(
        store: &dyn Store,
        tenant: &TenantId,
        ids: impl IntoIterator<Item = UserId>,
    ) -> StoreResult<Self> {
        let mut people = Self::default();
        for id in ids.into_iter().collect::<BTreeSet<_>>() {
            match store.get_user(&id) {
                Ok(user) if Self::visible_to(&user, tenant) => {
                    people.insert(&id, user.email.as_str())
                }
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(people)
    }

    /// The people that `incidents` (their assignees) and `events` (their actors) name.
    /// Blocking.
    pub fn of_incidents(
        store: &dyn Store,
        tenant: &TenantId,
        incidents: &[&Incident],
        events: &[IncidentEvent],
    ) -> StoreResult<Self> {
        let assignees = incidents
            .iter()
            .filter_map(|i| i.assignee.as_deref().and_then(Self::user_id));
        let actors = events.iter().filter_map(|e| Self::user_id(&e.actor));
        Self::look_up(store, tenant, assignees.chain(actors))
    }

    /// Remembers the email of the person `user_id`.
    pub fn insert(&mut self, user_id: &UserId, email: &str) {
        self.0.insert(user_id.to_string(), email.to_owned());
    }

    /// The person an actor label or an assignee names, if it names one by id.
    pub fn user_id(label: &str) -> Option<UserId> {
        UserId::parse(label.strip_prefix("user:").unwrap_or(label)).ok()
    }

    /// The email of the person `label` names, when known.
    pub fn email(&self, label: &str) -> Option<&str> {
        let id = label.strip_prefix("user:").unwrap_or(label);
        self.0.get(id).map(String::as_str)
    }

    /// `label` as a person reads it: the email when known, else the label itself.
    pub fn show(&self, label: &str) -> String {
        self.email(label).unwrap_or(label).to_owned()
    }

    /// `text` with every known person's label replaced by their email (notes written by
    /// the server name their actor by label).
    fn rewrite(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (id, email) in &self.0 {
            out = out.replace(&format!("user:{id}"), email).replace(id, email);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentTimeline {
    pub incident_id: String,
    pub steps: Vec<Step>,
    pub root_cause: String,
    pub summary: String,
    pub summary_parts: Vec<SummaryPart>,
}

/// Events that belong to the problem itself; every other event is the response to it
/// (acknowledging, resolving, reopening, notes, alerts, kill-switch actions).
fn part_of_the_problem(kind: EventKind) -> bool {
    matches!(kind, EventKind::Opened | EventKind::Escalated)
}

/// The incident as it reads best: the problem (its opening, signals and escalations, in
/// time order), then its root cause, then what was done about it (in time order). The
/// root cause thus always sits before the lifecycle events, never after a resolution.
/// `example` is the most recent affected call, when it could be read.
pub fn for_incident(
    incident: &Incident,
    signals: &[StoredSignal],
    events: &[IncidentEvent],
    example: Option<&CallRecord>,
) -> IncidentTimeline {
    for_incident_naming(incident, signals, events, example, &People::default())
}

/// [`for_incident`] with people named by their email.
pub fn for_incident_naming(
    incident: &Incident,
    signals: &[StoredSignal],
    events: &[IncidentEvent],
    example: Option<&CallRecord>,
    people: &People,
) -> IncidentTimeline {
    let t0 = incident.first_signal_at;
    let off = |t: Timestamp| (t.millis() - t0.millis()) * 1000;
    let mut problem: Vec<(i64, u8, Step)> = Vec::new();
    let mut response: Vec<(i64, u8, Step)> = Vec::new();
    for s in signals {
        let title = format!("{} signal", rule_name(&s.rule));
        let step = Step {
            policy: Some(s.rule.clone()),
            call_id: s.call_id.as_ref().map(ToString::to_string),
            ..Step::new(s.at, off(s.at), "signal", title, s.detail.clone())
        };
        problem.push((s.at.millis(), 1, step));
    }
    for e in events {
        let detail = event_sentence(e, people);
        let step = Step {
            actor: Some(e.actor.clone()),
            actor_email: people.email(&e.actor).map(str::to_owned),
            ..Step::new(e.at, off(e.at), "event", event_title(e.kind).into(), detail)
        };
        // An "opened" event sorts before the signal that opened it.
        let order = if e.kind == EventKind::Opened { 0 } else { 2 };
        let list = if part_of_the_problem(e.kind) {
            &mut problem
        } else {
            &mut response
        };
        list.push((e.at.millis(), order, step));
    }
    problem.sort_by_key(|(at, order, _)| (*at, *order));
    response.sort_by_key(|(at, order, _)| (*at, *order));
    let root_cause = match example {
        Some(call) => format!(
            "{} — most recent affected call {}: {}",
            rule_name(&incident.rule),
            call.id,
            root_cause(call)
        ),
        None => match signals.last() {
            Some(s) => format!("{}: {}", rule_name(&incident.rule), s.detail),
            None => rule_name(&incident.rule).to_owned(),
        },
    };
    let mut out: Vec<Step> = problem.into_iter().map(|(_, _, s)| s).collect();
    let end = incident.last_signal_at;
    out.push(Step::new(
        end,
        off(end),
        "root_cause",
        "Root cause".into(),
        root_cause.clone(),
    ));
    out.extend(response.into_iter().map(|(_, _, s)| s));
    let summary_parts = summary_parts(incident, events, people);
    IncidentTimeline {
        incident_id: incident.id.to_string(),
        steps: out,
        root_cause,
        summary: summary_text(&summary_parts),
        summary_parts,
    }
}

fn event_title(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Opened => "Incident opened",
        EventKind::Reopened => "Incident reopened",
        EventKind::Escalated => "Severity escalated",
        EventKind::Acknowledged => "Acknowledged",
        EventKind::Resolved => "Resolved",
        EventKind::Assigned => "Assigned",
        EventKind::SeverityChanged => "Severity changed",
        EventKind::Note => "Note",
        EventKind::KillSwitch => "Kill switch",
        EventKind::AlertSent => "Alert sent",
        EventKind::Summary => "Summary written",
        EventKind::Merged => "Merged",
    }
}

fn field(v: &Option<serde_json::Value>, name: &str, people: &People) -> String {
    v.as_ref()
        .and_then(|v| v.get(name))
        .map(|x| match x {
            serde_json::Value::String(s) => people.show(s),
            serde_json::Value::Null => "nobody".into(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "?".into())
}

fn event_sentence(e: &IncidentEvent, people: &People) -> String {
    let by = people.show(&e.actor);
    let changed = match e.kind {
        EventKind::Opened => return e.note.clone().unwrap_or_default(),
        // The engine reopens on recurrence and says why; a person reopens by hand.
        EventKind::Reopened if e.actor == SYSTEM => return e.note.clone().unwrap_or_default(),
        EventKind::Escalated | EventKind::SeverityChanged => "severity",
        EventKind::Acknowledged | EventKind::Resolved | EventKind::Reopened => "status",
        EventKind::Assigned => "assignee",
        _ => {
            return e
                .note
                .as_deref()
                .map(|n| people.rewrite(n))
                .unwrap_or_else(|| format!("by {by}"));
        }
    };
    format!(
        "{} → {} by {by}",
        field(&e.before, changed, people),
        field(&e.after, changed, people),
    )
}

/// The actor of what the incident engine itself did.
const SYSTEM: &str = "system";

/// A span of time in words: tenths of a second below ten seconds (rounded up, so that
/// "within" stays true), then seconds, minutes and hours.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        let tenths = ((ms + 99) / 100).max(1);
        return format!("{}.{} s", tenths / 10, tenths % 10);
    }
    let s = ms / 1000;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// A moment in a summary, for a reader without a time zone of their own (exports,
/// alerts): UTC, to the second.
fn utc(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.millis())
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_rfc3339())
}

/// A piece of the summary: words, or a moment that the console shows in the reader's own
/// time zone. Serialized as `{"text": "…"}` or `{"time": "<RFC 3339>"}`.
#[derive(Debug, Clone, PartialEq)]
pub enum SummaryPart {
    Text(String),
    Time(Timestamp),
}

impl Serialize for SummaryPart {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Self::Text(t) => m.serialize_entry("text", t)?,
            Self::Time(t) => m.serialize_entry("time", &t.to_rfc3339())?,
        }
        m.end()
    }
}

/// The summary as one text, its moments in UTC.
pub fn summary_text(parts: &[SummaryPart]) -> String {
    parts
        .iter()
        .map(|p| match p {
            SummaryPart::Text(t) => t.clone(),
            SummaryPart::Time(t) => utc(*t),
        })
        .collect()
}

/// "1 call", "3 calls".
pub(crate) fn plural(n: i64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What happened, the impact, what was done — from a fixed template, people named by
/// their email when `people` knows them.
pub fn summary_parts(
    incident: &Incident,
    events: &[IncidentEvent],
    people: &People,
) -> Vec<SummaryPart> {
    let what = match incident.rule.as_str() {
        policy::KILL_SWITCH => "calls were stopped by the kill switch",
        policy::MAX_COST => "requests were blocked for exceeding the cost limit per request",
        policy::MAX_TOKENS => "requests were blocked for exceeding the token limit per request",
        policy::RATE_LIMIT => "requests were throttled by the rate limit",
        policy::FAILURE_SPIKE => {
            "the tenant was frozen automatically after a spike of upstream failures"
        }
        policy::PROMPT_INJECTION => "requests were blocked as prompt injection",
        policy::BUDGET => "calls were refused because the budget was exhausted",
        rule::UPSTREAM_ERROR => "calls failed at the upstream",
        rule::COST_SPIKE => "calls cost far more than the tenant's usual",
        rule::BUDGET_SOFT => "spending crossed the budget's soft threshold",
        rule::OVERFLOW => {
            "more problems arrived than the hourly incident cap allows; they were collected here"
        }
        _ => "a policy tripped",
    };
    let span = incident.last_signal_at.millis() - incident.first_signal_at.millis();
    let how_often = match incident.signal_count {
        n if n <= 1 => "once, at ".to_owned(),
        n if span < 90_000 => format!("{n} times within {}, from ", duration(span)),
        n => format!("{n} times over {}, from ", duration(span)),
    };
    let mut parts = vec![
        SummaryPart::Text(format!(
            "What happened: {what} ({}), {how_often}",
            people.rewrite(&incident.subject)
        )),
        SummaryPart::Time(incident.first_signal_at),
    ];
    let mut impact: Vec<String> = Vec::new();
    if incident.call_count > 0 {
        impact.push(plural(incident.call_count, "call"));
    }
    if incident.end_user_count > 0 {
        impact.push(plural(incident.end_user_count, "end user"));
    }
    if incident.cost.nanos() > 0 {
        impact.push(format!("{} of known cost", incident.cost.readable()));
    }
    let impact = if impact.is_empty() {
        "no affected call recorded".to_owned()
    } else {
        impact.join(", ")
    };
    let mut done: Vec<String> = Vec::new();
    let after = |e: &IncidentEvent| duration(e.at.millis() - incident.created_at.millis());
    for e in events {
        let by = people.show(&e.actor);
        done.push(match e.kind {
            EventKind::Reopened if e.actor == SYSTEM => "reopened when the problem recurred".into(),
            // "acknowledged by … after …", "resolved by …", "reopened by …".
            EventKind::Acknowledged | EventKind::Resolved | EventKind::Reopened => {
                format!("{} by {by} after {}", e.kind, after(e))
            }
            EventKind::KillSwitch => e
                .note
                .as_deref()
                .map(|n| people.rewrite(n))
                .unwrap_or_else(|| "kill switch used".into()),
            EventKind::AlertSent => e.note.clone().unwrap_or_else(|| "alert sent".into()),
            EventKind::Merged => format!("{} by {by}", e.note.as_deref().unwrap_or("merged")),
            _ => continue,
        });
    }
    let done = if done.is_empty() {
        match incident.status {
            IncidentStatus::Open => " What was done: nothing yet; the incident is open.".to_owned(),
            _ => " What was done: nothing recorded.".to_owned(),
        }
    } else {
        format!(" What was done: {}.", done.join("; "))
    };
    parts.push(SummaryPart::Text(format!(". Impact: {impact}.{done}")));
    parts
}

/// [`summary_parts`] as one text, its moments in UTC, people by their actor label.
pub fn summary(incident: &Incident, events: &[IncidentEvent]) -> String {
    summary_text(&summary_parts(incident, events, &People::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::incident::Severity;
    use crate::domain::{CallId, Decision, IncidentEventId, IncidentId, KeyId, Money, TenantId};
    use agv_testkit::assert_contains;

    fn call() -> CallRecord {
        CallRecord {
            model: Some("gpt-4o".into()),
            end_user: Some("cust_8372".into()),
            request_body: "{\"messages\":[]}".into(),
            status: 200,
            decisions: vec![
                Decision {
                    micros: 3,
                    ..Decision::pass(policy::KILL_SWITCH, "not frozen")
                },
                Decision {
                    micros: 5,
                    ..Decision::pass(policy::MAX_TOKENS, "≈10 prompt tokens")
                        .measured(10.0, 16000.0, "tokens")
                },
            ],
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            total_tokens: Some(15),
            cost: Some(Money::from_usd(0.0001)),
            latency_us: 2_000,
            upstream_latency_us: Some(1_500),
            enforcement_us: 8,
            upstream_attempts: 1,
            upstream: Some("http://up/v1".into()),
            ..CallRecord::new(
                TenantId::generate(),
                KeyId::generate(),
                Timestamp::from_millis(1_700_000_000_000),
            )
        }
    }

    #[test]
    fn a_passing_call_reads_input_decisions_upstream_output_root_cause() {
        let t = for_call(&call());
        let kinds: Vec<&str> = t.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                "input",
                "decision",
                "decision",
                "upstream",
                "output",
                "root_cause"
            ]
        );
        assert!(t.steps[0].detail.contains("cust_8372"));
        assert_eq!(t.steps[2].threshold, Some(16000.0));
        assert_eq!(t.steps[2].value, Some(10.0));
        assert!(t.steps.windows(2).all(|w| w[0].offset_us <= w[1].offset_us));
        assert!(t.root_cause.contains("Every check passed"));
    }

    #[test]
    fn a_blocked_call_names_the_policy_the_value_and_the_intent() {
        let mut c = call();
        c.status = 400;
        c.blocked = true;
        c.blocked_by = Some(policy::PROMPT_INJECTION.into());
        c.upstream_latency_us = None;
        c.upstream_attempts = 0;
        c.decisions.push(
            Decision::new(
                policy::PROMPT_INJECTION,
                Outcome::Block,
                "matched 'ignore previous instructions'",
            )
            .measured(1.0, 1.0, "patterns"),
        );
        let t = for_call(&c);
        assert_eq!(t.steps[3].outcome, Some(Outcome::Block));
        assert_eq!(t.steps[4].title, "Upstream not called");
        assert_contains(&t.root_cause, "Prompt injection (dg-005)");
        assert!(t.root_cause.contains("ignore previous instructions"));
        assert!(t.root_cause.contains("as intended"));
    }

    #[test]
    fn an_upstream_failure_says_the_call_should_have_succeeded() {
        let mut c = call();
        c.status = 502;
        c.error = Some("upstream unreachable: connection refused".into());
        c.upstream_attempts = 4;
        let t = for_call(&c);
        assert!(t.root_cause.contains("should have succeeded"));
        assert!(
            t.steps
                .iter()
                .any(|s| s.kind == "upstream" && s.detail.contains("4 attempts"))
        );
    }

    const T0: i64 = 1_700_000_000_000;

    fn incident(id: &IncidentId) -> Incident {
        let t0 = Timestamp::from_millis(T0);
        Incident {
            id: id.clone(),
            tenant_id: TenantId::generate(),
            fingerprint: "v1|x".into(),
            grouping_version: 1,
            rule: policy::PROMPT_INJECTION.into(),
            subject: "user:cust_8372".into(),
            title: "Prompt injection blocked from end user cust_8372".into(),
            status: IncidentStatus::Resolved,
            severity: Severity::High,
            assignee: None,
            overflow: false,
            demo: false,
            created_at: t0,
            updated_at: t0.plus_millis(600_000),
            first_signal_at: t0,
            last_signal_at: t0.plus_millis(60_000),
            acknowledged_at: Some(t0.plus_millis(120_000)),
            resolved_at: Some(t0.plus_millis(600_000)),
            signal_count: 2,
            call_count: 2,
            end_user_count: 1,
            cost: Money::ZERO,
            merged_into: None,
        }
    }

    fn event(id: &IncidentId, ms: i64, kind: EventKind, actor: &str) -> IncidentEvent {
        IncidentEvent {
            id: IncidentEventId::generate(),
            incident_id: id.clone(),
            at: Timestamp::from_millis(T0 + ms),
            actor: actor.into(),
            kind,
            before: Some(serde_json::json!({"status": "open"})),
            after: Some(serde_json::json!({"status": "x"})),
            note: None,
        }
    }

    fn signal(id: &IncidentId, ms: i64) -> StoredSignal {
        StoredSignal {
            incident_id: id.clone(),
            rule: policy::PROMPT_INJECTION.into(),
            at: Timestamp::from_millis(T0 + ms),
            call_id: Some(CallId::generate()),
            end_user: Some("cust_8372".into()),
            cost: None,
            detail: "matched".into(),
        }
    }

    #[test]
    fn an_incident_timeline_puts_the_root_cause_between_the_problem_and_the_response() {
        let id = IncidentId::generate();
        let inc = incident(&id);
        let events = vec![
            event(&id, 0, EventKind::Opened, "system"),
            event(&id, 30_000, EventKind::Acknowledged, "user:usr_dana"),
            event(&id, 45_000, EventKind::Escalated, "system"),
            event(&id, 600_000, EventKind::Resolved, "user:usr_dana"),
        ];
        let sigs = [signal(&id, 0), signal(&id, 60_000)];
        let t = for_incident(&inc, &sigs, &events, None);
        let titles: Vec<&str> = t.steps.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Incident opened",
                "Prompt injection (dg-005) signal",
                "Severity escalated",
                "Prompt injection (dg-005) signal",
                "Root cause",
                "Acknowledged",
                "Resolved"
            ]
        );
        // Deterministic.
        assert_eq!(t, for_incident(&inc, &sigs, &events, None));
    }

    #[test]
    fn an_incident_summary_names_people_by_email_where_known() {
        let id = IncidentId::generate();
        let inc = incident(&id);
        let dana = UserId::generate();
        let events = vec![
            event(&id, 0, EventKind::Opened, "system"),
            event(
                &id,
                120_000,
                EventKind::Acknowledged,
                &format!("user:{dana}"),
            ),
            event(&id, 600_000, EventKind::Resolved, "key:key_1"),
        ];
        let mut people = People::default();
        people.insert(&dana, "dana@example.com");
        let t = for_incident_naming(&inc, &[signal(&id, 0)], &events, None, &people);
        assert!(
            t.summary
                .starts_with("What happened: requests were blocked as prompt injection"),
            "{}",
            t.summary
        );
        assert_contains(&t.summary, "acknowledged by dana@example.com after 2 min");
        assert_contains(&t.summary, "resolved by key:key_1 after 10 min");
        let ack = t.steps.iter().find(|s| s.title == "Acknowledged").unwrap();
        assert_eq!(ack.actor.as_deref(), Some(format!("user:{dana}").as_str()));
        assert_eq!(ack.actor_email.as_deref(), Some("dana@example.com"));
        assert!(
            ack.detail.ends_with("by dana@example.com"),
            "{}",
            ack.detail
        );
        // Without names, the labels stay.
        assert_contains(
            &summary(&inc, &events),
            &format!("acknowledged by user:{dana}"),
        );
    }

    #[test]
    fn a_burst_of_signals_reads_within_a_fraction_of_a_second() {
        let id = IncidentId::generate();
        let mut inc = incident(&id);
        for (count, span_ms, expected) in [
            (
                5,
                180,
                "5 times within 0.2 s, from 2023-11-14 22:13:20 UTC.",
            ),
            (1, 0, "(user:cust_8372), once, at 2023-11-14 22:13:20 UTC."),
            (40, 600_000, "40 times over 10 min"),
        ] {
            inc.signal_count = count;
            inc.last_signal_at = inc.first_signal_at.plus_millis(span_ms);
            let text = summary(&inc, &[]);
            assert_contains(&text, expected);
            assert!(!text.contains("over 0 s"), "{count} signals: {text}");
        }
    }

    #[test]
    fn a_summary_omits_a_zero_cost_and_shows_small_costs_with_their_digits() {
        let id = IncidentId::generate();
        let mut inc = incident(&id);
        let text = summary(&inc, &[]);
        assert!(text.contains("Impact: 2 calls, 1 end user."), "{text}");
        assert!(!text.contains("$0.0000"), "{text}");

        inc.cost = Money::from_usd(0.0153);
        assert_contains(
            &summary(&inc, &[]),
            "Impact: 2 calls, 1 end user, $0.0153 of known cost.",
        );
        assert_eq!(Money::from_usd(12.345).readable(), "$12.35");
        assert_eq!(Money::from_usd(0.5).readable(), "$0.50");
        assert_eq!(Money::from_usd(0.000_001).readable(), "under $0.0001");

        inc.call_count = 0;
        inc.end_user_count = 0;
        inc.cost = Money::ZERO;
        assert_contains(&summary(&inc, &[]), "Impact: no affected call recorded.");
    }

    #[test]
    fn the_summary_marks_its_moments_for_the_readers_time_zone() {
        let id = IncidentId::generate();
        let inc = incident(&id);
        let parts = summary_parts(&inc, &[], &People::default());
        assert!(parts.contains(&SummaryPart::Time(inc.first_signal_at)));
        let json = serde_json::to_value(&parts).unwrap();
        assert_eq!(
            json[1],
            serde_json::json!({"time": "2023-11-14T22:13:20.000Z"})
        );
        assert!(
            json[0]["text"]
                .as_str()
                .unwrap()
                .starts_with("What happened:")
        );
    }

    #[test]
    fn a_reopening_by_hand_and_by_recurrence_read_differently() {
        let id = IncidentId::generate();
        let inc = incident(&id);
        let mut by_hand = event(&id, 700_000, EventKind::Reopened, "key:key_1");
        by_hand.before = Some(serde_json::json!({"status": "resolved"}));
        by_hand.after = Some(serde_json::json!({"status": "open"}));
        let mut recurred = event(&id, 800_000, EventKind::Reopened, "system");
        recurred.note = Some("matched again".into());
        let text = summary(&inc, &[by_hand.clone(), recurred.clone()]);
        assert_contains(
            &text,
            "reopened by key:key_1 after 12 min; reopened when the problem recurred",
        );
        assert_eq!(
            event_sentence(&by_hand, &People::default()),
            "resolved → open by key:key_1"
        );
        assert_eq!(
            event_sentence(&recurred, &People::default()),
            "matched again"
        );
    }
}
