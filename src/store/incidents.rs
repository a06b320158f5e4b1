//! Incidents in the store, written once for both backends (see [`super::sql`]).
//!
//! Applying signals is the one writer path: for each signal it looks up the
//! fingerprint's newest incident and the tenant's hourly count, lets the pure grouping rules
//! (`domain::incident::place`) decide, and writes the incident, the signal and any events in
//! the caller's transaction.

pub(super) use super::sql::EventSeq;
use super::sql::{self, Cells, Db, Param, SqlRow};
use super::{StoreError, StoreResult};
use crate::domain::incident::{
    self, Applied, Change, EventKind, HOUR_MS, Incident, IncidentCursor, IncidentEvent,
    IncidentFilter, IncidentStats, IncidentStatus, Latest, Placement, Severity, Signal,
    StoredSignal, Subject,
};
use crate::domain::{CallId, IncidentEventId, IncidentId, Money, TenantId, Timestamp};
use serde_json::json;

pub(super) const INCIDENT_COLUMNS: &str = "id, tenant_id, fingerprint, grouping_version, rule, subject, title, status, severity, assignee, overflow, demo, created_at, updated_at, first_signal_at, last_signal_at, acknowledged_at, resolved_at, signal_count, call_count, end_user_count, cost_nanos, merged_into";

const MAX_PAGE: i64 = 500;

fn incident_from(row: &SqlRow) -> StoreResult<Incident> {
    let c = Cells::new(row, "incident");
    let bad = |what: &str, e: crate::domain::ParseError| {
        StoreError::Database(format!("a stored incident has a bad {what}: {e}"))
    };
    Ok(Incident {
        id: IncidentId::parse(&c.text(0)?).map_err(|e| bad("id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| bad("tenant id", e))?,
        fingerprint: c.text(2)?,
        grouping_version: i32::try_from(c.int(3)?).unwrap_or(i32::MAX),
        rule: c.text(4)?,
        subject: c.text(5)?,
        title: c.text(6)?,
        status: IncidentStatus::parse(&c.text(7)?).map_err(|e| bad("status", e))?,
        severity: Severity::parse(&c.text(8)?).map_err(|e| bad("severity", e))?,
        assignee: c.opt_text(9)?,
        overflow: c.int(10)? != 0,
        demo: c.int(11)? != 0,
        created_at: Timestamp::from_millis(c.int(12)?),
        updated_at: Timestamp::from_millis(c.int(13)?),
        first_signal_at: Timestamp::from_millis(c.int(14)?),
        last_signal_at: Timestamp::from_millis(c.int(15)?),
        acknowledged_at: c.opt_int(16)?.map(Timestamp::from_millis),
        resolved_at: c.opt_int(17)?.map(Timestamp::from_millis),
        signal_count: c.int(18)?,
        call_count: c.int(19)?,
        end_user_count: c.int(20)?,
        cost: Money::from_nanos(c.int(21)?),
        merged_into: c
            .opt_text(22)?
            .map(|m| IncidentId::parse(&m))
            .transpose()
            .map_err(|e| bad("merged_into", e))?,
    })
}

fn event_from(row: &SqlRow) -> StoreResult<IncidentEvent> {
    let c = Cells::new(row, "incident event");
    let json = |s: Option<String>| -> StoreResult<Option<serde_json::Value>> {
        s.map(|s| {
            serde_json::from_str(&s).map_err(|e| {
                StoreError::Database(format!("a stored incident event has bad JSON: {e}"))
            })
        })
        .transpose()
    };
    let kind = c.text(4)?;
    Ok(IncidentEvent {
        id: IncidentEventId::parse(&c.text(0)?)
            .map_err(|e| StoreError::Database(format!("bad incident event id: {e}")))?,
        incident_id: IncidentId::parse(&c.text(1)?)
            .map_err(|e| StoreError::Database(format!("bad incident id: {e}")))?,
        at: Timestamp::from_millis(c.int(2)?),
        actor: c.text(3)?,
        kind: EventKind::parse(&kind).ok_or_else(|| {
            StoreError::Database(format!(
                "a stored incident event has an unknown kind '{kind}'"
            ))
        })?,
        before: json(c.opt_text(5)?)?,
        after: json(c.opt_text(6)?)?,
        note: c.opt_text(7)?,
    })
}

const EVENT_COLUMNS: &str = "id, incident_id, at, actor, kind, before, after, note";

/// The lock under which incidents and their events are written, one writer at a time
/// across every instance sharing a Postgres database (see `sql::Db::serialize`).
pub(super) const WRITER_LOCK: i64 = 7152010;

pub(super) struct NewEvent<'a> {
    pub incident_id: &'a IncidentId,
    pub tenant_id: &'a TenantId,
    pub at: Timestamp,
    pub actor: &'a str,
    pub kind: EventKind,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub note: Option<&'a str>,
}

impl<'a> NewEvent<'a> {
    /// An event of `kind` on incident `incident_id` by `actor`, with no before, after or
    /// note.
    pub(super) fn new(
        incident_id: &'a IncidentId,
        tenant_id: &'a TenantId,
        at: Timestamp,
        actor: &'a str,
        kind: EventKind,
    ) -> Self {
        Self {
            incident_id,
            tenant_id,
            at,
            actor,
            kind,
            before: None,
            after: None,
            note: None,
        }
    }

    /// This event with `before`, `after` and `note`.
    pub(super) fn with(
        self,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
        note: Option<&'a str>,
    ) -> Self {
        Self {
            before,
            after,
            note,
            ..self
        }
    }
}

pub(super) fn insert_event(
    db: &mut dyn Db,
    seq: &EventSeq,
    e: &NewEvent<'_>,
) -> StoreResult<IncidentEvent> {
    let id = IncidentEventId::generate();
    let before = e.before.as_ref().map(serde_json::Value::to_string);
    let after = e.after.as_ref().map(serde_json::Value::to_string);
    let sql = match seq {
        EventSeq::MaxPlusOne => {
            "INSERT INTO incident_events (id, seq, incident_id, tenant_id, at, actor, kind, before, after, note)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM incident_events), $2, $3, $4, $5, $6, $7, $8, $9)"
        }
        EventSeq::Identity => {
            "INSERT INTO incident_events (id, incident_id, tenant_id, at, actor, kind, before, after, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        }
    };
    db.execute(
        sql,
        &[
            Param::Text(id.as_str()),
            Param::Text(e.incident_id.as_str()),
            Param::Text(e.tenant_id.as_str()),
            Param::BigInt(e.at.millis()),
            Param::Text(e.actor),
            Param::Text(e.kind.as_str()),
            Param::OptText(before.as_deref()),
            Param::OptText(after.as_deref()),
            Param::OptText(e.note),
        ],
    )?;
    Ok(IncidentEvent {
        id,
        incident_id: e.incident_id.clone(),
        at: e.at,
        actor: e.actor.to_owned(),
        kind: e.kind,
        before: e.before.clone(),
        after: e.after.clone(),
        note: e.note.map(str::to_owned),
    })
}

/// The fingerprint's newest incident, or, when that one was merged as a duplicate, the
/// incident it went into (a few hops at most), so that a recurrence joins or reopens it.
fn latest_for(
    db: &mut dyn Db,
    tenant: &TenantId,
    fingerprint: &str,
) -> StoreResult<Option<Latest>> {
    const COLUMNS: &str = "id, status, last_signal_at, resolved_at, merged_into";
    let mut rows = db.query(
        &format!(
            "SELECT {COLUMNS} FROM incidents
             WHERE tenant_id = $1 AND fingerprint = $2 ORDER BY created_at DESC LIMIT 1"
        ),
        &[Param::Text(tenant.as_str()), Param::Text(fingerprint)],
    )?;
    let db_err = |e: crate::domain::ParseError| StoreError::Database(e.to_string());
    for _ in 0..8 {
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let c = Cells::new(row, "incident");
        let latest = Latest {
            id: IncidentId::parse(&c.text(0)?).map_err(db_err)?,
            status: IncidentStatus::parse(&c.text(1)?).map_err(db_err)?,
            last_signal_at: Timestamp::from_millis(c.int(2)?),
            resolved_at: c.opt_int(3)?.map(Timestamp::from_millis),
        };
        let Some(into) = c.opt_text(4)? else {
            return Ok(Some(latest));
        };
        rows = db.query(
            &format!("SELECT {COLUMNS} FROM incidents WHERE id = $1 AND tenant_id = $2"),
            &[Param::Text(&into), Param::Text(tenant.as_str())],
        )?;
    }
    // A chain this long is not made by merges (each refuses a merged target): group anew.
    Ok(None)
}

fn get_by_id(db: &mut dyn Db, id: &IncidentId) -> StoreResult<Incident> {
    sql::one(
        db,
        &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1"),
        &[Param::Text(id.as_str())],
        incident_from,
    )
}

/// Applies signals in order, in the caller's transaction.
pub(super) fn apply_signals(
    db: &mut dyn Db,
    seq: &EventSeq,
    signals: &[Signal],
) -> StoreResult<Vec<Applied>> {
    signals.iter().map(|s| apply_one(db, seq, s)).collect()
}

fn apply_one(db: &mut dyn Db, seq: &EventSeq, s: &Signal) -> StoreResult<Applied> {
    let tenant = &s.tenant_id;
    let latest = latest_for(db, tenant, &s.fingerprint())?;
    // Only what grouping needs: skip the counts when the signal joins an incident anyway.
    // Joining or reopening is never capped, so only a would-be new incident needs the
    // tenant's hourly count and its open overflow incident.
    let placement = match incident::place(s.at, latest.as_ref(), 0, None) {
        joined @ (Placement::Join(_) | Placement::Reopen(_)) => joined,
        _ => {
            let (new_last_hour, overflow) = cap_state(db, tenant, s.at)?;
            incident::place(s.at, latest.as_ref(), new_last_hour, overflow.as_ref())
        }
    };
    let (id, opened, reopened) = match placement {
        Placement::Join(id) => (id, false, false),
        Placement::Reopen(id) => (id, false, true),
        Placement::Overflow(Some(id)) => (id, false, false),
        Placement::New => (create(db, s, false)?, true, false),
        Placement::Overflow(None) => {
            let first = Signal {
                rule: incident::rule::OVERFLOW.into(),
                subject: Subject::Tenant,
                ..s.clone()
            };
            (create(db, &first, true)?, true, false)
        }
    };
    let before = get_by_id(db, &id)?;

    // The signal, and whether it brings a new call or end user.
    let new_call = match &s.call_id {
        Some(call) => !sql::exists(
            db,
            "SELECT 1 FROM incident_signals WHERE call_id = $1 AND incident_id = $2 LIMIT 1",
            &[Param::Text(call.as_str()), Param::Text(id.as_str())],
        )?,
        None => false,
    };
    let new_user = match &s.end_user {
        Some(u) => !sql::exists(
            db,
            "SELECT 1 FROM incident_signals WHERE tenant_id = $1 AND end_user = $2 AND incident_id = $3 LIMIT 1",
            &[
                Param::Text(tenant.as_str()),
                Param::Text(u),
                Param::Text(id.as_str()),
            ],
        )?,
        None => false,
    };
    db.execute(
        "INSERT INTO incident_signals (incident_id, tenant_id, rule, at, call_id, end_user, cost_nanos, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Param::Text(id.as_str()),
            Param::Text(tenant.as_str()),
            Param::Text(&s.rule),
            Param::BigInt(s.at.millis()),
            Param::OptText(s.call_id.as_ref().map(CallId::as_str)),
            Param::OptText(s.end_user.as_deref()),
            Param::OptBigInt(s.cost.map(Money::nanos)),
            Param::Text(&s.detail),
        ],
    )?;
    let calls = before.call_count + i64::from(new_call);
    let users = before.end_user_count + i64::from(new_user);
    let cost = if new_call {
        before.cost.saturating_add(s.cost.unwrap_or(Money::ZERO))
    } else {
        before.cost
    };
    let earned = incident::earned_severity(&before.rule, calls, users, cost);
    let severity = before.severity.max(earned);
    let status = if reopened {
        IncidentStatus::Open
    } else {
        before.status
    };
    db.execute(
        "UPDATE incidents SET signal_count = signal_count + 1, call_count = $2, end_user_count = $3,
             cost_nanos = $4, severity = $5, status = $6, last_signal_at = $7, updated_at = $8,
             resolved_at = $9, acknowledged_at = $10
         WHERE id = $1",
        &[
            Param::Text(id.as_str()),
            Param::BigInt(calls),
            Param::BigInt(users),
            Param::BigInt(cost.nanos()),
            Param::Text(severity.as_str()),
            Param::Text(status.as_str()),
            Param::BigInt(s.at.millis().max(before.last_signal_at.millis())),
            Param::BigInt(s.at.millis()),
            Param::OptBigInt(if reopened {
                None
            } else {
                before.resolved_at.map(Timestamp::millis)
            }),
            Param::OptBigInt(if reopened {
                None
            } else {
                before.acknowledged_at.map(Timestamp::millis)
            }),
        ],
    )?;
    let event = |kind| NewEvent::new(&id, tenant, s.at, "system", kind);
    let escalated = (severity > before.severity).then_some((before.severity, severity));
    let mut events = Vec::new();
    if opened {
        let after = json!({"status": "open", "severity": before.severity, "rule": s.rule, "subject": s.subject.label()});
        events.push(event(EventKind::Opened).with(None, Some(after), Some(&s.detail)));
    }
    if reopened {
        let was = json!({"status": before.status});
        let now = json!({"status": "open"});
        events.push(event(EventKind::Reopened).with(Some(was), Some(now), Some(&s.detail)));
    }
    if escalated.is_some() {
        let was = json!({"severity": before.severity});
        let now = json!({"severity": severity, "calls": calls, "end_users": users, "cost_usd": cost.usd()});
        events.push(event(EventKind::Escalated).with(Some(was), Some(now), None));
    }
    for e in &events {
        insert_event(db, seq, e)?;
    }
    Ok(Applied {
        incident_id: id,
        tenant_id: tenant.clone(),
        opened,
        reopened,
        escalated,
        severity,
    })
}

/// The incidents the tenant got (overflow ones aside) in the hour before `at`, and its
/// open overflow incident, if any.
fn cap_state(
    db: &mut dyn Db,
    tenant: &TenantId,
    at: Timestamp,
) -> StoreResult<(i64, Option<IncidentId>)> {
    let n = sql::number(
        db,
        "SELECT COUNT(*) FROM incidents WHERE tenant_id = $1 AND overflow = 0 AND created_at > $2",
        &[
            Param::Text(tenant.as_str()),
            Param::BigInt(at.millis() - HOUR_MS),
        ],
    )?;
    let overflow = sql::first(
        db,
        "SELECT id FROM incidents WHERE tenant_id = $1 AND overflow = 1 AND status <> 'resolved'
         ORDER BY created_at DESC LIMIT 1",
        &[Param::Text(tenant.as_str())],
        |r| {
            IncidentId::parse(&Cells::new(r, "incident").text(0)?)
                .map_err(|e| StoreError::Database(e.to_string()))
        },
    )?;
    Ok((n, overflow))
}

/// A new incident, from its first signal (for an overflow incident, that signal with the
/// overflow rule and the tenant as subject).
fn create(db: &mut dyn Db, s: &Signal, overflow: bool) -> StoreResult<IncidentId> {
    let id = IncidentId::generate();
    let (subject, title, fingerprint) = (s.subject.label(), incident::title(s), s.fingerprint());
    let severity = incident::base_severity(&s.rule);
    db.execute(
        &format!(
            "INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES
             ($1, $2, $3, $4, $5, $6, $7, 'open', $8, NULL, $9, $10, $11, $11, $11, $11, NULL, NULL, 0, 0, 0, 0, NULL)"
        ),
        &[
            Param::Text(id.as_str()),
            Param::Text(s.tenant_id.as_str()),
            Param::Text(&fingerprint),
            Param::BigInt(i64::from(incident::GROUPING_VERSION)),
            Param::Text(&s.rule),
            Param::Text(&subject),
            Param::Text(&title),
            Param::Text(severity.as_str()),
            Param::BigInt(i64::from(overflow)),
            Param::BigInt(i64::from(s.demo)),
            Param::BigInt(s.at.millis()),
        ],
    )?;
    Ok(id)
}

/// `tenant: None` is the instance operator.
pub(super) fn get(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    id: &IncidentId,
) -> StoreResult<Incident> {
    sql::owned(
        db,
        "incidents",
        INCIDENT_COLUMNS,
        id.as_str(),
        tenant,
        false,
        incident_from,
    )
}

pub(super) fn list(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    filter: &IncidentFilter,
    after: Option<&IncidentCursor>,
    limit: u32,
) -> StoreResult<Vec<Incident>> {
    let key_label = filter.key_id.as_ref().map(|k| format!("key:{k}"));
    let lowered: Vec<String> = filter
        .text
        .iter()
        .map(|w| {
            format!(
                "%{}%",
                w.to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        })
        .collect();
    let mut q = sql::Query::new(format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE 1 = 1"
    ));
    if let Some(min) = filter.min_severity {
        let allowed: Vec<&str> = Severity::ALL
            .iter()
            .filter(|s| **s >= min)
            .map(|s| s.as_str())
            .collect();
        q.sql
            .push_str(&format!(" AND severity IN ('{}')", allowed.join("', '")));
    }
    if let Some(t) = tenant {
        q.add(Param::Text(t.as_str()), " AND tenant_id = {}");
    }
    if let Some(s) = filter.status {
        q.add(Param::Text(s.as_str()), " AND status = {}");
    }
    if let Some(s) = filter.severity {
        q.add(Param::Text(s.as_str()), " AND severity = {}");
    }
    if let Some(r) = &filter.rule {
        q.add(Param::Text(r), " AND rule = {}");
    }
    if let Some(label) = &key_label {
        q.add(Param::Text(label), " AND subject = {}");
    }
    if let Some(u) = &filter.end_user {
        q.add(
            Param::Text(u),
            " AND id IN (SELECT incident_id FROM incident_signals WHERE end_user = {} AND tenant_id = incidents.tenant_id)",
        );
    }
    if let Some(t) = filter.since {
        q.add(Param::BigInt(t.millis()), " AND last_signal_at >= {}");
    }
    if let Some(t) = filter.until {
        q.add(Param::BigInt(t.millis()), " AND created_at < {}");
    }
    for w in &lowered {
        q.add(Param::Text(w), " AND LOWER(title) LIKE {} ESCAPE '\\'");
    }
    if let Some(c) = after {
        q.add(
            Param::BigInt(c.created_at.millis()),
            " AND (created_at < {} OR (created_at = {} AND id < ",
        );
        q.add(Param::Text(c.id.as_str()), "{}))");
    }
    q.add(
        Param::BigInt(i64::from(limit).clamp(1, MAX_PAGE)),
        " ORDER BY created_at DESC, id DESC LIMIT {}",
    );
    sql::all(db, &q.sql, &q.args, incident_from)
}

pub(super) fn signals(
    db: &mut dyn Db,
    id: &IncidentId,
    limit: u32,
) -> StoreResult<Vec<StoredSignal>> {
    sql::all(
        db,
        "SELECT incident_id, rule, at, call_id, end_user, cost_nanos, detail FROM incident_signals
         WHERE incident_id = $1 ORDER BY at, call_id LIMIT $2",
        &[Param::Text(id.as_str()), Param::BigInt(i64::from(limit))],
        |row| {
            let c = Cells::new(row, "incident signal");
            let bad = |e: crate::domain::ParseError| StoreError::Database(e.to_string());
            Ok(StoredSignal {
                incident_id: IncidentId::parse(&c.text(0)?).map_err(bad)?,
                rule: c.text(1)?,
                at: Timestamp::from_millis(c.int(2)?),
                call_id: c
                    .opt_text(3)?
                    .as_deref()
                    .map(CallId::parse)
                    .transpose()
                    .map_err(bad)?,
                end_user: c.opt_text(4)?,
                cost: c.opt_int(5)?.map(Money::from_nanos),
                detail: c.text(6)?,
            })
        },
    )
}

pub(super) fn events(db: &mut dyn Db, id: &IncidentId) -> StoreResult<Vec<IncidentEvent>> {
    sql::all(
        db,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM incident_events WHERE incident_id = $1 ORDER BY at, seq"
        ),
        &[Param::Text(id.as_str())],
        event_from,
    )
}

/// Applies a person's change; an invalid status change is a Conflict (HTTP 409).
pub(super) fn change(
    db: &mut dyn Db,
    seq: &EventSeq,
    tenant: Option<&TenantId>,
    id: &IncidentId,
    change: &Change,
    actor: &str,
    at: Timestamp,
) -> StoreResult<(Incident, IncidentEvent)> {
    let before = get(db, tenant, id)?;
    if let (Change::Reopen, Some(into)) = (change, &before.merged_into) {
        // Its signals live on in the incident it went into; a recurrence goes there too.
        return Err(StoreError::Conflict(format!(
            "the incident was merged into {into}; reopen that one instead"
        )));
    }
    let next = incident::transition(before.status, change)
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
    let ev = |kind| NewEvent::new(id, &before.tenant_id, at, actor, kind);
    let event = match (change, next) {
        (Change::Acknowledge | Change::Resolve | Change::Reopen, Some(status)) => {
            // The moment each status change sets. Reopened, as when the engine reopens on
            // recurrence: the acknowledgement went with the resolution, so the incident
            // needs both again.
            let (moments, kind) = match change {
                Change::Acknowledge => ("acknowledged_at = $3", EventKind::Acknowledged),
                Change::Resolve => ("resolved_at = $3", EventKind::Resolved),
                _ => (
                    "resolved_at = NULL, acknowledged_at = NULL",
                    EventKind::Reopened,
                ),
            };
            db.execute(
                &format!(
                    "UPDATE incidents SET status = $2, {moments}, updated_at = $3 WHERE id = $1"
                ),
                &[
                    Param::Text(id.as_str()),
                    Param::Text(status.as_str()),
                    Param::BigInt(at.millis()),
                ],
            )?;
            let (was, now) = (json!({"status": before.status}), json!({"status": status}));
            ev(kind).with(Some(was), Some(now), None)
        }
        (Change::Assign(who), _) => {
            set_field(db, id, "assignee", Param::OptText(who.as_deref()), at)?;
            let (was, now) = field_change("assignee", &before.assignee, who);
            ev(EventKind::Assigned).with(was, now, None)
        }
        (Change::SetSeverity(sev), _) => {
            set_field(db, id, "severity", Param::Text(sev.as_str()), at)?;
            let (was, now) = field_change("severity", &before.severity, sev);
            ev(EventKind::SeverityChanged).with(was, now, None)
        }
        (Change::Note(text), _) => {
            db.execute(
                "UPDATE incidents SET updated_at = $2 WHERE id = $1",
                &[Param::Text(id.as_str()), Param::BigInt(at.millis())],
            )?;
            ev(EventKind::Note).with(None, None, Some(text))
        }
        (Change::Acknowledge | Change::Resolve | Change::Reopen, None) => {
            return Err(StoreError::Conflict("nothing to change".into()));
        }
    };
    let stored = insert_event(db, seq, &event)?;
    Ok((get_by_id(db, id)?, stored))
}

/// An event's before and after for a change of one field: `{field: value}` each.
fn field_change(
    field: &str,
    was: &impl serde::Serialize,
    now: &impl serde::Serialize,
) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
    (Some(json!({ field: was })), Some(json!({ field: now })))
}

/// Sets one column of an incident (a name from this module, never from input) and its
/// `updated_at`.
fn set_field(
    db: &mut dyn Db,
    id: &IncidentId,
    column: &str,
    value: Param<'_>,
    at: Timestamp,
) -> StoreResult<()> {
    let sql = format!("UPDATE incidents SET {column} = $2, updated_at = $3 WHERE id = $1");
    db.execute(
        &sql,
        &[Param::Text(id.as_str()), value, Param::BigInt(at.millis())],
    )
    .map(drop)
}

/// Adds a system event (a kill-switch action, an alert sent) to an incident.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_event(
    db: &mut dyn Db,
    seq: &EventSeq,
    tenant: &TenantId,
    id: &IncidentId,
    kind: EventKind,
    actor: &str,
    after: Option<serde_json::Value>,
    note: Option<&str>,
    at: Timestamp,
) -> StoreResult<IncidentEvent> {
    get(db, Some(tenant), id)?;
    let event = NewEvent::new(id, tenant, at, actor, kind);
    insert_event(db, seq, &event.with(None, after, note))
}

/// Incidents of a tenant still open or acknowledged, newest first (for attaching
/// kill-switch actions).
pub(super) fn unresolved(
    db: &mut dyn Db,
    tenant: &TenantId,
    limit: u32,
) -> StoreResult<Vec<Incident>> {
    sql::all(
        db,
        &format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE tenant_id = $1 AND status <> 'resolved'
             ORDER BY created_at DESC LIMIT $2"
        ),
        &[
            Param::Text(tenant.as_str()),
            Param::BigInt(i64::from(limit)),
        ],
        incident_from,
    )
}

pub(super) fn stats(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<IncidentStats> {
    let stats = sql::first(
        db,
        "SELECT
            COUNT(*) FILTER (WHERE status = 'open'),
            COUNT(*) FILTER (WHERE status = 'acknowledged'),
            COUNT(*) FILTER (WHERE status = 'resolved'),
            CAST(AVG(acknowledged_at - created_at) FILTER (WHERE acknowledged_at IS NOT NULL) AS BIGINT),
            CAST(AVG(resolved_at - created_at) FILTER (WHERE resolved_at IS NOT NULL) AS BIGINT)
         FROM incidents WHERE tenant_id = $1",
        &[Param::Text(tenant.as_str())],
        |row| {
            let c = Cells::new(row, "incident stats");
            Ok(IncidentStats {
                open: c.int(0)?,
                acknowledged: c.int(1)?,
                resolved: c.int(2)?,
                mtta_ms: c.opt_int(3)?,
                mttr_ms: c.opt_int(4)?,
            })
        },
    )?;
    Ok(stats.unwrap_or_default())
}

/// How many incidents of each severity, in [`Severity::ALL`] order, a tenant has (`None`:
/// every tenant), of one status or of any.
pub(super) fn severity_counts(
    db: &mut dyn Db,
    tenant: Option<&TenantId>,
    status: Option<IncidentStatus>,
) -> StoreResult<[i64; 4]> {
    let rows = db.query(
        "SELECT severity, COUNT(*) FROM incidents
         WHERE (CAST($1 AS TEXT) IS NULL OR tenant_id = $1)
           AND (CAST($2 AS TEXT) IS NULL OR status = $2)
         GROUP BY severity",
        &[
            Param::OptText(tenant.map(TenantId::as_str)),
            Param::OptText(status.map(IncidentStatus::as_str)),
        ],
    )?;
    let mut counts = [0; 4];
    for row in &rows {
        let c = Cells::new(row, "incident count");
        let severity =
            Severity::parse(&c.text(0)?).map_err(|e| StoreError::Database(e.to_string()))?;
        if let Some(n) = Severity::ALL.iter().position(|s| *s == severity) {
            counts[n] = c.int(1)?;
        }
    }
    Ok(counts)
}

pub(super) fn mark_demo_tenant(
    db: &mut dyn Db,
    tenant: &TenantId,
    at: Timestamp,
) -> StoreResult<()> {
    super::tenants::require(db, tenant)?;
    if !is_demo_tenant(db, tenant)? {
        db.execute(
            "INSERT INTO demo_tenants (tenant_id, created_at) VALUES ($1, $2)",
            &[Param::Text(tenant.as_str()), Param::BigInt(at.millis())],
        )?;
    }
    Ok(())
}

pub(super) fn is_demo_tenant(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<bool> {
    sql::exists(
        db,
        "SELECT 1 FROM demo_tenants WHERE tenant_id = $1",
        &[Param::Text(tenant.as_str())],
    )
}

/// Merges duplicates into `target`, in the caller's transaction: their signals are copied
/// under the target (they also stay under their own incident, whose evidence must not
/// change), the target's counts, cost, first and last signal and severity take them in,
/// and each duplicate is resolved and names the target. Both sides get a `merged` event.
/// A refusal writes nothing; `from` is deduplicated, in order.
#[allow(clippy::too_many_arguments)]
pub(super) fn merge(
    db: &mut dyn Db,
    seq: &EventSeq,
    tenant: &TenantId,
    target_id: &IncidentId,
    from: &[IncidentId],
    actor: &str,
    at: Timestamp,
) -> StoreResult<Result<incident::Merged, incident::MergeRefusal>> {
    use incident::MergeRefusal;
    let target = get(db, Some(tenant), target_id)?;
    if let Some(into) = &target.merged_into {
        return Ok(Err(MergeRefusal::TargetMerged(
            target.id.clone(),
            into.clone(),
        )));
    }
    if target.status == IncidentStatus::Resolved {
        return Ok(Err(MergeRefusal::TargetResolved(target.id.clone())));
    }
    let mut sources: Vec<Incident> = Vec::new();
    for id in from {
        if id == target_id || sources.iter().any(|s| &s.id == id) {
            continue;
        }
        let source = match get(db, Some(tenant), id) {
            Ok(s) => s,
            Err(StoreError::NotFound) => return Ok(Err(MergeRefusal::Unknown(id.clone()))),
            Err(e) => return Err(e),
        };
        if let Some(into) = &source.merged_into {
            return Ok(Err(MergeRefusal::AlreadyMerged(id.clone(), into.clone())));
        }
        sources.push(source);
    }
    if sources.is_empty() {
        return Ok(Ok(incident::Merged {
            target_before: target.clone(),
            target,
            merged: Vec::new(),
        }));
    }
    // `$1` is the target; the duplicates follow.
    let list = (0..sources.len())
        .map(|i| format!("${}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let mut args = vec![Param::Text(target_id.as_str())];
    args.extend(sources.iter().map(|s| Param::Text(s.id.as_str())));

    // What the duplicates bring that the target does not have yet: calls (each counted
    // once, at its cost) and end users.
    let new_calls = sql::first(
        db,
        &format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(c), 0) AS BIGINT) FROM (
                 SELECT call_id, MAX(COALESCE(cost_nanos, 0)) AS c FROM incident_signals
                 WHERE incident_id IN ({list}) AND call_id IS NOT NULL
                   AND call_id NOT IN (SELECT call_id FROM incident_signals
                                       WHERE incident_id = $1 AND call_id IS NOT NULL)
                 GROUP BY call_id) AS fresh"
        ),
        &args,
        |row| {
            let c = Cells::new(row, "merged calls");
            Ok((c.int(0)?, c.int(1)?))
        },
    )?
    .unwrap_or((0, 0));
    let new_users = sql::first(
        db,
        &format!(
            "SELECT COUNT(DISTINCT end_user) FROM incident_signals
             WHERE incident_id IN ({list}) AND end_user IS NOT NULL
               AND end_user NOT IN (SELECT end_user FROM incident_signals
                                    WHERE incident_id = $1 AND end_user IS NOT NULL)"
        ),
        &args,
        |row| Cells::new(row, "merged end users").int(0),
    )?
    .unwrap_or(0);
    db.execute(
        &format!(
            "INSERT INTO incident_signals (incident_id, tenant_id, rule, at, call_id, end_user, cost_nanos, detail)
             SELECT $1, tenant_id, rule, at, call_id, end_user, cost_nanos, detail
             FROM incident_signals WHERE incident_id IN ({list})"
        ),
        &args,
    )?;

    let calls = target.call_count + new_calls.0;
    let users = target.end_user_count + new_users;
    let cost = target.cost.saturating_add(Money::from_nanos(new_calls.1));
    let signal_count = target.signal_count + sources.iter().map(|s| s.signal_count).sum::<i64>();
    let first_signal = sources
        .iter()
        .map(|s| s.first_signal_at)
        .fold(target.first_signal_at, Timestamp::min);
    let last_signal = sources
        .iter()
        .map(|s| s.last_signal_at)
        .fold(target.last_signal_at, Timestamp::max);
    // As severe as its worst part, and as its new size earns.
    let severity = sources
        .iter()
        .map(|s| s.severity)
        .fold(target.severity, Severity::max)
        .max(incident::earned_severity(&target.rule, calls, users, cost));
    db.execute(
        "UPDATE incidents SET signal_count = $2, call_count = $3, end_user_count = $4,
             cost_nanos = $5, severity = $6, first_signal_at = $7, last_signal_at = $8,
             updated_at = $9
         WHERE id = $1",
        &[
            Param::Text(target_id.as_str()),
            Param::BigInt(signal_count),
            Param::BigInt(calls),
            Param::BigInt(users),
            Param::BigInt(cost.nanos()),
            Param::Text(severity.as_str()),
            Param::BigInt(first_signal.millis()),
            Param::BigInt(last_signal.millis()),
            Param::BigInt(at.millis()),
        ],
    )?;

    let mut merged = Vec::with_capacity(sources.len());
    for source in sources {
        db.execute(
            "UPDATE incidents SET status = 'resolved', resolved_at = COALESCE(resolved_at, $2),
                 merged_into = $3, updated_at = $2
             WHERE id = $1",
            &[
                Param::Text(source.id.as_str()),
                Param::BigInt(at.millis()),
                Param::Text(target_id.as_str()),
            ],
        )?;
        let (was, now) = (
            json!({"status": source.status}),
            json!({"status": "resolved", "merged_into": target_id}),
        );
        let into = format!("merged into {target_id}");
        let event = NewEvent::new(&source.id, tenant, at, actor, EventKind::Merged);
        insert_event(db, seq, &event.with(Some(was), Some(now), Some(&into)))?;
        let taken = json!({"merged_from": source.id, "signals": source.signal_count});
        let from = format!("merged {} into this", source.id);
        let event = NewEvent::new(target_id, tenant, at, actor, EventKind::Merged);
        insert_event(db, seq, &event.with(None, Some(taken), Some(&from)))?;
        let after = get_by_id(db, &source.id)?;
        merged.push((source, after));
    }
    if severity > target.severity {
        let was = json!({"severity": target.severity});
        let now = json!({"severity": severity, "calls": calls, "end_users": users, "cost_usd": cost.usd()});
        let event = NewEvent::new(target_id, tenant, at, actor, EventKind::Escalated);
        let note = Some("duplicates merged in");
        insert_event(db, seq, &event.with(Some(was), Some(now), note))?;
    }
    Ok(Ok(incident::Merged {
        target: get_by_id(db, target_id)?,
        target_before: target,
        merged,
    }))
}
