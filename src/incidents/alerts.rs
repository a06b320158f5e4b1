//! Alert delivery: scheduling alerts when the engine reports a change, delivering them as
//! `alert_delivery` jobs on the durable queue (retried with backoff, dead-lettered after
//! the last attempt), and the periodic system checks that alert the operator.
//!
//! The timing rules and the signature are in `domain::alert`; this module does the I/O:
//! it reads routes, resolves webhook hosts (refusing internal addresses unless the
//! operator allowlisted the host, and pinning the checked addresses for the request so a
//! second lookup cannot swap them), posts, and records every alert sent as an incident
//! event. Nothing here is on the proxy's hot path except [`CallHealth::record`], which
//! only touches atomics.
//!
//! Generic webhooks receive `POST` JSON with `x-agv-timestamp` (Unix seconds),
//! `x-agv-signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`,
//! `x-agv-event` (`incident.alert`, `test` or `system.alert`) and `x-agv-delivery` (the job
//! id, the same on every retry, for de-duplication).

use super::timeline;
use crate::domain::alert::{
    self, AlertRoute, AlertSent, DueAlert, HostAllowlist, OPERATOR_ROUTE, Reason, RouteKind,
    SystemAlert, SystemSample, SystemThresholds, Verdict,
};
use crate::domain::incident::Applied;
use crate::domain::secret_box::MasterKey;
use crate::domain::{AlertRouteId, Incident, IncidentId, TenantId, Timestamp};
use crate::jobs::{EnqueueOptions, Job, WeakQueue};
use crate::store::{DynStore, StoreError, run_blocking};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const ALERT_DELIVERY: &str = "alert_delivery";
/// Attempts per alert before it moves to the dead-letter list (1 s, 2 s, 4 s, 8 s apart).
pub const DELIVERY_ATTEMPTS: u32 = 5;
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A firing system check is re-announced this often while it keeps firing.
const SYSTEM_REPEAT: Duration = Duration::from_secs(4 * 60 * 60);

/// What an `alert_delivery` job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub route_id: String,
    pub tenant_id: Option<TenantId>,
    pub incident_id: Option<IncidentId>,
    pub reason: Reason,
    /// When the alert was scheduled (ms).
    pub scheduled_at: i64,
    /// The system alert, for the operator route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<serde_json::Value>,
}

impl Delivery {
    /// An alert about `incident` on the tenant's route `route`, scheduled at `at`.
    fn incident(
        route: &AlertRouteId,
        tenant: &TenantId,
        incident: &IncidentId,
        reason: Reason,
        at: Timestamp,
    ) -> Self {
        Self {
            route_id: route.to_string(),
            tenant_id: Some(tenant.clone()),
            incident_id: Some(incident.clone()),
            reason,
            scheduled_at: at.millis(),
            system: None,
        }
    }
}

/// The operator's route from config.
#[derive(Clone)]
pub struct OperatorRoute {
    pub url: String,
    pub secret: Option<String>,
}

/// Schedules and delivers alerts. Shared by the engine's listener and the job handler.
pub struct Alerts {
    store: DynStore,
    queue: WeakQueue,
    master_key: MasterKey,
    allow: HostAllowlist,
    operator: Option<OperatorRoute>,
}

impl Alerts {
    pub fn new(
        store: DynStore,
        queue: WeakQueue,
        master_key: MasterKey,
        allow: HostAllowlist,
        operator: Option<OperatorRoute>,
    ) -> Self {
        Self {
            store,
            queue,
            master_key,
            allow,
            operator,
        }
    }

    /// Puts one delivery on the queue, due at `run_at`.
    pub fn enqueue(&self, d: &Delivery, run_at: Timestamp) -> Result<String, String> {
        let queue = self
            .queue
            .upgrade()
            .ok_or("the job queue is shut down; the alert was not scheduled")?;
        let payload = serde_json::to_value(d).map_err(|e| e.to_string())?;
        queue
            .enqueue(
                ALERT_DELIVERY,
                payload,
                EnqueueOptions {
                    max_attempts: DELIVERY_ATTEMPTS,
                    run_at: Some(run_at),
                },
            )
            .map(|id| id.to_string())
            .map_err(|e| format!("could not schedule the alert: {e}"))
    }

    /// Schedules the alerts a batch of engine changes calls for. Blocking (store reads).
    fn schedule(&self, applied: &[Applied]) {
        let mut routes: HashMap<TenantId, Vec<AlertRoute>> = HashMap::new();
        let now = Timestamp::now();
        for a in applied {
            if !(a.opened || a.reopened || a.escalated.is_some()) {
                continue;
            }
            let list = match routes.get(&a.tenant_id) {
                Some(l) => l,
                None => match self.store.list_alert_routes(&a.tenant_id) {
                    Ok(l) => routes.entry(a.tenant_id.clone()).or_insert(l),
                    Err(e) => {
                        tracing::error!(error = %e, tenant = %a.tenant_id, "could not read alert routes; no alert scheduled");
                        continue;
                    }
                },
            };
            let change = alert::Change {
                opened: a.opened,
                reopened: a.reopened,
                escalated: a.escalated,
                severity: a.severity,
            };
            for r in list {
                let Some((reason, wait)) =
                    alert::schedule(&change, r.min_severity, r.group_wait_ms)
                else {
                    continue;
                };
                let d = Delivery::incident(&r.id, &a.tenant_id, &a.incident_id, reason, now);
                if let Err(e) = self.enqueue(&d, now.plus_millis(wait)) {
                    tracing::error!(error = %e, route = %r.id, incident = %a.incident_id, "alert not scheduled");
                }
            }
        }
    }

    /// Runs one `alert_delivery` job: decides whether the alert is still due, sends it,
    /// records it, and schedules the next repeat.
    pub async fn deliver(self: Arc<Self>, job: Job) -> Result<(), String> {
        let d: Delivery = serde_json::from_value(job.payload.clone())
            .map_err(|e| format!("the alert job's payload is not valid: {e}"))?;
        if d.route_id == OPERATOR_ROUTE {
            let Some(op) = &self.operator else {
                tracing::warn!(
                    "a system alert is queued but no operator_alert_webhook_url is set; dropped"
                );
                return Ok(());
            };
            return self
                .post_system(op, job.id.as_str(), job.attempts, &d)
                .await;
        }
        let route_id = AlertRouteId::parse(&d.route_id).map_err(|e| e.to_string())?;
        let tenant = d.tenant_id.clone().ok_or("the alert job names no tenant")?;
        let store = self.store.clone();
        let (t, r, inc) = (tenant.clone(), route_id.clone(), d.incident_id.clone());
        let loaded = run_blocking(move || {
            let route = match store.get_alert_route(&t, &r) {
                Ok(route) => route,
                Err(StoreError::NotFound) => return Ok(None),
                Err(e) => return Err(e),
            };
            let incident = match &inc {
                Some(id) => {
                    let incident = store.get_incident(Some(&t), id)?;
                    let events = store.incident_events(Some(&t), id)?;
                    let last = store.last_alert_sent(&t, &r, id)?;
                    Some((incident, events, last))
                }
                None => None,
            };
            Ok(Some((route, incident)))
        })
        .await
        .map_err(|e| format!("could not read the route or incident: {e}"))?;
        let Some((route, incident)) = loaded else {
            tracing::info!(route = %route_id, "the alert route was deleted; alert dropped");
            return Ok(());
        };
        let now = Timestamp::now();
        let mut summary = None;
        if let Some((inc, events, last)) = &incident {
            let due = DueAlert {
                reason: d.reason,
                status: inc.status,
                severity: inc.severity,
                min_severity: route.min_severity,
                now,
                scheduled_at: Timestamp::from_millis(d.scheduled_at),
                last_sent: *last,
                repeat_interval_ms: route.repeat_interval_ms,
            };
            if let Verdict::Skip(why) = alert::verdict(&due) {
                tracing::info!(route = %route.id, incident = %inc.id, why, "alert not sent");
                return Ok(());
            }
            summary = Some(timeline::summary(inc, events));
        }
        let url = self
            .master_key
            .open(tenant.as_str(), &route.url_ciphertext)
            .map_err(|e| e.to_string())?;
        let secret = route
            .secret_ciphertext
            .as_deref()
            .map(|s| self.master_key.open(tenant.as_str(), s))
            .transpose()
            .map_err(|e| e.to_string())?;
        let inc = incident.as_ref().map(|(i, _, _)| i);
        let event = if d.reason == Reason::Test {
            "test"
        } else {
            "incident.alert"
        };
        let status = match route.kind {
            RouteKind::PagerDuty => {
                let Some(action) = alert::pagerduty_action(d.reason) else {
                    return Ok(());
                };
                let key = secret.as_ref().map(|s| s.expose()).unwrap_or("");
                let event = PagerDutyEvent {
                    key,
                    action,
                    dedup_key: &pagerduty_dedup_key(&route, inc),
                    incident: inc,
                    summary: summary.as_deref(),
                };
                let send = async |event: PagerDutyEvent<'_>| {
                    post(
                        url.expose(),
                        None,
                        "pagerduty",
                        job.id.as_str(),
                        &event.body(),
                        &self.allow,
                    )
                    .await
                };
                let status = send(event).await?;
                if d.reason == Reason::Test {
                    // A test must not leave a page open: the trigger is resolved at once.
                    send(PagerDutyEvent {
                        action: "resolve",
                        ..event
                    })
                    .await?;
                }
                status
            }
            kind => {
                let body = match kind {
                    RouteKind::Slack => slack_body(d.reason, inc, summary.as_deref()),
                    _ => webhook_body(
                        job.id.as_str(),
                        job.attempts,
                        &d,
                        Some(&route),
                        inc,
                        summary.as_deref(),
                    ),
                };
                post(
                    url.expose(),
                    secret.as_ref().map(|s| s.expose().as_bytes()),
                    event,
                    job.id.as_str(),
                    &body,
                    &self.allow,
                )
                .await?
            }
        };
        let sent = AlertSent {
            tenant_id: tenant.clone(),
            route_id: route.id.clone(),
            incident_id: inc.map(|i| i.id.clone()),
            reason: d.reason,
            severity: inc.map(|i| i.severity),
            attempt: job.attempts,
            job_id: job.id.to_string(),
            status,
            at: Timestamp::now(),
        };
        let store = self.store.clone();
        let record = sent.clone();
        if let Err(e) = run_blocking(move || store.record_alert_sent(&record)).await {
            // The receiver has it; failing the job would send it again.
            tracing::error!(error = %e, route = %route.id, "an alert was sent but could not be recorded");
        }
        // PagerDuty escalates on its own, and a state change is no alert to repeat.
        let repeats = route.kind != RouteKind::PagerDuty
            && !matches!(d.reason, Reason::Acknowledged | Reason::Resolved);
        if let Some(i) = inc.filter(|_| repeats) {
            let next = Delivery::incident(&route.id, &tenant, &i.id, Reason::Repeat, sent.at);
            // The queue writes (and syncs) to disk: off the runtime.
            let (me, due) = (self.clone(), sent.at.plus_millis(route.repeat_interval_ms));
            if let Err(e) = run_blocking(move || me.enqueue(&next, due)).await {
                tracing::error!(error = %e, "the alert's repeat was not scheduled");
            }
        }
        Ok(())
    }

    /// Posts one system alert to the operator's route.
    async fn post_system(
        &self,
        op: &OperatorRoute,
        delivery_id: &str,
        attempt: u32,
        d: &Delivery,
    ) -> Result<(), String> {
        let body = webhook_body(delivery_id, attempt, d, None, None, None);
        post(
            &op.url,
            op.secret.as_deref().map(str::as_bytes),
            "system.alert",
            delivery_id,
            &body,
            &self.allow,
        )
        .await
        .map(|_| ())
    }

    /// Queues a system alert for the operator (a failed backup, …).
    pub fn raise_system(&self, a: &SystemAlert) {
        queue_system_alert(self, a);
    }

    /// Sends a system alert to the operator at once, without the job queue: for a stuck
    /// queue, which would never deliver it. Tries [`DELIVERY_ATTEMPTS`] times, 1 s, 2 s,
    /// 4 s … apart; returns whether it reached the receiver.
    pub async fn send_system_now(&self, d: &Delivery) -> bool {
        let Some(op) = &self.operator else {
            tracing::warn!("a system alert fired but no operator_alert_webhook_url is set");
            return false;
        };
        let id = format!("direct-{}", d.scheduled_at);
        for attempt in 1..=DELIVERY_ATTEMPTS {
            match self.post_system(op, &id, attempt, d).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "the operator alert was not delivered");
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                }
            }
        }
        false
    }

    /// Tells the tenant's PagerDuty routes that someone acknowledged, resolved or reopened
    /// an incident (`reason` is [`Reason::Acknowledged`], [`Reason::Resolved`] or
    /// [`Reason::Reopened`]); each route sends it at once, as far as [`alert::verdict`]
    /// allows (an acknowledgement or resolution only where the incident was announced).
    /// Blocking (a store read, queue writes).
    pub fn status_changed(&self, tenant: &TenantId, incident: &IncidentId, reason: Reason) {
        let routes = match self.store.list_alert_routes(tenant) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, %tenant, "could not read alert routes; PagerDuty not told");
                return;
            }
        };
        let now = Timestamp::now();
        for r in routes.iter().filter(|r| r.kind == RouteKind::PagerDuty) {
            let d = Delivery::incident(&r.id, tenant, incident, reason, now);
            if let Err(e) = self.enqueue(&d, now) {
                tracing::error!(error = %e, route = %r.id, %incident, "PagerDuty update not scheduled");
            }
        }
    }
}

/// One PagerDuty Events API v2 event.
#[derive(Clone, Copy)]
struct PagerDutyEvent<'a> {
    key: &'a str,
    action: &'static str,
    dedup_key: &'a str,
    incident: Option<&'a Incident>,
    summary: Option<&'a str>,
}

impl PagerDutyEvent<'_> {
    fn body(&self) -> Vec<u8> {
        let mut body = serde_json::json!({
            "routing_key": self.key,
            "event_action": self.action,
            "dedup_key": self.dedup_key,
        });
        if self.action == "trigger" {
            body["client"] = serde_json::json!("agv-server");
            body["payload"] = match self.incident {
                Some(i) => serde_json::json!({
                    // PagerDuty cuts a summary at 1,024 characters.
                    "summary": truncate(&format!("[{}] {}", i.severity.as_str().to_uppercase(), i.title), 1024),
                    "source": format!("agv-server tenant {}", i.tenant_id),
                    "severity": alert::pagerduty_severity(i.severity),
                    "timestamp": i.first_signal_at.to_rfc3339(),
                    "group": i.tenant_id,
                    "component": i.subject,
                    "class": i.rule,
                    "custom_details": {
                        "incident_id": i.id,
                        "status": i.status,
                        "signals": i.signal_count,
                        "calls": i.call_count,
                        "summary": self.summary,
                    },
                }),
                None => serde_json::json!({
                    "summary": "agv-server test alert: this route works (resolved at once).",
                    "source": "agv-server",
                    "severity": "info",
                }),
            };
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The alert PagerDuty groups an incident's events under: one per incident and route.
fn pagerduty_dedup_key(route: &AlertRoute, incident: Option<&Incident>) -> String {
    match incident {
        Some(i) => format!("agv:{}", i.id),
        None => format!("agv:test:{}", route.id),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

impl super::Listener for Alerts {
    fn applied(&self, applied: &[Applied]) {
        self.schedule(applied);
    }
}

fn webhook_body(
    delivery_id: &str,
    attempt: u32,
    d: &Delivery,
    route: Option<&AlertRoute>,
    incident: Option<&Incident>,
    summary: Option<&str>,
) -> Vec<u8> {
    let kind = match (d.reason, incident) {
        (Reason::System, _) => "system.alert",
        (Reason::Test, _) => "test",
        _ => "incident.alert",
    };
    let body = serde_json::json!({
        "type": kind,
        "reason": d.reason.as_str(),
        "route": route.map(|r| serde_json::json!({"id": r.id, "name": r.name})),
        "delivery_id": delivery_id,
        "attempt": attempt,
        "sent_at": Timestamp::now().to_rfc3339(),
        "incident": incident,
        "summary": summary,
        "system": d.system,
        // What happened in words: also what a Slack incoming webhook needs (it ignores the
        // other fields), so the operator's route may be one.
        "text": alert_text(d.reason, incident, summary, d.system.as_ref()),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn slack_body(reason: Reason, incident: Option<&Incident>, summary: Option<&str>) -> Vec<u8> {
    let text = alert_text(reason, incident, summary, None);
    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
}

/// One alert in a few lines of Slack's markup.
fn alert_text(
    reason: Reason,
    incident: Option<&Incident>,
    summary: Option<&str>,
    system: Option<&serde_json::Value>,
) -> String {
    if let Some(s) = system {
        let field = |name: &str| s.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        return format!(
            "*agv-server system alert* ({}): {}",
            field("check"),
            field("message")
        );
    }
    match incident {
        None => "agv-server test alert: this route works.".to_owned(),
        Some(i) => {
            let what = match reason {
                Reason::Escalated => "escalated",
                Reason::Repeat => "still unresolved",
                Reason::Reopened => "reopened",
                _ => "opened",
            };
            format!(
                "*[{}] {}* ({what})\n{}\nIncident `{}` · {} signal(s), {} call(s)",
                i.severity.as_str().to_uppercase(),
                i.title,
                summary.unwrap_or_default(),
                i.id,
                i.signal_count,
                i.call_count
            )
        }
    }
}

/// Resolves a webhook URL's host and checks every address against the SSRF rules.
/// Returns the URL and the addresses the request must use.
pub async fn resolve_checked(
    text: &str,
    allow: &HostAllowlist,
) -> Result<(reqwest::Url, Vec<SocketAddr>), String> {
    match lookup_checked(text, allow).await? {
        (url, Ok(addrs)) => Ok((url, addrs)),
        (_, Err(lookup_failed)) => Err(lookup_failed),
    }
}

/// The check when a route is saved: the URL and, where its host resolves now, every
/// address. A host that does not resolve yet (a DNS outage, a name not yet published) is
/// accepted, since every send resolves and checks again ([`resolve_checked`]).
pub async fn check_route_url(text: &str, allow: &HostAllowlist) -> Result<reqwest::Url, String> {
    lookup_checked(text, allow).await.map(|(url, _)| url)
}

/// Parses `text` and looks its host up; the addresses found are checked against the SSRF
/// rules (an error), a failed lookup is returned beside the URL.
async fn lookup_checked(
    text: &str,
    allow: &HostAllowlist,
) -> Result<(reqwest::Url, Result<Vec<SocketAddr>, String>), String> {
    let url = alert::parse_webhook_url(text)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_matches(['[', ']']);
    let looked_up: Result<Vec<SocketAddr>, String> = match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        Err(_) => match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((bare, port)),
        )
        .await
        {
            Err(_) => Err(format!("looking up the webhook host '{host}' timed out")),
            Ok(Err(e)) => Err(format!(
                "the webhook host '{host}' could not be resolved: {e}"
            )),
            Ok(Ok(addrs)) => Ok(addrs.collect()),
        },
    };
    if let Ok(addrs) = &looked_up {
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        alert::check_addresses(&host, &ips, allow)?;
    }
    Ok((url, looked_up))
}

/// Posts one alert; a non-2xx answer is an error (so the job is retried).
async fn post(
    url: &str,
    secret: Option<&[u8]>,
    event: &str,
    delivery: &str,
    body: &[u8],
    allow: &HostAllowlist,
) -> Result<u16, String> {
    let (url, addrs) = resolve_checked(url, allow).await?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let client = crate::outbound::builder()
        .timeout(SEND_TIMEOUT)
        .resolve_to_addrs(&host, &addrs)
        .build()
        .map_err(|e| format!("could not build the webhook client: {e}"))?;
    let ts = Timestamp::now().millis() / 1000;
    let mut req = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("agv-server/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-agv-event", event)
        .header("x-agv-delivery", delivery)
        .header(alert::TIMESTAMP_HEADER, ts.to_string());
    if let Some(secret) = secret {
        req = req.header(alert::SIGNATURE_HEADER, alert::sign(secret, ts, body));
    }
    let res = req.body(body.to_vec()).send().await.map_err(|e| {
        format!(
            "the webhook {} could not be reached: {e}",
            alert::display_target(&url)
        )
    })?;
    let status = res.status().as_u16();
    if res.status().is_success() {
        Ok(status)
    } else {
        Err(format!(
            "the webhook {} answered {status}; the alert will be retried",
            alert::display_target(&url)
        ))
    }
}

const MINUTE_MS: i64 = 60_000;
const HEALTH_MINUTES: usize = 6;
const HEALTH_BUCKETS: usize = alert::LATENCY_BOUNDS_MS.len() + 1;

/// Calls, upstream errors and a latency histogram per minute for the last few minutes,
/// fed by the proxy for every recorded call. Atomics only: no lock on the hot path.
/// A minute's slot is reset by the first call of a new minute; a call racing that reset
/// may be lost, which a health check tolerates.
#[derive(Default)]
pub struct CallHealth {
    minutes: [HealthMinute; HEALTH_MINUTES],
}

#[derive(Default)]
struct HealthMinute {
    minute: AtomicI64,
    calls: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; HEALTH_BUCKETS],
}

impl CallHealth {
    pub fn record(&self, now_ms: i64, status: u16, latency_us: i64) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let slot = &self.minutes[minute.rem_euclid(HEALTH_MINUTES as i64) as usize];
        let seen = slot.minute.load(Ordering::Relaxed);
        if seen != minute
            && slot
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            slot.calls.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for b in &slot.latency {
                b.store(0, Ordering::Relaxed);
            }
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = (latency_us.max(0) / 1000) as u64;
        let bucket = alert::LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(HEALTH_BUCKETS - 1);
        slot.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls, errors and p95 over the five minutes up to `now_ms` (the current one included).
    pub fn window(&self, now_ms: i64) -> (u64, u64, Option<f64>) {
        let current = now_ms.div_euclid(MINUTE_MS);
        let mut calls = 0;
        let mut errors = 0;
        let mut hist = [0u64; HEALTH_BUCKETS];
        for slot in &self.minutes {
            let m = slot.minute.load(Ordering::Relaxed);
            if m > current || current - m >= 5 {
                continue;
            }
            calls += slot.calls.load(Ordering::Relaxed);
            errors += slot.errors.load(Ordering::Relaxed);
            for (h, b) in hist.iter_mut().zip(&slot.latency) {
                *h += b.load(Ordering::Relaxed);
            }
        }
        (calls, errors, alert::p95_from_buckets(&hist))
    }
}

/// Used share (0–100) of the filesystem holding `path`.
pub fn disk_used_percent(path: &std::path::Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let total = st.f_blocks as f64 * st.f_frsize as f64;
    let avail = st.f_bavail as f64 * st.f_frsize as f64;
    let free = st.f_bfree as f64 * st.f_frsize as f64;
    let used = total - free;
    // As df computes it: used / (used + available to unprivileged users).
    (used + avail > 0.0).then(|| used / (used + avail) * 100.0)
}

/// What the periodic system check reads.
pub struct SystemProbe {
    pub store: DynStore,
    pub queue: WeakQueue,
    pub health: Arc<CallHealth>,
    pub data_dir: std::path::PathBuf,
    pub thresholds: SystemThresholds,
}

impl SystemProbe {
    pub async fn sample(&self) -> SystemSample {
        let now = Timestamp::now();
        let (calls, errors, p95_ms) = self.health.window(now.millis());
        let store = self.store.clone();
        let store_errors = match run_blocking(move || store.ping()).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "system check: the store does not answer");
                1
            }
        };
        let oldest_due_wait_ms = self
            .queue
            .upgrade()
            .and_then(|q| q.next_due().ok().flatten())
            .map(|due| now.millis() - due.millis())
            .filter(|w| *w > 0);
        let dir = self.data_dir.clone();
        let disk_used_percent = run_blocking(move || disk_used_percent(&dir)).await;
        SystemSample {
            calls,
            errors,
            p95_ms,
            disk_used_percent,
            store_errors,
            oldest_due_wait_ms,
        }
    }
}

/// Runs the system checks every `every` and queues an operator alert when a check starts
/// firing (and again every four hours while it keeps firing).
pub fn spawn_system_checks(
    alerts: Arc<Alerts>,
    probe: SystemProbe,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut firing: HashMap<&'static str, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let sample = probe.sample().await;
                    let found = alert::evaluate(&sample, &probe.thresholds);
                    let due: Vec<SystemAlert> = new_or_repeating(&mut firing, &found, Instant::now())
                        .into_iter()
                        .cloned()
                        .collect();
                    // A stuck queue would never deliver its own alert: that one goes direct.
                    let (direct, queued): (Vec<SystemAlert>, Vec<SystemAlert>) =
                        due.into_iter().partition(|a| a.check == alert::QUEUE_STUCK);
                    for a in direct {
                        let alerts = alerts.clone();
                        tokio::spawn(async move {
                            tracing::warn!(check = a.check, message = %a.message, "system alert");
                            alerts.send_system_now(&system_delivery(&a)).await;
                        });
                    }
                    if !queued.is_empty() {
                        // The queue writes (and syncs) to disk: off the runtime.
                        let alerts = alerts.clone();
                        run_blocking(move || queued.iter().for_each(|a| queue_system_alert(&alerts, a))).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    })
}

/// The alerts to send now: checks that just started firing, or that have fired for
/// longer than the repeat interval since their last alert. Forgets checks that stopped.
fn new_or_repeating<'a>(
    firing: &mut HashMap<&'static str, Instant>,
    found: &'a [SystemAlert],
    now: Instant,
) -> Vec<&'a SystemAlert> {
    firing.retain(|check, _| found.iter().any(|a| a.check == *check));
    let mut out = Vec::new();
    for a in found {
        let due = firing
            .get(a.check)
            .is_none_or(|at| now.duration_since(*at) >= SYSTEM_REPEAT);
        if due {
            firing.insert(a.check, now);
            out.push(a);
        }
    }
    out
}

fn system_delivery(a: &SystemAlert) -> Delivery {
    Delivery {
        route_id: OPERATOR_ROUTE.into(),
        tenant_id: None,
        incident_id: None,
        reason: Reason::System,
        scheduled_at: Timestamp::now().millis(),
        system: serde_json::to_value(a).ok(),
    }
}

fn queue_system_alert(alerts: &Alerts, a: &SystemAlert) {
    tracing::warn!(check = a.check, message = %a.message, "system alert");
    let d = system_delivery(a);
    if let Err(e) = alerts.enqueue(&d, Timestamp::now()) {
        tracing::error!(error = %e, "the system alert was not queued");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_health_counts_the_last_five_minutes_only() {
        let h = CallHealth::default();
        let t0 = 10 * MINUTE_MS;
        for _ in 0..19 {
            h.record(t0, 200, 3_000);
        }
        // One slow call in twenty is the 5 % above the p95.
        h.record(t0 + 1000, 502, 4_000_000);
        assert_eq!(h.window(t0 + 2000).0, 20);
        assert_eq!(h.window(t0 + 2000).1, 1);
        assert_eq!(h.window(t0 + 2000).2, Some(5.0));
        h.record(t0 + 1000, 200, 4_000_000);
        assert_eq!(h.window(t0 + 2000).2, Some(5000.0));
        // Five minutes later the old minute has left the window.
        assert_eq!(h.window(t0 + 5 * MINUTE_MS).0, 0);
        // Its slot is reused after six minutes, from zero.
        h.record(t0 + 6 * MINUTE_MS, 200, 1000);
        assert_eq!(h.window(t0 + 6 * MINUTE_MS).0, 1);
    }

    #[test]
    fn a_firing_check_alerts_once_then_again_after_the_repeat_and_anew_after_clearing() {
        let a = SystemAlert {
            check: "disk",
            message: "full".into(),
            value: 90.0,
            threshold: 80.0,
        };
        let mut firing = HashMap::new();
        let t = Instant::now();
        let fires = std::slice::from_ref(&a);
        let steps = [
            ("first firing", fires, t, 1),
            ("a minute later", fires, t + Duration::from_secs(60), 0),
            ("after the repeat", fires, t + SYSTEM_REPEAT, 1),
            ("cleared", &[][..], t + SYSTEM_REPEAT, 0),
            ("firing anew", fires, t + SYSTEM_REPEAT, 1),
        ];
        for (step, alerts, now, expected) in steps {
            let alerted = new_or_repeating(&mut firing, alerts, now);
            assert_eq!(alerted.len(), expected, "{step}");
        }
    }

    #[test]
    fn disk_usage_of_a_real_directory_is_a_percentage() {
        let p = disk_used_percent(std::path::Path::new(".")).unwrap();
        assert!((0.0..=100.0).contains(&p), "{p}");
        assert_eq!(
            disk_used_percent(std::path::Path::new("/no/such/dir/agv")),
            None
        );
    }
}
