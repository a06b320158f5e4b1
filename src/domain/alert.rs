//! Alert routes and the rules that decide when an alert is sent.
//!
//! A tenant's route sends incidents at or above a minimum severity to a Slack incoming
//! webhook, to a generic webhook signed with HMAC-SHA256, or to PagerDuty's Events API v2
//! (trigger, then acknowledge and resolve as the incident is acknowledged and resolved). Timing is Alertmanager-like:
//! the first alert waits `group_wait` (an incident resolved within the wait is never
//! announced), an escalation that meets the minimum re-notifies at once, and an
//! unresolved incident is re-announced every `repeat_interval`. The operator's own route
//! (from config) receives system alerts, evaluated here from a sample of counters.
//!
//! Pure: parsing, deciding, signing and classifying addresses. No DNS, no HTTP, no store.

use super::{AlertRouteId, IncidentStatus, Severity, TenantId, Timestamp};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const DEFAULT_GROUP_WAIT_MS: i64 = 30_000;
pub const DEFAULT_REPEAT_INTERVAL_MS: i64 = 4 * 60 * 60 * 1000;
pub const MAX_GROUP_WAIT_MS: i64 = 60 * 60 * 1000;
pub const MIN_REPEAT_INTERVAL_MS: i64 = 1000;
pub const MAX_REPEAT_INTERVAL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Header carrying the Unix time (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-agv-timestamp";
/// Header carrying `v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "x-agv-signature";
/// The route id of the operator's route from config (never stored).
pub const OPERATOR_ROUTE: &str = "operator";

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum RouteKind {
        Slack => "slack",
        Webhook => "webhook",
        #[serde(rename = "pagerduty")]
        PagerDuty => "pagerduty",
    }
}

impl RouteKind {
    pub fn parse(s: &str) -> Result<Self, super::ParseError> {
        let name = s.trim().to_ascii_lowercase();
        Self::from_name(&name).ok_or_else(|| {
            super::ParseError::new(format!(
                "'{}' is not a route kind: expected slack, webhook or pagerduty",
                name.chars().take(32).collect::<String>()
            ))
        })
    }
}

/// A stored route. The URL (a Slack webhook URL is itself a credential) and the signing
/// secret are kept only as ciphertext sealed with the master key; `target` is the URL
/// with its path hidden, for showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRoute {
    pub id: AlertRouteId,
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: RouteKind,
    pub target: String,
    pub min_severity: Severity,
    pub group_wait_ms: i64,
    pub repeat_interval_ms: i64,
    pub created_at: Timestamp,
    #[serde(skip)]
    pub url_ciphertext: String,
    #[serde(skip)]
    pub secret_ciphertext: Option<String>,
}

/// One alert that reached its receiver, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSent {
    pub tenant_id: TenantId,
    pub route_id: AlertRouteId,
    /// `None` for a test alert.
    pub incident_id: Option<super::IncidentId>,
    pub reason: Reason,
    pub severity: Option<Severity>,
    /// The delivery attempt that succeeded (1 = first try).
    pub attempt: u32,
    pub job_id: String,
    pub status: u16,
    pub at: Timestamp,
}

named_enum! {
    /// Why an alert is being sent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Reason {
        Opened => "opened",
        Reopened => "reopened",
        Escalated => "escalated",
        Repeat => "repeat",
        Test => "test",
        System => "system",
        /// Someone acknowledged the incident (sent to PagerDuty routes only).
        Acknowledged => "acknowledged",
        /// Someone resolved the incident (sent to PagerDuty routes only).
        Resolved => "resolved",
    }
}

impl Reason {
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_name(s)
    }
}

/// What the engine reported for an incident, reduced to what routing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub opened: bool,
    pub reopened: bool,
    pub escalated: Option<(Severity, Severity)>,
    pub severity: Severity,
}

/// Which alert (if any) a route schedules for a change, and how long it waits.
pub fn schedule(change: &Change, min: Severity, group_wait_ms: i64) -> Option<(Reason, i64)> {
    if change.severity < min {
        return None;
    }
    if change.opened {
        return Some((Reason::Opened, group_wait_ms));
    }
    if change.reopened {
        return Some((Reason::Reopened, group_wait_ms));
    }
    match change.escalated {
        // Re-notify at once; an escalation that first crosses the minimum is the route's
        // first alert and waits like one.
        Some((from, _)) if from >= min => Some((Reason::Escalated, 0)),
        Some(_) => Some((Reason::Escalated, group_wait_ms)),
        None => None,
    }
}

/// The facts a delivery job looks at when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueAlert {
    pub reason: Reason,
    pub status: IncidentStatus,
    pub severity: Severity,
    pub min_severity: Severity,
    pub now: Timestamp,
    /// When the job was scheduled.
    pub scheduled_at: Timestamp,
    /// The last alert this route sent for this incident.
    pub last_sent: Option<Timestamp>,
    pub repeat_interval_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Send,
    Skip(&'static str),
}

/// Whether a due alert is still worth sending.
pub fn verdict(d: &DueAlert) -> Verdict {
    if matches!(d.reason, Reason::Acknowledged | Reason::Resolved) {
        // Follows the incident's own state, resolved included, but only where the route
        // announced the incident: a receiver is never told to close what it never opened.
        return match d.last_sent {
            Some(_) => Verdict::Send,
            None => Verdict::Skip("the route never announced the incident"),
        };
    }
    if d.status == IncidentStatus::Resolved {
        return Verdict::Skip("the incident was resolved before the alert was due");
    }
    if d.severity < d.min_severity {
        return Verdict::Skip("the incident is below the route's minimum severity");
    }
    match d.reason {
        Reason::Opened | Reason::Reopened => match d.last_sent {
            Some(t) if t >= d.scheduled_at => {
                Verdict::Skip("the route already announced the incident since")
            }
            _ => Verdict::Send,
        },
        Reason::Escalated
        | Reason::Test
        | Reason::System
        | Reason::Acknowledged
        | Reason::Resolved => Verdict::Send,
        // A later alert (an escalation) started its own repeat chain; this one ends.
        Reason::Repeat => match d.last_sent {
            Some(t) if d.now.millis() - t.millis() < d.repeat_interval_ms => {
                Verdict::Skip("a newer alert was sent within the repeat interval")
            }
            _ => Verdict::Send,
        },
    }
}

/// `v1=<hex>` over `timestamp + "." + body`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook URL as given: `http(s)`, with a host, without user info or fragment.
pub fn parse_webhook_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    let url = Url::parse(text).map_err(|e| {
        format!(
            "the webhook URL is not a valid URL ({e}); expected e.g. https://hooks.example.com/agv"
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the webhook URL uses the scheme '{}'; only http:// and https:// are allowed",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the webhook URL must not contain a user name or password".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the webhook URL has no host".into());
    }
    if url.fragment().is_some() {
        return Err("the webhook URL must not have a #fragment".into());
    }
    Ok(url)
}

/// Where PagerDuty's Events API v2 takes events; a route may name another (PagerDuty's EU
/// service region, or a proxy).
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A PagerDuty integration (routing) key as given: 32 characters from PagerDuty, accepted
/// here as 20 to 64 letters and digits so that a copy-paste slip is caught when the route
/// is saved rather than at the first incident.
pub fn parse_routing_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if !(20..=64).contains(&key.len()) || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(
            "the PagerDuty routing key must be the integration key of an Events API v2 \
             integration: 20 to 64 letters and digits (PagerDuty shows 32)"
                .into(),
        );
    }
    Ok(key.to_owned())
}

/// PagerDuty's severity for an incident's.
pub fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}

/// What a PagerDuty event does with the alert it names: opened, reopened, escalated and
/// test alerts trigger it, an acknowledgement acknowledges it, a resolution resolves it.
/// Repeats and system alerts are not sent (PagerDuty escalates on its own).
pub fn pagerduty_action(reason: Reason) -> Option<&'static str> {
    match reason {
        Reason::Opened | Reason::Reopened | Reason::Escalated | Reason::Test => Some("trigger"),
        Reason::Acknowledged => Some("acknowledge"),
        Reason::Resolved => Some("resolve"),
        Reason::Repeat | Reason::System => None,
    }
}

/// `https://host:port/…`: enough to recognise a route without revealing its path token.
pub fn display_target(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// The IPv4 address an IPv6 address stands for, where it carries one a router or a host
/// would reach: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64's
/// well-known prefix (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn embedded_ipv4(v6: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// Why an address may not receive webhooks unless allowlisted, or `None` when it may.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if o == [169, 254, 169, 254] || o == [100, 100, 100, 200] {
                Some("a cloud metadata address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                Some("a private address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                Some("not a unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(&v6) {
                return forbidden_address(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                // NAT64's local-use prefix (RFC 8215): the network chooses where the IPv4
                // address sits, so nothing can be said about it.
                return Some("a NAT64 local-use address");
            }
            if v6.is_loopback() {
                Some("a loopback address")
            } else if s[0] == 0xfd00 && s[1..7] == [0, 0, 0, 0, 0, 0] && s[7] == 0x254 {
                Some("a cloud metadata address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("a private address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
    }
}

/// Hosts the operator lets webhooks reach even though they resolve to internal addresses
/// (`alert_webhook_allowed_hosts`): exact host names or IP literals, lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAllowlist(Vec<String>);

impl HostAllowlist {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hosts = Vec::new();
        for h in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if h.contains('/') || h.contains(' ') {
                return Err(format!(
                    "'{h}' is not a host name: list bare hosts or IP addresses, e.g. 127.0.0.1,alerts.internal"
                ));
            }
            hosts.push(h.trim_matches(['[', ']']).to_ascii_lowercase());
        }
        Ok(Self(hosts))
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.0.contains(&host)
    }
}

impl std::fmt::Display for HostAllowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Accepts a host's resolved addresses only when none is internal, or the host is
/// allowlisted. The error is the message a client sees.
pub fn check_addresses(host: &str, addrs: &[IpAddr], allow: &HostAllowlist) -> Result<(), String> {
    if addrs.is_empty() {
        return Err(format!(
            "the webhook host '{host}' does not resolve to any address"
        ));
    }
    if allow.allows(host) {
        return Ok(());
    }
    for ip in addrs {
        if let Some(why) = forbidden_address(*ip) {
            return Err(format!(
                "the webhook host '{host}' resolves to {ip}, {why}; webhooks may not reach internal addresses unless the operator lists the host in alert_webhook_allowed_hosts (AGV_ALERT_WEBHOOK_ALLOWED_HOSTS)"
            ));
        }
    }
    Ok(())
}

/// A snapshot of the instance's health, taken by the periodic check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SystemSample {
    /// Calls and upstream errors (status >= 500) over the error window.
    pub calls: u64,
    pub errors: u64,
    /// p95 latency of the calls over the window, in ms (`None`: no calls).
    pub p95_ms: Option<f64>,
    /// Used share of the data dir's filesystem, 0–100.
    pub disk_used_percent: Option<f64>,
    /// Store failures since the last check (including a failed ping now).
    pub store_errors: u64,
    /// How long the oldest due job has been waiting, in ms.
    pub oldest_due_wait_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemThresholds {
    pub error_rate: f64,
    /// Fewer calls than this in the window never raise the error-rate alert.
    pub min_calls: u64,
    pub p95_ms: f64,
    pub disk_percent: f64,
    pub queue_stuck_ms: i64,
}

impl Default for SystemThresholds {
    fn default() -> Self {
        Self {
            error_rate: 0.05,
            min_calls: 20,
            p95_ms: 2000.0,
            disk_percent: 80.0,
            queue_stuck_ms: 10 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemAlert {
    /// `error_rate`, `p95_latency`, `disk`, `store_errors`, `queue_stuck`.
    pub check: &'static str,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
}

/// The system check whose alert bypasses the job queue it reports on.
pub const QUEUE_STUCK: &str = "queue_stuck";

/// The system alerts a sample raises.
pub fn evaluate(s: &SystemSample, t: &SystemThresholds) -> Vec<SystemAlert> {
    let mut out = Vec::new();
    if s.calls >= t.min_calls && s.calls > 0 {
        let rate = s.errors as f64 / s.calls as f64;
        if rate > t.error_rate {
            out.push(SystemAlert {
                check: "error_rate",
                message: format!(
                    "{:.1}% of calls failed upstream over the last 5 minutes ({} of {}); the threshold is {:.1}%",
                    rate * 100.0,
                    s.errors,
                    s.calls,
                    t.error_rate * 100.0
                ),
                value: rate,
                threshold: t.error_rate,
            });
        }
    }
    if let Some(p95) = s.p95_ms
        && p95 > t.p95_ms
    {
        out.push(SystemAlert {
            check: "p95_latency",
            message: format!(
                "p95 call latency is {:.0} ms over the last 5 minutes; the threshold is {:.0} ms",
                p95, t.p95_ms
            ),
            value: p95,
            threshold: t.p95_ms,
        });
    }
    if let Some(d) = s.disk_used_percent
        && d > t.disk_percent
    {
        out.push(SystemAlert {
            check: "disk",
            message: format!(
                "the data directory's filesystem is {d:.1}% full; the threshold is {:.0}%. Free space or grow the volume before writes fail",
                t.disk_percent
            ),
            value: d,
            threshold: t.disk_percent,
        });
    }
    if s.store_errors > 0 {
        out.push(SystemAlert {
            check: "store_errors",
            message: format!(
                "{} store operation(s) failed since the last check; see the server log",
                s.store_errors
            ),
            value: s.store_errors as f64,
            threshold: 0.0,
        });
    }
    if let Some(w) = s.oldest_due_wait_ms
        && w > t.queue_stuck_ms
    {
        out.push(SystemAlert {
            check: QUEUE_STUCK,
            message: format!(
                "the oldest due background job has waited {} s; the threshold is {} s. Check that the job workers run",
                w / 1000,
                t.queue_stuck_ms / 1000
            ),
            value: w as f64,
            threshold: t.queue_stuck_ms as f64,
        });
    }
    out
}

/// Upper bounds (ms) of the latency histogram buckets; the last bucket is open-ended.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 10_000, 30_000, 60_000,
];

/// The p95 from bucket counts (`LATENCY_BOUNDS_MS.len() + 1` of them): the upper bound of
/// the bucket holding the 95th percentile (the open bucket counts as twice the last bound).
pub fn p95_from_buckets(counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.95).ceil() as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let bound = LATENCY_BOUNDS_MS
                .get(i)
                .copied()
                .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2);
            return Some(bound as f64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn change(opened: bool, escalated: Option<(Severity, Severity)>, sev: Severity) -> Change {
        Change {
            opened,
            reopened: false,
            escalated,
            severity: sev,
        }
    }

    #[test]
    fn a_new_incident_waits_the_group_wait_and_one_below_the_minimum_is_not_scheduled() {
        use Severity::*;
        for (c, expected) in [
            (change(true, None, High), Some((Reason::Opened, 30_000))),
            (change(true, None, Low), None),
            (change(false, None, High), None),
        ] {
            assert_eq!(schedule(&c, Medium, 30_000), expected, "{c:?}");
        }
    }

    #[test]
    fn an_escalation_re_notifies_at_once_and_a_first_crossing_waits() {
        use Severity::*;
        for (c, expected) in [
            (change(false, Some((High, Critical)), Critical), Some(0)),
            (change(false, Some((Medium, High)), High), Some(30_000)),
            (change(false, Some((Low, Medium)), Medium), None),
        ] {
            let scheduled = expected.map(|wait| (Reason::Escalated, wait));
            assert_eq!(schedule(&c, High, 30_000), scheduled, "{c:?}");
        }
    }

    /// Whether a due alert is sent, for a `High` incident whose job was scheduled at 1 s:
    /// each case is the reason, the incident's status, when the last alert went out, and now.
    #[test]
    fn a_due_alert_is_sent_only_while_it_still_says_something_new() {
        use IncidentStatus as S;
        use Reason as R;
        let sent = [
            due(R::Opened, S::Open, None, 31_000),
            // A state change follows the incident where it was announced.
            due(R::Acknowledged, S::Resolved, Some(2000), 31_000),
            due(R::Resolved, S::Resolved, Some(2000), 31_000),
            // An alert from before this job was scheduled (an earlier life) does not count.
            due(R::Reopened, S::Open, Some(500), 31_000),
            // A repeat after the interval.
            due(R::Repeat, S::Acknowledged, Some(20_000), 30_000),
        ];
        let skipped = [
            // An incident resolved within the wait is never announced.
            due(R::Opened, S::Resolved, None, 31_000),
            due(R::Repeat, S::Resolved, Some(0), 31_000),
            // A state change where the incident was never announced.
            due(R::Acknowledged, S::Acknowledged, None, 31_000),
            due(R::Resolved, S::Acknowledged, None, 31_000),
            // Already covered by a later alert.
            due(R::Opened, S::Open, Some(2000), 31_000),
            due(R::Repeat, S::Open, Some(25_000), 30_000),
            // Below the minimum severity.
            DueAlert {
                severity: Severity::Low,
                ..due(R::Repeat, S::Open, Some(25_000), 40_000)
            },
        ];
        for d in sent {
            assert_eq!(verdict(&d), Verdict::Send, "{d:?}");
        }
        for d in skipped {
            assert!(matches!(verdict(&d), Verdict::Skip(_)), "{d:?}");
        }
    }

    fn due(reason: Reason, status: IncidentStatus, last: Option<i64>, now: i64) -> DueAlert {
        DueAlert {
            reason,
            status,
            severity: Severity::High,
            min_severity: Severity::Medium,
            now: Timestamp::from_millis(now),
            scheduled_at: Timestamp::from_millis(1000),
            last_sent: last.map(Timestamp::from_millis),
            repeat_interval_ms: 10_000,
        }
    }

    #[test]
    fn reasons_routes_and_routing_keys_parse() {
        assert_eq!(pagerduty_action(Reason::Acknowledged), Some("acknowledge"));
        assert_eq!(pagerduty_action(Reason::Resolved), Some("resolve"));
        assert_eq!(pagerduty_action(Reason::Reopened), Some("trigger"));
        assert_eq!(pagerduty_action(Reason::Repeat), None);
        for r in [Reason::Acknowledged, Reason::Resolved] {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(RouteKind::parse("PagerDuty").unwrap(), RouteKind::PagerDuty);
        assert!(parse_routing_key("R0UT1NGk3y0123456789abcdefABCDEF").is_ok());
        for bad in [
            "",
            "short",
            "R0UT1NGk3y0123456789 abcdefABCDEF",
            "key-with-dashes-0123456789",
        ] {
            assert!(parse_routing_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signatures_cover_timestamp_and_body_and_match_a_known_vector() {
        // HMAC-SHA256("key", "1700000000.{}"), computed independently with openssl.
        let sig = sign(b"key", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        assert_ne!(sig, sign(b"key", 1_700_000_001, b"{}"));
        assert_ne!(sig, sign(b"key", 1_700_000_000, b"{ }"));
        assert_ne!(sig, sign(b"other", 1_700_000_000, b"{}"));
    }

    #[test]
    fn webhook_urls_must_be_http_with_a_host_and_no_credentials() {
        assert!(parse_webhook_url("https://hooks.example.com/x").is_ok());
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "not a url",
            "https://example.com/#frag",
        ] {
            assert!(parse_webhook_url(bad).is_err(), "{bad}");
        }
        let url = parse_webhook_url("https://hooks.slack.com/services/T0/B0/secret").unwrap();
        assert_eq!(display_target(&url), "https://hooks.slack.com/…");
    }

    #[test]
    fn internal_addresses_are_refused_unless_the_host_is_allowlisted() {
        let none = HostAllowlist::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            // IPv6 forms that carry an IPv4 address are judged by that address: NAT64
            // (RFC 6052), its local-use prefix (RFC 8215), 6to4 (RFC 3056) and
            // IPv4-compatible (RFC 4291, deprecated) forms of internal IPv4 addresses.
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::10.0.0.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
            "::127.0.0.1",
            "::10.0.0.1",
        ] {
            assert!(check_addresses("h", &[ip(bad)], &none).is_err(), "{bad}");
        }
        // Public addresses, also in those IPv6 forms, are fine.
        for good in [
            "93.184.216.34",
            "64:ff9b::93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            assert!(check_addresses("h", &[ip(good)], &none).is_ok(), "{good}");
        }
        // One bad address among good ones is enough to refuse.
        assert!(check_addresses("h", &[ip("93.184.216.34"), ip("10.1.1.1")], &none).is_err());
        let err = check_addresses("h", &[ip("169.254.169.254")], &none).unwrap_err();
        assert!(
            err.contains("metadata") && err.contains("alert_webhook_allowed_hosts"),
            "{err}"
        );
        let allow = HostAllowlist::parse("127.0.0.1, Alerts.Internal").unwrap();
        assert!(check_addresses("127.0.0.1", &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &allow).is_ok());
        assert!(check_addresses("alerts.internal", &[ip("10.0.0.2")], &allow).is_ok());
        assert!(check_addresses("10.0.0.1", &[ip("10.0.0.1")], &allow).is_err());
        assert!(check_addresses("h", &[], &allow).is_err());
        assert!(HostAllowlist::parse("http://x/").is_err());
    }

    #[test]
    fn system_alerts_fire_on_each_threshold_and_stay_quiet_below_them() {
        let t = SystemThresholds::default();
        let quiet = SystemSample {
            calls: 1000,
            errors: 50,
            p95_ms: Some(2000.0),
            disk_used_percent: Some(80.0),
            store_errors: 0,
            oldest_due_wait_ms: Some(600_000),
        };
        assert_eq!(evaluate(&quiet, &t), vec![]);
        let loud = SystemSample {
            calls: 1000,
            errors: 51,
            p95_ms: Some(3000.0),
            disk_used_percent: Some(80.5),
            store_errors: 2,
            oldest_due_wait_ms: Some(600_001),
        };
        let checks: Vec<_> = evaluate(&loud, &t).iter().map(|a| a.check).collect();
        assert_eq!(
            checks,
            [
                "error_rate",
                "p95_latency",
                "disk",
                "store_errors",
                "queue_stuck"
            ]
        );
        // A handful of calls with one failure is not an error-rate alert.
        let few = SystemSample {
            calls: 3,
            errors: 1,
            ..SystemSample::default()
        };
        assert_eq!(evaluate(&few, &t), vec![]);
    }

    #[test]
    fn p95_is_the_bound_of_the_bucket_holding_the_95th_percentile() {
        let mut counts = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
        assert_eq!(p95_from_buckets(&counts), None);
        counts[2] = 95; // ≤ 25 ms
        counts[11] = 5; // ≤ 3000 ms
        assert_eq!(p95_from_buckets(&counts), Some(25.0));
        counts[11] = 6;
        assert_eq!(p95_from_buckets(&counts), Some(3000.0));
        counts[16] = 100;
        assert_eq!(p95_from_buckets(&counts), Some(120_000.0));
    }
}
