//! Postgres backend: the synchronous `postgres` client in an r2d2 pool (NoTls).
//!
//! The sync client drives its own small tokio runtime per connection, so it must never
//! run on an async worker thread: async code calls every method — and `open` — through
//! [`super::run_blocking`]. Dropping the store from async code is safe (see `Drop`).
//! Changes to the change feed are serialised with an advisory lock so that sequence
//! numbers become visible in order and a reader polling `changes_since` never skips one.
//! This module translates between SQL and domain types; it must not contain policy.

use super::alerts;
use super::incidents::{self, EventSeq};
use super::rows::{
    ACTIVE_FREEZES_SQL, CALL_COLUMNS, CallParams, CallRow, FREEZE_COLUMNS, FreezeRow, KEY_COLUMNS,
    KeyRow, LIVE_SESSION, MAX_PAGE, Param, SESSION_COLUMNS, SessionRow, TENANT_COLUMNS,
    TOPIC_API_KEY, TOPIC_KILLSWITCH, TOPIC_POLICY, TOPIC_UPSTREAM, TenantRow, UPSTREAM_COLUMNS,
    USER_COLUMNS, UserRow, duplicate_call, explain_conflict, insert_call_sql, latest_uses,
    list_calls_query, policy_overrides, upstream_row,
};
use super::sql::postgres::PgDb;
use super::{
    Backend, CallCounts, Change, CommitSettings, Durability, DynStore, INSTANCE_UPSTREAM_REF,
    InstanceUpstreamRow, PoolStats, Store, StoreError, StoreResult, TenantUpstreamRow, migrate,
    redact_url,
};
use crate::domain::AlertRouteId;
use crate::domain::RecordedRequest;
use crate::domain::alert::{AlertRoute, AlertSent};
use crate::domain::audit::{AuditEntry, AuditFilter, NewAuditEntry};
use crate::domain::chain::{ChainHead, ChainKind, LinkVersion, StoredLink};
use crate::domain::incident::{
    Applied, EventKind, IncidentCursor, IncidentEvent, IncidentFilter, IncidentStats, StoredSignal,
};
use crate::domain::{
    ApiKeyRecord, CallCursor, CallFilter, CallId, CallRecord, CallSearch, Email, FreezeEvent,
    Incident, IncidentId, KeyHash, KeyId, Money, NewApiKey, NewSession, NewUser, Session, Signal,
    Tenant, TenantId, Timestamp, User, UserId,
};
use postgres::config::Host;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{GenericClient, NoTls, Row};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

pub(super) type Manager = PostgresConnectionManager<NoTls>;

const POOL_SIZE: u32 = 10;
/// Fail fast when the server is unreachable instead of r2d2's default 30 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a checkout waits before it looks at whether connecting to the server fails.
const CHECKOUT_STEP: Duration = Duration::from_millis(250);
/// Advisory lock serialising writers of the change feed ("agv_chng" in ASCII).
const CHANGE_FEED_LOCK: i64 = 0x6167_765f_6368_6e67;

/// Opens the store and applies migrations. Blocking: from async code, call it through
/// [`super::run_blocking`].
pub fn open_store(url: &str) -> StoreResult<DynStore> {
    open_store_with(url, Durability::default_for(Backend::Postgres))
}

/// [`open_store`] at a durability level.
pub fn open_store_with(url: &str, durability: Durability) -> StoreResult<DynStore> {
    Ok(Arc::new(PostgresStore::open_with(url, durability)?))
}

/// Begins a transaction of the call recorder. With [`Durability::Process`] its commit
/// returns before Postgres has flushed it to its WAL on disk (`synchronous_commit = off`,
/// for this transaction only; Postgres's WAL writer flushes it within 3 ×
/// `wal_writer_delay`, 0.6 s by default): a call then survives a crash of agv-server but
/// not necessarily one of Postgres or its host. Every other write, and the recorder's at
/// [`Durability::Power`], waits for the flush as the server's `synchronous_commit` says.
fn begin_calls(
    conn: &mut postgres::Client,
    durability: Durability,
) -> Result<postgres::Transaction<'_>, postgres::Error> {
    let mut tx = conn.transaction()?;
    if durability == Durability::Process {
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
    }
    Ok(tx)
}

pub struct PostgresStore {
    /// Always `Some` until dropped; an `Option` only so that `Drop` can move it out.
    pool: Option<Pool<Manager>>,
    /// What the recorder's commits wait for (see [`begin_calls`]).
    durability: Durability,
    target: String,
    reach: Arc<Reachability>,
    /// Stops the background search indexer when the store is dropped.
    stop_indexer: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop_indexer
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Closing a sync client blocks on its private runtime, which panics on an async
        // worker thread. When dropped there, close the connections on a plain thread.
        if let Some(pool) = self.pool.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let spawned = std::thread::Builder::new()
                .name("agv-pg-close".into())
                .spawn(move || drop(pool));
            if let Err(e) = spawned {
                tracing::warn!("could not close Postgres connections in the background: {e}");
            }
        }
    }
}

/// `host:port/db` for messages (never the password).
fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    format!(
        "{hosts}/{}",
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// Whether the pool's latest attempt to open (or check) a connection failed, and why. A
/// checkout uses it to give up at once while the server is down, instead of waiting out
/// the whole connect timeout on every request.
#[derive(Debug, Default)]
struct Reachability {
    failing: AtomicBool,
    cause: std::sync::Mutex<String>,
}

impl Reachability {
    fn failure(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let cause = match self.cause.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Some(cause)
    }
}

/// Receives the pool's connection errors (r2d2 would only log them).
#[derive(Debug)]
struct ConnectErrors(Arc<Reachability>);

impl r2d2::HandleError<postgres::Error> for ConnectErrors {
    fn handle_error(&self, e: postgres::Error) {
        let cause = crate::telemetry::error_chain(&e);
        let was_failing = self.0.failing.swap(true, Ordering::Relaxed);
        if !was_failing {
            tracing::error!(error = %cause, "cannot connect to Postgres; requests that need the database get 503 until it is back, and agv-server reconnects by itself");
        }
        match self.0.cause.lock() {
            Ok(mut c) => *c = cause,
            Err(poisoned) => *poisoned.into_inner() = cause,
        }
    }
}

/// Notices the pool's new connections: the server is reachable again.
#[derive(Debug)]
struct ConnectEvents(Arc<Reachability>);

impl r2d2::HandleEvent for ConnectEvents {
    fn handle_acquire(&self, _: r2d2::event::AcquireEvent) {
        if self.0.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("connected to Postgres again");
        }
    }
}

impl PostgresStore {
    /// Connects, migrates and builds the pool, at the Postgres default durability. Fails
    /// within about five seconds when the server cannot be reached.
    pub fn open(url: &str) -> StoreResult<Self> {
        Self::open_with(url, Durability::default_for(Backend::Postgres))
    }

    /// [`PostgresStore::open`] at a durability level.
    pub fn open_with(url: &str, durability: Durability) -> StoreResult<Self> {
        let redacted = redact_url(url);
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Unavailable(format!(
                "the database URL {redacted} is not a valid Postgres URL: {} — expected postgres://user[:password]@host[:port]/database",
                crate::telemetry::error_chain(&e)
            ))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("agv-server");
        }
        let target = describe(&config);
        let unreachable = |cause: String| {
            StoreError::Unavailable(format!(
                "cannot connect to Postgres at {target} ({redacted}): {cause} — is the server running and is --database-url / AGV_DATABASE_URL right?"
            ))
        };
        // One connection first: it reports the real cause (r2d2 would only report a
        // timeout) and migrates before the pool hands out connections.
        let mut first = config
            .connect(NoTls)
            .map_err(|e| unreachable(crate::telemetry::error_chain(&e)))?;
        migrate::run_postgres(&mut first)?;
        drop(first);

        let reach = Arc::new(Reachability::default());
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .error_handler(Box::new(ConnectErrors(reach.clone())))
            .event_handler(Box::new(ConnectEvents(reach.clone())))
            .build(PostgresConnectionManager::new(config, NoTls))
            .map_err(|e| unreachable(e.to_string()))?;
        let stop_indexer = Arc::new(std::sync::atomic::AtomicBool::new(false));
        super::search_postgres::spawn_indexer(pool.clone(), stop_indexer.clone());
        Ok(Self {
            pool: Some(pool),
            durability,
            target,
            reach,
            stop_indexer,
        })
    }

    fn pool(&self) -> StoreResult<&Pool<Manager>> {
        self.pool
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the Postgres store is shutting down".into()))
    }

    /// A pooled connection. A healthy pool hands out an idle one at once; otherwise this
    /// waits in short steps and gives up as soon as connecting to the server fails, so
    /// that while Postgres is down a request fails in a fraction of a second rather than
    /// after the whole timeout. A pool that is merely busy is waited on for the timeout.
    fn conn(&self) -> StoreResult<PooledConnection<Manager>> {
        let pool = self.pool()?;
        let started = std::time::Instant::now();
        loop {
            let left = CONNECT_TIMEOUT.saturating_sub(started.elapsed());
            let e = match pool.get_timeout(left.min(CHECKOUT_STEP)) {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            if let Some(cause) = self.reach.failure() {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to Postgres at {}: {cause} — is the server running? agv-server reconnects by itself once it is back",
                    self.target
                )));
            }
            if started.elapsed() >= CONNECT_TIMEOUT {
                return Err(StoreError::Unavailable(format!(
                    "no connection to Postgres at {} became available within {} s: {e} — is the server running, and is max_connections high enough?",
                    self.target,
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
    }
}

/// Maps a postgres error to the store's error: uniqueness → `Conflict`, a missing
/// referenced row → `NotFound`, a full disk → `Full`, a lost connection or a server that is
/// shutting down, starting or out of connections → `Unavailable`.
pub(crate) fn db_err(e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db.message().to_owned());
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            return StoreError::NotFound;
        }
        if *code == SqlState::DISK_FULL {
            return StoreError::Full(format!(
                "the Postgres server's disk is full: {} — free space on the database server; writing resumes by itself once there is room",
                db.message()
            ));
        }
        // The server is shutting down, starting up, out of connections or otherwise
        // refusing work for now: a retry later can succeed.
        let class = code.code().get(..2).unwrap_or("");
        if matches!(class, "08" | "53" | "57") || *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return StoreError::Unavailable(format!(
                "Postgres cannot serve requests now: {} ({}) — is the server running and accepting connections?",
                db.message(),
                code.code()
            ));
        }
        return StoreError::Database(format!("{} ({})", db.message(), code.code()));
    }
    // A closed connection, or a socket error on the way to or from the server.
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        return StoreError::Unavailable(format!(
            "lost the connection to Postgres: {} — is the server running?",
            crate::telemetry::error_chain(&e)
        ));
    }
    StoreError::Database(crate::telemetry::error_chain(&e))
}

fn key_row(r: &Row) -> KeyRow {
    KeyRow {
        id: r.get(0),
        tenant_id: r.get(1),
        name: r.get(2),
        scope: r.get(3),
        hash: r.get(4),
        prefix: r.get(5),
        created_at: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
        last_used_at: r.get(9),
    }
}

fn tenant_row(r: &Row) -> TenantRow {
    TenantRow {
        id: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
    }
}

fn user_row(r: &Row) -> UserRow {
    UserRow {
        id: r.get(0),
        email: r.get(1),
        password_hash: r.get(2),
        role: r.get(3),
        tenant_id: r.get(4),
        created_at: r.get(5),
        disabled_at: r.get(6),
    }
}

fn session_row(r: &Row) -> SessionRow {
    SessionRow {
        id: r.get(0),
        user_id: r.get(1),
        created_at: r.get(2),
        expires_at: r.get(3),
    }
}

pub(super) fn call_row(r: &Row) -> CallRow {
    CallRow {
        id: r.get(0),
        tenant_id: r.get(1),
        key_id: r.get(2),
        created_at: r.get(3),
        endpoint: r.get(4),
        model: r.get(5),
        stream: r.get(6),
        end_user: r.get(7),
        session_id: r.get(8),
        metadata: r.get(9),
        request_body: r.get(10),
        request_truncated: r.get(11),
        request_sha256: r.get(12),
        response_body: r.get(13),
        response_truncated: r.get(14),
        response_sha256: r.get(15),
        status: i64::from(r.get::<_, i32>(16)),
        error: r.get(17),
        blocked: r.get(18),
        blocked_by: r.get(19),
        decisions: r.get(20),
        prompt_tokens: r.get(21),
        completion_tokens: r.get(22),
        cached_tokens: r.get(23),
        total_tokens: r.get(24),
        cost_nanos: r.get(25),
        latency_us: r.get(26),
        upstream_latency_us: r.get(27),
        enforcement_us: r.get(28),
        upstream_attempts: r.get(29),
        upstream: r.get(30),
        request_body_sha256: r.get(31),
        response_body_sha256: r.get(32),
        body_pruned_at: r.get(33),
    }
}

fn freeze_row(r: &Row) -> FreezeRow {
    FreezeRow {
        id: r.get(0),
        tenant_id: r.get(1),
        key_id: r.get(2),
        action: r.get(3),
        actor: r.get(4),
        reason: r.get(5),
        at: r.get(6),
    }
}

fn placeholder(n: usize) -> String {
    format!("${n}")
}

static INSERT_CALL: LazyLock<String> = LazyLock::new(|| insert_call_sql(placeholder));

/// A parameter as the client binds it: each variant matches its column's Postgres type.
pub(super) fn pg_param<'b>(p: &'b Param<'_>) -> &'b (dyn ToSql + Sync) {
    match p {
        Param::Text(s) => s,
        Param::BigInt(i) => i,
        Param::Int(i) => i,
        Param::Bool(b) => b,
        Param::OptText(s) => s,
        Param::OptBigInt(i) => i,
    }
}

fn insert_call(
    tx: &mut postgres::Transaction<'_>,
    stmt: &postgres::Statement,
    p: &CallParams<'_>,
    link: &(i64, String),
) -> Result<u64, postgres::Error> {
    tx.execute(
        stmt,
        &[
            &p.id,
            &p.tenant_id,
            &p.key_id,
            &p.created_at,
            &p.endpoint,
            &p.model,
            &p.stream,
            &p.end_user,
            &p.session_id,
            &p.metadata,
            &p.request_body,
            &p.request_truncated,
            &p.request_sha256,
            &p.response_body,
            &p.response_truncated,
            &p.response_sha256,
            &p.status,
            &p.error,
            &p.blocked,
            &p.blocked_by,
            &p.decisions,
            &p.prompt_tokens,
            &p.completion_tokens,
            &p.cached_tokens,
            &p.total_tokens,
            &p.cost_nanos,
            &p.latency_us,
            &p.upstream_latency_us,
            &p.enforcement_us,
            &p.upstream_attempts,
            &p.upstream,
            &p.request_body_sha256,
            &p.response_body_sha256,
            &link.0,
            &link.1,
            &LinkVersion::V2.number(),
        ],
    )
}

fn record_change(tx: &mut impl GenericClient, topic: &str, ref_id: &str) -> StoreResult<()> {
    // Held to the end of the transaction: the next writer takes its seq only after this
    // one has committed, so seqs become visible in order.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGE_FEED_LOCK])
        .map_err(db_err)?;
    tx.execute(
        "INSERT INTO changes (topic, ref_id, at) VALUES ($1, $2, $3)",
        &[&topic, &ref_id, &Timestamp::now().millis()],
    )
    .map_err(db_err)?;
    // Delivered at commit to every instance listening (see `ChangeListener`), which then
    // reads the feed at once instead of at its next poll.
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANGE_CHANNEL, &topic])
        .map_err(db_err)?;
    Ok(())
}

/// The LISTEN/NOTIFY channel of the change feed.
pub const CHANGE_CHANNEL: &str = "agv_changes";

/// A dedicated connection (outside the pool) that LISTENs on the change feed's channel.
pub struct ChangeListener {
    client: postgres::Client,
}

impl ChangeListener {
    pub fn connect(url: &str) -> StoreResult<Self> {
        let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(db_err)?;
        client
            .batch_execute(&format!("LISTEN {CHANGE_CHANNEL}"))
            .map_err(db_err)?;
        Ok(Self { client })
    }

    /// Waits up to `timeout` for a notification; true when one (or more) arrived. An
    /// error means the connection is gone: connect again.
    pub fn wait(&mut self, timeout: std::time::Duration) -> StoreResult<bool> {
        use postgres::fallible_iterator::FallibleIterator;
        let mut notes = self.client.notifications();
        let mut got = notes
            .timeout_iter(timeout)
            .next()
            .map_err(db_err)?
            .is_some();
        // Drain what else arrived: one wake-up reads the feed once.
        while notes.iter().next().map_err(db_err)?.is_some() {
            got = true;
        }
        drop(notes);
        if self.client.is_closed() {
            return Err(StoreError::Unavailable(
                "the LISTEN connection closed".into(),
            ));
        }
        Ok(got)
    }
}

/// A key by id, visible to `tenant` (`None`: any tenant); `lock` takes a row lock.
fn scoped_key(
    c: &mut impl GenericClient,
    tenant: Option<&TenantId>,
    id: &KeyId,
    lock: bool,
) -> StoreResult<ApiKeyRecord> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = c
        .query_opt(&sql, &[&id.as_str(), &tenant.map(TenantId::as_str)])
        .map_err(db_err)?
        .ok_or(StoreError::NotFound)?;
    key_row(&row).into_record()
}

impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn ping(&self) -> StoreResult<()> {
        self.conn()?.query_one("SELECT 1", &[]).map_err(db_err)?;
        Ok(())
    }

    fn commit_settings(&self) -> StoreResult<CommitSettings> {
        fn show(c: &mut impl GenericClient) -> StoreResult<String> {
            let row = c
                .query_one("SHOW synchronous_commit", &[])
                .map_err(db_err)?;
            row.try_get(0).map_err(db_err)
        }
        let mut conn = self.conn()?;
        // Inside a transaction begun as the recorder begins its own, then rolled back.
        let mut tx = begin_calls(&mut conn, self.durability).map_err(db_err)?;
        let calls = show(&mut tx)?;
        tx.rollback().map_err(db_err)?;
        let other_writes = show(&mut *conn)?;
        Ok(CommitSettings {
            // Every value but `off` waits for the local flush (`local`, `on`, `remote_*`).
            calls_wait_for_disk: calls != "off",
            calls: format!("synchronous_commit={calls}"),
            other_writes: format!("synchronous_commit={other_writes}"),
        })
    }

    fn pool_stats(&self) -> PoolStats {
        self.pool
            .as_ref()
            .map(|p| {
                let s = p.state();
                PoolStats {
                    connections: s.connections,
                    idle: s.idle_connections,
                }
            })
            .unwrap_or_default()
    }

    fn schema_version(&self) -> StoreResult<i64> {
        Ok(self
            .conn()?
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM agv_schema_migrations",
                &[],
            )
            .map_err(db_err)?
            .get(0))
    }

    fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        self.conn()?
            .execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
                &[
                    &tenant.id.as_str(),
                    &tenant.name.as_str(),
                    &tenant.created_at.millis(),
                ],
            )
            .map_err(db_err)
            .map_err(|e| {
                explain_conflict(e, || {
                    format!("a tenant with id {} already exists", tenant.id)
                })
            })?;
        Ok(())
    }

    fn get_tenant(&self, id: &TenantId) -> StoreResult<Tenant> {
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"),
                &[&id.as_str()],
            )
            .map_err(db_err)?
            .ok_or(StoreError::NotFound)?;
        tenant_row(&row).into_tenant()
    }

    fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        self.conn()?
            .query(
                &format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id"),
                &[],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| tenant_row(r).into_tenant())
            .collect()
    }

    fn create_api_key(&self, key: &NewApiKey) -> StoreResult<ApiKeyRecord> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO api_keys (id, tenant_id, name, scope, key_hash, prefix, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &key.id.as_str(),
                &key.tenant_id.as_str(),
                &key.name,
                &key.scope.as_str(),
                &key.hash.as_str(),
                &key.prefix,
                &key.created_at.millis(),
                &key.expires_at.map(Timestamp::millis),
            ],
        )
        .map_err(db_err)
        .map_err(|e| explain_conflict(e, || format!("an API key with id {} or the same hash already exists", key.id)))?;
        record_change(&mut tx, TOPIC_API_KEY, key.id.as_str())?;
        let rec = scoped_key(&mut tx, None, &key.id, false)?;
        tx.commit().map_err(db_err)?;
        Ok(rec)
    }

    fn find_api_key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<ApiKeyRecord>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"),
                &[&hash.as_str()],
            )
            .map_err(db_err)?
            .map(|r| key_row(&r).into_record())
            .transpose()
    }

    fn get_api_key(&self, tenant: Option<&TenantId>, id: &KeyId) -> StoreResult<ApiKeyRecord> {
        scoped_key(&mut *self.conn()?, tenant, id, false)
    }

    fn list_api_keys(&self, tenant: &TenantId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.conn()?
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"),
                &[&tenant.as_str()],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| key_row(r).into_record())
            .collect()
    }

    fn revoke_api_key(
        &self,
        tenant: Option<&TenantId>,
        id: &KeyId,
        at: Timestamp,
    ) -> StoreResult<ApiKeyRecord> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let before = scoped_key(&mut tx, tenant, id, true)?;
        if before.revoked_at.is_some() {
            // Already revoked: keep the first revocation time, record nothing new.
            return Ok(before);
        }
        tx.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1",
            &[&id.as_str(), &at.millis()],
        )
        .map_err(db_err)?;
        record_change(&mut tx, TOPIC_API_KEY, id.as_str())?;
        let rec = scoped_key(&mut tx, None, id, false)?;
        tx.commit().map_err(db_err)?;
        Ok(rec)
    }

    fn set_api_key_expiry(
        &self,
        tenant: Option<&TenantId>,
        id: &KeyId,
        expires_at: Option<Timestamp>,
    ) -> StoreResult<ApiKeyRecord> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let changed = tx
            .execute(
                "UPDATE api_keys SET expires_at = $3 WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
                &[&id.as_str(), &tenant.map(TenantId::as_str), &expires_at.map(Timestamp::millis)],
            )
            .map_err(db_err)?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        record_change(&mut tx, TOPIC_API_KEY, id.as_str())?;
        let rec = scoped_key(&mut tx, None, id, false)?;
        tx.commit().map_err(db_err)?;
        Ok(rec)
    }

    fn touch_api_keys(&self, used: &[(KeyId, Timestamp)]) -> StoreResult<()> {
        let uses = latest_uses(used);
        if uses.is_empty() {
            return Ok(());
        }
        let (ids, ats): (Vec<&str>, Vec<i64>) = uses.into_iter().unzip();
        // One round trip for the whole batch.
        self.conn()?
            .execute(
                "UPDATE api_keys AS k SET last_used_at = u.at
                 FROM unnest($1::text[], $2::bigint[]) AS u(id, at)
                 WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                &[&ids, &ats],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn latest_change_seq(&self) -> StoreResult<i64> {
        Ok(self
            .conn()?
            .query_one("SELECT COALESCE(MAX(seq), 0)::bigint FROM changes", &[])
            .map_err(db_err)?
            .get(0))
    }

    fn changes_since(&self, seq: i64, limit: u32) -> StoreResult<Vec<Change>> {
        Ok(self
            .conn()?
            .query(
                "SELECT seq, topic, ref_id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &i64::from(limit)],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| Change {
                seq: r.get(0),
                topic: r.get(1),
                ref_id: r.get(2),
            })
            .collect())
    }

    fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        self.conn()?
            .execute(
                "INSERT INTO users (id, email, password_hash, role, tenant_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &user.id.as_str(),
                    &user.email.as_str(),
                    &user.password.as_str(),
                    &user.role.as_str(),
                    &user.tenant_id.as_ref().map(TenantId::as_str),
                    &user.created_at.millis(),
                ],
            )
            .map_err(db_err)
            .map_err(|e| explain_conflict(e, || format!("a user with the email {} already exists", user.email.as_str())))?;
        Ok(User {
            id: user.id.clone(),
            email: user.email.clone(),
            password: user.password.clone(),
            role: user.role,
            tenant_id: user.tenant_id.clone(),
            created_at: user.created_at,
            disabled_at: None,
        })
    }

    fn find_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
                &[&email.as_str()],
            )
            .map_err(db_err)?
            .map(|r| user_row(&r).into_user())
            .transpose()
    }

    fn get_user(&self, id: &UserId) -> StoreResult<User> {
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                &[&id.as_str()],
            )
            .map_err(db_err)?
            .ok_or(StoreError::NotFound)?;
        user_row(&row).into_user()
    }

    fn count_users(&self) -> StoreResult<i64> {
        Ok(self
            .conn()?
            .query_one("SELECT COUNT(*) FROM users", &[])
            .map_err(db_err)?
            .get(0))
    }

    fn create_session(&self, session: &NewSession) -> StoreResult<()> {
        self.conn()?
            .execute(
                "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &session.id.as_str(),
                    &session.user_id.as_str(),
                    &session.token_hash,
                    &session.created_at.millis(),
                    &session.expires_at.millis(),
                ],
            )
            .map_err(db_err)
            .map_err(|e| explain_conflict(e, || "a session with this id or token already exists".to_owned()))?;
        Ok(())
    }

    fn find_session(&self, token_hash: &str, now: Timestamp) -> StoreResult<Option<Session>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM {LIVE_SESSION}"),
                &[&token_hash, &now.millis()],
            )
            .map_err(db_err)?
            .map(|r| session_row(&r).into_session())
            .transpose()
    }

    fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        self.conn()?
            .execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])
            .map_err(db_err)?;
        Ok(())
    }

    fn purge_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        self.conn()?
            .execute(
                "DELETE FROM sessions WHERE expires_at <= $1",
                &[&now.millis()],
            )
            .map_err(db_err)
    }

    fn insert_calls(&self, calls: &[CallRecord]) -> StoreResult<()> {
        if calls.is_empty() {
            return Ok(());
        }
        let rows = calls
            .iter()
            .map(CallParams::new)
            .collect::<StoreResult<Vec<_>>>()?;
        let mut conn = self.conn()?;
        let mut tx = begin_calls(&mut conn, self.durability).map_err(db_err)?;
        // Without known heads the heads are read (and locked), so it always links.
        let links = super::chain::link_calls(&mut PgDb(&mut tx), calls, &rows, None)?
            .ok_or_else(|| StoreError::Database("the calls' chain heads moved while read".into()))?
            .links;
        let stmt = tx.prepare(&INSERT_CALL).map_err(db_err)?;
        for ((call, row), link) in calls.iter().zip(&rows).zip(&links) {
            insert_call(&mut tx, &stmt, row, link)
                .map_err(db_err)
                .map_err(|e| explain_conflict(e, || duplicate_call(&call.id)))?;
        }
        // An early return above drops the transaction, which rolls the whole batch back.
        tx.commit().map_err(db_err)
    }

    fn get_call(&self, tenant: Option<&TenantId>, id: &CallId) -> StoreResult<CallRecord> {
        let row = self
            .conn()?
            .query_opt(
                &format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
                ),
                &[&id.as_str(), &tenant.map(TenantId::as_str)],
            )
            .map_err(db_err)?
            .ok_or(StoreError::NotFound)?;
        call_row(&row).into_record()
    }

    fn list_calls(
        &self,
        tenant: &TenantId,
        filter: &CallFilter,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<CallRecord>> {
        let (sql, args) = list_calls_query(tenant, filter, after, limit, placeholder);
        let args: Vec<&(dyn ToSql + Sync)> = args.iter().map(pg_param).collect();
        self.conn()?
            .query(&sql, &args)
            .map_err(db_err)?
            .iter()
            .map(|r| call_row(r).into_record())
            .collect()
    }

    fn recorded_requests(
        &self,
        tenant: &TenantId,
        filter: &CallFilter,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<RecordedRequest>> {
        let mut conn = self.conn()?;
        super::backtest::recorded_requests(&mut PgDb(&mut *conn), tenant, filter, after, limit)
    }

    fn call_key_at(
        &self,
        tenant: &TenantId,
        filter: &CallFilter,
        skip: u32,
    ) -> StoreResult<Option<CallCursor>> {
        let mut conn = self.conn()?;
        super::backtest::call_key_at(&mut PgDb(&mut *conn), tenant, filter, skip)
    }

    fn call_counts(&self, tenant: &TenantId, since: Timestamp) -> StoreResult<CallCounts> {
        let row = self
            .conn()?
            .query_one(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE blocked), COUNT(*) FILTER (WHERE status >= 500)
                 FROM calls WHERE tenant_id = $1 AND created_at >= $2",
                &[&tenant.as_str(), &since.millis()],
            )
            .map_err(db_err)?;
        Ok(CallCounts {
            total: row.get(0),
            blocked: row.get(1),
            upstream_errors: row.get(2),
        })
    }

    fn spend_since(&self, tenant: &TenantId, since: Timestamp) -> StoreResult<Money> {
        let row = self
            .conn()?
            .query_one(
                "SELECT COALESCE(SUM(cost_nanos), 0)::bigint FROM calls WHERE tenant_id = $1 AND created_at >= $2",
                &[&tenant.as_str(), &since.millis()],
            )
            .map_err(db_err)?;
        Ok(Money::from_nanos(row.get(0)))
    }

    fn record_freeze_event(&self, event: &FreezeEvent) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        // The change first: it takes the change-feed lock, so events also get their seq
        // in commit order and the later of two same-millisecond events is the later commit.
        record_change(&mut tx, TOPIC_KILLSWITCH, event.tenant_id.as_str())?;
        tx.execute(
            "INSERT INTO freeze_events (id, tenant_id, key_id, action, actor, reason, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &event.id.as_str(),
                &event.tenant_id.as_str(),
                &event.key_id.as_ref().map(KeyId::as_str),
                &event.action.as_str(),
                &event.actor,
                &event.reason,
                &event.at.millis(),
            ],
        )
        .map_err(db_err)
        .map_err(|e| {
            explain_conflict(e, || {
                format!("a freeze event with id {} already exists", event.id)
            })
        })?;
        tx.commit().map_err(db_err)
    }

    fn active_freezes(&self) -> StoreResult<Vec<FreezeEvent>> {
        self.conn()?
            .query(ACTIVE_FREEZES_SQL, &[])
            .map_err(db_err)?
            .iter()
            .map(|r| freeze_row(r).into_event())
            .collect()
    }

    fn list_freeze_events(&self, tenant: &TenantId, limit: u32) -> StoreResult<Vec<FreezeEvent>> {
        self.conn()?
            .query(
                &format!(
                    "SELECT {FREEZE_COLUMNS} FROM freeze_events WHERE tenant_id = $1 ORDER BY at DESC, seq DESC LIMIT $2"
                ),
                &[&tenant.as_str(), &i64::from(limit.min(MAX_PAGE))],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| freeze_row(r).into_event())
            .collect()
    }

    fn get_tenant_policy(&self, tenant: &TenantId) -> StoreResult<Option<serde_json::Value>> {
        self.conn()?
            .query_opt(
                "SELECT overrides FROM tenant_policies WHERE tenant_id = $1",
                &[&tenant.as_str()],
            )
            .map_err(db_err)?
            .map(|r| policy_overrides(tenant.as_str(), r.get(0)))
            .transpose()
    }

    fn put_tenant_policy(
        &self,
        tenant: &TenantId,
        overrides: &serde_json::Value,
        at: Timestamp,
    ) -> StoreResult<()> {
        let json = overrides.to_string();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO tenant_policies (tenant_id, overrides, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
            &[&tenant.as_str(), &json, &at.millis()],
        )
        .map_err(db_err)?;
        record_change(&mut tx, TOPIC_POLICY, tenant.as_str())?;
        tx.commit().map_err(db_err)
    }

    fn list_tenant_policies(&self) -> StoreResult<Vec<(TenantId, serde_json::Value)>> {
        self.conn()?
            .query(
                "SELECT tenant_id, overrides FROM tenant_policies ORDER BY tenant_id",
                &[],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| {
                let tenant: &str = r.get(0);
                let overrides = policy_overrides(tenant, r.get(1))?;
                let id = TenantId::parse(tenant).map_err(|e| {
                    StoreError::Database(format!("a stored tenant id could not be read back: {e}"))
                })?;
                Ok((id, overrides))
            })
            .collect()
    }
    fn get_tenant_upstream(&self, tenant: &TenantId) -> StoreResult<Option<TenantUpstreamRow>> {
        self.conn()?
            .query_opt(
                &format!("SELECT {UPSTREAM_COLUMNS} FROM tenant_upstreams WHERE tenant_id = $1"),
                &[&tenant.as_str()],
            )
            .map_err(db_err)?
            .map(|r| upstream_row(r.get(0), r.get(1), r.get(2), r.get(3)))
            .transpose()
    }

    fn put_tenant_upstream(&self, row: &TenantUpstreamRow) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO tenant_upstreams (tenant_id, base_url, api_key_ciphertext, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE SET base_url = excluded.base_url,
                 api_key_ciphertext = excluded.api_key_ciphertext, updated_at = excluded.updated_at",
            &[
                &row.tenant_id.as_str(),
                &row.base_url,
                &row.api_key_ciphertext,
                &row.updated_at.millis(),
            ],
        )
        .map_err(db_err)?;
        record_change(&mut tx, TOPIC_UPSTREAM, row.tenant_id.as_str())?;
        tx.commit().map_err(db_err)
    }

    fn delete_tenant_upstream(&self, tenant: &TenantId) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let removed = tx
            .execute(
                "DELETE FROM tenant_upstreams WHERE tenant_id = $1",
                &[&tenant.as_str()],
            )
            .map_err(db_err)?;
        if removed > 0 {
            record_change(&mut tx, TOPIC_UPSTREAM, tenant.as_str())?;
        }
        tx.commit().map_err(db_err)?;
        Ok(removed > 0)
    }

    fn list_tenant_upstreams(&self) -> StoreResult<Vec<TenantUpstreamRow>> {
        self.conn()?
            .query(
                &format!("SELECT {UPSTREAM_COLUMNS} FROM tenant_upstreams ORDER BY tenant_id"),
                &[],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| upstream_row(r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    fn get_instance_upstream(&self) -> StoreResult<Option<InstanceUpstreamRow>> {
        Ok(self
            .conn()?
            .query_opt(
                "SELECT base_url, api_key_ciphertext, updated_at FROM instance_upstream WHERE id = 1",
                &[],
            )
            .map_err(db_err)?
            .map(|r| InstanceUpstreamRow {
                base_url: r.get(0),
                api_key_ciphertext: r.get(1),
                updated_at: Timestamp::from_millis(r.get(2)),
            }))
    }

    fn put_instance_upstream(&self, row: &InstanceUpstreamRow) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO instance_upstream (id, base_url, api_key_ciphertext, updated_at) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET base_url = excluded.base_url,
                 api_key_ciphertext = excluded.api_key_ciphertext, updated_at = excluded.updated_at",
            &[&row.base_url, &row.api_key_ciphertext, &row.updated_at.millis()],
        )
        .map_err(db_err)?;
        record_change(&mut tx, TOPIC_UPSTREAM, INSTANCE_UPSTREAM_REF)?;
        tx.commit().map_err(db_err)
    }

    fn delete_instance_upstream(&self) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let removed = tx
            .execute("DELETE FROM instance_upstream WHERE id = 1", &[])
            .map_err(db_err)?;
        if removed > 0 {
            record_change(&mut tx, TOPIC_UPSTREAM, INSTANCE_UPSTREAM_REF)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(removed > 0)
    }

    fn apply_signals(&self, signals: &[Signal]) -> StoreResult<Vec<Applied>> {
        if signals.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        // One grouping writer at a time across every instance sharing this database.
        tx.execute("SELECT pg_advisory_xact_lock(7152010)", &[])
            .map_err(db_err)?;
        let mut db = PgDb(&mut tx);
        let out = incidents::apply_signals(&mut db, &EventSeq::Identity, signals)?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    fn get_incident(&self, tenant: Option<&TenantId>, id: &IncidentId) -> StoreResult<Incident> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::get(&mut db, tenant, id)
    }

    fn list_incidents(
        &self,
        tenant: Option<&TenantId>,
        filter: &IncidentFilter,
        after: Option<&IncidentCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Incident>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::list(&mut db, tenant, filter, after, limit)
    }

    fn incident_signals(
        &self,
        tenant: Option<&TenantId>,
        id: &IncidentId,
        limit: u32,
    ) -> StoreResult<Vec<StoredSignal>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::get(&mut db, tenant, id)?;
        incidents::signals(&mut db, id, limit)
    }

    fn incident_events(
        &self,
        tenant: Option<&TenantId>,
        id: &IncidentId,
    ) -> StoreResult<Vec<IncidentEvent>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::get(&mut db, tenant, id)?;
        incidents::events(&mut db, id)
    }

    fn change_incident(
        &self,
        tenant: Option<&TenantId>,
        id: &IncidentId,
        change: &crate::domain::incident::Change,
        actor: &str,
        at: Timestamp,
    ) -> StoreResult<(Incident, IncidentEvent)> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        // One grouping writer at a time across every instance sharing this database.
        tx.execute("SELECT pg_advisory_xact_lock(7152010)", &[])
            .map_err(db_err)?;
        let mut db = PgDb(&mut tx);
        let out = incidents::change(&mut db, &EventSeq::Identity, tenant, id, change, actor, at)?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

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
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        // One grouping writer at a time across every instance sharing this database.
        tx.execute("SELECT pg_advisory_xact_lock(7152010)", &[])
            .map_err(db_err)?;
        let mut db = PgDb(&mut tx);
        let out = incidents::add_event(
            &mut db,
            &EventSeq::Identity,
            tenant,
            id,
            kind,
            actor,
            after,
            note,
            at,
        )?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    fn unresolved_incidents(&self, tenant: &TenantId, limit: u32) -> StoreResult<Vec<Incident>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::unresolved(&mut db, tenant, limit)
    }

    fn incident_stats(&self, tenant: &TenantId) -> StoreResult<IncidentStats> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::stats(&mut db, tenant)
    }

    fn mark_demo_tenant(&self, tenant: &TenantId, at: Timestamp) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let mut db = PgDb(&mut tx);
        incidents::mark_demo_tenant(&mut db, tenant, at)?;
        tx.commit().map_err(db_err)
    }

    fn is_demo_tenant(&self, tenant: &TenantId) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        incidents::is_demo_tenant(&mut db, tenant)
    }

    fn search_calls(
        &self,
        tenant: &TenantId,
        search: &CallSearch,
        after: Option<&CallCursor>,
        limit: u32,
    ) -> StoreResult<Vec<CallRecord>> {
        super::search_postgres::search_calls(&mut *self.conn()?, tenant, search, after, limit)
    }

    fn optimize_search(&self) -> StoreResult<()> {
        let mut conn = self.conn()?;
        // VACUUM also moves the text index's pending entries into the index proper; it
        // cannot run in a transaction block, so one statement at a time.
        for statement in ["VACUUM (ANALYZE) call_search", "ANALYZE calls"] {
            conn.batch_execute(statement).map_err(db_err)?;
        }
        Ok(())
    }

    fn index_pending_calls(&self) -> StoreResult<u64> {
        super::search_postgres::index_pending(&mut *self.conn()?)
    }

    fn count_prunable_calls(&self, cutoff: Timestamp) -> StoreResult<i64> {
        let mut conn = self.conn()?;
        super::retention::count(&mut PgDb(&mut *conn), cutoff)
    }

    fn prune_call_bodies(
        &self,
        cutoff: Timestamp,
        after: Option<&CallCursor>,
        limit: u32,
        now: Timestamp,
    ) -> StoreResult<super::PruneBatch> {
        use super::retention;
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        // No indexer pass runs meanwhile (they take this lock too): a call it has not
        // indexed yet is indexed after this commits, from the emptied bodies.
        super::search_postgres::hold_indexer(&mut tx)?;
        let read =
            retention::candidates(&mut PgDb(&mut tx), "c.search_seq", "", cutoff, after, limit)?;
        let go: Vec<&retention::Candidate> = read.iter().filter(|c| !c.protected).collect();
        let ids: Vec<&str> = go.iter().map(|c| c.id.as_str()).collect();
        let pruned = retention::prune(&mut PgDb(&mut tx), &ids, now)?;
        let seqs: Vec<i64> = go.iter().map(|c| c.position).collect();
        if !seqs.is_empty() {
            tx.execute("DELETE FROM call_search WHERE call_seq = ANY($1)", &[&seqs])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        retention::outcome(&read, pruned, limit)
    }

    fn create_alert_route(&self, route: &AlertRoute) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        alerts::create_route(&mut PgDb(&mut tx), route)?;
        tx.commit().map_err(db_err)
    }

    fn list_alert_routes(&self, tenant: &TenantId) -> StoreResult<Vec<AlertRoute>> {
        let mut conn = self.conn()?;
        alerts::list_routes(&mut PgDb(&mut *conn), tenant)
    }

    fn get_alert_route(&self, tenant: &TenantId, id: &AlertRouteId) -> StoreResult<AlertRoute> {
        let mut conn = self.conn()?;
        alerts::get_route(&mut PgDb(&mut *conn), tenant, id)
    }

    fn update_alert_route(&self, route: &AlertRoute) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        alerts::update_route(&mut PgDb(&mut *conn), route)
    }

    fn delete_alert_route(&self, tenant: &TenantId, id: &AlertRouteId) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        alerts::delete_route(&mut PgDb(&mut *conn), tenant, id)
    }

    fn record_alert_sent(&self, sent: &AlertSent) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        // Incident events are numbered by one writer at a time (see add_incident_event).
        tx.execute("SELECT pg_advisory_xact_lock(7152010)", &[])
            .map_err(db_err)?;
        alerts::record_sent(&mut PgDb(&mut tx), &EventSeq::Identity, sent)?;
        tx.commit().map_err(db_err)
    }

    fn last_alert_sent(
        &self,
        tenant: &TenantId,
        route: &AlertRouteId,
        incident: &IncidentId,
    ) -> StoreResult<Option<Timestamp>> {
        let mut conn = self.conn()?;
        alerts::last_sent(&mut PgDb(&mut *conn), tenant, route, incident)
    }

    fn insert_replay(&self, replay: &crate::domain::replay::ReplayRecord) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        super::evidence::insert_replay(&mut PgDb(&mut tx), replay)?;
        tx.commit().map_err(db_err)
    }

    fn get_replay(
        &self,
        tenant: &TenantId,
        id: &crate::domain::ReplayId,
    ) -> StoreResult<crate::domain::replay::ReplayRecord> {
        let mut conn = self.conn()?;
        super::evidence::get_replay(&mut PgDb(&mut *conn), tenant, id)
    }

    fn list_replays(
        &self,
        tenant: &TenantId,
        call: &CallId,
    ) -> StoreResult<Vec<crate::domain::replay::ReplayRecord>> {
        let mut conn = self.conn()?;
        super::evidence::list_replays(&mut PgDb(&mut *conn), tenant, call)
    }

    fn insert_certificate(&self, cert: &super::StoredCertificate) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        super::evidence::insert_certificate(&mut PgDb(&mut tx), cert)?;
        tx.commit().map_err(db_err)
    }

    fn get_certificate(
        &self,
        tenant: Option<&TenantId>,
        id: &crate::domain::CertificateId,
    ) -> StoreResult<super::StoredCertificate> {
        let mut conn = self.conn()?;
        super::evidence::get_certificate(&mut PgDb(&mut *conn), tenant, id)
    }

    fn call_series(
        &self,
        tenant: &TenantId,
        since: Timestamp,
        bucket_ms: i64,
        buckets: u32,
    ) -> StoreResult<Vec<super::SeriesPoint>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        super::console::call_series(&mut db, tenant, since, bucket_ms, buckets)
    }

    fn usage_by(
        &self,
        tenant: &TenantId,
        since: Timestamp,
        by_model: bool,
    ) -> StoreResult<Vec<super::UsageRow>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        super::console::usage_by(&mut db, tenant, since, by_model)
    }

    fn list_users(&self, tenant: Option<&TenantId>) -> StoreResult<Vec<User>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        super::console::list_users(&mut db, tenant)
    }

    fn set_user_password(
        &self,
        user: &crate::domain::UserId,
        password: &crate::domain::user::PasswordHash,
        keep: Option<&str>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        super::console::set_password(&mut PgDb(&mut tx), user, password, keep)?;
        tx.commit().map_err(db_err)
    }

    fn create_invitation(&self, inv: &crate::domain::user::Invitation) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        super::console::insert_invitation(&mut PgDb(&mut tx), inv)?;
        tx.commit().map_err(db_err)
    }

    fn find_invitation(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<crate::domain::user::Invitation>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        super::console::find_invitation(&mut db, token_hash)
    }

    fn list_invitations(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Vec<crate::domain::user::Invitation>> {
        let mut conn = self.conn()?;
        let mut db = PgDb(&mut *conn);
        super::console::list_invitations(&mut db, tenant)
    }

    fn accept_invitation(
        &self,
        token_hash: &str,
        id: &crate::domain::UserId,
        password: &crate::domain::user::PasswordHash,
        now: Timestamp,
    ) -> StoreResult<User> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let user =
            super::console::accept_invitation(&mut PgDb(&mut tx), token_hash, id, password, now)?;
        tx.commit().map_err(db_err)?;
        Ok(user)
    }

    fn write_tx(
        &self,
        work: &mut dyn FnMut(&mut super::SqlTx<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        work(&mut super::SqlTx(&mut PgDb(&mut tx)))?;
        tx.commit().map_err(db_err)
    }

    fn claim_scheduled_run(&self, name: &str, slot: i64, instance: &str) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let claimed = super::schedule::claim(
            &mut PgDb(&mut tx),
            name,
            slot,
            instance,
            Timestamp::now().millis(),
        )?;
        tx.commit().map_err(db_err)?;
        Ok(claimed)
    }

    fn scheduled_run_claims(&self, name: &str) -> StoreResult<Vec<(i64, String)>> {
        let mut conn = self.conn()?;
        super::schedule::list(&mut PgDb(&mut *conn), name)
    }

    fn lease_quota(
        &self,
        req: &crate::domain::quota::LeaseRequest,
    ) -> StoreResult<crate::domain::quota::LeaseGrant> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let grant = super::quota::lease(&mut PgDb(&mut tx), req)?;
        tx.commit().map_err(db_err)?;
        Ok(grant)
    }

    fn return_quotas(&self, returns: &[(String, i64)], now: Timestamp) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        super::quota::give_back(&mut PgDb(&mut tx), returns, now.millis())?;
        tx.commit().map_err(db_err)
    }

    fn quota_level(&self, name: &str) -> StoreResult<Option<i64>> {
        let mut conn = self.conn()?;
        super::quota::level(&mut PgDb(&mut *conn), name)
    }

    fn insert_task(&self, task: &crate::domain::task::Task) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        super::tasks::insert(&mut PgDb(&mut tx), task)?;
        tx.commit().map_err(db_err)
    }

    fn get_task(
        &self,
        tenant: &TenantId,
        id: &crate::domain::TaskId,
    ) -> StoreResult<crate::domain::task::Task> {
        let mut conn = self.conn()?;
        super::tasks::get(&mut PgDb(&mut *conn), tenant, id)
    }

    fn list_tasks(
        &self,
        tenant: &TenantId,
        limit: u32,
    ) -> StoreResult<Vec<crate::domain::task::Task>> {
        let mut conn = self.conn()?;
        super::tasks::list(&mut PgDb(&mut *conn), tenant, limit)
    }

    fn update_task(
        &self,
        tenant: &TenantId,
        id: &crate::domain::TaskId,
        update: &crate::domain::task::TaskUpdate,
        at: Timestamp,
    ) -> StoreResult<crate::domain::task::Task> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let task = super::tasks::update(&mut PgDb(&mut tx), tenant, id, update, at)?;
        tx.commit().map_err(db_err)?;
        Ok(task)
    }

    fn task_output(
        &self,
        tenant: &TenantId,
        id: &crate::domain::TaskId,
    ) -> StoreResult<(String, String, Vec<u8>)> {
        let mut conn = self.conn()?;
        super::tasks::output(&mut PgDb(&mut *conn), tenant, id)
    }

    fn export_tables(
        &self,
        tenant: Option<&TenantId>,
        sink: &mut super::dump::Sink<'_>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::dump::postgres::export(&mut conn, tenant.map(TenantId::as_str), sink)
    }

    fn erase_tenant(&self, tenant: &TenantId) -> StoreResult<Vec<(String, i64)>> {
        self.get_tenant(tenant)?;
        let mut conn = self.conn()?;
        super::dump::postgres::erase(&mut conn, tenant.as_str(), &|tx, keys| {
            for k in keys {
                record_change(tx, "api_key", k)?;
            }
            record_change(tx, "tenant", tenant.as_str())
        })
    }

    fn import_tables(&self, source: &mut super::dump::Source<'_>) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::dump::postgres::import(&mut conn, source)
    }

    fn table_counts(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut conn = self.conn()?;
        super::dump::postgres::counts(&mut conn)
    }

    fn chain_head(
        &self,
        kind: ChainKind,
        tenant: Option<&TenantId>,
    ) -> StoreResult<Option<ChainHead>> {
        let mut conn = self.conn()?;
        super::chain::head(&mut PgDb(&mut *conn), kind, tenant)
    }

    fn chain_links(
        &self,
        kind: ChainKind,
        tenant: Option<&TenantId>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredLink>> {
        let mut conn = self.conn()?;
        super::chain::links(&mut PgDb(&mut *conn), kind, tenant, after, limit)
    }

    fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<AuditEntry> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        let added = super::chain::append_audit(&mut PgDb(&mut tx), entry)?;
        tx.commit().map_err(db_err)?;
        Ok(added)
    }

    fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let mut conn = self.conn()?;
        super::chain::list_audit(&mut PgDb(&mut *conn), tenant, filter, before, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_fails_fast_with_a_redacted_url_and_a_hint() {
        // Port 1 on localhost: nothing listens there, so the connection is refused at once.
        let started = std::time::Instant::now();
        let err = PostgresStore::open("postgres://agv:s3cret@127.0.0.1:1/agv").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(msg.contains("127.0.0.1:1/agv"), "{msg}");
        assert!(msg.contains("AGV_DATABASE_URL"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn a_malformed_url_is_explained() {
        let err = PostgresStore::open("postgres://agv@127.0.0.1:notaport/agv").unwrap_err();
        assert!(
            err.to_string().contains("not a valid Postgres URL"),
            "{err}"
        );
    }
}
