//! Rows as both backends read them (plain strings and integers), and their conversion
//! into domain types. Shared so that SQLite and Postgres cannot drift apart in how they
//! interpret a stored value. A stored value that no longer parses is a database error,
//! never a panic.

use super::sql::{Cells, Dialect, Param, Query, SqlRow};
use super::{StoreError, StoreResult};
use crate::domain::chain::body_digest;
use crate::domain::{
    ApiKeyRecord, CallCursor, CallFilter, CallId, CallRecord, Decision, Email, FreezeAction,
    FreezeEvent, FreezeId, KeyHash, KeyId, Money, PasswordHash, Role, Scope, Session, SessionId,
    Tenant, TenantId, TenantName, Timestamp, User, UserId,
};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Columns of `api_keys` in the order [`key_from`] reads them.
pub(super) const KEY_COLUMNS: &str = "id, tenant_id, name, scope, key_hash, prefix, created_at, expires_at, revoked_at, last_used_at";
pub(super) const TENANT_COLUMNS: &str = "id, name, created_at";
pub(super) const USER_COLUMNS: &str =
    "id, email, password_hash, role, tenant_id, created_at, disabled_at";
/// Columns of a session (`s`) joined with its user (`u`), in the order [`session_from`] reads them.
pub(super) const SESSION_COLUMNS: &str = "s.id, s.user_id, s.created_at, s.expires_at";
/// The sessions that count, with `$1` the token hash and `$2` now: not expired, and of a
/// user who is not disabled (disabling also deletes them; this holds even if one is left).
pub(super) const LIVE_SESSION: &str = "sessions s JOIN users u ON u.id = s.user_id \
WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL";

/// The columns of `calls` a chain link covers, in chain order (see `domain::chain`); also
/// the first columns [`CallParams`] binds.
pub(super) const CHAINED_CALL_COLUMNS: &str = "id, tenant_id, key_id, created_at, endpoint, model, stream, end_user, session_id, metadata, \
request_body, request_truncated, request_sha256, response_body, response_truncated, response_sha256, \
status, error, blocked, blocked_by, decisions, prompt_tokens, completion_tokens, cached_tokens, total_tokens, \
cost_nanos, latency_us, upstream_latency_us, enforcement_us, upstream_attempts, upstream";
/// How many columns [`CHAINED_CALL_COLUMNS`] names.
pub(super) const CHAINED_CALL_COLUMN_COUNT: usize = 31;
/// Positions of the bodies among [`CHAINED_CALL_COLUMNS`] (a v2 link puts their digests there).
pub(super) const REQUEST_BODY_AT: usize = 10;
pub(super) const RESPONSE_BODY_AT: usize = 13;
/// Columns of `calls` in the order [`call_from`] reads them: the chained ones, then the
/// stored bodies' digests and when retention removed the bodies.
pub(super) const CALL_COLUMNS: &str = "id, tenant_id, key_id, created_at, endpoint, model, stream, end_user, session_id, metadata, \
request_body, request_truncated, request_sha256, response_body, response_truncated, response_sha256, \
status, error, blocked, blocked_by, decisions, prompt_tokens, completion_tokens, cached_tokens, total_tokens, \
cost_nanos, latency_us, upstream_latency_us, enforcement_us, upstream_attempts, upstream, \
request_body_sha256, response_body_sha256, body_pruned_at";
pub(super) const FREEZE_COLUMNS: &str = "id, tenant_id, key_id, action, actor, reason, at";

/// The most rows one page of calls or freeze events returns, whatever the caller asks.
pub(super) const MAX_PAGE: u32 = 1000;

/// The topic of changes recorded for API keys.
pub(super) const TOPIC_API_KEY: &str = "api_key";
/// The topic of changes recorded for freeze events (ref_id: the tenant id).
pub(super) const TOPIC_KILLSWITCH: &str = "killswitch";
/// The topic of changes recorded for tenant policy overrides (ref_id: the tenant id).
pub(super) const TOPIC_POLICY: &str = "policy";
/// A tenant's own upstream changed (put or deleted).
pub(super) const TOPIC_UPSTREAM: &str = "upstream";

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("a stored {what} could not be read back: {e}"))
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

/// An API key read in [`KEY_COLUMNS`] order.
pub(super) fn key_from(row: &SqlRow) -> StoreResult<ApiKeyRecord> {
    let c = Cells::new(row, "API key");
    Ok(ApiKeyRecord {
        id: KeyId::parse(&c.text(0)?).map_err(|e| corrupt("key id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| corrupt("tenant id", e))?,
        name: c.text(2)?,
        scope: Scope::parse(&c.text(3)?).map_err(|e| corrupt("key scope", e))?,
        hash: KeyHash::from_stored(c.text(4)?),
        prefix: c.text(5)?,
        created_at: Timestamp::from_millis(c.int(6)?),
        expires_at: ts(c.opt_int(7)?),
        revoked_at: ts(c.opt_int(8)?),
        last_used_at: ts(c.opt_int(9)?),
    })
}

/// A tenant read in [`TENANT_COLUMNS`] order.
pub(super) fn tenant_from(row: &SqlRow) -> StoreResult<Tenant> {
    let c = Cells::new(row, "tenant");
    Ok(Tenant {
        id: TenantId::parse(&c.text(0)?).map_err(|e| corrupt("tenant id", e))?,
        name: TenantName::parse(&c.text(1)?).map_err(|e| corrupt("tenant name", e))?,
        created_at: Timestamp::from_millis(c.int(2)?),
    })
}

/// A user read in [`USER_COLUMNS`] order.
pub(super) fn user_from(row: &SqlRow) -> StoreResult<User> {
    let c = Cells::new(row, "user");
    Ok(User {
        id: UserId::parse(&c.text(0)?).map_err(|e| corrupt("user id", e))?,
        email: Email::parse(&c.text(1)?).map_err(|e| corrupt("email", e))?,
        password: PasswordHash::from_stored(c.text(2)?),
        role: Role::parse(&c.text(3)?).map_err(|e| corrupt("role", e))?,
        tenant_id: c
            .opt_text(4)?
            .map(|t| TenantId::parse(&t))
            .transpose()
            .map_err(|e| corrupt("tenant id", e))?,
        created_at: Timestamp::from_millis(c.int(5)?),
        disabled_at: ts(c.opt_int(6)?),
    })
}

/// A session read in [`SESSION_COLUMNS`] order.
pub(super) fn session_from(row: &SqlRow) -> StoreResult<Session> {
    let c = Cells::new(row, "session");
    Ok(Session {
        id: SessionId::parse(&c.text(0)?).map_err(|e| corrupt("session id", e))?,
        user_id: UserId::parse(&c.text(1)?).map_err(|e| corrupt("user id", e))?,
        created_at: Timestamp::from_millis(c.int(2)?),
        expires_at: Timestamp::from_millis(c.int(3)?),
    })
}

/// Postgres cannot store U+0000 in TEXT. A client could otherwise put one NUL character in
/// a request body and make the whole group commit — everyone's calls — fail, so both
/// backends store it as U+FFFD (the stored SHA-256 still identifies the original body).
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn opt_text(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(text)
}

/// A call as both backends bind it, in [`CALL_COLUMNS`] order: JSON serialised, money as
/// nanos, the status widened, text made storable.
pub(super) struct CallParams<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    pub key_id: &'a str,
    pub created_at: i64,
    pub endpoint: Cow<'a, str>,
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub end_user: Option<Cow<'a, str>>,
    pub session_id: Option<Cow<'a, str>>,
    pub metadata: Option<String>,
    pub request_body: Cow<'a, str>,
    pub request_truncated: bool,
    pub request_sha256: Cow<'a, str>,
    pub response_body: Option<Cow<'a, str>>,
    pub response_truncated: bool,
    pub response_sha256: Option<Cow<'a, str>>,
    pub status: i32,
    pub error: Option<Cow<'a, str>>,
    pub blocked: bool,
    pub blocked_by: Option<Cow<'a, str>>,
    pub decisions: String,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub cost_nanos: Option<i64>,
    pub latency_us: i64,
    pub upstream_latency_us: Option<i64>,
    pub enforcement_us: i64,
    pub upstream_attempts: i32,
    pub upstream: Option<Cow<'a, str>>,
    /// SHA-256 of the bodies exactly as bound above (what a v2 link covers).
    pub request_body_sha256: String,
    pub response_body_sha256: Option<String>,
}

impl<'a> CallParams<'a> {
    pub fn new(c: &'a CallRecord) -> StoreResult<Self> {
        let json_err = |e: serde_json::Error| {
            StoreError::Database(format!(
                "call {} could not be serialised for storage: {e}",
                c.id
            ))
        };
        let request_body = text(&c.request_body);
        let response_body = opt_text(&c.response_body);
        Ok(Self {
            request_body_sha256: body_digest(&request_body),
            response_body_sha256: response_body.as_deref().map(body_digest),
            request_body,
            response_body,
            id: c.id.as_str(),
            tenant_id: c.tenant_id.as_str(),
            key_id: c.key_id.as_str(),
            created_at: c.created_at.millis(),
            endpoint: text(&c.endpoint),
            model: opt_text(&c.model),
            stream: c.stream,
            end_user: opt_text(&c.end_user),
            session_id: opt_text(&c.session_id),
            // serde_json escapes U+0000 inside JSON strings, so JSON text never holds one.
            metadata: c
                .metadata
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(json_err)?,
            request_truncated: c.request_truncated,
            request_sha256: text(&c.request_sha256),
            response_truncated: c.response_truncated,
            response_sha256: opt_text(&c.response_sha256),
            status: i32::from(c.status),
            error: opt_text(&c.error),
            blocked: c.blocked,
            blocked_by: opt_text(&c.blocked_by),
            decisions: serde_json::to_string(&c.decisions).map_err(json_err)?,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            cached_tokens: c.cached_tokens,
            total_tokens: c.total_tokens,
            cost_nanos: c.cost.map(Money::nanos),
            latency_us: c.latency_us,
            upstream_latency_us: c.upstream_latency_us,
            enforcement_us: c.enforcement_us,
            upstream_attempts: c.upstream_attempts,
            upstream: opt_text(&c.upstream),
        })
    }
}

/// `INSERT INTO calls (…) VALUES (…)` with one placeholder per column of
/// [`CHAINED_CALL_COLUMNS`], then the body digests, `chain_seq`, `chain_hash` and
/// `chain_version`.
pub(super) fn insert_call_sql(placeholder: fn(usize) -> String) -> String {
    // The chain columns (see `store::chain`) come last.
    let values: Vec<String> = (1..=CHAINED_CALL_COLUMN_COUNT + 5)
        .map(placeholder)
        .collect();
    format!(
        "INSERT INTO calls ({CHAINED_CALL_COLUMNS}, request_body_sha256, response_body_sha256, chain_seq, chain_hash, chain_version) VALUES ({})",
        values.join(", ")
    )
}

/// The values [`insert_call_sql`] binds for one call, as an array of `&$ty` (either
/// backend's parameter type): the fields of the [`CallParams`] `$p` in
/// [`CHAINED_CALL_COLUMNS`] order, the body digests, then its chain link `$link` (seq,
/// hash) and the link version.
macro_rules! call_values {
    ($p:ident, $link:ident, $ty:ty) => {
        call_values!(@ $p, $link, $ty; id tenant_id key_id created_at endpoint model stream end_user session_id metadata
            request_body request_truncated request_sha256 response_body response_truncated response_sha256
            status error blocked blocked_by decisions prompt_tokens completion_tokens cached_tokens total_tokens
            cost_nanos latency_us upstream_latency_us enforcement_us upstream_attempts upstream
            request_body_sha256 response_body_sha256)
    };
    (@ $p:ident, $link:ident, $ty:ty; $($field:ident)+) => {
        [
            $(&$p.$field as &$ty,)+
            &$link.0 as &$ty,
            &$link.1 as &$ty,
            &$crate::domain::chain::LinkVersion::V2.number() as &$ty,
        ]
    };
}
pub(super) use call_values;

/// The conflict a duplicate call id in a batch is reported as.
pub(super) fn duplicate_call(id: &CallId) -> String {
    format!(
        "a call with id {id} already exists (or appears twice in the batch); the whole batch was rolled back and nothing from it was stored: give every call a fresh id and retry"
    )
}

/// A call read in [`CALL_COLUMNS`] order.
pub(super) fn call_from(row: &SqlRow) -> StoreResult<CallRecord> {
    let c = Cells::new(row, "call");
    let metadata = c
        .opt_text(9)?
        .map(|m| serde_json::from_str(&m))
        .transpose()
        .map_err(|e| corrupt("call metadata", e))?;
    let decisions: Vec<Decision> =
        serde_json::from_str(&c.text(20)?).map_err(|e| corrupt("call decision list", e))?;
    Ok(CallRecord {
        id: CallId::parse(&c.text(0)?).map_err(|e| corrupt("call id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| corrupt("tenant id", e))?,
        key_id: KeyId::parse(&c.text(2)?).map_err(|e| corrupt("key id", e))?,
        created_at: Timestamp::from_millis(c.int(3)?),
        endpoint: c.text(4)?,
        model: c.opt_text(5)?,
        stream: c.bool(6)?,
        end_user: c.opt_text(7)?,
        session_id: c.opt_text(8)?,
        metadata,
        request_body: c.text(10)?,
        request_truncated: c.bool(11)?,
        request_sha256: c.text(12)?,
        response_body: c.opt_text(13)?,
        response_truncated: c.bool(14)?,
        response_sha256: c.opt_text(15)?,
        status: u16::try_from(c.int(16)?).map_err(|e| corrupt("call status", e))?,
        error: c.opt_text(17)?,
        blocked: c.bool(18)?,
        blocked_by: c.opt_text(19)?,
        decisions,
        prompt_tokens: c.opt_int(21)?,
        completion_tokens: c.opt_int(22)?,
        cached_tokens: c.opt_int(23)?,
        total_tokens: c.opt_int(24)?,
        cost: c.opt_int(25)?.map(Money::from_nanos),
        latency_us: c.int(26)?,
        upstream_latency_us: c.opt_int(27)?,
        enforcement_us: c.int(28)?,
        upstream_attempts: i32::try_from(c.int(29)?)
            .map_err(|e| corrupt("call's upstream attempts", e))?,
        upstream: c.opt_text(30)?,
        request_body_sha256: c.opt_text(31)?,
        response_body_sha256: c.opt_text(32)?,
        body_pruned_at: ts(c.opt_int(33)?),
    })
}

/// The SQL and parameters of one `list_calls` page. Only the filters that are set become
/// conditions (rather than `? IS NULL OR …`), so the planner can pick the index that
/// matches them; placeholders are spelled as `dialect` does.
pub(super) fn list_calls_query<'a>(
    tenant: &'a TenantId,
    filter: &'a CallFilter,
    after: Option<&'a CallCursor>,
    limit: u32,
    dialect: Dialect,
) -> (String, Vec<Param<'a>>) {
    let page = CallsPage {
        columns: CALL_COLUMNS,
        order: CallOrder::NewestFirst,
        skip: 0,
        limit,
    };
    calls_page_query(page, tenant, filter, after, dialect)
}

/// The order of a page of calls. Both are walked through the same `(tenant_id,
/// created_at, id)` indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallOrder {
    /// `created_at` desc, then id desc: lists and searches.
    NewestFirst,
    /// `created_at`, then id: arrival order, for a policy replay.
    OldestFirst,
}

/// The filters the calls indexes serve beside the tenant: the time range and the narrow
/// filters (end user, session, key), each as its column, operator and parameter.
pub(super) fn narrow_filters(filter: &CallFilter) -> Vec<(&'static str, &'static str, Param<'_>)> {
    let mut out = Vec::new();
    if let Some(t) = filter.since {
        out.push(("created_at", ">=", Param::BigInt(t.millis())));
    }
    if let Some(t) = filter.until {
        out.push(("created_at", "<", Param::BigInt(t.millis())));
    }
    if let Some(u) = &filter.end_user {
        out.push(("end_user", "=", Param::Text(u)));
    }
    if let Some(s) = &filter.session_id {
        out.push(("session_id", "=", Param::Text(s)));
    }
    if let Some(k) = &filter.key_id {
        out.push(("key_id", "=", Param::Text(k.as_str())));
    }
    out
}

/// What one page of calls reads: which columns, in which order, after skipping how many
/// matching rows, and at most how many (capped at [`MAX_PAGE`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct CallsPage<'c> {
    pub columns: &'c str,
    pub order: CallOrder,
    pub skip: u32,
    pub limit: u32,
}

/// The SQL and parameters of one page of calls (see [`list_calls_query`]): the filters of
/// `filter`, strictly after `after` in the page's order.
pub(super) fn calls_page_query<'a>(
    page: CallsPage<'_>,
    tenant: &'a TenantId,
    filter: &'a CallFilter,
    after: Option<&'a CallCursor>,
    dialect: Dialect,
) -> (String, Vec<Param<'a>>) {
    let mut q = Query::of(dialect, format!("SELECT {} FROM calls WHERE", page.columns));
    q.add(Param::Text(tenant.as_str()), " tenant_id = {}");
    for (column, op, p) in narrow_filters(filter) {
        q.add(p, &format!(" AND {column} {op} {{}}"));
    }
    if let Some(m) = &filter.model {
        q.add(Param::Text(m), " AND model = {}");
    }
    if let Some(s) = filter.status {
        q.add(Param::Int(i32::from(s)), " AND status = {}");
    }
    if let Some(b) = filter.blocked {
        q.add(Param::Bool(b), " AND blocked = {}");
    }
    let (beyond, order) = match page.order {
        CallOrder::NewestFirst => ("<", "created_at DESC, id DESC"),
        CallOrder::OldestFirst => (">", "created_at, id"),
    };
    if let Some(c) = after {
        // A row-value comparison: strictly after the cursor in the page's order.
        let created = Param::BigInt(c.created_at.millis());
        q.add(created, &format!(" AND (created_at, id) {beyond} ({{}}, "));
        q.add(Param::Text(c.id.as_str()), "{})");
    }
    let limit = Param::BigInt(i64::from(page.limit.min(MAX_PAGE)));
    q.add(limit, &format!(" ORDER BY {order} LIMIT {{}}"));
    if page.skip > 0 {
        q.add(Param::BigInt(i64::from(page.skip)), " OFFSET {}");
    }
    q.into_parts()
}

/// The latest event of every target whose latest action is a freeze. `ROW_NUMBER` rather
/// than `DISTINCT ON` so that both backends run the same statement; a partition groups a
/// NULL key_id (the tenant itself) like any other value.
pub(super) const ACTIVE_FREEZES_SQL: &str =
    "SELECT id, tenant_id, key_id, action, actor, reason, at FROM (
    SELECT id, tenant_id, key_id, action, actor, reason, at, seq,
           ROW_NUMBER() OVER (PARTITION BY tenant_id, key_id ORDER BY at DESC, seq DESC) AS rn
    FROM freeze_events
) latest WHERE rn = 1 AND action = 'freeze' ORDER BY at, seq";

/// A freeze event read in [`FREEZE_COLUMNS`] order.
pub(super) fn freeze_from(row: &SqlRow) -> StoreResult<FreezeEvent> {
    let c = Cells::new(row, "freeze event");
    let action = c.text(3)?;
    Ok(FreezeEvent {
        id: FreezeId::parse(&c.text(0)?).map_err(|e| corrupt("freeze event id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| corrupt("tenant id", e))?,
        key_id: c
            .opt_text(2)?
            .map(|k| KeyId::parse(&k))
            .transpose()
            .map_err(|e| corrupt("key id", e))?,
        action: FreezeAction::parse(&action).ok_or_else(|| {
            corrupt(
                "freeze action",
                format!("'{action}' is not freeze or unfreeze"),
            )
        })?,
        actor: c.text(4)?,
        reason: c.text(5)?,
        at: Timestamp::from_millis(c.int(6)?),
    })
}

/// Reads stored policy overrides back into JSON.
pub(super) fn policy_overrides(tenant: &str, stored: &str) -> StoreResult<serde_json::Value> {
    serde_json::from_str(stored).map_err(|e| corrupt(&format!("policy of tenant {tenant}"), e))
}

/// The columns of `tenant_upstreams`, in the order [`upstream_row`] reads them.
pub(super) const UPSTREAM_COLUMNS: &str = "tenant_id, base_url, api_key_ciphertext, updated_at";

/// A `tenant_upstreams` row read back from either backend.
pub(super) fn upstream_row(
    tenant: &str,
    base_url: String,
    api_key_ciphertext: Option<String>,
    updated_at: i64,
) -> StoreResult<super::TenantUpstreamRow> {
    Ok(super::TenantUpstreamRow {
        tenant_id: TenantId::parse(tenant).map_err(|e| corrupt("tenant id", e))?,
        base_url,
        api_key_ciphertext,
        updated_at: Timestamp::from_millis(updated_at),
    })
}

/// Collapses a batch of key uses to the latest time per key, sorted by id so that
/// concurrent batches lock rows in the same order.
pub(super) fn latest_uses(used: &[(KeyId, Timestamp)]) -> Vec<(&str, i64)> {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, at) in used {
        let e = latest.entry(id.as_str()).or_insert(at.millis());
        *e = (*e).max(at.millis());
    }
    latest.into_iter().collect()
}

/// Replaces the backend's wording of a uniqueness conflict by one a user understands.
pub(super) fn explain_conflict(e: StoreError, msg: impl FnOnce() -> String) -> StoreError {
    match e {
        StoreError::Conflict(_) => StoreError::Conflict(msg()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::sql::Cell;
    use super::*;

    #[test]
    fn key_uses_collapse_to_the_latest_time_per_key() {
        let a = KeyId::generate();
        let b = KeyId::generate();
        let t = Timestamp::from_millis;
        let batch = [
            (a.clone(), t(5)),
            (b.clone(), t(1)),
            (a.clone(), t(9)),
            (a.clone(), t(7)),
        ];
        let uses = latest_uses(&batch);
        assert_eq!(uses.len(), 2);
        assert!(uses.contains(&(a.as_str(), 9)));
        assert!(uses.contains(&(b.as_str(), 1)));
        assert!(uses.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn unreadable_stored_values_become_database_errors() {
        let row = vec![
            Cell::Text("nope".into()),
            Cell::Text("x".into()),
            Cell::Int(0),
        ];
        assert!(matches!(tenant_from(&row), Err(StoreError::Database(_))));
    }
}
