//! Incidents: what went wrong, grouped so a person reads one item instead of a thousand.
//!
//! Everything here is pure. A *signal* is one thing that went wrong (a blocked call, an
//! automatic freeze, an upstream error, a cost spike, an exhausted budget). Its
//! *fingerprint* — tenant, rule, and the key, model or end user that matters for that
//! rule — decides which incident it joins. Grouping rules are versioned: an incident keeps
//! the version it was made under and its signals never move, so a rule change never
//! regroups history.

use super::{CallId, IncidentEventId, IncidentId, KeyId, Money, ParseError, TenantId, Timestamp};
use serde::{Deserialize, Serialize};

/// The grouping rules in force. Bump it (and keep the old rules' behaviour for the old
/// number's incidents) when a rule changes.
pub const GROUPING_VERSION: i32 = 1;
/// A signal joins its fingerprint's open incident when it comes within this long of the
/// incident's last signal.
pub const GROUP_WINDOW_MS: i64 = 5 * 60 * 1000;
/// A resolved incident is reopened when its fingerprint recurs within this long of the
/// resolution; later, a new incident is opened.
pub const REOPEN_WINDOW_MS: i64 = 60 * 60 * 1000;
/// New incidents a tenant may get per hour; signals past the cap join one overflow incident.
pub const MAX_NEW_PER_HOUR: i64 = 20;
pub const HOUR_MS: i64 = 60 * 60 * 1000;

/// Rules that raise signals besides the guardrails' policy ids (`killswitch`, `dg-001`…).
pub mod rule {
    pub const UPSTREAM_ERROR: &str = "upstream_error";
    pub const COST_SPIKE: &str = "cost_spike";
    pub const BUDGET_SOFT: &str = "budget_soft";
    /// The rule of the overflow incident (signals past the hourly cap).
    pub const OVERFLOW: &str = "overflow";
}

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Severity {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
}

impl Severity {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let name = s.trim().to_ascii_lowercase();
        Self::from_name(&name).ok_or_else(|| {
            ParseError::new(format!(
                "'{}' is not a severity: expected low, medium, high or critical",
                name.chars().take(32).collect::<String>()
            ))
        })
    }

    fn raised(self, steps: u8) -> Self {
        let idx = (self as u8).saturating_add(steps).min(Self::Critical as u8);
        Self::ALL[usize::from(idx)]
    }
}

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum IncidentStatus {
        Open => "open",
        Acknowledged => "acknowledged",
        Resolved => "resolved",
    }
}

impl IncidentStatus {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(Self::Open),
            "acknowledged" | "ack" => Ok(Self::Acknowledged),
            "resolved" => Ok(Self::Resolved),
            other => Err(ParseError::new(format!(
                "'{}' is not an incident status: expected open, acknowledged or resolved",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }
}

/// What a signal is about, beyond its tenant and rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Tenant,
    Key(KeyId),
    Model(String),
    EndUser(String),
}

impl Subject {
    /// `tenant`, `key:key_…`, `model:gpt-4o`, `user:cust_1`.
    pub fn label(&self) -> String {
        match self {
            Self::Tenant => "tenant".into(),
            Self::Key(k) => format!("key:{k}"),
            Self::Model(m) => format!("model:{m}"),
            Self::EndUser(u) => format!("user:{u}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Tenant => "the tenant".into(),
            Self::Key(k) => format!("key {k}"),
            Self::Model(m) => format!("model {m}"),
            Self::EndUser(u) => format!("end user {u}"),
        }
    }
}

/// One thing that went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub tenant_id: TenantId,
    /// A policy id (`dg-005`, `killswitch`, `budget`…) or one of [`rule`].
    pub rule: String,
    pub subject: Subject,
    pub at: Timestamp,
    /// The call that raised it, if one did.
    pub call_id: Option<CallId>,
    pub end_user: Option<String>,
    pub cost: Option<Money>,
    /// One line: what was measured against what.
    pub detail: String,
    /// Raised by the demo simulator; such incidents are marked [DEMO].
    pub demo: bool,
}

impl Signal {
    /// `v1|<tenant>|<rule>|<subject>`: the same for every signal that belongs together.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.tenant_id, &self.rule, &self.subject.label())
    }
}

pub fn fingerprint(tenant: &TenantId, rule: &str, subject_label: &str) -> String {
    format!("v{GROUPING_VERSION}|{tenant}|{rule}|{subject_label}")
}

/// A rule's name for people.
pub fn rule_name(rule: &str) -> &'static str {
    use super::decision::policy;
    match rule {
        policy::KILL_SWITCH => "Kill switch",
        policy::MAX_COST => "Max cost per request (dg-001)",
        policy::MAX_TOKENS => "Max tokens per request (dg-002)",
        policy::RATE_LIMIT => "Rate limit (dg-003)",
        policy::FAILURE_SPIKE => "Failure-spike freeze (dg-004)",
        policy::PROMPT_INJECTION => "Prompt injection (dg-005)",
        policy::BUDGET => "Budget exhausted",
        rule::UPSTREAM_ERROR => "Upstream errors",
        rule::COST_SPIKE => "Cost spike",
        rule::BUDGET_SOFT => "Budget soft threshold",
        rule::OVERFLOW => "Incident overflow",
        _ => "Policy",
    }
}

/// The title of a new incident, from its first signal.
pub fn title(signal: &Signal) -> String {
    use super::decision::policy;
    let who = signal.subject.describe();
    let base = match signal.rule.as_str() {
        policy::KILL_SWITCH => format!("Calls of {who} stopped by the kill switch"),
        policy::MAX_COST => format!("Requests over the cost limit from {who}"),
        policy::MAX_TOKENS => format!("Requests over the token limit from {who}"),
        policy::RATE_LIMIT => format!("Rate limit hit by {who}"),
        policy::FAILURE_SPIKE => "Tenant frozen automatically after a failure spike".to_owned(),
        policy::PROMPT_INJECTION => format!("Prompt injection blocked from {who}"),
        policy::BUDGET => "Budget exhausted: calls refused".to_owned(),
        rule::UPSTREAM_ERROR => format!("Upstream errors on {who}"),
        rule::COST_SPIKE => format!("Cost spike on {who}"),
        rule::BUDGET_SOFT => "Budget soft threshold crossed".to_owned(),
        rule::OVERFLOW => "More than 20 new incidents in an hour (overflow)".to_owned(),
        other => format!("{other} tripped for {who}"),
    };
    if signal.demo {
        format!("[DEMO] {base}")
    } else {
        base
    }
}

/// The severity a rule starts at.
pub fn base_severity(rule: &str) -> Severity {
    use super::decision::policy;
    match rule {
        policy::KILL_SWITCH | policy::RATE_LIMIT => Severity::Low,
        policy::MAX_COST | policy::MAX_TOKENS | rule::BUDGET_SOFT | rule::COST_SPIKE => {
            Severity::Medium
        }
        rule::UPSTREAM_ERROR | rule::OVERFLOW => Severity::Medium,
        policy::PROMPT_INJECTION | policy::BUDGET => Severity::High,
        policy::FAILURE_SPIKE => Severity::Critical,
        _ => Severity::Medium,
    }
}

/// The severity an incident has earned from its impact: one step up at 10 affected calls
/// and another at 100, one for 5 or more end users, one for $10 or more of cost.
pub fn earned_severity(rule: &str, calls: i64, end_users: i64, cost: Money) -> Severity {
    let earned = [
        calls >= 10,
        calls >= 100,
        end_users >= 5,
        cost >= Money::from_usd(10.0),
    ];
    base_severity(rule).raised(earned.into_iter().map(u8::from).sum())
}

/// The newest incident of a fingerprint, as grouping needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub id: IncidentId,
    pub status: IncidentStatus,
    pub last_signal_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

/// Where a signal goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Into this open (or acknowledged) incident.
    Join(IncidentId),
    /// Into this resolved incident, which opens again.
    Reopen(IncidentId),
    /// Into a new incident.
    New,
    /// Past the hourly cap: into the tenant's open overflow incident, or a new one.
    Overflow(Option<IncidentId>),
}

/// Grouping v1. `latest`: the fingerprint's newest incident; `new_last_hour`: incidents
/// (not counting overflow ones) the tenant got in the hour before `at`; `overflow`: the
/// tenant's open overflow incident, if any.
pub fn place(
    at: Timestamp,
    latest: Option<&Latest>,
    new_last_hour: i64,
    overflow: Option<&IncidentId>,
) -> Placement {
    if let Some(l) = latest {
        match l.status {
            IncidentStatus::Open | IncidentStatus::Acknowledged
                if at.millis() - l.last_signal_at.millis() <= GROUP_WINDOW_MS =>
            {
                return Placement::Join(l.id.clone());
            }
            IncidentStatus::Resolved
                if l.resolved_at
                    .is_some_and(|r| at.millis() - r.millis() <= REOPEN_WINDOW_MS) =>
            {
                return Placement::Reopen(l.id.clone());
            }
            _ => {}
        }
    }
    if new_last_hour >= MAX_NEW_PER_HOUR {
        Placement::Overflow(overflow.cloned())
    } else {
        Placement::New
    }
}

/// A stored incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub id: IncidentId,
    pub tenant_id: TenantId,
    pub fingerprint: String,
    pub grouping_version: i32,
    pub rule: String,
    /// `tenant`, `key:…`, `model:…` or `user:…`.
    pub subject: String,
    pub title: String,
    pub status: IncidentStatus,
    pub severity: Severity,
    pub assignee: Option<String>,
    pub overflow: bool,
    pub demo: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub first_signal_at: Timestamp,
    pub last_signal_at: Timestamp,
    pub acknowledged_at: Option<Timestamp>,
    pub resolved_at: Option<Timestamp>,
    pub signal_count: i64,
    /// Distinct calls among the signals.
    pub call_count: i64,
    pub end_user_count: i64,
    /// Known cost of the affected calls.
    pub cost: Money,
    /// The incident this one was merged into as a duplicate (it is then resolved, and its
    /// fingerprint's new signals go there).
    pub merged_into: Option<IncidentId>,
}

/// A signal as stored under its incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredSignal {
    pub incident_id: IncidentId,
    pub rule: String,
    pub at: Timestamp,
    pub call_id: Option<CallId>,
    pub end_user: Option<String>,
    pub cost: Option<Money>,
    pub detail: String,
}

/// The distinct calls that raised `signals`, in their order.
pub fn distinct_calls(signals: Vec<StoredSignal>) -> Vec<CallId> {
    let mut seen = std::collections::HashSet::new();
    let calls = signals.into_iter().filter_map(|s| s.call_id);
    calls.filter(|c| seen.insert(c.clone())).collect()
}

/// What happened to an incident, by whom and when: its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentEvent {
    pub id: IncidentEventId,
    pub incident_id: IncidentId,
    pub at: Timestamp,
    /// `system`, `policy:dg-004`, `key:key_…`, `user:usr_…`.
    pub actor: String,
    pub kind: EventKind,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub note: Option<String>,
}

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum EventKind {
        Opened => "opened",
        Reopened => "reopened",
        Escalated => "escalated",
        Acknowledged => "acknowledged",
        Resolved => "resolved",
        Assigned => "assigned",
        SeverityChanged => "severity_changed",
        Note => "note",
        /// A kill-switch freeze or unfreeze of the incident's tenant or key.
        #[serde(rename = "killswitch")]
        KillSwitch => "killswitch",
        AlertSent => "alert_sent",
        Summary => "summary",
        /// Duplicates merged: on the incident merged away ("merged into inc_…", which also
        /// resolves it) and on the one it went into ("merged inc_… into this").
        Merged => "merged",
    }
}

impl EventKind {
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_name(s)
    }
}

/// A change a person (or key) asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Acknowledge,
    Resolve,
    /// A resolved incident is open again: someone saw that it is not over.
    Reopen,
    Assign(Option<String>),
    SetSeverity(Severity),
    Note(String),
}

/// Why a change is refused (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidTransition(pub String);

/// Checks a status change: open → acknowledged → resolved, open → resolved, and
/// resolved → open (a person reopens; the engine also reopens on recurrence).
pub fn transition(
    from: IncidentStatus,
    change: &Change,
) -> Result<Option<IncidentStatus>, InvalidTransition> {
    use IncidentStatus::*;
    match (change, from) {
        (Change::Acknowledge, Open) => Ok(Some(Acknowledged)),
        (Change::Acknowledge, Acknowledged) => Err(InvalidTransition(
            "the incident is already acknowledged".into(),
        )),
        (Change::Acknowledge, Resolved) => Err(InvalidTransition(
            "a resolved incident cannot be acknowledged; reopen it first (it also reopens by itself if the problem recurs)".into(),
        )),
        (Change::Resolve, Open | Acknowledged) => Ok(Some(Resolved)),
        (Change::Resolve, Resolved) => {
            Err(InvalidTransition("the incident is already resolved".into()))
        }
        (Change::Reopen, Resolved) => Ok(Some(Open)),
        (Change::Reopen, Open | Acknowledged) => Err(InvalidTransition(
            "the incident is not resolved; only a resolved incident can be reopened".into(),
        )),
        (Change::Assign(_) | Change::SetSeverity(_) | Change::Note(_), _) => Ok(None),
    }
}

/// The most incidents one merge takes in.
pub const MAX_MERGE: usize = 100;

/// Why a merge of duplicates is refused; nothing is written then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeRefusal {
    /// A listed incident does not exist in the tenant (another tenant's reads the same).
    #[error("no incident {0}")]
    Unknown(IncidentId),
    #[error("{0} is already merged into {1}; merge into {1} instead")]
    TargetMerged(IncidentId, IncidentId),
    #[error("{0} is resolved; reopen it before merging duplicates into it")]
    TargetResolved(IncidentId),
    #[error("{0} was already merged into {1}")]
    AlreadyMerged(IncidentId, IncidentId),
}

/// What a merge did: the target after it, and each merged incident before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub target_before: Incident,
    pub target: Incident,
    pub merged: Vec<(Incident, Incident)>,
}

/// Mean time to acknowledge and to resolve, over a tenant's incidents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct IncidentStats {
    pub open: i64,
    pub acknowledged: i64,
    pub resolved: i64,
    /// Mean of acknowledged_at − created_at over acknowledged incidents, in ms.
    pub mtta_ms: Option<i64>,
    /// Mean of resolved_at − created_at over resolved incidents, in ms.
    pub mttr_ms: Option<i64>,
}

/// Filters for listing incidents; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub status: Option<IncidentStatus>,
    /// At least this severe.
    pub min_severity: Option<Severity>,
    pub severity: Option<Severity>,
    pub rule: Option<String>,
    /// Incidents with a signal from this end user.
    pub end_user: Option<String>,
    pub key_id: Option<KeyId>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Words that must all appear in the title (case-insensitive).
    pub text: Vec<String>,
}

/// Position after the last incident of a page (created_at desc, id desc).
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentCursor {
    pub created_at: Timestamp,
    pub id: IncidentId,
}

impl IncidentCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.millis(), self.id)
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError::new(
                "the cursor is not one this server gave out: pass back next_cursor unchanged",
            )
        };
        let (at, id) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            created_at: Timestamp::from_millis(at.parse().map_err(|_| bad())?),
            id: IncidentId::parse(id).map_err(|_| bad())?,
        })
    }
}

/// What applying one signal did, so the caller can alert and log.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub incident_id: IncidentId,
    pub tenant_id: TenantId,
    pub opened: bool,
    pub reopened: bool,
    /// The severity rose (from, to).
    pub escalated: Option<(Severity, Severity)>,
    pub severity: Severity,
}

/// A tenant's usual cost per call, for spotting a spike: an exponentially weighted mean
/// over its calls with a known cost. A call costing at least ten times the mean (and at
/// least $0.10) after twenty calls of history is a spike.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostBaseline {
    calls: u64,
    mean_nanos: f64,
}

impl CostBaseline {
    pub const MIN_HISTORY: u64 = 20;
    pub const FACTOR: f64 = 10.0;
    pub const MIN_SPIKE_USD: f64 = 0.10;

    /// Takes one call's cost; returns the signal's detail when it is a spike.
    pub fn observe(&mut self, cost: Money) -> Option<String> {
        let c = cost.nanos() as f64;
        let spike = self.calls >= Self::MIN_HISTORY
            && c >= Self::FACTOR * self.mean_nanos
            && cost >= Money::from_usd(Self::MIN_SPIKE_USD);
        let detail = spike.then(|| {
            format!(
                "one call cost ${:.4}, {:.0}× the tenant's usual ${:.4} per call",
                cost.usd(),
                c / self.mean_nanos.max(1.0),
                self.mean_nanos / 1e9
            )
        });
        self.mean_nanos = if self.calls == 0 {
            c
        } else {
            0.9 * self.mean_nanos + 0.1 * c
        };
        self.calls += 1;
        detail
    }
}

/// The signals one recorded call raises: a stopped call (each stopping decision), an
/// upstream failure. The subject is what matters for the rule: the end user for prompt
/// injection (the key when there is none), the key for rate and size limits, the tenant
/// for budgets and a tenant-wide freeze, the model for upstream errors.
pub fn signals_from_call(call: &super::CallRecord) -> Vec<Signal> {
    use super::decision::policy;
    let mut out = Vec::new();
    let base = |rule: &str, subject: Subject, detail: String| Signal {
        tenant_id: call.tenant_id.clone(),
        rule: rule.to_owned(),
        subject,
        at: call.created_at,
        call_id: Some(call.id.clone()),
        end_user: call.end_user.clone(),
        cost: call.cost,
        detail,
        demo: false,
    };
    for d in call.decisions.iter().filter(|d| d.outcome.stops()) {
        let subject = match d.policy.as_str() {
            policy::KILL_SWITCH if d.reason.starts_with("tenant") => Subject::Tenant,
            policy::BUDGET | policy::FAILURE_SPIKE => Subject::Tenant,
            policy::PROMPT_INJECTION => match &call.end_user {
                Some(u) => Subject::EndUser(u.clone()),
                None => Subject::Key(call.key_id.clone()),
            },
            _ => Subject::Key(call.key_id.clone()),
        };
        out.push(base(&d.policy, subject, decision_detail(d)));
    }
    if out.is_empty() && call.status >= 500 && !call.blocked {
        let model = call.model.clone().unwrap_or_else(|| "unknown".into());
        let detail = format!(
            "status {}{}",
            call.status,
            call.error
                .as_deref()
                .map(|e| format!(": {}", e.chars().take(200).collect::<String>()))
                .unwrap_or_default()
        );
        out.push(base(rule::UPSTREAM_ERROR, Subject::Model(model), detail));
    }
    out
}

/// "≈17000 tokens against a limit of 16000 tokens: <reason>".
pub fn decision_detail(d: &super::Decision) -> String {
    match (d.value, d.threshold) {
        (Some(v), Some(t)) => format!(
            "{}: measured {} against a threshold of {}{}",
            d.reason,
            trim_number(v),
            trim_number(t),
            d.unit
                .as_deref()
                .map(|u| format!(" {u}"))
                .unwrap_or_default()
        ),
        _ => d.reason.clone(),
    }
}

fn trim_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::policy;
    use agv_testkit::assert_contains;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn latest(status: IncidentStatus, last: i64, resolved: Option<i64>) -> Latest {
        Latest {
            id: IncidentId::generate(),
            status,
            last_signal_at: at(last),
            resolved_at: resolved.map(at),
        }
    }

    #[test]
    fn a_signal_within_the_window_joins_the_open_incident() {
        let l = latest(IncidentStatus::Open, 1_000, None);
        assert_eq!(
            place(at(1_000 + GROUP_WINDOW_MS), Some(&l), 0, None),
            Placement::Join(l.id.clone())
        );
        let acked = latest(IncidentStatus::Acknowledged, 1_000, None);
        assert_eq!(
            place(at(2_000), Some(&acked), 0, None),
            Placement::Join(acked.id.clone())
        );
    }

    #[test]
    fn a_signal_after_the_window_opens_a_new_incident() {
        let l = latest(IncidentStatus::Open, 1_000, None);
        assert_eq!(
            place(at(1_001 + GROUP_WINDOW_MS), Some(&l), 0, None),
            Placement::New
        );
        assert_eq!(place(at(5), None, 0, None), Placement::New);
    }

    #[test]
    fn recurrence_soon_after_resolution_reopens_and_later_opens_anew() {
        let l = latest(IncidentStatus::Resolved, 1_000, Some(2_000));
        assert_eq!(
            place(at(2_000 + REOPEN_WINDOW_MS), Some(&l), 0, None),
            Placement::Reopen(l.id.clone())
        );
        assert_eq!(
            place(at(2_001 + REOPEN_WINDOW_MS), Some(&l), 0, None),
            Placement::New
        );
    }

    #[test]
    fn past_the_hourly_cap_signals_overflow() {
        assert_eq!(
            place(at(0), None, MAX_NEW_PER_HOUR - 1, None),
            Placement::New
        );
        assert_eq!(
            place(at(0), None, MAX_NEW_PER_HOUR, None),
            Placement::Overflow(None)
        );
        let o = IncidentId::generate();
        assert_eq!(
            place(at(0), None, MAX_NEW_PER_HOUR + 5, Some(&o)),
            Placement::Overflow(Some(o.clone()))
        );
        // Joining an existing incident is never capped.
        let l = latest(IncidentStatus::Open, 0, None);
        assert_eq!(
            place(at(1), Some(&l), 100, Some(&o)),
            Placement::Join(l.id.clone())
        );
    }

    #[test]
    fn severity_escalates_with_calls_users_and_cost() {
        let r = policy::RATE_LIMIT;
        assert_eq!(earned_severity(r, 1, 0, Money::ZERO), Severity::Low);
        assert_eq!(earned_severity(r, 10, 0, Money::ZERO), Severity::Medium);
        assert_eq!(earned_severity(r, 100, 0, Money::ZERO), Severity::High);
        assert_eq!(earned_severity(r, 100, 5, Money::ZERO), Severity::Critical);
        assert_eq!(
            earned_severity(r, 100, 5, Money::from_usd(50.0)),
            Severity::Critical,
            "capped at critical"
        );
        assert_eq!(
            earned_severity(policy::PROMPT_INJECTION, 1, 0, Money::from_usd(10.0)),
            Severity::Critical
        );
    }

    fn signal(tenant: &TenantId, rule: &str, subject: Subject) -> Signal {
        Signal {
            tenant_id: tenant.clone(),
            rule: rule.into(),
            subject,
            at: at(0),
            call_id: None,
            end_user: None,
            cost: None,
            detail: String::new(),
            demo: false,
        }
    }

    #[test]
    fn fingerprints_separate_tenants_rules_and_subjects() {
        let t = TenantId::generate();
        let s = |rule: &str, subject: Subject| signal(&t, rule, subject);
        let a = s(policy::PROMPT_INJECTION, Subject::EndUser("u1".into()));
        let b = s(policy::PROMPT_INJECTION, Subject::EndUser("u2".into()));
        let c = s(policy::RATE_LIMIT, Subject::EndUser("u1".into()));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(
            a.fingerprint(),
            s(policy::PROMPT_INJECTION, Subject::EndUser("u1".into())).fingerprint()
        );
        assert!(a.fingerprint().starts_with("v1|"));
    }

    /// Each status change and where it leads (`Err(())`: refused).
    #[test]
    fn lifecycle_transitions_and_only_a_resolved_incident_can_be_reopened() {
        use IncidentStatus::*;
        for (from, change, to) in [
            (Open, Change::Acknowledge, Ok(Some(Acknowledged))),
            (Open, Change::Resolve, Ok(Some(Resolved))),
            (Acknowledged, Change::Resolve, Ok(Some(Resolved))),
            (Acknowledged, Change::Acknowledge, Err(())),
            (Resolved, Change::Acknowledge, Err(())),
            (Resolved, Change::Resolve, Err(())),
            (Resolved, Change::Note("x".into()), Ok(None)),
            (Resolved, Change::Reopen, Ok(Some(Open))),
            (Open, Change::Reopen, Err(())),
            (Acknowledged, Change::Reopen, Err(())),
        ] {
            let got = transition(from, &change).map_err(|_| ());
            assert_eq!(got, to, "{from:?} {change:?}");
        }
    }

    #[test]
    fn severities_and_statuses_parse_and_reject_nonsense() {
        for &s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Ok(s));
        }
        assert!(
            Severity::parse("urgent")
                .unwrap_err()
                .0
                .contains("expected")
        );
        assert_eq!(
            IncidentStatus::parse("ack"),
            Ok(IncidentStatus::Acknowledged)
        );
        assert!(IncidentStatus::parse("closed").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = IncidentCursor {
            created_at: at(123),
            id: IncidentId::generate(),
        };
        assert_eq!(IncidentCursor::parse(&c.encode()), Ok(c));
        assert!(IncidentCursor::parse("nope").is_err());
        assert!(IncidentCursor::parse("1.inc_zz").is_err());
    }

    fn call(status: u16, decisions: Vec<crate::domain::Decision>) -> crate::domain::CallRecord {
        crate::domain::CallRecord {
            model: Some("gpt-4o".into()),
            end_user: Some("cust_1".into()),
            request_body: "{}".into(),
            status,
            error: Some("upstream said no".into()),
            blocked: status == 400 || status == 423,
            decisions,
            ..crate::domain::CallRecord::new(TenantId::generate(), KeyId::generate(), at(5))
        }
    }

    #[test]
    fn calls_raise_signals_with_the_subject_their_rule_cares_about() {
        use crate::domain::{Decision, Outcome};
        let ok = call(200, vec![Decision::pass(policy::KILL_SWITCH, "not frozen")]);
        assert!(signals_from_call(&ok).is_empty());

        let inj = call(
            400,
            vec![
                Decision::pass(policy::KILL_SWITCH, "not frozen"),
                Decision::new(
                    policy::PROMPT_INJECTION,
                    Outcome::Block,
                    "matched pattern x",
                ),
            ],
        );
        let s = signals_from_call(&inj);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].rule, policy::PROMPT_INJECTION);
        assert_eq!(s[0].subject, Subject::EndUser("cust_1".into()));
        assert_eq!(s[0].call_id.as_ref(), Some(&inj.id));

        let frozen = call(
            423,
            vec![Decision::new(
                policy::KILL_SWITCH,
                Outcome::Freeze,
                "tenant frozen by x",
            )],
        );
        assert_eq!(signals_from_call(&frozen)[0].subject, Subject::Tenant);
        let key_frozen = call(
            423,
            vec![Decision::new(
                policy::KILL_SWITCH,
                Outcome::Freeze,
                "API key frozen by x",
            )],
        );
        assert_eq!(
            signals_from_call(&key_frozen)[0].subject,
            Subject::Key(key_frozen.key_id.clone())
        );

        let rl = call(
            429,
            vec![
                Decision::new(policy::RATE_LIMIT, Outcome::Throttle, "over").measured(
                    101.0,
                    100.0,
                    "requests/min",
                ),
            ],
        );
        let s = signals_from_call(&rl);
        assert_eq!(s[0].subject, Subject::Key(rl.key_id.clone()));
        assert_contains(
            &s[0].detail,
            "measured 101 against a threshold of 100 requests/min",
        );

        let bad = call(502, vec![Decision::pass(policy::KILL_SWITCH, "not frozen")]);
        let s = signals_from_call(&bad);
        assert_eq!(s[0].rule, rule::UPSTREAM_ERROR);
        assert_eq!(s[0].subject, Subject::Model("gpt-4o".into()));
        assert!(s[0].detail.contains("502"));
    }

    #[test]
    fn a_cost_spike_needs_history_and_a_real_jump() {
        let mut b = CostBaseline::default();
        // No history yet: even a big call is not a spike.
        assert!(b.observe(Money::from_usd(5.0)).is_none());
        let mut b = CostBaseline::default();
        for _ in 0..CostBaseline::MIN_HISTORY {
            assert!(b.observe(Money::from_usd(0.02)).is_none());
        }
        assert!(b.observe(Money::from_usd(0.05)).is_none(), "small rise");
        let d = b.observe(Money::from_usd(1.0)).unwrap();
        assert!(d.contains("$1.0000"), "{d}");
        // Cheap calls never spike, whatever the ratio.
        let mut c = CostBaseline::default();
        for _ in 0..30 {
            c.observe(Money::from_nanos(10));
        }
        assert!(c.observe(Money::from_usd(0.05)).is_none());
    }

    #[test]
    fn event_kinds_serialize_as_their_stored_names() {
        for k in [
            EventKind::Opened,
            EventKind::KillSwitch,
            EventKind::SeverityChanged,
            EventKind::AlertSent,
            EventKind::Merged,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn demo_titles_are_marked() {
        let sig = Signal {
            demo: true,
            ..signal(&TenantId::generate(), policy::BUDGET, Subject::Tenant)
        };
        assert!(title(&sig).starts_with("[DEMO] "));
    }
}
