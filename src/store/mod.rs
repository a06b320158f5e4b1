//! Storage behind one trait, with a SQLite and a Postgres implementation.
//!
//! The backend is chosen from the database URL's scheme (`open`); an unknown scheme is an
//! error, never a silently created file. Every tenant-owned query takes the tenant id, so
//! an id from another tenant is simply "not found". Store methods are synchronous (rusqlite
//! and postgres are blocking clients): async code calls them through [`run_blocking`].
//! This module must not know about HTTP.

mod alerts;
mod background;
mod backtest;
mod calls;
mod chain;
mod changes;
mod console;
pub mod dump;
mod evidence;
mod incidents;
mod keys;
pub mod migrate;
pub mod postgres;
mod postgres_conn;
mod quota;
mod resident;
mod retention;
mod rows;
mod schedule;
mod search_postgres;
mod search_sql;
mod search_sqlite;
mod sql;
pub mod sqlite;
mod sqlite_conn;
mod tasks;
mod tenants;
#[doc(hidden)]
pub mod testing;
mod users;

pub use console::{
    BlockedCall, BlockedCost, BlockedFilter, SeriesPoint, UsageBy, UsageRow, key_of as usage_key,
};
pub use evidence::StoredCertificate;
pub use retention::PruneBatch;

use crate::domain::RecordedRequest;
use crate::domain::alert::{AlertRoute, AlertSent};
use crate::domain::audit::{AuditEntry, AuditFilter, NewAuditEntry};
use crate::domain::chain::{ChainHead, ChainKind, StoredLink};
use crate::domain::incident::{
    Applied, Change as IncidentChange, EventKind, IncidentCursor, IncidentEvent, IncidentFilter,
    IncidentStats, MergeRefusal, Merged, StoredSignal,
};
use crate::domain::{
    AlertRouteId, ApiKeyRecord, CallCursor, CallFilter, CallId, CallRecord, CallSearch, Email,
    FreezeEvent, Incident, IncidentId, KeyHash, KeyId, Money, NewApiKey, NewSession, NewUser,
    Session, Signal, Tenant, TenantId, Timestamp, User, UserId,
};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database holds a schema this binary does not know (written by a newer version).
    #[error(
        "the database schema is at version {found}, but this agv-server only knows up to version {known}: it was written by a newer agv-server. Run the newer binary, or restore a backup made by this version"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// Could not open or reach the database; the message says what to check.
    #[error("{0}")]
    Unavailable(String),
    /// The disk (or the database server's disk) is full: nothing can be written until an
    /// operator frees space; reads still work, and writes resume by themselves after.
    #[error("{0}")]
    Full(String),
    #[error("database error: {0}")]
    Database(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub use crate::config::values::{Backend, Durability, redact_url};

/// How the database says it commits, read back through the connections that commit:
/// logged at start, and what tests check a `durability` against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSettings {
    /// The call recorder's transactions, e.g. `synchronous=FULL` or `synchronous_commit=off`.
    pub calls: String,
    /// Every other write (keys, the kill switch, the audit log, …).
    pub other_writes: String,
    /// Whether a call's commit waits until the database has its write on the disk.
    pub calls_wait_for_disk: bool,
}

/// Connections of the pool, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub connections: u32,
    pub idle: u32,
}

/// One recorded change, used to invalidate in-memory caches in every process that shares
/// the database (the CLI revoking a key while the server runs, several instances on Postgres).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    /// What changed, e.g. `"api_key"`.
    pub topic: String,
    pub ref_id: String,
}

/// Most methods are written once, over the shared SQL layer (`sql::Db`), as defaults: a
/// backend supplies a pooled connection ([`Store::with_db`]) and a write transaction
/// ([`Store::write_tx`]), and overrides only what it does its own way (recording calls,
/// text search, a retention pass, backups).
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// A cheap round-trip proving the database answers (used by `/ready`).
    fn ping(&self) -> StoreResult<()> {
        on_db(self, |db| db.query("SELECT 1", &[]).map(drop))
    }
    fn pool_stats(&self) -> PoolStats;
    /// What the database's commits wait for, read back from the connections that commit
    /// (the recorder's transaction, and a pooled connection).
    fn commit_settings(&self) -> StoreResult<CommitSettings>;
    /// The highest applied migration version.
    fn schema_version(&self) -> StoreResult<i64> {
        on_db(self, |db| {
            sql::number(
                db,
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM agv_schema_migrations",
                &[],
            )
        })
    }

    // Tenants
    fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        on_db(self, |db| tenants::create(db, tenant))
    }
    fn get_tenant(&self, id: &TenantId) -> StoreResult<Tenant> {
        on_db(self, |db| tenants::get(db, id))
    }
    fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        on_db(self, |db| tenants::list(db))
    }

    // API keys. Every change (create, revoke, expiry change) also records a `Change` with
    // topic "api_key" in the same transaction.
    fn create_api_key(&self, key: &NewApiKey) -> StoreResult<ApiKeyRecord> {
        in_write_tx(self, |db| keys::create(db, key))
    }
    /// Looks a key up by hash, whatever its state (the caller checks `is_active`).
    fn find_api_key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<ApiKeyRecord>> {
        on_db(self, |db| keys::find_by_hash(db, hash))
    }
    /// `tenant: None` means the instance operator, who may see any tenant's key.
    fn get_api_key(&self, tenant: Option<&TenantId>, id: &KeyId) -> StoreResult<ApiKeyRecord> {
        on_db(self, |db| keys::get(db, tenant, id, false))
    }
    fn list_api_keys(&self, tenant: &TenantId) -> StoreResult<Vec<ApiKeyRecord>> {
        on_db(self, |db| keys::list(db, tenant))
    }
    /// Revokes a key. Revoking an already revoked key keeps the first revocation time.
    fn revoke_api_key(
        &self,
        tenant: Option<&TenantId>,
        id: &KeyId,
        at: Timestamp,
    ) -> StoreResult<ApiKeyRecord> {
        in_write_tx(self, |db| keys::revoke(db, tenant, id, at))
    }
    /// Sets when a key stops working (used by rotation's grace period).
    fn set_api_key_expiry(
        &self,
        tenant: Option<&TenantId>,
        id: &KeyId,
        expires_at: Option<Timestamp>,
    ) -> StoreResult<ApiKeyRecord> {
        in_write_tx(self, |db| keys::set_expiry(db, tenant, id, expires_at))
    }
    /// Batch update of last-used times; unknown ids are ignored. Records no `Change`.
    fn touch_api_keys(&self, used: &[(KeyId, Timestamp)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        in_write_tx(self, |db| keys::touch(db, used))
    }

    // Change feed
    fn latest_change_seq(&self) -> StoreResult<i64> {
        on_db(self, |db| changes::latest_seq(db))
    }
    fn changes_since(&self, seq: i64, limit: u32) -> StoreResult<Vec<Change>> {
        on_db(self, |db| changes::since(db, seq, limit))
    }

    // Users and sessions
    fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        on_db(self, |db| users::create(db, user))
    }
    fn find_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        on_db(self, |db| users::find_by_email(db, email))
    }
    fn get_user(&self, id: &UserId) -> StoreResult<User> {
        on_db(self, |db| users::get(db, id))
    }
    fn count_users(&self) -> StoreResult<i64> {
        on_db(self, |db| users::count(db))
    }
    fn create_session(&self, session: &NewSession) -> StoreResult<()> {
        on_db(self, |db| users::create_session(db, session))
    }
    /// A session that exists, has not expired at `now`, and whose user is not disabled.
    fn find_session(&self, token_hash: &str, now: Timestamp) -> StoreResult<Option<Session>> {
        on_db(self, |db| users::find_session(db, token_hash, now))
    }
    /// Deleting a session that does not exist (any more) is not an error: logout is idempotent.
    fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        on_db(self, |db| users::delete_session(db, token_hash))
    }
    /// Removes expired sessions; returns how many were removed.
    fn purge_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        on_db(self, |db| users::purge_expired_sessions(db, now))
    }

    // Calls (the recorder's group commit writes many in one transaction). A call id that
    // exists already is a Conflict and the whole batch is rolled back.
    /// A call of an unknown tenant is NotFound (the batch is rolled back too). A U+0000 in
    /// any text field is stored as U+FFFD on both backends (Postgres text cannot hold it,
    /// and one odd body must not fail everyone's batch); the SHA-256 fields are unchanged.
    fn insert_calls(&self, calls: &[CallRecord]) -> StoreResult<()>;
    /// `tenant: None` means the instance operator.
    fn get_call(&self, tenant: Option<&TenantId>, id: &CallId) -> StoreResult<CallRecord> {
        on_db(self, |db| calls::get(db, tenant, id))
    }
    /// Newest first (`created_at` desc, then id desc), strictly after `after` when given.
    fn list_calls(
        &self,
        tenant: &TenantId,
        filter: &CallFilter,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<CallRecord>> {
        on_db(self, |db| calls::list(db, tenant, filter, after, limit))
    }
    /// Calls as a policy backtest reads them (see [`RecordedRequest`]: the request, not
    /// the response), oldest first (`created_at`, then id), strictly after `after` when
    /// given; at most a thousand.
    fn recorded_requests(
        &self,
        tenant: &TenantId,
        filter: &CallFilter,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<RecordedRequest>> {
        on_db(self, |db| {
            backtest::recorded_requests(db, tenant, filter, after, limit)
        })
    }
    /// The key of the call matching `filter` with `skip` newer ones before it (0: the
    /// newest); `None` when no more than `skip` calls match.
    fn call_key_at(
        &self,
        tenant: &TenantId,
        filter: &CallFilter,
        skip: u32,
    ) -> StoreResult<Option<CallCursor>> {
        on_db(self, |db| backtest::call_key_at(db, tenant, filter, skip))
    }
    /// Counts for the protection summary: calls since `since`, how many were blocked, how
    /// many ended in an upstream error (status >= 500).
    fn call_counts(&self, tenant: &TenantId, since: Timestamp) -> StoreResult<CallCounts> {
        on_db(self, |db| calls::counts(db, tenant, since))
    }
    /// Sum of known costs of the tenant's calls created at or after `since`.
    fn spend_since(&self, tenant: &TenantId, since: Timestamp) -> StoreResult<Money> {
        on_db(self, |db| calls::spend_since(db, tenant, since))
    }

    // Kill switch. Recording an event also records a `Change` with topic "killswitch".
    fn record_freeze_event(&self, event: &FreezeEvent) -> StoreResult<()> {
        in_write_tx(self, |db| keys::record_freeze(db, event))
    }
    /// The latest event of every target (tenant, or tenant+key) whose latest action is Freeze.
    fn active_freezes(&self) -> StoreResult<Vec<FreezeEvent>> {
        on_db(self, |db| keys::active_freezes(db))
    }
    /// A tenant's freeze history, newest first.
    fn list_freeze_events(&self, tenant: &TenantId, limit: u32) -> StoreResult<Vec<FreezeEvent>> {
        on_db(self, |db| keys::freeze_events(db, tenant, limit))
    }

    // Per-tenant guardrail overrides (a JSON object; see `PolicyConfig`). Putting also
    // records a `Change` with topic "policy" and ref_id the tenant id.
    fn get_tenant_policy(&self, tenant: &TenantId) -> StoreResult<Option<serde_json::Value>> {
        on_db(self, |db| tenants::policy(db, tenant))
    }
    fn put_tenant_policy(
        &self,
        tenant: &TenantId,
        overrides: &serde_json::Value,
        at: Timestamp,
    ) -> StoreResult<()> {
        in_write_tx(self, |db| tenants::put_policy(db, tenant, overrides, at))
    }
    /// Every tenant's overrides, for loading the guard at start.
    fn list_tenant_policies(&self) -> StoreResult<Vec<(TenantId, serde_json::Value)>> {
        on_db(self, |db| tenants::policies(db))
    }

    // A tenant's own upstream. Putting and deleting also record a `Change` with topic
    // "upstream" and ref_id the tenant id. The key is stored only as ciphertext.
    fn get_tenant_upstream(&self, tenant: &TenantId) -> StoreResult<Option<TenantUpstreamRow>> {
        on_db(self, |db| tenants::upstream(db, tenant))
    }
    /// Creates or replaces the tenant's upstream; an unknown tenant is NotFound.
    fn put_tenant_upstream(&self, row: &TenantUpstreamRow) -> StoreResult<()> {
        in_write_tx(self, |db| tenants::put_upstream(db, row))
    }
    /// Removes the tenant's upstream; returns whether there was one.
    fn delete_tenant_upstream(&self, tenant: &TenantId) -> StoreResult<bool> {
        in_write_tx(self, |db| tenants::delete_upstream(db, tenant))
    }
    /// Every tenant's upstream, for loading the proxy at start.
    fn list_tenant_upstreams(&self) -> StoreResult<Vec<TenantUpstreamRow>> {
        on_db(self, |db| tenants::upstreams(db))
    }

    // The instance upstream set by the operator in the console (overrides the configured
    // one). Putting and deleting also record a `Change` with topic "upstream" and ref_id
    // [`INSTANCE_UPSTREAM_REF`]. The key is stored only as ciphertext.
    fn get_instance_upstream(&self) -> StoreResult<Option<InstanceUpstreamRow>> {
        on_db(self, |db| tenants::instance_upstream(db))
    }
    /// Creates or replaces the instance upstream.
    fn put_instance_upstream(&self, row: &InstanceUpstreamRow) -> StoreResult<()> {
        in_write_tx(self, |db| tenants::put_instance_upstream(db, row))
    }
    /// Removes it (the configured upstream applies again); returns whether there was one.
    fn delete_instance_upstream(&self) -> StoreResult<bool> {
        in_write_tx(self, |db| tenants::delete_instance_upstream(db))
    }

    // Incidents (see domain::incident). Applying signals groups them under the versioned
    // rules, in one transaction, and records opened / reopened / escalated events.
    fn apply_signals(&self, signals: &[Signal]) -> StoreResult<Vec<Applied>> {
        if signals.is_empty() {
            return Ok(Vec::new());
        }
        in_incident_tx(self, |db, seq| incidents::apply_signals(db, seq, signals))
    }
    /// `tenant: None` means the instance operator; another tenant's id is NotFound.
    fn get_incident(&self, tenant: Option<&TenantId>, id: &IncidentId) -> StoreResult<Incident> {
        on_db(self, |db| incidents::get(db, tenant, id))
    }
    /// Newest first (created_at desc, id desc), strictly after `after` when given.
    fn list_incidents(
        &self,
        tenant: Option<&TenantId>,
        filter: &IncidentFilter,
        after: Option<&IncidentCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Incident>> {
        on_db(self, |db| incidents::list(db, tenant, filter, after, limit))
    }
    /// Oldest first.
    fn incident_signals(
        &self,
        tenant: Option<&TenantId>,
        id: &IncidentId,
        limit: u32,
    ) -> StoreResult<Vec<StoredSignal>> {
        on_db(self, |db| {
            incidents::get(db, tenant, id)?;
            incidents::signals(db, id, limit)
        })
    }
    /// Oldest first, in insertion order within a millisecond.
    fn incident_events(
        &self,
        tenant: Option<&TenantId>,
        id: &IncidentId,
    ) -> StoreResult<Vec<IncidentEvent>> {
        on_db(self, |db| {
            incidents::get(db, tenant, id)?;
            incidents::events(db, id)
        })
    }
    /// A person's change; an invalid status change is Conflict (409).
    fn change_incident(
        &self,
        tenant: Option<&TenantId>,
        id: &IncidentId,
        change: &IncidentChange,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<(Incident, IncidentEvent)> {
        in_incident_tx(self, |db, seq| {
            incidents::change(db, seq, tenant, id, change, actor, at)
        })
    }
    /// A system event: a kill-switch action or an alert sent.
    #[allow(clippy::too_many_arguments)]
    fn add_incident_event(
        &self,
        tenant: &TenantId,
        id: &IncidentId,
        kind: EventKind,
        actor: &str,
        after: Option<serde_json::Value>,
        note: Option<&str>,
        at: Timestamp,
    ) -> StoreResult<IncidentEvent> {
        in_incident_tx(self, |db, seq| {
            incidents::add_event(db, seq, tenant, id, kind, actor, after.clone(), note, at)
        })
    }
    /// Merges duplicates into `target` in one transaction (see `incidents::merge`): an
    /// unknown target is NotFound; a refused merge (an unknown duplicate, a merged or
    /// resolved target, a duplicate already merged) writes nothing.
    fn merge_incidents(
        &self,
        tenant: &TenantId,
        target: &IncidentId,
        from: &[IncidentId],
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<Result<Merged, MergeRefusal>> {
        in_incident_tx(self, |db, seq| {
            incidents::merge(db, seq, tenant, target, from, actor, at)
        })
    }
    /// The tenant's open and acknowledged incidents, newest first.
    fn unresolved_incidents(&self, tenant: &TenantId, limit: u32) -> StoreResult<Vec<Incident>> {
        on_db(self, |db| incidents::unresolved(db, tenant, limit))
    }
    fn incident_stats(&self, tenant: &TenantId) -> StoreResult<IncidentStats> {
        on_db(self, |db| incidents::stats(db, tenant))
    }
    /// Incidents of each severity, in `Severity::ALL` order, of a tenant (`None`: every
    /// tenant) with `status` (`None`: any).
    fn incident_severity_counts(
        &self,
        tenant: Option<&TenantId>,
        status: Option<crate::domain::incident::IncidentStatus>,
    ) -> StoreResult<[i64; 4]> {
        on_db(self, |db| incidents::severity_counts(db, tenant, status))
    }
    /// Marks a tenant as a demo tenant (idempotent); an unknown tenant is NotFound.
    fn mark_demo_tenant(&self, tenant: &TenantId, at: Timestamp) -> StoreResult<()> {
        in_write_tx(self, |db| incidents::mark_demo_tenant(db, tenant, at))
    }
    fn is_demo_tenant(&self, tenant: &TenantId) -> StoreResult<bool> {
        on_db(self, |db| incidents::is_demo_tenant(db, tenant))
    }
    /// Folds the write-ahead log back into the database and truncates it (SQLite, after
    /// bulk work such as `agv-server demo`); nothing to do on Postgres.
    fn checkpoint(&self) -> StoreResult<()> {
        Ok(())
    }
    /// After bulk indexing (`agv-server demo`): merges the text index into its most
    /// compact form (SQLite) or flushes its pending entries and refreshes the planner's statistics (Postgres). Takes
    /// seconds on a million calls; searches stay correct without it, only slower.
    fn optimize_search(&self) -> StoreResult<()> {
        Ok(())
    }

    // Search over recorded calls (see `domain::search`). The text of calls is indexed in
    // the background, off the recorder's hot path: a call is found by its text within
    // about half a second of being recorded (by its filters at once).
    /// The tenant's calls matching every filter, word and phrase of `search`, newest first
    /// (`created_at` desc, then id desc), strictly after `after` when given.
    fn search_calls(
        &self,
        tenant: &TenantId,
        search: &CallSearch,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<CallRecord>> {
        let page = sql::SearchPage {
            tenant,
            search,
            after,
            limit,
        };
        on_db(self, |db| db.text().search_calls(page))
    }
    /// Indexes every call recorded so far for text search, now, instead of waiting for the
    /// background indexer; returns how many calls were indexed.
    fn index_pending_calls(&self) -> StoreResult<u64>;

    // Retention (see store::retention; the sweep is ops::retention).
    /// How many chain v2 calls created before `cutoff` still hold their bodies (those an
    /// incident or a certificate keeps included): the most a sweep can prune.
    fn count_prunable_calls(&self, cutoff: Timestamp) -> StoreResult<i64> {
        on_db(self, |db| retention::count(db, cutoff))
    }
    /// One batch of a retention sweep, in one short write transaction: reads up to `limit`
    /// chain v2 calls created before `cutoff` that still hold their bodies, strictly after
    /// `after` in (created_at, id) order, and removes the bodies (and their text from the
    /// search index) of those no open or acknowledged incident and no certificate refers
    /// to, marking them pruned at `now`. v1 calls are never touched. On SQLite only calls
    /// the text indexer has already passed are read (the rest wait for the next sweep).
    fn prune_call_bodies(
        &self,
        cutoff: Timestamp,
        after: Option<&CallCursor>,
        limit: u32,
        now: Timestamp,
    ) -> StoreResult<PruneBatch> {
        in_write_tx(self, |db| {
            retention::prune_batch(db, cutoff, after, limit, now)
        })
    }

    // Alert routes (see domain::alert). Another tenant's route is NotFound; an unknown
    // tenant is NotFound on create.
    fn create_alert_route(&self, route: &AlertRoute) -> StoreResult<()> {
        in_write_tx(self, |db| alerts::create_route(db, route))
    }
    /// Oldest first.
    fn list_alert_routes(&self, tenant: &TenantId) -> StoreResult<Vec<AlertRoute>> {
        on_db(self, |db| alerts::list_routes(db, tenant))
    }
    fn get_alert_route(&self, tenant: &TenantId, id: &AlertRouteId) -> StoreResult<AlertRoute> {
        on_db(self, |db| alerts::get_route(db, tenant, id))
    }
    /// Replaces a route's editable fields (not its id, tenant, kind or creation time);
    /// returns whether there was such a route of that tenant.
    fn update_alert_route(&self, route: &AlertRoute) -> StoreResult<bool> {
        in_write_tx(self, |db| alerts::update_route(db, route))
    }
    /// Returns whether there was such a route.
    fn delete_alert_route(&self, tenant: &TenantId, id: &AlertRouteId) -> StoreResult<bool> {
        in_write_tx(self, |db| alerts::delete_route(db, tenant, id))
    }
    /// Logs an alert that reached its receiver and, for an incident alert, adds the
    /// incident's `alert_sent` event (route, reason and attempt in `after`), in one
    /// transaction. An incident of another tenant is NotFound and nothing is written.
    fn record_alert_sent(&self, sent: &AlertSent) -> StoreResult<()> {
        in_incident_tx(self, |db, seq| alerts::record_sent(db, seq, sent))
    }
    /// When the route last alerted about the incident, if ever.
    fn last_alert_sent(
        &self,
        tenant: &TenantId,
        route: &AlertRouteId,
        incident: &IncidentId,
    ) -> StoreResult<Option<Timestamp>> {
        on_db(self, |db| alerts::last_sent(db, tenant, route, incident))
    }

    // Evidence: replays and certificates (see domain::replay, domain::certificate). Written
    // once. Inserting a replay of another tenant's call is NotFound; `get_certificate` with
    // `None` is for the public check only.
    fn insert_replay(&self, replay: &crate::domain::replay::ReplayRecord) -> StoreResult<()> {
        in_write_tx(self, |db| evidence::insert_replay(db, replay))
    }
    fn get_replay(
        &self,
        tenant: &TenantId,
        id: &crate::domain::ReplayId,
    ) -> StoreResult<crate::domain::replay::ReplayRecord> {
        on_db(self, |db| evidence::get_replay(db, tenant, id))
    }
    fn list_replays(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> StoreResult<Vec<crate::domain::replay::ReplayRecord>> {
        on_db(self, |db| evidence::list_replays(db, tenant, call))
    }
    fn insert_certificate(&self, cert: &StoredCertificate) -> StoreResult<()> {
        in_write_tx(self, |db| evidence::insert_certificate(db, cert))
    }
    fn get_certificate(
        &self,
        tenant: Option<&TenantId>,
        id: &crate::domain::CertificateId,
    ) -> StoreResult<StoredCertificate> {
        on_db(self, |db| evidence::get_certificate(db, tenant, id))
    }

    // The console (see store::console).
    /// `buckets` consecutive buckets of the tenant's calls from `since`, empty ones included.
    fn call_series(
        &self,
        tenant: &TenantId,
        since: Timestamp,
        bucket_ms: i64,
        buckets: u32,
    ) -> StoreResult<Vec<SeriesPoint>> {
        on_db(self, |db| {
            console::call_series(db, tenant, since, bucket_ms, buckets)
        })
    }
    /// The tenant's calls stopped by a policy since `since`, per policy and model, with
    /// the guard's recorded cost estimates (what the overview counts as cost avoided).
    fn blocked_costs(&self, tenant: &TenantId, since: Timestamp) -> StoreResult<Vec<BlockedCost>> {
        on_db(self, |db| console::blocked_costs(db, tenant, since))
    }
    /// Calls, tokens and cost from `since` (before `until`, when given) per key, model or
    /// end user, busiest first; at most `limit` groups when given.
    fn usage_by(
        &self,
        tenant: &TenantId,
        since: Timestamp,
        until: Option<Timestamp>,
        by: UsageBy,
        limit: Option<u32>,
    ) -> StoreResult<Vec<UsageRow>> {
        on_db(self, |db| {
            console::usage_by(db, tenant, since, until, by, limit)
        })
    }
    /// Calls a policy stopped (the operator's enforcement log, `filter.tenant: None` for
    /// every tenant), newest first, strictly after `after` when given.
    fn blocked_calls(
        &self,
        filter: &BlockedFilter,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<BlockedCall>> {
        on_db(self, |db| console::blocked_calls(db, filter, after, limit))
    }
    /// A tenant's people (`None`: everyone), oldest first.
    fn list_users(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<crate::domain::user::User>> {
        on_db(self, |db| console::list_users(db, tenant))
    }
    /// Sets a user's password and ends their other sessions (all but `keep`, a token hash).
    fn set_user_password(
        &self,
        user: &crate::domain::UserId,
        password: &crate::domain::user::PasswordHash,
        keep: Option<&str>,
    ) -> StoreResult<()> {
        in_write_tx(self, |db| console::set_password(db, user, password, keep))
    }
    fn create_invitation(&self, inv: &crate::domain::user::Invitation) -> StoreResult<()> {
        in_write_tx(self, |db| console::insert_invitation(db, inv))
    }
    fn find_invitation(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<crate::domain::user::Invitation>> {
        on_db(self, |db| console::find_invitation(db, token_hash))
    }
    fn list_invitations(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<crate::domain::user::Invitation>> {
        on_db(self, |db| console::list_invitations(db, tenant))
    }
    /// Creates the invited user and marks the invitation accepted, in one transaction.
    /// Unknown token: NotFound; used, expired, revoked, or the email taken: Conflict.
    fn accept_invitation(
        &self,
        token_hash: &str,
        id: &crate::domain::UserId,
        password: &crate::domain::user::PasswordHash,
        now: Timestamp,
    ) -> StoreResult<crate::domain::user::User> {
        in_write_tx(self, |db| {
            console::accept_invitation(db, token_hash, id, password, now)
        })
    }

    /// Runs `work` in one write transaction: committed when it returns `Ok`, rolled back
    /// otherwise. The backend supplies only the transaction; what runs in it is written
    /// once for both backends over the shared SQL layer (see `sql::Db`).
    #[doc(hidden)]
    fn write_tx(&self, work: &mut dyn FnMut(&mut SqlTx<'_>) -> StoreResult<()>) -> StoreResult<()>;
    /// Runs `work` on a pooled connection outside any transaction: reads, and writes of
    /// one statement, which commits by itself. Like [`Store::write_tx`], the backend
    /// supplies only the connection.
    #[doc(hidden)]
    fn with_db(&self, work: &mut dyn FnMut(&mut SqlTx<'_>) -> StoreResult<()>) -> StoreResult<()>;

    // Managing people (see store::console), in one write transaction each (`write_tx`).
    // `tenant: Some` acts as an owner of that tenant, who sees only its people (anyone else
    // is NotFound); `None` as the operator, who sees everyone. A change that would leave a
    // tenant that has an enabled owner without one, or the instance without an enabled
    // operator, is Conflict and changes nothing. Each returns the user as they were before
    // the change.
    /// Disables a user (`Some(at)`; disabling twice keeps the first time) and deletes every
    /// session of theirs in the same transaction, or enables them again (`None`).
    fn set_user_disabled(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        disabled: Option<Timestamp>,
    ) -> StoreResult<User> {
        in_write_tx(self, |db| {
            console::set_user_disabled(db, tenant, user, disabled)
        })
    }
    /// Changes a tenant person's role among owner, admin and viewer; the operator's role, or
    /// making someone operator, is Conflict.
    fn set_user_role(
        &self,
        tenant: Option<&TenantId>,
        user: &UserId,
        role: crate::domain::user::Role,
    ) -> StoreResult<User> {
        in_write_tx(self, |db| console::set_user_role(db, tenant, user, role))
    }
    /// Deletes a user and their sessions; audit entries keep naming them by id.
    fn delete_user(&self, tenant: Option<&TenantId>, user: &UserId) -> StoreResult<User> {
        in_write_tx(self, |db| console::delete_user(db, tenant, user))
    }
    /// Ends every session of a user; returns how many ended.
    fn end_user_sessions(&self, tenant: Option<&TenantId>, user: &UserId) -> StoreResult<u64> {
        in_write_tx(self, |db| console::end_user_sessions(db, tenant, user))
    }
    /// Revokes an invitation not accepted yet (revoking twice keeps the first time); an
    /// accepted one is Conflict. Returns the invitation as it is now.
    fn revoke_invitation(
        &self,
        tenant: Option<&TenantId>,
        id: &crate::domain::InvitationId,
        at: Timestamp,
    ) -> StoreResult<crate::domain::user::Invitation> {
        in_write_tx(self, |db| console::revoke_invitation(db, tenant, id, at))
    }

    // Scheduled runs shared by instances (see store::schedule).
    /// Claims the run of schedule `name` at `slot` (its firing time in seconds) for
    /// `instance`: true when this call claimed it, false when another instance had.
    fn claim_scheduled_run(&self, name: &str, slot: i64, instance: &str) -> StoreResult<bool> {
        in_write_tx(self, |db| {
            schedule::claim(db, name, slot, instance, Timestamp::now().millis())
        })
    }
    /// `(slot, instance)` of the kept claims of a schedule, oldest first.
    fn scheduled_run_claims(&self, name: &str) -> StoreResult<Vec<(i64, String)>> {
        on_db(self, |db| schedule::list(db, name))
    }

    // Shared quotas (see store::quota, guard::shared): rate limits and budgets that hold
    // across the instances sharing one database. Only the Postgres guard leases; SQLite
    // implements them the same way for the conformance suite.
    /// Takes a slice of an allowance (created at `req.initial` when missing) under a row
    /// lock; `granted` 0: refused.
    fn lease_quota(
        &self,
        req: &crate::domain::quota::LeaseRequest,
    ) -> StoreResult<crate::domain::quota::LeaseGrant> {
        in_write_tx(self, |db| quota::lease(db, req))
    }
    /// Gives unused lease amounts back (negative: spend beyond the lease) and deletes rows
    /// whose time is over.
    fn return_quotas(&self, returns: &[(String, i64)], now: Timestamp) -> StoreResult<()> {
        in_write_tx(self, |db| quota::give_back(db, returns, now.millis()))
    }
    /// The stored level of an allowance; `None` when it has no row.
    fn quota_level(&self, name: &str) -> StoreResult<Option<i64>> {
        on_db(self, |db| quota::level(db, name))
    }

    // Tasks (see domain::task). Another tenant's task is NotFound; an unknown tenant is
    // NotFound on insert.
    fn insert_task(&self, task: &crate::domain::task::Task) -> StoreResult<()> {
        in_write_tx(self, |db| tasks::insert(db, task))
    }
    /// Stores `task` unless a queued or running task of its tenant and kind has the same
    /// `params[key]` (a replay of the same incident): then stores nothing and returns that
    /// task. Across instances too.
    fn insert_task_alone(
        &self,
        task: &crate::domain::task::Task,
        key: &str,
    ) -> StoreResult<Option<crate::domain::task::Task>> {
        in_write_tx(self, |db| tasks::insert_alone(db, task, key))
    }
    fn get_task(
        &self,
        tenant: &TenantId,
        id: &crate::domain::TaskId,
    ) -> StoreResult<crate::domain::task::Task> {
        on_db(self, |db| tasks::get(db, tenant, id))
    }
    /// Newest first.
    fn list_tasks(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> StoreResult<Vec<crate::domain::task::Task>> {
        on_db(self, |db| tasks::list(db, tenant, limit))
    }
    /// Applies a change; returns the task as it is now.
    fn update_task(
        &self,
        tenant: &TenantId,
        id: &crate::domain::TaskId,
        update: &crate::domain::task::TaskUpdate,
        at: Timestamp,
    ) -> StoreResult<crate::domain::task::Task> {
        in_write_tx(self, |db| tasks::update(db, tenant, id, update, at))
    }
    /// The file a task produced: content type, file name, bytes. NotFound when none (yet).
    fn task_output(
        &self,
        tenant: &TenantId,
        id: &crate::domain::TaskId,
    ) -> StoreResult<(String, String, Vec<u8>)> {
        on_db(self, |db| tasks::output(db, tenant, id))
    }

    // Backups (see `dump`): every backed-up table from one snapshot, without blocking
    // writers; and the import of such rows into a database that holds none, in one
    // transaction (all or nothing).
    /// `tenant`: only that tenant's rows (a tenant export, see `dump::tenant_condition`).
    fn export_tables(
        &self,
        tenant: Option<&TenantId>,
        sink: &mut dump::Sink<'_>,
    ) -> StoreResult<()>;
    /// Deletes every row of the tenant — calls, incidents, keys, users and sessions,
    /// policies, alert routes, evidence, its chains and audit entries, its text-index
    /// entries — in one transaction, recording an "api_key" change for each of its keys
    /// (so every instance forgets them at once). Returns the rows deleted per table. An
    /// unknown tenant is NotFound.
    fn erase_tenant(&self, tenant: &TenantId) -> StoreResult<Vec<(String, i64)>> {
        self.get_tenant(tenant)?;
        in_write_tx(self, |db| {
            db.forget_tenant_text(tenant.as_str())?;
            dump::erase(db, tenant)
        })
    }
    fn import_tables(&self, source: &mut dump::Source<'_>) -> StoreResult<()>;
    /// Rows per backed-up table, in `dump::TABLES` order.
    fn table_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        on_db(self, |db| dump::counts(db))
    }

    // Tamper evidence (see domain::chain): `insert_calls` links every call into its
    // tenant's chain and `append_audit` every entry into its chain, in the same transaction.
    /// A chain's last link; `None` when nothing was appended to it yet. `tenant: None` is
    /// the instance-wide audit chain.
    fn chain_head(
        &self,
        kind: ChainKind,
        tenant: Option<&TenantId>,
    ) -> StoreResult<Option<ChainHead>> {
        on_db(self, |db| chain::head(db, kind, tenant))
    }
    /// Up to `limit` links with seq > `after`, in seq order, for `audit verify`.
    fn chain_links(
        &self,
        kind: ChainKind,
        tenant: Option<&TenantId>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredLink>> {
        on_db(self, |db| chain::links(db, kind, tenant, after, limit))
    }

    // Audit log (see domain::audit). Entries are written once and never changed.
    fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<AuditEntry> {
        in_write_tx(self, |db| chain::append_audit(db, entry))
    }
    /// Newest first (seq desc), strictly before seq `before` when given; `tenant: None`
    /// lists the instance-wide entries.
    fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        on_db(self, |db| {
            chain::list_audit(db, tenant, filter, before, limit)
        })
    }
}

/// A tenant's own upstream as stored: the base URL and the encrypted provider key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUpstreamRow {
    pub tenant_id: TenantId,
    /// Normalized, already checked against the allowlist when it was put.
    pub base_url: String,
    /// base64(nonce || ciphertext); `None` when the upstream needs no key.
    pub api_key_ciphertext: Option<String>,
    pub updated_at: Timestamp,
}

/// The `ref_id` of the change recorded when the instance upstream is put or deleted (a
/// tenant's upstream change carries the tenant id instead).
pub const INSTANCE_UPSTREAM_REF: &str = "instance";

/// The instance upstream the operator set in the console: the base URL and the encrypted
/// provider key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUpstreamRow {
    /// Normalized (no trailing slash).
    pub base_url: String,
    /// base64(nonce || ciphertext) with [`INSTANCE_UPSTREAM_REF`] as associated data;
    /// `None` when the upstream needs no key.
    pub api_key_ciphertext: Option<String>,
    pub updated_at: Timestamp,
}

/// Counts for `GET /v1/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub total: i64,
    pub blocked: i64,
    pub upstream_errors: i64,
}

pub type DynStore = Arc<dyn Store>;

/// A write transaction (or a pooled connection) of either backend as the shared SQL layer
/// sees it ([`sql::Db`]); opaque outside the store (see [`Store::write_tx`]).
pub struct SqlTx<'t>(&'t mut dyn sql::Db);

/// Runs `work` in one write transaction of `store` (see [`Store::write_tx`]) and returns
/// what it returned.
fn in_write_tx<T>(
    store: &(impl Store + ?Sized),
    mut work: impl FnMut(&mut dyn sql::Db) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut out = None;
    store.write_tx(&mut |tx| {
        out = Some(work(&mut *tx.0)?);
        Ok(())
    })?;
    out.ok_or_else(|| StoreError::Database("a write transaction ended without its work".into()))
}

/// [`in_write_tx`] for what writes incidents or their events: under the incidents' writer
/// lock, so that one writer at a time across every instance sharing the database groups
/// signals and numbers events.
fn in_incident_tx<T>(
    store: &(impl Store + ?Sized),
    mut work: impl FnMut(&mut dyn sql::Db, &incidents::EventSeq) -> StoreResult<T>,
) -> StoreResult<T> {
    in_write_tx(store, |db| {
        db.serialize(incidents::WRITER_LOCK)?;
        let seq = db.event_seq();
        work(db, &seq)
    })
}

/// Runs `work` on a pooled connection of `store` (see [`Store::with_db`]) and returns what
/// it returned.
fn on_db<T>(
    store: &(impl Store + ?Sized),
    mut work: impl FnMut(&mut dyn sql::Db) -> StoreResult<T>,
) -> StoreResult<T> {
    let mut out = None;
    store.with_db(&mut |conn| {
        out = Some(work(&mut *conn.0)?);
        Ok(())
    })?;
    out.ok_or_else(|| StoreError::Database("a store call ended without its work".into()))
}

/// The call recorder's own ways into the store, kept off [`Store`]: its group commit, a
/// commit on the caller's thread when the writer is free, and the upkeep it runs between
/// commits. [`open_recording`] hands them out with the store; any store can be recorded
/// into through [`plain_recording`] (group commits only, no upkeep).
pub trait Recording: Send + Sync {
    /// Commits `calls` in one transaction, as [`Store::insert_calls`].
    fn insert(&self, calls: &[CallRecord]) -> StoreResult<()>;
    /// Commits `calls` at once if the writer is free right now, without waiting for
    /// anything: `None` when it is not (another writer holds it, upkeep is due between
    /// commits, or this store has no such path), and the caller queues them for the
    /// recorder instead. Lets a call's own thread commit its record when nobody else is
    /// writing, with no hand-over to the recorder's thread and back.
    fn try_insert(&self, _calls: &[CallRecord]) -> Option<StoreResult<()>> {
        None
    }
    /// Called by the call recorder between two group commits, after it has answered the
    /// calls it committed: short upkeep that must happen while no call is being written.
    /// On SQLite it finishes a WAL checkpoint when the background checkpointer asked for
    /// it (see `sqlite::spawn_checkpointer`); nothing to do on Postgres.
    fn between_commits(&self) {}
}

pub type DynRecording = Arc<dyn Recording>;

/// A store and the recorder's ways into it.
pub struct Opened {
    pub store: DynStore,
    pub recording: DynRecording,
}

struct Plain(DynStore);

impl Recording for Plain {
    fn insert(&self, calls: &[CallRecord]) -> StoreResult<()> {
        self.0.insert_calls(calls)
    }
}

/// Records into `store` through its group commit only.
pub fn plain_recording(store: DynStore) -> DynRecording {
    Arc::new(Plain(store))
}

/// Opens the store: Postgres when `database_url` is given, else SQLite at `<data>/agv.db`.
/// Applies pending migrations and refuses a schema newer than this binary knows.
/// Blocking (it connects and migrates): from async code, call it through [`run_blocking`].
pub fn open(data_dir: &Path, database_url: Option<&str>) -> StoreResult<DynStore> {
    open_recording(data_dir, database_url, None).map(|o| o.store)
}

/// [`open`] at a durability level (`None`: the backend's [`Durability::default_for`]),
/// with the call recorder's ways into the store (what the server opens).
pub fn open_recording(
    data_dir: &Path,
    database_url: Option<&str>,
    durability: Option<Durability>,
) -> StoreResult<Opened> {
    let level = durability.unwrap_or(Durability::default_for(Backend::of_url(database_url)));
    let sqlite_at = |path: &Path| {
        let store = Arc::new(sqlite::SqliteStore::open_with(path, level)?);
        Ok(Opened {
            store: store.clone(),
            recording: store,
        })
    };
    match database_url {
        None => sqlite_at(&data_dir.join(sqlite::DB_FILE)),
        Some(url) => {
            let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
            match scheme {
                "postgres" | "postgresql" => {
                    let store: DynStore = Arc::new(postgres::PostgresStore::open_with(url, level)?);
                    Ok(Opened {
                        store: store.clone(),
                        recording: plain_recording(store),
                    })
                }
                "sqlite" => sqlite_at(Path::new(url.trim_start_matches("sqlite://"))),
                "" => Err(StoreError::Unavailable(format!(
                    "the database URL '{}' has no scheme: use postgres://user@host:port/db, or leave it unset to use SQLite in the data dir",
                    redact_url(url)
                ))),
                other => Err(StoreError::Unavailable(format!(
                    "unsupported database URL scheme '{other}': use postgres://… (or leave the URL unset to use SQLite in the data dir)"
                ))),
            }
        }
    }
}

/// Runs blocking store work on tokio's blocking pool, keeping the tracing span, and
/// re-raises a panic from the closure instead of turning it into a silent error.
pub async fn run_blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only cancellation is left, which happens only when the runtime shuts down.
            Err(e) => panic!("blocking store task cancelled: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_database_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://agv:s3cret@db:5432/agv"),
            "postgres://agv:***@db:5432/agv"
        );
        assert_eq!(redact_url("postgres://db/agv"), "postgres://db/agv");
    }

    #[test]
    fn unknown_schemes_are_refused_without_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        for url in ["mysql://root@localhost/agv", "agv.db", "http://x"] {
            let err = open(dir.path(), Some(url)).err().expect("must fail");
            assert!(err.to_string().contains("scheme"), "{err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
