//! The decision timeline — for one call and for an incident — and the incident's
//! plain-English summary. Pure functions of what is stored: the same records always give
//! the same timeline and the same words.

use crate::domain::decision::policy;
use crate::domain::incident::{
    EventKind, Incident, IncidentEvent, IncidentStatus, StoredSignal, decision_detail, rule,
    rule_name,
};
use crate::domain::{CallRecord, Outcome, Timestamp};
use serde::Serialize;

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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallTimeline {
    pub call_id: String,
    pub steps: Vec<Step>,
    pub root_cause: String,
}

fn at_offset(start: Timestamp, us: i64) -> Timestamp {
    Timestamp::from_millis(start.millis() + us / 1000)
}

/// Input received → each check's decision → the upstream call → the output → root cause.
pub fn for_call(call: &CallRecord) -> CallTimeline {
    let t0 = call.created_at;
    let mut steps = Vec::new();
    let who = call
        .end_user
        .as_deref()
        .map(|u| format!(", end user {u}"))
        .unwrap_or_default();
    steps.push(Step::new(
        t0,
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
    ));
    let mut offset = 0i64;
    for d in &call.decisions {
        offset += i64::from(d.micros);
        let mut s = Step::new(
            at_offset(t0, offset),
            offset,
            "decision",
            format!("{}: {}", rule_name(&d.policy), d.outcome),
            decision_detail(d),
        );
        s.policy = Some(d.policy.clone());
        s.outcome = Some(d.outcome);
        s.value = d.value;
        s.threshold = d.threshold;
        s.unit = d.unit.clone();
        steps.push(s);
    }
    let enforcement = call.enforcement_us.max(offset);
    match call.upstream_latency_us {
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
            steps.push(Step::new(
                at_offset(t0, enforcement + up),
                enforcement + up,
                "upstream",
                "Upstream call".into(),
                detail,
            ));
        }
        None => steps.push(Step::new(
            at_offset(t0, enforcement),
            enforcement,
            "upstream",
            "Upstream not called".into(),
            match &call.blocked_by {
                Some(p) => format!("stopped by {} before the upstream", rule_name(p)),
                None => "the call ended before the upstream was asked".into(),
            },
        )),
    }
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
    steps.push(Step::new(
        at_offset(t0, call.latency_us),
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
    steps.push(Step::new(
        at_offset(t0, call.latency_us),
        call.latency_us,
        "root_cause",
        "Root cause".into(),
        root_cause.clone(),
    ));
    let mut t = CallTimeline {
        call_id: call.id.to_string(),
        steps,
        root_cause,
    };
    for s in &mut t.steps {
        s.call_id = Some(call.id.to_string());
    }
    t
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentTimeline {
    pub incident_id: String,
    pub steps: Vec<Step>,
    pub root_cause: String,
    pub summary: String,
}

/// The incident's events and signals in time order, its root cause and its summary.
/// `example` is the most recent affected call, when it could be read.
pub fn for_incident(
    incident: &Incident,
    signals: &[StoredSignal],
    events: &[IncidentEvent],
    example: Option<&CallRecord>,
) -> IncidentTimeline {
    let t0 = incident.first_signal_at;
    let off = |t: Timestamp| (t.millis() - t0.millis()) * 1000;
    let mut steps: Vec<(i64, u8, Step)> = Vec::new();
    for s in signals {
        let mut step = Step::new(
            s.at,
            off(s.at),
            "signal",
            format!("{} signal", rule_name(&s.rule)),
            s.detail.clone(),
        );
        step.policy = Some(s.rule.clone());
        step.call_id = s.call_id.as_ref().map(ToString::to_string);
        steps.push((s.at.millis(), 1, step));
    }
    for e in events {
        let detail = event_sentence(e);
        let mut step = Step::new(e.at, off(e.at), "event", event_title(e.kind).into(), detail);
        step.actor = Some(e.actor.clone());
        // An "opened" event sorts before the signal that opened it.
        let order = if e.kind == EventKind::Opened { 0 } else { 2 };
        steps.push((e.at.millis(), order, step));
    }
    steps.sort_by_key(|(at, order, _)| (*at, *order));
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
    let mut out: Vec<Step> = steps.into_iter().map(|(_, _, s)| s).collect();
    let end = incident.updated_at.max(incident.last_signal_at);
    out.push(Step::new(
        end,
        off(end),
        "root_cause",
        "Root cause".into(),
        root_cause.clone(),
    ));
    IncidentTimeline {
        incident_id: incident.id.to_string(),
        steps: out,
        root_cause,
        summary: summary(incident, events),
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
    }
}

fn field(v: &Option<serde_json::Value>, name: &str) -> String {
    v.as_ref()
        .and_then(|v| v.get(name))
        .map(|x| match x {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "nobody".into(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "?".into())
}

fn event_sentence(e: &IncidentEvent) -> String {
    match e.kind {
        EventKind::Opened | EventKind::Reopened => e.note.clone().unwrap_or_default(),
        EventKind::Escalated | EventKind::SeverityChanged => format!(
            "{} → {} by {}",
            field(&e.before, "severity"),
            field(&e.after, "severity"),
            e.actor
        ),
        EventKind::Acknowledged | EventKind::Resolved => format!(
            "{} → {} by {}",
            field(&e.before, "status"),
            field(&e.after, "status"),
            e.actor
        ),
        EventKind::Assigned => format!(
            "{} → {} by {}",
            field(&e.before, "assignee"),
            field(&e.after, "assignee"),
            e.actor
        ),
        _ => e.note.clone().unwrap_or_else(|| format!("by {}", e.actor)),
    }
}

fn duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// What happened, the impact, what was done — from a fixed template.
pub fn summary(incident: &Incident, events: &[IncidentEvent]) -> String {
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
    let mut text = format!(
        "What happened: {what} ({}), {} time{} over {} starting {}.",
        incident.subject,
        incident.signal_count,
        if incident.signal_count == 1 { "" } else { "s" },
        duration(span),
        incident.first_signal_at.to_rfc3339()
    );
    text.push_str(&format!(
        " Impact: {} call{}, {} end user{}, ${:.4} of known cost.",
        incident.call_count,
        if incident.call_count == 1 { "" } else { "s" },
        incident.end_user_count,
        if incident.end_user_count == 1 {
            ""
        } else {
            "s"
        },
        incident.cost.usd()
    ));
    let mut done: Vec<String> = Vec::new();
    for e in events {
        match e.kind {
            EventKind::Acknowledged => done.push(format!(
                "acknowledged by {} after {}",
                e.actor,
                duration(e.at.millis() - incident.created_at.millis())
            )),
            EventKind::KillSwitch => {
                done.push(e.note.clone().unwrap_or_else(|| "kill switch used".into()))
            }
            EventKind::Resolved => done.push(format!(
                "resolved by {} after {}",
                e.actor,
                duration(e.at.millis() - incident.created_at.millis())
            )),
            EventKind::Reopened => done.push("reopened when the problem recurred".into()),
            EventKind::AlertSent => {
                done.push(e.note.clone().unwrap_or_else(|| "alert sent".into()))
            }
            _ => {}
        }
    }
    if done.is_empty() {
        text.push_str(match incident.status {
            IncidentStatus::Open => " What was done: nothing yet; the incident is open.",
            _ => " What was done: nothing recorded.",
        });
    } else {
        text.push_str(&format!(" What was done: {}.", done.join("; ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::incident::Severity;
    use crate::domain::{CallId, Decision, IncidentEventId, IncidentId, KeyId, Money, TenantId};

    fn call() -> CallRecord {
        CallRecord {
            id: CallId::generate(),
            tenant_id: TenantId::generate(),
            key_id: KeyId::generate(),
            created_at: Timestamp::from_millis(1_700_000_000_000),
            endpoint: "chat.completions".into(),
            model: Some("gpt-4o".into()),
            stream: false,
            end_user: Some("cust_8372".into()),
            session_id: None,
            metadata: None,
            request_body: "{\"messages\":[]}".into(),
            request_truncated: false,
            request_sha256: String::new(),
            response_body: None,
            response_truncated: false,
            response_sha256: None,
            status: 200,
            error: None,
            blocked: false,
            blocked_by: None,
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
            cached_tokens: None,
            total_tokens: Some(15),
            cost: Some(Money::from_usd(0.0001)),
            latency_us: 2_000,
            upstream_latency_us: Some(1_500),
            enforcement_us: 8,
            upstream_attempts: 1,
            upstream: Some("http://up/v1".into()),
            request_body_sha256: None,
            response_body_sha256: None,
            body_pruned_at: None,
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
        assert!(
            t.root_cause.contains("Prompt injection (dg-005)"),
            "{}",
            t.root_cause
        );
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

    #[test]
    fn an_incident_timeline_orders_events_and_signals_and_summarises() {
        let tenant = TenantId::generate();
        let id = IncidentId::generate();
        let t0 = Timestamp::from_millis(1_700_000_000_000);
        let inc = Incident {
            id: id.clone(),
            tenant_id: tenant,
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
        };
        let sig = |ms| StoredSignal {
            incident_id: id.clone(),
            rule: policy::PROMPT_INJECTION.into(),
            at: t0.plus_millis(ms),
            call_id: Some(CallId::generate()),
            end_user: Some("cust_8372".into()),
            cost: None,
            detail: "matched".into(),
        };
        let ev = |ms, kind, actor: &str| IncidentEvent {
            id: IncidentEventId::generate(),
            incident_id: id.clone(),
            at: t0.plus_millis(ms),
            actor: actor.into(),
            kind,
            before: Some(serde_json::json!({"status": "open"})),
            after: Some(serde_json::json!({"status": "x"})),
            note: None,
        };
        let events = vec![
            ev(0, EventKind::Opened, "system"),
            ev(120_000, EventKind::Acknowledged, "user:usr_dana"),
            ev(600_000, EventKind::Resolved, "user:usr_dana"),
        ];
        let sigs = [sig(0), sig(60_000)];
        let t = for_incident(&inc, &sigs, &events, None);
        let kinds: Vec<&str> = t.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            ["event", "signal", "signal", "event", "event", "root_cause"]
        );
        assert_eq!(t.steps[0].title, "Incident opened");
        assert!(
            t.summary
                .starts_with("What happened: requests were blocked as prompt injection"),
            "{}",
            t.summary
        );
        assert!(
            t.summary.contains("Impact: 2 calls, 1 end user"),
            "{}",
            t.summary
        );
        assert!(
            t.summary
                .contains("acknowledged by user:usr_dana after 2 min"),
            "{}",
            t.summary
        );
        assert!(
            t.summary.contains("resolved by user:usr_dana after 10 min"),
            "{}",
            t.summary
        );
        // Deterministic.
        assert_eq!(t, for_incident(&inc, &sigs, &events, None));
    }
}
