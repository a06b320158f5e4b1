//! Alert routes and the log of alerts sent, written once for both backends (see
//! [`super::sql`]). Every query takes the tenant id: another tenant's route is NotFound.
//! Recording a sent alert also adds the `alert_sent` event to its incident, in the
//! caller's transaction.

use super::incidents::{self, EventSeq, NewEvent};
use super::sql::{self, Cells, Db, Param, SqlRow};
use super::{StoreError, StoreResult};
use crate::domain::alert::{AlertRoute, AlertSent, RouteKind};
use crate::domain::incident::EventKind;
use crate::domain::{AlertRouteId, Severity, TenantId, Timestamp};

const ROUTE_COLUMNS: &str = "id, tenant_id, name, kind, target, url_ciphertext, secret_ciphertext, min_severity, group_wait_ms, repeat_interval_ms, created_at";

fn route_from(row: &SqlRow) -> StoreResult<AlertRoute> {
    let c = Cells::new(row, "alert route");
    let bad = |what: &str, e: crate::domain::ParseError| {
        StoreError::Database(format!("a stored alert route has a bad {what}: {e}"))
    };
    Ok(AlertRoute {
        id: AlertRouteId::parse(&c.text(0)?).map_err(|e| bad("id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| bad("tenant id", e))?,
        name: c.text(2)?,
        kind: RouteKind::parse(&c.text(3)?).map_err(|e| bad("kind", e))?,
        target: c.text(4)?,
        url_ciphertext: c.text(5)?,
        secret_ciphertext: c.opt_text(6)?,
        min_severity: Severity::parse(&c.text(7)?).map_err(|e| bad("severity", e))?,
        group_wait_ms: c.int(8)?,
        repeat_interval_ms: c.int(9)?,
        created_at: Timestamp::from_millis(c.int(10)?),
    })
}

pub(super) fn create_route(db: &mut dyn Db, r: &AlertRoute) -> StoreResult<()> {
    super::tenants::require(db, &r.tenant_id)?;
    let route = [Param::Text(r.id.as_str())];
    if sql::exists(db, "SELECT id FROM alert_routes WHERE id = $1", &route)? {
        return Err(StoreError::Conflict(format!(
            "an alert route with id {} exists already",
            r.id
        )));
    }
    db.execute(
        &format!(
            "INSERT INTO alert_routes ({ROUTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        &[
            Param::Text(r.id.as_str()),
            Param::Text(r.tenant_id.as_str()),
            Param::Text(&r.name),
            Param::Text(r.kind.as_str()),
            Param::Text(&r.target),
            Param::Text(&r.url_ciphertext),
            Param::OptText(r.secret_ciphertext.as_deref()),
            Param::Text(r.min_severity.as_str()),
            Param::BigInt(r.group_wait_ms),
            Param::BigInt(r.repeat_interval_ms),
            Param::BigInt(r.created_at.millis()),
        ],
    )?;
    Ok(())
}

/// Oldest first.
pub(super) fn list_routes(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<Vec<AlertRoute>> {
    sql::all(
        db,
        &format!(
            "SELECT {ROUTE_COLUMNS} FROM alert_routes WHERE tenant_id = $1 ORDER BY created_at, id"
        ),
        &[Param::Text(tenant.as_str())],
        route_from,
    )
}

pub(super) fn get_route(
    db: &mut dyn Db,
    tenant: &TenantId,
    id: &AlertRouteId,
) -> StoreResult<AlertRoute> {
    sql::one(
        db,
        &format!("SELECT {ROUTE_COLUMNS} FROM alert_routes WHERE tenant_id = $1 AND id = $2"),
        &[Param::Text(tenant.as_str()), Param::Text(id.as_str())],
        route_from,
    )
}

/// Replaces the editable fields of a route (name, target, URL, secret, severity, timing);
/// returns whether there was such a route. Its id, tenant, kind and creation stay.
pub(super) fn update_route(db: &mut dyn Db, r: &AlertRoute) -> StoreResult<bool> {
    let n = db.execute(
        "UPDATE alert_routes SET name = $3, target = $4, url_ciphertext = $5, secret_ciphertext = $6,
             min_severity = $7, group_wait_ms = $8, repeat_interval_ms = $9
         WHERE tenant_id = $1 AND id = $2",
        &[
            Param::Text(r.tenant_id.as_str()),
            Param::Text(r.id.as_str()),
            Param::Text(&r.name),
            Param::Text(&r.target),
            Param::Text(&r.url_ciphertext),
            Param::OptText(r.secret_ciphertext.as_deref()),
            Param::Text(r.min_severity.as_str()),
            Param::BigInt(r.group_wait_ms),
            Param::BigInt(r.repeat_interval_ms),
        ],
    )?;
    Ok(n > 0)
}

pub(super) fn delete_route(
    db: &mut dyn Db,
    tenant: &TenantId,
    id: &AlertRouteId,
) -> StoreResult<bool> {
    let n = db.execute(
        "DELETE FROM alert_routes WHERE tenant_id = $1 AND id = $2",
        &[Param::Text(tenant.as_str()), Param::Text(id.as_str())],
    )?;
    Ok(n > 0)
}

/// Logs the alert and, for an incident alert, adds its `alert_sent` event.
pub(super) fn record_sent(db: &mut dyn Db, seq: &EventSeq, s: &AlertSent) -> StoreResult<()> {
    if let Some(incident) = &s.incident_id {
        // The incident must be the tenant's; NotFound otherwise, and nothing is written.
        incidents::get(db, Some(&s.tenant_id), incident)?;
    }
    db.execute(
        "INSERT INTO alert_deliveries (route_id, tenant_id, incident_id, reason, severity, attempt, job_id, status, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            Param::Text(s.route_id.as_str()),
            Param::Text(s.tenant_id.as_str()),
            Param::OptText(s.incident_id.as_ref().map(|i| i.as_str())),
            Param::Text(s.reason.as_str()),
            Param::OptText(s.severity.map(Severity::as_str)),
            Param::BigInt(i64::from(s.attempt)),
            Param::Text(&s.job_id),
            Param::BigInt(i64::from(s.status)),
            Param::BigInt(s.at.millis()),
        ],
    )?;
    if let Some(incident) = &s.incident_id {
        let after = serde_json::json!({
            "route_id": s.route_id,
            "reason": s.reason.as_str(),
            "attempt": s.attempt,
            "severity": s.severity,
            "job_id": s.job_id,
            "status": s.status,
        });
        let note = format!(
            "alert sent through route {} ({}, attempt {})",
            s.route_id,
            s.reason.as_str(),
            s.attempt
        );
        let event = NewEvent::new(incident, &s.tenant_id, s.at, "system", EventKind::AlertSent);
        incidents::insert_event(db, seq, &event.with(None, Some(after), Some(&note)))?;
    }
    Ok(())
}

/// When the route last alerted about the incident.
pub(super) fn last_sent(
    db: &mut dyn Db,
    tenant: &TenantId,
    route: &AlertRouteId,
    incident: &crate::domain::IncidentId,
) -> StoreResult<Option<Timestamp>> {
    let last = sql::first(
        db,
        "SELECT MAX(at) FROM alert_deliveries WHERE tenant_id = $1 AND route_id = $2 AND incident_id = $3",
        &[
            Param::Text(tenant.as_str()),
            Param::Text(route.as_str()),
            Param::Text(incident.as_str()),
        ],
        |row| Cells::new(row, "alert delivery").opt_int(0),
    )?;
    Ok(last.flatten().map(Timestamp::from_millis))
}
