//! Postgres backend: the synchronous `postgres` client in an r2d2 pool (NoTls).
//!
//! The sync client drives its own small tokio runtime per connection, so it must never
//! run on an async worker thread: async code calls every method — and `open` — through
//! [`super::run_blocking`]. Dropping the store from async code is safe (see `Drop`).
//! Changes to the change feed are serialised with an advisory lock so that sequence
//! numbers become visible in order and a reader polling `changes_since` never skips one.
//! What every part of the store does with a client (the pool's manager, error mapping,
//! binding, shared locks) is in `postgres_conn`, below this module and the text index.
//! This module translates between SQL and domain types; it must not contain policy.

use super::postgres_conn::{CHANGE_CHANNEL, Manager, PgDb, db_err};
use super::rows::{
    CallParams, call_values, duplicate_call, explain_conflict, insert_call_sql, latest_uses,
};
use super::{
    Backend, CommitSettings, Durability, PoolStats, Store, StoreError, StoreResult, migrate,
    redact_url,
};
use crate::domain::{CallRecord, KeyId, TenantId, Timestamp};
use postgres::config::Host;
use postgres::{GenericClient, NoTls};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

const POOL_SIZE: u32 = 10;
/// Fail fast when the server is unreachable instead of r2d2's default 30 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a checkout waits before it looks at whether connecting to the server fails.
const CHECKOUT_STEP: Duration = Duration::from_millis(250);
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
        let cause = || {
            let cause = self.cause.lock();
            cause
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        self.failing.load(Ordering::Relaxed).then(cause)
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
        *self
            .0
            .cause
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cause;
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

fn placeholder(n: usize) -> String {
    format!("${n}")
}

static INSERT_CALL: LazyLock<String> = LazyLock::new(|| insert_call_sql(placeholder));

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

impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
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
            tx.execute(
                &stmt,
                &call_values!(row, link, dyn postgres::types::ToSql + Sync),
            )
            .map_err(db_err)
            .map_err(|e| explain_conflict(e, || duplicate_call(&call.id)))?;
        }
        // An early return above drops the transaction, which rolls the whole batch back.
        tx.commit().map_err(db_err)
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

    fn write_tx(
        &self,
        work: &mut dyn FnMut(&mut super::SqlTx<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db_err)?;
        work(&mut super::SqlTx(&mut PgDb(&mut tx)))?;
        tx.commit().map_err(db_err)
    }

    fn with_db(
        &self,
        work: &mut dyn FnMut(&mut super::SqlTx<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        work(&mut super::SqlTx(&mut PgDb(&mut *conn)))
    }

    fn export_tables(
        &self,
        tenant: Option<&TenantId>,
        sink: &mut super::dump::Sink<'_>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::dump::postgres::export(&mut conn, tenant.map(TenantId::as_str), sink)
    }

    fn import_tables(&self, source: &mut super::dump::Source<'_>) -> StoreResult<()> {
        let mut conn = self.conn()?;
        super::dump::postgres::import(&mut conn, source)
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
