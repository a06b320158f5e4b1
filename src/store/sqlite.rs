//! SQLite backend: one database file in the data dir, an r2d2 pool of rusqlite connections.
//!
//! Every connection runs in WAL mode with `busy_timeout=5000`, foreign keys on, and
//! `synchronous=NORMAL` — or `FULL` with `durability = "power"` (see [`Durability`]). Writes use `BEGIN IMMEDIATE` so that a transaction never has to
//! upgrade a read lock (which SQLite answers with an immediate "busy" instead of waiting).
//! All methods block: async code calls them through [`super::run_blocking`].
//! What every part of the store does with a connection (its settings, error mapping,
//! binding) is in `sqlite_conn`, below this module and the text index.
//! This module translates between SQL and domain types; it must not contain policy.

use super::rows::{CallParams, call_values, duplicate_call, explain_conflict, insert_call_sql};
use super::sqlite_conn::{BUSY_TIMEOUT, SqliteDb, db_err, init_connection};
use super::{
    Backend, CommitSettings, Durability, DynStore, PoolStats, Recording, Store, StoreError,
    StoreResult, migrate,
};
use crate::domain::{CallRecord, TenantId};
use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

pub const DB_FILE: &str = "agv.db";

const POOL_SIZE: u32 = 8;

/// Opens the store and applies migrations.
pub fn open_store(path: &Path) -> StoreResult<DynStore> {
    Ok(Arc::new(SqliteStore::open(path)?))
}

pub struct SqliteStore {
    pool: Pool<SqliteConnectionManager>,
    path: PathBuf,
    /// What every connection's commits wait for (`synchronous`).
    durability: Durability,
    stop_checkpointer: Arc<AtomicBool>,
    /// Set by the checkpointer when the recorder should finish its checkpoint.
    finish_checkpoint: Arc<AtomicBool>,
    /// Set by the finish until the recorder's next commit, which starts the WAL over and
    /// so waits for an `fsync` of its header (SQLite syncs it, for a crash to find the
    /// old frames invalid; 0.5–5 ms measured): a wait for the recorder's thread, not for
    /// a request's own-thread commit, which would hold up every request of its worker.
    restart_due: AtomicBool,
    writer: WriterLock,
    /// The connection `insert_calls` writes on (opened on first use, without the text
    /// index attached); only used while holding `writer`.
    call_writer: std::sync::Mutex<Option<CallWriter>>,
}

/// The recorder's connection, and the chain heads its own commits left behind.
struct CallWriter {
    conn: Connection,
    heads: super::chain::KnownHeads,
}

/// Serialises this process's writers before SQLite does. SQLite lets one writer in at a
/// time and makes the others wait in its busy handler, which sleeps in steps of one to
/// a hundred milliseconds; a writer waiting on this mutex instead is woken the moment the
/// previous one commits. That matters for the call recorder, whose commit is on the
/// proxy's hot path, whenever another writer (the incident engine, a change from the
/// API) holds the lock. Other processes (the CLI) still meet SQLite's own lock.
pub(super) type WriterLock = Arc<std::sync::Mutex<()>>;

pub(super) fn lock_writer<T>(lock: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The writer lock guards no data, and the recorder's connection slot stays usable: a
    // panic while either was held leaves nothing inconsistent (a transaction in progress
    // is rolled back when it is dropped).
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock_writer`] without waiting: `None` when someone holds the lock.
fn try_lock<T>(lock: &std::sync::Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match lock.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A write transaction holding this process's writer lock; commit or drop (roll back).
pub(super) struct WriteTx<'c> {
    // Dropped first: the transaction ends before the lock is released.
    tx: Transaction<'c>,
    _writer: std::sync::MutexGuard<'c, ()>,
}

impl<'c> std::ops::Deref for WriteTx<'c> {
    type Target = Transaction<'c>;
    fn deref(&self) -> &Transaction<'c> {
        &self.tx
    }
}

impl WriteTx<'_> {
    pub(super) fn commit(self) -> rusqlite::Result<()> {
        self.tx.commit()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop_checkpointer.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Opens and sets up a connection, retrying while the file is busy. SQLite answers
/// "database is locked" at once, without waiting in the busy handler, when a connection
/// opens the file while another process's last connection is closing it (that one holds
/// an exclusive lock while it folds the WAL back) or recovering it after a crash. Both
/// last milliseconds, so this waits them out for up to the busy timeout.
fn open_first_connection(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    retry_busy(|| {
        Connection::open(path).and_then(|mut c| init_connection(&mut c, durability).map(|()| c))
    })
}

/// A connection's `synchronous` setting as SQLite reports it, e.g. `synchronous=FULL`,
/// and whether its commits sync the WAL (FULL and EXTRA do).
fn synchronous_of(conn: &Connection) -> StoreResult<(String, bool)> {
    let level: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .map_err(db_err)?;
    let name = match level {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "unknown",
    };
    Ok((format!("synchronous={name}"), level >= 2))
}

/// Runs `f` again while it fails with "busy" or "locked", for up to the busy timeout.
pub(super) fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match f() {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// How often the background checkpointer copies the WAL into the database file.
///
/// Often, in small rounds: each round's I/O (the WAL's `fsync` before SQLite copies, the
/// writeback after) reaches the request threads even though the checkpointer itself runs
/// in the idle class, and the larger the round the longer the stall. Measured at 1,000
/// req/s (bench/README.md, the 2026-12-06 runs of 2c8078e), the proxy's added p99, median of 6 rounds: 0.85 and
/// 1.19 ms with rounds every 100 ms, 0.59 and 0.58 ms every 25 ms; in sets of 4 rounds,
/// 1.28 ms every 500 ms against 0.94 ms every 100 ms, and 0.29 ms with neither checkpoints
/// nor text indexing — but without checkpoints the WAL grows without end.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);
/// How often the recorder is asked to finish a checkpointer round, so that the WAL starts
/// over. The finish holds up commits for two `fsync`s of the little it copies itself
/// (1–2.5 ms measured at 1,000 req/s), so not every round: once in 2 s bounds the WAL to
/// about two seconds of writes.
const FINISH_EVERY: Duration = Duration::from_secs(2);
const FINISH_EVERY_ROUNDS: u32 = rounds_in(FINISH_EVERY);
/// Frames a checkpointer round may leave uncopied before the checkpointer counts as
/// behind (see `background`): 32 MiB of pages. A round at 1,000 req/s leaves a few dozen.
const BEHIND_FRAMES: i64 = 8192;
/// How often the WALs' mappings are walked to map in again pages that memory pressure
/// reclaimed (see `resident`): every round cost ~4% of the server's CPU at 1,000 req/s,
/// and only real memory pressure takes mapped pages.
const REPOPULATE_EVERY: Duration = Duration::from_secs(10);
const REPOPULATE_EVERY_ROUNDS: u32 = rounds_in(REPOPULATE_EVERY);

/// How many checkpointer rounds make up `period` (at least one), so that the periods
/// above stay what they say whatever [`CHECKPOINT_EVERY`] is.
const fn rounds_in(period: Duration) -> u32 {
    let rounds = period.as_millis() / CHECKPOINT_EVERY.as_millis();
    if rounds == 0 { 1 } else { rounds as u32 }
}

/// One PASSIVE checkpoint: copies what it can without waiting for anyone. Returns the
/// frames in the WAL and how many of them are now in the database file.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// SQLite's write-ahead log of the database at `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Starts writing `file`'s dirty pages to the disk without waiting for them
/// (`sync_file_range`, Linux). Done after every checkpoint pass, so that the `fsync`
/// ahead of a finish (every 2 s) has little left: it had two seconds of pages to submit,
/// a stretch of several ms on a CPU.
fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; offset 0 and length 0 mean
        // the whole file.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Copies committed WAL pages into the database file in the background, and keeps the
/// WAL from growing without end; stops when `stop` is set.
///
/// SQLite starts writing the WAL from its beginning again only when a transaction begins
/// after a checkpoint has copied every frame. Under steady traffic the recorder commits
/// during every checkpoint, so that moment never came by itself, and the WAL grew by some
/// 50 KB per call — without bound, with a new file block allocated for nearly every
/// commit. So each round here is two passes off the hot path (the second copies what was
/// committed during the first, so little is left), and once every [`FINISH_EVERY`] a
/// request (`finish`) that the recorder, between two commits, copies the last few
/// frames itself: no frame can be added meanwhile, the WAL is then fully copied, and the
/// next commit rewrites it from its beginning. See [`SqliteStore::between_commits`].
fn spawn_checkpointer(path: PathBuf, stop: Arc<AtomicBool>, finish: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("agv-sqlite-checkpoint".into()).spawn(move || {
        let mut background = super::background::Background::start();
        let conn = match Connection::open(&path).and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "the WAL checkpointer could not open the database; the WAL will grow");
                return;
            }
        };
        let mut failing = false;
        let mut rounds: u32 = 0;
        // The WALs are rewritten in place; their cached pages must stay cached (see
        // `resident`). The text index's WAL is written by the indexer, off the hot path,
        // but it stalls the same way.
        let mut wals = [&path, &super::search_sqlite::search_path(&path)]
            .map(|db| super::resident::Resident::new(&wal_path(db)));
        let mut unmapped = false;
        // The database file itself, for the writeback after each pass and the flush ahead
        // of a finish; without it the finish flushes everything (slower, still correct).
        let db_file = std::fs::File::open(&path)
            .inspect_err(|e| tracing::debug!(error = %e, "could not open the database file for flushing; WAL finishes will take longer"))
            .ok();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(CHECKPOINT_EVERY);
            rounds = rounds.wrapping_add(1);
            for wal in &mut wals {
                match wal.refresh(rounds.is_multiple_of(REPOPULATE_EVERY_ROUNDS)) {
                    Ok(()) => unmapped = false,
                    // Once per episode; commits still work, only with stalls.
                    Err(e) if !unmapped => {
                        unmapped = true;
                        tracing::warn!(error = %e, "could not map the WAL to keep it cached; commits may wait for the disk");
                    }
                    Err(_) => {}
                }
            }
            let started = Instant::now();
            let round = passive_checkpoint(&conn).and_then(|(frames, copied)| {
                if frames > 0 {
                    passive_checkpoint(&conn)
                } else {
                    Ok((frames, copied))
                }
            });
            match round {
                Ok((frames, copied)) => {
                    background.round(frames - copied > BEHIND_FRAMES, started.elapsed());
                    if let Some(file) = &db_file
                        && frames > 0
                    {
                        start_writeback(file);
                    }
                    if failing {
                        tracing::info!("WAL checkpoints work again");
                    }
                    failing = false;
                    // An empty WAL is rewritten from its start anyway.
                    if frames > 0 && rounds.is_multiple_of(FINISH_EVERY_ROUNDS) {
                        // A pass that could not copy every frame (commits came in
                        // meanwhile) leaves the pages it wrote to the database file
                        // unsynced: the one that completes does that `fsync` — the
                        // recorder's finish, holding up every commit. Flushed here
                        // first, the finish syncs only the few pages it copies itself
                        // (measured: its stall went from 10–25 ms to ~1 ms).
                        if let Some(file) = &db_file
                            && let Err(e) = file.sync_data()
                        {
                            tracing::debug!(error = %e, "could not flush the database file ahead of a WAL finish");
                        }
                        finish.store(true, Ordering::Relaxed);
                    }
                }
                // Once per episode (a full disk lasts), not every round.
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the WAL grows until one succeeds; retrying");
                    }
                    failing = true;
                }
            }
        }
        // A last full pass so a clean stop leaves a small WAL behind.
        let _ = passive_checkpoint(&conn);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the WAL checkpointer thread; the WAL will grow");
    }
}

impl SqliteStore {
    /// Commits `calls` on the recorder's own connection. With `wait`, waits for the writer
    /// lock (and SQLite's, up to the busy timeout) and opens the connection on first use;
    /// without, returns `None` at once where it would have waited (another writer, or the
    /// connection not open yet), for a caller that has somewhere else to send the calls.
    /// `None` with `wait` only for no calls.
    ///
    /// The recorder's connection has no text index attached: BEGIN IMMEDIATE takes the
    /// write lock of every attached database, so on a pooled connection each commit would
    /// also wait for the background indexer's writes to the index file (in SQLite's busy
    /// handler, which sleeps for milliseconds) and pay for locking a second file. Its page
    /// cache also stays warm between commits.
    fn commit_calls(&self, calls: &[CallRecord], wait: bool) -> Option<StoreResult<()>> {
        if calls.is_empty() {
            return None;
        }
        // Serialise before taking the write lock, which every other writer waits for.
        let rows = match calls
            .iter()
            .map(CallParams::new)
            .collect::<StoreResult<Vec<_>>>()
        {
            Ok(rows) => rows,
            Err(e) => return Some(Err(e)),
        };
        let (_writer, mut slot) = if wait {
            (lock_writer(&self.writer), lock_writer(&self.call_writer))
        } else {
            (try_lock(&self.writer)?, try_lock(&self.call_writer)?)
        };
        let writer = match (&mut *slot, wait) {
            (Some(writer), _) => writer,
            (empty, true) => match self.open_call_writer() {
                Ok(opened) => empty.insert(opened),
                Err(e) => return Some(Err(e)),
            },
            (None, false) => return None,
        };
        // Without `wait`, another process (the CLI) holding SQLite's own write lock must
        // not be waited for either.
        if !wait {
            writer.conn.busy_timeout(Duration::ZERO).ok()?;
        }
        let outcome = write_calls(writer, calls, &rows, wait);
        if !wait {
            let _ = writer.conn.busy_timeout(BUSY_TIMEOUT);
        } else if matches!(outcome, Some(Ok(()))) {
            self.restart_due.store(false, Ordering::Relaxed);
        }
        outcome
    }

    /// Opens the recorder's connection, which knows no chain head yet.
    fn open_call_writer(&self) -> StoreResult<CallWriter> {
        Ok(CallWriter {
            conn: open_first_connection(&self.path, self.durability).map_err(db_err)?,
            heads: Default::default(),
        })
    }

    /// Opens (creating if needed) the database file at `path` and migrates it, at the
    /// SQLite default durability.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, Durability::default_for(Backend::Sqlite))
    }

    /// [`SqliteStore::open`] at a durability level.
    pub fn open_with(path: &Path, durability: Durability) -> StoreResult<Self> {
        let cannot_open = |cause: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!(
                "cannot open the database at {}: {cause} — check that the data directory exists and is writable by this user",
                path.display()
            ))
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            std::fs::create_dir_all(parent).map_err(|e| cannot_open(&e))?;
        }
        // One connection first: it reports the real cause of a failure (r2d2 would only
        // say it timed out) and runs the migrations before the pool hands out connections.
        let mut first = open_first_connection(path, durability).map_err(|e| cannot_open(&e))?;
        migrate::run_sqlite(&mut first).map_err(|e| match e {
            // Name the path: an error from inside the migration does not.
            StoreError::Unavailable(msg) => StoreError::Unavailable(format!(
                "cannot open the database at {}: {msg}",
                path.display()
            )),
            other => other,
        })?;

        // The text index's file (see search_sqlite): attached to every connection,
        // rebuilt here when it does not belong to this database.
        let search = super::search_sqlite::search_path(path);
        retry_busy(|| super::search_sqlite::attach(&first, &search))
            .map_err(|e| cannot_open(&e))?;
        super::search_sqlite::prepare(&mut first)?;
        let manager = SqliteConnectionManager::file(path).with_init(move |c| {
            init_connection(c, durability)?;
            super::search_sqlite::attach(c, &search)
        });
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            // A file connection does not go stale the way a network one does; testing it on
            // every checkout would cost a query per store call.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(|e| cannot_open(&e))?;
        // Only now: while `first` was open the pool's connections were never the file's
        // last one, whose closing would clean up the WAL under an exclusive lock.
        drop(first);
        let stop_checkpointer = Arc::new(AtomicBool::new(false));
        let finish_checkpoint = Arc::new(AtomicBool::new(false));
        let writer = WriterLock::default();
        spawn_checkpointer(
            path.to_owned(),
            stop_checkpointer.clone(),
            finish_checkpoint.clone(),
        );
        super::search_sqlite::spawn_indexer(path.to_owned(), stop_checkpointer.clone());
        Ok(Self {
            pool,
            path: path.to_owned(),
            durability,
            stop_checkpointer,
            finish_checkpoint,
            restart_due: AtomicBool::new(false),
            writer,
            call_writer: std::sync::Mutex::new(None),
        })
    }

    fn conn(&self) -> StoreResult<PooledConnection<SqliteConnectionManager>> {
        self.pool.get().map_err(|e| {
            StoreError::Unavailable(format!(
                "no connection to the database at {} became available: {e} — the server may be overloaded; retry",
                self.path.display()
            ))
        })
    }
}

/// Links, inserts and commits `calls` (their parameters in `rows`) in one transaction on
/// the recorder's connection, whose caller holds the writer lock; `None` (nothing
/// written) when `wait` is false and another process holds SQLite's write lock.
///
/// BEGIN and COMMIT are prepared once for the connection, and each chain starts from the
/// head this connection's own last commit left (see [`super::chain::KnownHeads`]); when
/// another process has appended to a chain since, the batch is rolled back and linked
/// again from the stored heads. Any error rolls the whole batch back.
fn write_calls(
    writer: &mut CallWriter,
    calls: &[CallRecord],
    rows: &[CallParams<'_>],
    wait: bool,
) -> Option<StoreResult<()>> {
    // A transaction left open (a panic mid-commit) would refuse every BEGIN after it.
    rollback(&writer.conn);
    let mut use_known = !writer.heads.is_empty();
    loop {
        let conn = &writer.conn;
        match conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
        {
            Ok(_) => {}
            Err(e) if !wait && is_busy(&e) => return None,
            Err(e) => return Some(Err(db_err(e))),
        }
        let known = use_known.then_some(&writer.heads);
        let written = (|| {
            let Some(linked) = super::chain::link_calls(&mut SqliteDb(conn), calls, rows, known)?
            else {
                return Ok(None);
            };
            let mut stmt = conn.prepare_cached(&INSERT_CALL).map_err(db_err)?;
            for ((call, row), link) in calls.iter().zip(rows).zip(&linked.links) {
                stmt.execute(&call_values!(row, link, dyn rusqlite::ToSql)[..])
                    .map_err(db_err)
                    .map_err(|e| explain_conflict(e, || duplicate_call(&call.id)))?;
            }
            conn.prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map_err(db_err)?;
            Ok(Some(linked.heads))
        })();
        match written {
            Ok(Some(heads)) => {
                writer.heads.extend(heads);
                return Some(Ok(()));
            }
            Ok(None) => {
                rollback(&writer.conn);
                writer.heads.clear();
                if !use_known {
                    // Heads read in this transaction cannot have moved.
                    return Some(Err(StoreError::Database(
                        "the calls' chain heads moved while the batch was linked; nothing was stored: retry".into(),
                    )));
                }
                // A known head had moved on (another process appended to its chain):
                // linked again from the stored heads.
                use_known = false;
            }
            Err(e) => {
                rollback(&writer.conn);
                writer.heads.clear();
                return Some(Err(e));
            }
        }
    }
}

/// Ends the recorder connection's open transaction, if any, without keeping anything.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %e, "could not roll back the recorder's failed transaction");
    }
}

pub(super) fn begin_write<'c>(
    lock: &'c std::sync::Mutex<()>,
    conn: &'c mut Connection,
) -> StoreResult<WriteTx<'c>> {
    let writer = lock_writer(lock);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    Ok(WriteTx {
        tx,
        _writer: writer,
    })
}

fn placeholder(n: usize) -> String {
    format!("?{n}")
}

static INSERT_CALL: LazyLock<String> = LazyLock::new(|| insert_call_sql(placeholder));

impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn pool_stats(&self) -> PoolStats {
        let s = self.pool.state();
        PoolStats {
            connections: s.connections,
            idle: s.idle_connections,
        }
    }

    fn commit_settings(&self) -> StoreResult<CommitSettings> {
        // The recorder's own connection (opened here if no call was recorded yet), which
        // `insert_calls` and `Recording::try_insert` commit on.
        let (calls, calls_wait_for_disk) = {
            let _writer = lock_writer(&self.writer);
            let mut slot = lock_writer(&self.call_writer);
            let writer = match &mut *slot {
                Some(writer) => writer,
                empty => empty.insert(self.open_call_writer()?),
            };
            synchronous_of(&writer.conn)?
        };
        let (other_writes, _) = synchronous_of(&*self.conn()?)?;
        Ok(CommitSettings {
            calls,
            other_writes,
            calls_wait_for_disk,
        })
    }

    fn insert_calls(&self, calls: &[CallRecord]) -> StoreResult<()> {
        self.commit_calls(calls, true).unwrap_or(Ok(()))
    }

    fn optimize_search(&self) -> StoreResult<()> {
        super::search_sqlite::optimize(&self.path)
    }

    fn checkpoint(&self) -> StoreResult<()> {
        self.conn()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(db_err)
    }

    fn index_pending_calls(&self) -> StoreResult<u64> {
        super::search_sqlite::index_pending(&self.path)
    }

    fn write_tx(
        &self,
        work: &mut dyn FnMut(&mut super::SqlTx<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let tx = begin_write(&self.writer, &mut conn)?;
        work(&mut super::SqlTx(&mut SqliteDb(&tx)))?;
        tx.commit().map_err(db_err)
    }

    fn with_db(
        &self,
        work: &mut dyn FnMut(&mut super::SqlTx<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let conn = self.conn()?;
        work(&mut super::SqlTx(&mut SqliteDb(&conn)))
    }

    fn export_tables(
        &self,
        tenant: Option<&TenantId>,
        sink: &mut super::dump::Sink<'_>,
    ) -> StoreResult<()> {
        let conn = self.conn()?;
        super::dump::sqlite::export(&conn, tenant.map(TenantId::as_str), sink)
    }

    fn import_tables(&self, source: &mut super::dump::Source<'_>) -> StoreResult<()> {
        let mut conn = self.conn()?;
        let _writer = lock_writer(&self.writer);
        super::dump::sqlite::import(&mut conn, source)
    }
}

impl Recording for SqliteStore {
    fn insert(&self, calls: &[CallRecord]) -> StoreResult<()> {
        Store::insert_calls(self, calls)
    }

    fn try_insert(&self, calls: &[CallRecord]) -> Option<StoreResult<()>> {
        // The recorder's finish is due (let the recorder commit, then do it), or it was
        // just done and the recorder's next commit starts the WAL over.
        if self.finish_checkpoint.load(Ordering::Relaxed)
            || self.restart_due.load(Ordering::Relaxed)
        {
            return None;
        }
        self.commit_calls(calls, false)
    }

    /// Finishes the checkpointer's round (see [`spawn_checkpointer`]) on the recorder's
    /// connection while holding the writer lock: the frames committed since its last pass
    /// are copied with no commit in between, so the next commit starts the WAL over.
    fn between_commits(&self) {
        if !self.finish_checkpoint.swap(false, Ordering::Relaxed) {
            return;
        }
        let _writer = lock_writer(&self.writer);
        let mut slot = lock_writer(&self.call_writer);
        let Some(CallWriter { conn, .. }) = slot.as_mut() else {
            return;
        };
        let started = Instant::now();
        match passive_checkpoint(conn) {
            Ok(_) => {
                self.restart_due.store(true, Ordering::Relaxed);
                metrics::histogram!("agv_sqlite_checkpoint_finish_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            // The next round tries again; the WAL only grows meanwhile.
            Err(e) => tracing::debug!(error = %e, "finishing a WAL checkpoint failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rows::list_calls_query;
    use super::super::sql::Dialect;
    use super::*;
    use crate::domain::Timestamp;
    use rusqlite::params_from_iter;

    #[test]
    fn an_unwritable_location_is_reported_with_the_path_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a directory is expected fails even for root.
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let path = blocker.join("data").join(DB_FILE);
        let err = SqliteStore::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("writable by this user"), "{msg}");
    }

    #[test]
    fn a_full_database_is_reported_as_full_with_what_to_do() {
        // max_page_count makes SQLite answer SQLITE_FULL as on a full disk.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA max_page_count = 20; CREATE TABLE t (b BLOB);")
            .unwrap();
        let e = (0..100)
            .find_map(|_| {
                conn.execute("INSERT INTO t VALUES (zeroblob(10000))", [])
                    .err()
            })
            .expect("the database filled up");
        let err = db_err(e);
        assert!(matches!(err, StoreError::Full(_)), "{err:?}");
        assert!(err.to_string().contains("free space"), "{err}");
        let api = crate::error::ApiError::from(err);
        assert_eq!(
            (api.status(), api.code),
            (503, crate::error::Code::StorageFull)
        );
    }

    #[test]
    fn a_directory_where_the_database_file_should_be_is_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteStore::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    /// The value of a connection's pragma `name`.
    fn pragma<T: rusqlite::types::FromSql>(c: &Connection, name: &str) -> T {
        c.pragma_query_value(None, name, |r| r.get(0)).unwrap()
    }

    #[test]
    fn every_connection_uses_wal_busy_timeout_normal_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sub").join(DB_FILE)).unwrap();
        // Hold several connections at once so that pooled ones are checked, not just one.
        let conns: Vec<_> = (0..3).map(|_| store.conn().unwrap()).collect();
        for c in &conns {
            let mode: String = pragma(c, "journal_mode");
            let settings: [i64; 3] =
                ["busy_timeout", "synchronous", "foreign_keys"].map(|p| pragma(c, p));
            assert_eq!((mode.as_str(), settings), ("wal", [5000, 1, 1]));
        }
    }

    #[test]
    fn at_power_durability_every_connection_and_the_recorders_sync_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let store = SqliteStore::open_with(&path, Durability::Power).unwrap();
        let conns: Vec<_> = (0..3).map(|_| store.conn().unwrap()).collect();
        for c in &conns {
            assert_eq!(pragma::<i64>(c, "synchronous"), 2, "FULL");
        }
        drop(conns);
        let both = |sync: &str, calls_wait_for_disk| CommitSettings {
            calls: sync.into(),
            other_writes: sync.into(),
            calls_wait_for_disk,
        };
        assert_eq!(
            store.commit_settings().unwrap(),
            both("synchronous=FULL", true)
        );
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.commit_settings().unwrap(),
            both("synchronous=NORMAL", false)
        );
    }
    /// The WAL header's checkpoint sequence number: SQLite adds one each time it starts
    /// writing the WAL from its beginning again.
    fn wal_restarts(db: &Path) -> u32 {
        let header = std::fs::read(super::wal_path(db)).unwrap();
        u32::from_be_bytes([header[12], header[13], header[14], header[15]])
    }

    /// A fresh store with one tenant, and a maker of that tenant's calls (one per call,
    /// each different, made at `at`), as the recorder writes them.
    struct CallsFixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        store: SqliteStore,
        tenant: TenantId,
        key: crate::domain::KeyId,
        seed: std::cell::Cell<u64>,
    }

    impl CallsFixture {
        fn new() -> Self {
            use crate::domain::{KeyId, Tenant, TenantName};
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(DB_FILE);
            let store = SqliteStore::open(&path).unwrap();
            let tenant = Tenant {
                id: TenantId::generate(),
                name: TenantName::parse("Acme").unwrap(),
                created_at: Timestamp::now(),
            };
            store.create_tenant(&tenant).unwrap();
            Self {
                _dir: dir,
                path,
                store,
                tenant: tenant.id,
                key: KeyId::generate(),
                seed: std::cell::Cell::new(0),
            }
        }

        fn call(&self, at: Timestamp) -> Vec<CallRecord> {
            use crate::incidents::demo::CallStream;
            self.seed.set(self.seed.get() + 1);
            CallStream::new(
                self.tenant.clone(),
                vec![self.key.clone()],
                1,
                at,
                1,
                self.seed.get(),
            )
            .collect()
        }

        /// Tries to commit a new call on the caller's thread: whether it was committed
        /// there (a failed commit fails the test).
        fn record_here(&self) -> bool {
            match self.store.try_insert(&self.call(Timestamp::now())) {
                Some(result) => {
                    result.unwrap();
                    true
                }
                None => false,
            }
        }

        fn stored(&self) -> usize {
            self.store
                .list_calls(&self.tenant, &Default::default(), None, 100)
                .unwrap()
                .len()
        }
    }

    /// A page of the call list, whatever its filter, is one range scan of the filter's
    /// index — run backwards since 0015 made them ascending — with no sort, also after a
    /// cursor.
    #[test]
    fn a_call_list_page_is_an_index_scan_with_no_sort_for_every_filter() {
        use crate::domain::{CallCursor, CallFilter, CallId};
        let f = CallsFixture::new();
        let conn = f.store.conn().unwrap();
        let cursor = CallCursor {
            created_at: Timestamp::from_millis(1_000),
            id: CallId::generate(),
        };
        let filters = [
            (CallFilter::default(), "calls_tenant_created"),
            (
                CallFilter {
                    since: Some(Timestamp::from_millis(1)),
                    until: Some(Timestamp::from_millis(2_000)),
                    ..CallFilter::default()
                },
                "calls_tenant_created",
            ),
            (
                CallFilter {
                    key_id: Some(f.key.clone()),
                    ..CallFilter::default()
                },
                "calls_tenant_key",
            ),
            (
                CallFilter {
                    end_user: Some("u-1".into()),
                    ..CallFilter::default()
                },
                "calls_tenant_end_user",
            ),
            (
                CallFilter {
                    session_id: Some("s-1".into()),
                    ..CallFilter::default()
                },
                "calls_tenant_session",
            ),
        ];
        for (filter, index) in &filters {
            for after in [None, Some(&cursor)] {
                let (sql, args) = list_calls_query(&f.tenant, filter, after, 50, Dialect::Sqlite);
                let plan = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .unwrap()
                    .query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(3))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
                    .join(" | ");
                assert!(plan.contains(&format!("INDEX {index} ")), "{index}: {plan}");
                assert!(!plan.contains("TEMP B-TREE"), "{index}: {plan}");
            }
        }
    }

    #[test]
    fn a_call_is_committed_on_the_callers_thread_only_when_the_writer_is_free() {
        let f = CallsFixture::new();
        // The recorder's connection is opened by its first commit.
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        assert!(f.record_here());
        assert_eq!(f.stored(), 2);

        // Another writer of this process holds the lock: no waiting, nothing written.
        {
            let _held = f.store.writer.lock().unwrap();
            assert!(!f.record_here());
        }
        // A WAL finish is due: that is the recorder's to do, after a commit of its own.
        f.store.finish_checkpoint.store(true, Ordering::Relaxed);
        assert!(!f.record_here());
        f.store.between_commits();
        assert!(!f.store.finish_checkpoint.load(Ordering::Relaxed));
        assert_eq!(f.stored(), 2);
        // The finish is done: the next commit starts the WAL over (and syncs its header),
        // which is the recorder's own commit to make.
        assert!(!f.record_here());
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        assert_eq!(f.stored(), 3);
        assert!(f.record_here());
        assert_eq!(f.stored(), 4);

        // Another process (say the CLI) holds SQLite's own write lock: no 5 s busy wait.
        let other = Connection::open(&f.path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let tried = Instant::now();
        assert!(!f.record_here());
        assert!(
            tried.elapsed() < Duration::from_secs(1),
            "{:?}",
            tried.elapsed()
        );
        other.execute_batch("ROLLBACK").unwrap();
        // The connection waits for a busy lock again on the recorder's own path.
        let third = f.call(Timestamp::now());
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            other.execute_batch("ROLLBACK").unwrap();
        });
        f.store.insert_calls(&third).unwrap();
        release.join().unwrap();
        assert!(f.record_here());
        assert_eq!(f.stored(), 6);
    }

    /// The finish and the mappings' walk keep their periods in time, whatever the round.
    #[test]
    fn the_checkpointers_periods_are_counted_in_its_rounds() {
        use super::{CHECKPOINT_EVERY, FINISH_EVERY, REPOPULATE_EVERY};
        assert_eq!(CHECKPOINT_EVERY * super::FINISH_EVERY_ROUNDS, FINISH_EVERY);
        assert_eq!(
            CHECKPOINT_EVERY * super::REPOPULATE_EVERY_ROUNDS,
            REPOPULATE_EVERY
        );
        // A period shorter than a round is every round, not never.
        assert_eq!(super::rounds_in(CHECKPOINT_EVERY / 2), 1);
    }

    /// The recorder links a call to the chain head its own last commit left, without
    /// reading it; another process appending to the same chain in between (the CLI, or a
    /// restore) must not fork the chain: the batch is linked again from the stored head.
    #[test]
    fn a_chain_head_moved_by_another_process_is_read_again_and_the_chain_holds() {
        use crate::domain::chain::ChainKind;
        let f = CallsFixture::new();
        let chain_of = |store: &SqliteStore| {
            crate::evidence::audit::verify_chain(
                store,
                ChainKind::Calls,
                Some(&f.tenant),
                &mut |_| {},
            )
            .unwrap()
        };
        for _ in 0..3 {
            f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        }
        assert!(f.record_here());
        // The recorder now knows its head; another process appends two calls.
        let other = SqliteStore::open(&f.path).unwrap();
        other.insert_calls(&f.call(Timestamp::now())).unwrap();
        other.insert_calls(&f.call(Timestamp::now())).unwrap();
        drop(other);
        // Both ways in: the recorder's thread and the request's own.
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        assert!(f.record_here());
        assert_eq!(f.stored(), 8);
        let result = chain_of(&f.store);
        assert!(result.broken.is_none(), "{:?}", result.broken);
        assert_eq!(result.links, 8);
        assert_eq!(result.head.map(|h| h.seq), Some(8));

        // A head moved back (a restore of an older copy) is no better a starting point.
        let conn = Connection::open(&f.path).unwrap();
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             DELETE FROM calls WHERE chain_seq > 6;
             UPDATE chain_heads SET seq = 6, hash = (SELECT chain_hash FROM calls WHERE chain_seq = 6)
               WHERE chain LIKE 'calls%';
             COMMIT;",
        )
        .unwrap();
        assert_eq!(f.stored(), 6);
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        let result = chain_of(&f.store);
        assert!(result.broken.is_none(), "{:?}", result.broken);
        assert_eq!(result.links, 7);
    }

    /// The recorder's BEGIN is its own prepared statement, not a transaction guard that
    /// rolls back when dropped: a transaction left open on its connection (a commit cut
    /// short by a panic) must not refuse every commit after it.
    #[test]
    fn a_transaction_left_open_on_the_recorders_connection_does_not_block_the_next_commit() {
        let f = CallsFixture::new();
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        {
            let slot = f.store.call_writer.lock().unwrap();
            let conn = &slot.as_ref().unwrap().conn;
            conn.execute_batch("BEGIN IMMEDIATE; DELETE FROM calls;")
                .unwrap();
        }
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        assert!(f.record_here());
        // The half-done work was rolled back, not committed with the next batch.
        assert_eq!(f.stored(), 3);
    }

    /// README: the WAL stays mapped into the server, so that proactive reclaim of
    /// unmapped page cache cannot make a commit read it back from the disk (`resident`).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_checkpointer_keeps_the_wal_mapped() {
        let f = CallsFixture::new();
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        let wal = super::wal_path(&f.path);
        let wal = wal.to_str().unwrap();
        // The checkpointer maps it on its next round (every 25 ms).
        let until = Instant::now() + Duration::from_secs(5);
        let mapped = loop {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            if maps.lines().any(|l| l.ends_with(wal)) || Instant::now() > until {
                break maps;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            mapped.lines().any(|l| l.ends_with(wal)),
            "{wal} is not mapped:\n{mapped}"
        );
    }

    /// README, step 5: the WAL checkpointer and the search indexer run in the idle
    /// scheduling class while they keep up (an idle store keeps up), where the process may
    /// raise their priority again; at nice 19 in the normal class otherwise.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_background_threads_of_an_idle_store_go_to_the_idle_class() {
        let _f = CallsFixture::new();
        let idle_allowed = super::super::background::idle_class_allowed();
        // Thread names as the kernel keeps them (15 bytes). Other tests' stores have
        // threads of the same names; they run the same code.
        let names = ["agv-sqlite-chec", "agv-search-inde"];
        let settled = |tid: libc::pid_t| {
            // SAFETY: both only read the settings of a thread of this process.
            let (policy, nice) = unsafe {
                (
                    libc::sched_getscheduler(tid),
                    libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t),
                )
            };
            if idle_allowed {
                policy == libc::SCHED_IDLE
            } else {
                policy == libc::SCHED_OTHER && nice == 19
            }
        };
        // 4 quiet rounds: 0.4 s for the checkpointer, 1.2 s for the indexer.
        let until = Instant::now() + Duration::from_secs(10);
        let missing = loop {
            let mut missing: Vec<&str> = names.to_vec();
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let task = task.unwrap();
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                let tid: libc::pid_t = task.file_name().to_str().unwrap().parse().unwrap();
                if settled(tid) {
                    missing.retain(|n| *n != comm.trim());
                }
            }
            if missing.is_empty() || Instant::now() > until {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            missing.is_empty(),
            "no {missing:?} thread in the {} after 10 s",
            if idle_allowed {
                "idle class"
            } else {
                "normal class at nice 19"
            }
        );
    }

    #[test]
    fn under_steady_writes_the_wal_is_rewritten_from_its_start_instead_of_growing() {
        let f = CallsFixture::new();
        // As the recorder does under steady traffic: commit after commit, with the upkeep
        // between two commits, while the background checkpointer runs its rounds.
        f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
        let before = wal_restarts(&f.path);
        let until = Instant::now() + Duration::from_millis(6600);
        let mut commits = 0;
        while Instant::now() < until {
            f.store.insert_calls(&f.call(Timestamp::now())).unwrap();
            f.store.between_commits();
            commits += 1;
            // About a thousand calls a second, which the text indexer keeps up with (it
            // reads the new calls, and a reader keeps the WAL from starting over).
            std::thread::sleep(Duration::from_millis(1));
        }
        let restarts = wal_restarts(&f.path) - before;
        // A restart every 2 s: three in 6.6 s, unless a reader was in the way.
        assert!(
            restarts >= 1,
            "the WAL was started over {restarts} times during {commits} commits"
        );
        assert!(f.stored() > 0);
    }
}
