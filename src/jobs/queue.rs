//! The durable job queue: one sled database holding every job that is pending, running
//! or dead.
//!
//! Layout: the `jobs` tree maps a job id to its record (the job plus its state); the `due`
//! tree indexes pending jobs by (run_at, sequence) so the next due job is the first key;
//! the `dead` tree indexes dead letters by (died_at, sequence). Every state change touches
//! the record and its index in one sled transaction, so they never disagree, and a job is
//! claimed by removing its `due` entry inside that transaction — only one claimer can
//! win. Delivery is at least once: a job that was running when the process died is
//! pending again when the queue is reopened, and handlers must tolerate running twice.
//!
//! When the disk fails (typically: it is full), sled refuses every write after the first
//! failed one until the database is reopened. The queue then refuses work with
//! [`QueueError::Unavailable`], keeps answering reads from the failed database, and
//! reopens it by itself — on the next write (a worker looking for work, `/ready`, an
//! enqueue), at most every second, once the disk has room — with the same recovery as a
//! restart. The database lives in one swappable slot because sled locks its directory
//! until every handle on it is gone.
//!
//! This file is the only place that names sled. It must not know what jobs do (see
//! `worker`), must never drop a job silently (a full queue refuses new work instead) and
//! must stay cheap to ask for [`Queue::stats`], which `/metrics` calls on every scrape.

use crate::domain::{ParseError, Timestamp};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Base delay of the first retry; each further retry doubles it.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this, however many attempts a job allows.
const BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// How long `open` keeps trying when the database is locked.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How often a queue whose storage failed tries to reopen its database.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// No reopen is tried while the disk has less room than this: sled would fail again at
/// once (it writes in segments of half a MiB).
const REOPEN_MIN_FREE: u64 = 4 << 20;
/// How long a reopen waits for operations still using the failed database to finish.
const REOPEN_HANDLE_WAIT: Duration = Duration::from_millis(200);
/// How long a reopen waits for the failed database's directory lock to be released.
const REOPEN_LOCK_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database is locked by another process.
    #[error(
        "the job queue at {path} is locked: another agv-server seems to be using this data dir. Stop the other process, or start this one with a different data dir"
    )]
    Locked { path: PathBuf },
    /// The database could not be opened for another reason.
    #[error(
        "could not open the job queue at {path}: {reason}. Check that the data dir exists, is writable and has free space"
    )]
    Open { path: PathBuf, reason: String },
    /// The disk budget or the job limit is exhausted; the new job was refused.
    #[error(
        "the job queue is full ({reason}); the new job was refused and no queued job was dropped. Let the workers catch up, retry or discard dead-letter jobs, or raise the queue's disk budget in the configuration"
    )]
    Full { reason: String },
    #[error("job {0} does not exist: it may have finished or been discarded already")]
    NotFound(JobId),
    /// The job exists but is not in the state the operation needs.
    #[error("job {id} is {actual}, not {expected}")]
    WrongState {
        id: JobId,
        expected: &'static str,
        actual: &'static str,
    },
    /// The disk failed (full, or an I/O error). sled refuses every write after one failed
    /// write, so the queue refuses work until it has reopened its database, which it
    /// tries by itself.
    #[error(
        "the job queue cannot write: {reason}. It takes no work until it has reopened its database, which it tries every second by itself once its disk has room again (free disk space if it is full); no restart is needed, and jobs already queued are kept"
    )]
    Unavailable { reason: String },
    /// sled failed otherwise (corruption detected by sled, a bug, ...).
    #[error("job queue storage error: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error(
        "the job queue holds a record it cannot read ({0}); it was probably written by a newer agv-server"
    )]
    Corrupt(String),
}

impl From<sled::Error> for QueueError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(e) => Self::Unavailable {
                reason: format!("I/O error: {e}"),
            },
            e => Self::Storage(e.to_string()),
        }
    }
}

fn tx_err(e: TransactionError<QueueError>) -> QueueError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

/// An opaque job id: `job_` followed by 32 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub const PREFIX: &'static str = "job_";

    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, uuid::Uuid::new_v4().simple()))
    }

    /// Parses an id typed or pasted by a user (e.g. in the console's retry button).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        let shown: String = s.chars().take(48).collect();
        let rest = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
            ParseError::new(format!(
                "'{shown}' is not a job id: it must start with '{}'",
                Self::PREFIX
            ))
        })?;
        if rest.len() != 32 || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::new(format!(
                "'{shown}' is not a valid job id: expected '{}' followed by 32 hex characters",
                Self::PREFIX
            )));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One unit of background work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// Selects the handler, e.g. `"housekeeping"`.
    pub kind: String,
    pub payload: serde_json::Value,
    /// Attempts started so far, including the one running now.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Not run before this time.
    pub run_at: Timestamp,
    /// The error of the most recent failed attempt.
    pub last_error: Option<String>,
    pub created_at: Timestamp,
}

/// A job on the dead-letter list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub job: Job,
    pub died_at: Timestamp,
}

/// What became of a job after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Failed; it runs again at `at`.
    Retrying {
        at: Timestamp,
    },
    /// Failed its last attempt and moved to the dead-letter list.
    Dead,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Refuse new jobs once the database files take this much space.
    pub max_disk_bytes: u64,
    /// Refuse new jobs once this many are pending, running or dead.
    pub max_jobs: Option<u64>,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_disk_bytes: 1 << 30,
            max_jobs: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EnqueueOptions {
    /// Attempts before the job moves to the dead-letter list (at least 1).
    pub max_attempts: u32,
    /// Run no earlier than this; `None` means as soon as a worker is free.
    pub run_at: Option<Timestamp>,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            run_at: None,
        }
    }
}

/// Counts for `/metrics` and the console. The gauges reflect the database; the `_total`
/// counters count events since this process opened the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub pending: u64,
    pub running: u64,
    pub dead: u64,
    pub completed_total: u64,
    pub retries_total: u64,
    pub failures_total: u64,
    pub dead_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum State {
    Pending,
    Running { claimed_at: Timestamp },
    Dead { died_at: Timestamp },
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running { .. } => "running",
            Self::Dead { .. } => "dead",
        }
    }
}

/// What the `jobs` tree stores per id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    job: Job,
    /// Orders jobs due at the same millisecond first-in first-out.
    seq: u64,
    state: State,
}

impl Record {
    fn encode(&self) -> Result<Vec<u8>, QueueError> {
        serde_json::to_vec(self).map_err(|e| QueueError::Corrupt(e.to_string()))
    }

    fn decode(bytes: &[u8]) -> Result<Self, QueueError> {
        serde_json::from_slice(bytes).map_err(|e| QueueError::Corrupt(e.to_string()))
    }
}

/// Sortable index key: the time (sign bit flipped so negative times sort first), then the
/// sequence number, both big-endian.
fn index_key(at: Timestamp, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&((at.millis() as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn index_key_time(key: &[u8]) -> Option<Timestamp> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(Timestamp::from_millis(
        (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64,
    ))
}

/// How long to wait before attempt `attempts + 1`, after `attempts` failed: 1 s, 2 s,
/// 4 s, ... capped at one hour, plus up to 10 % jitter so that jobs failing together do
/// not retry together.
pub fn backoff_delay(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(31);
    let base = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    let jitter_ms = rand::random_range(0..=base.as_millis() as u64 / 10);
    base + Duration::from_millis(jitter_ms)
}

fn read_tx(
    jobs: &TransactionalTree,
    id: &JobId,
) -> Result<Record, ConflictableTransactionError<QueueError>> {
    match jobs.get(id.as_str())? {
        Some(bytes) => Record::decode(&bytes).map_err(ConflictableTransactionError::Abort),
        None => Err(ConflictableTransactionError::Abort(QueueError::NotFound(
            id.clone(),
        ))),
    }
}

fn write_tx(
    jobs: &TransactionalTree,
    rec: &Record,
) -> Result<(), ConflictableTransactionError<QueueError>> {
    let bytes = rec.encode().map_err(ConflictableTransactionError::Abort)?;
    jobs.insert(rec.job.id.as_str(), bytes)?;
    Ok(())
}

fn wrong_state(
    id: &JobId,
    expected: &'static str,
    actual: State,
) -> ConflictableTransactionError<QueueError> {
    ConflictableTransactionError::Abort(QueueError::WrongState {
        id: id.clone(),
        expected,
        actual: actual.name(),
    })
}

fn decrement(counter: &AtomicU64) {
    // Never wraps: the gauges are rebuilt from the database on open and only move with
    // committed transitions, but a saturating update costs nothing and keeps /metrics sane.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}

fn count(name: &'static str, kind: &str) {
    metrics::counter!(name, "kind" => kind.to_owned()).increment(1);
}

#[derive(Default)]
struct Counters {
    pending: AtomicU64,
    running: AtomicU64,
    dead: AtomicU64,
    completed_total: AtomicU64,
    retries_total: AtomicU64,
    failures_total: AtomicU64,
    dead_total: AtomicU64,
}

/// One open sled database and its trees. sled holds a lock on the directory until every
/// clone of these is gone, so they are shared only through the one `Arc` the queue keeps
/// in its [`Slot`]: operations borrow it for their duration, and a reopen takes it back.
struct Handles {
    db: sled::Db,
    jobs: sled::Tree,
    due: sled::Tree,
    dead: sled::Tree,
}

impl Handles {
    /// Opens the database at `path`, retrying for up to `lock_wait` while its lock is
    /// held: sled's background threads can hold it for a moment after the last handle in
    /// this process is dropped (a reopen, a restart within one process, tests).
    fn open(path: &Path, lock_wait: Duration) -> Result<Self, QueueError> {
        let open_err = |e: sled::Error| {
            let reason = e.to_string();
            if reason.contains("could not acquire lock") {
                QueueError::Locked {
                    path: path.to_owned(),
                }
            } else {
                QueueError::Open {
                    path: path.to_owned(),
                    reason,
                }
            }
        };
        let give_up = Instant::now() + lock_wait;
        let db = loop {
            match sled::Config::new().path(path).open().map_err(open_err) {
                Err(QueueError::Locked { .. }) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => break other?,
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        Ok(Self {
            jobs: tree("jobs")?,
            due: tree("due")?,
            dead: tree("dead")?,
            db,
        })
    }
}

/// The database the queue works on, or why it has none that can write.
enum Slot {
    Open(Arc<Handles>),
    Failed(Failure),
}

/// A database whose storage failed. sled refuses every write after one failed write
/// until it is reopened, so the queue refuses work and reopens it by itself.
struct Failure {
    /// The error that broke the database, reported until a reopen succeeds.
    error: String,
    since: Timestamp,
    /// The failed handles: sled still answers reads from them, so reads keep working
    /// until a reopen takes them back. `None` once a reopen has dropped them.
    old: Option<Arc<Handles>>,
    /// No reopen is tried before this.
    next_try: Instant,
    /// Why the latest reopen did not succeed.
    last_try: Option<String>,
}

impl Failure {
    fn to_error(&self) -> QueueError {
        let mut reason = format!("{} (since {})", self.error, self.since);
        if let Some(why) = &self.last_try {
            reason.push_str(&format!("; the latest reopen failed: {why}"));
        }
        QueueError::Unavailable { reason }
    }
}

/// Bytes available to this process on the filesystem holding `path`, if it can tell.
fn available_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs writes only into `st`.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Takes back sole ownership of `handles`, waiting up to `wait` for the operations that
/// still use them to finish; gives them back if they do not.
fn take_back(mut handles: Arc<Handles>, wait: Duration) -> Result<Handles, Arc<Handles>> {
    let give_up = Instant::now() + wait;
    loop {
        match Arc::try_unwrap(handles) {
            Ok(h) => return Ok(h),
            Err(shared) if Instant::now() < give_up => {
                handles = shared;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(shared) => return Err(shared),
        }
    }
}

struct Inner {
    path: PathBuf,
    limits: QueueLimits,
    slot: RwLock<Slot>,
    /// Held by the one caller that is reopening the database; others do not wait for it.
    reopening: Mutex<()>,
    /// Jobs whose enqueue reported that the storage failed. Their record may have reached
    /// the disk all the same; the reopen deletes them, so a caller who was told the job
    /// was refused, and enqueues it again, does not end up with it twice.
    refused: Mutex<Vec<JobId>>,
    counters: Counters,
    /// Woken whenever a job becomes runnable, so idle workers need not poll.
    notify: Notify,
}

/// A handle on the queue; clones share one database.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// A reference that does not keep the queue open: long-lived callbacks (the scheduler's)
/// hold one, so the database closes — and its file lock is released — when the server's
/// own handles are dropped.
#[derive(Clone)]
pub struct WeakQueue {
    inner: std::sync::Weak<Inner>,
}

impl WeakQueue {
    /// The queue, if it is still open.
    pub fn upgrade(&self) -> Option<Queue> {
        self.inner.upgrade().map(|inner| Queue { inner })
    }
}

enum Claim {
    Lost,
    Dangling,
    Claimed(Job),
}

/// Why jobs found running when the database is opened were interrupted.
#[derive(Clone, Copy)]
enum Interrupted {
    /// The previous process stopped.
    Stopped,
    /// This process's database failed and was reopened.
    StorageFailed,
}

impl Interrupted {
    fn cause(self) -> &'static str {
        match self {
            Self::Stopped => "agv-server stopped",
            Self::StorageFailed => "the job queue's storage failed",
        }
    }
}

impl Queue {
    pub fn downgrade(&self) -> WeakQueue {
        WeakQueue {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Opens (or creates) the queue at `path`, and puts every job that was running when
    /// the previous process stopped back to pending — or on the dead-letter list, if that
    /// was its last attempt, so a job that crashes the process cannot loop forever.
    /// Blocks (briefly, or up to two seconds if the database is locked): call it at
    /// startup or on the blocking pool.
    pub fn open(path: &Path, limits: QueueLimits) -> Result<Self, QueueError> {
        let handles = Handles::open(path, LOCK_WAIT)?;
        let (pending, dead) = recover(&handles, Timestamp::now(), Interrupted::Stopped, &[])?;
        let counters = Counters::default();
        counters.pending.store(pending, Ordering::Relaxed);
        counters.dead.store(dead, Ordering::Relaxed);
        let inner = Inner {
            path: path.to_owned(),
            limits,
            slot: RwLock::new(Slot::Open(Arc::new(handles))),
            reopening: Mutex::new(()),
            refused: Mutex::new(Vec::new()),
            counters,
            notify: Notify::new(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn slot(&self) -> RwLockReadGuard<'_, Slot> {
        self.inner
            .slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn slot_mut(&self) -> RwLockWriteGuard<'_, Slot> {
        self.inner
            .slot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn refused(&self) -> MutexGuard<'_, Vec<JobId>> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The database for an operation that writes. After a storage failure, tries to
    /// reopen it first (at most every [`REOPEN_EVERY`]); until that works, refuses with
    /// [`QueueError::Unavailable`] saying what failed and what to do.
    fn writable(&self) -> Result<Arc<Handles>, QueueError> {
        if let Slot::Open(h) = &*self.slot() {
            return Ok(h.clone());
        }
        self.reopen_if_due();
        match &*self.slot() {
            Slot::Open(h) => Ok(h.clone()),
            Slot::Failed(f) => Err(f.to_error()),
        }
    }

    /// The database for an operation that only reads: a failed one still answers. Reads
    /// never reopen (they must stay cheap); between a reopen that dropped the failed
    /// database and one that succeeds, they are refused like writes.
    fn readable(&self) -> Result<Arc<Handles>, QueueError> {
        match &*self.slot() {
            Slot::Open(h) => Ok(h.clone()),
            Slot::Failed(Failure { old: Some(h), .. }) => Ok(h.clone()),
            Slot::Failed(f) => Err(f.to_error()),
        }
    }

    fn write<T>(
        &self,
        op: impl FnOnce(&Handles) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let h = self.writable()?;
        let out = op(&h);
        self.after(&h, out)
    }

    fn read<T>(&self, op: impl FnOnce(&Handles) -> Result<T, QueueError>) -> Result<T, QueueError> {
        let h = self.readable()?;
        let out = op(&h);
        self.after(&h, out)
    }

    /// A storage error on `h` means sled will refuse every further write on it.
    fn after<T>(&self, h: &Arc<Handles>, out: Result<T, QueueError>) -> Result<T, QueueError> {
        if let Err(QueueError::Unavailable { reason }) = &out {
            self.mark_failed(h, reason, Instant::now() + REOPEN_EVERY);
        }
        out
    }

    fn mark_failed(&self, h: &Arc<Handles>, reason: &str, next_try: Instant) {
        let mut slot = self.slot_mut();
        let old = match &*slot {
            // Not if another caller already marked it, or it has been reopened since.
            Slot::Open(cur) if Arc::ptr_eq(cur, h) => cur.clone(),
            _ => return,
        };
        tracing::error!(
            path = %self.inner.path.display(),
            error = reason,
            "the job queue's storage failed: it refuses new work and reopens its database by itself once the disk can be written again (free disk space if it is full); queued jobs are kept"
        );
        *slot = Slot::Failed(Failure {
            error: reason.to_owned(),
            since: Timestamp::now(),
            old: Some(old),
            next_try,
            last_try: None,
        });
    }

    /// Reopens a failed database if a reopen is due and no other caller is at it.
    fn reopen_if_due(&self) {
        let _one = match self.inner.reopening.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        match &*self.slot() {
            Slot::Failed(f) if Instant::now() >= f.next_try => {}
            _ => return,
        }
        let result = self.reopen();
        let mut slot = self.slot_mut();
        match result {
            Ok(handles) => {
                if let Slot::Failed(f) = &*slot {
                    tracing::info!(
                        path = %self.inner.path.display(),
                        failed_since = %f.since,
                        "the job queue reopened its database and takes work again"
                    );
                }
                *slot = Slot::Open(Arc::new(handles));
                drop(slot);
                self.inner.notify.notify_waiters();
            }
            Err(why) => {
                tracing::debug!(error = %why, "the job queue could not reopen its database yet");
                if let Slot::Failed(f) = &mut *slot {
                    f.last_try = Some(why);
                    f.next_try = Instant::now() + REOPEN_EVERY;
                }
            }
        }
    }

    /// Drops the failed database and opens it again, with the same recovery as at
    /// startup: jobs that were running are pending again (or dead, on their last attempt).
    fn reopen(&self) -> Result<Handles, String> {
        let path = &self.inner.path;
        // sled writes in segments of half a MiB: with less room it would fail again at
        // once, and the failed handles still serve reads meanwhile.
        if let Some(free) = available_bytes(path)
            && free < REOPEN_MIN_FREE
        {
            return Err(format!(
                "its disk has {} free; it reopens once {} are",
                mib(free),
                mib(REOPEN_MIN_FREE)
            ));
        }
        let old = match &mut *self.slot_mut() {
            Slot::Failed(f) => f.old.take(),
            Slot::Open(_) => None,
        };
        if let Some(old) = old {
            match take_back(old, REOPEN_HANDLE_WAIT) {
                // Closes the failed database and lets go of its lock.
                Ok(handles) => drop(handles),
                Err(old) => {
                    if let Slot::Failed(f) = &mut *self.slot_mut() {
                        f.old = Some(old);
                    }
                    return Err("operations were still using the failed database".into());
                }
            }
        }
        let handles = Handles::open(path, REOPEN_LOCK_WAIT).map_err(|e| match e {
            QueueError::Locked { .. } => {
                "its directory is still locked (by the failed database closing, or by another process using the data dir)".to_owned()
            }
            e => e.to_string(),
        })?;
        let refused = self.refused().clone();
        let (pending, dead) = recover(
            &handles,
            Timestamp::now(),
            Interrupted::StorageFailed,
            &refused,
        )
        .map_err(|e| e.to_string())?;
        self.refused().retain(|id| !refused.contains(id));
        let c = &self.inner.counters;
        c.pending.store(pending, Ordering::Relaxed);
        c.dead.store(dead, Ordering::Relaxed);
        c.running.store(0, Ordering::Relaxed);
        Ok(handles)
    }

    /// `Ok` while the queue accepts new jobs; [`QueueError::Full`] once the disk budget or
    /// the job limit is exhausted (what `enqueue` would answer, and what `/ready` reports);
    /// [`QueueError::Unavailable`] while its storage cannot write (it then tries to
    /// reopen it first). Blocks briefly: call it on the blocking pool.
    pub fn check_capacity(&self) -> Result<(), QueueError> {
        self.write(|h| {
            // Nothing to write in the usual case, so cheap; but sled reports here a
            // background write that failed (a full disk), which breaks the database.
            h.db.flush()?;
            let used = h.db.size_on_disk()?;
            if used >= self.inner.limits.max_disk_bytes {
                return Err(QueueError::Full {
                    reason: format!(
                        "its files take {used} bytes of a {} byte budget",
                        self.inner.limits.max_disk_bytes
                    ),
                });
            }
            if let Some(max_jobs) = self.inner.limits.max_jobs {
                let stats = self.stats();
                let held = stats.pending + stats.running + stats.dead;
                if held >= max_jobs {
                    return Err(QueueError::Full {
                        reason: format!("it holds {held} jobs, the limit is {max_jobs}"),
                    });
                }
            }
            Ok(())
        })
    }

    /// Adds a job; it is on disk when this returns. Refuses with [`QueueError::Full`] when
    /// the disk budget or the job limit is exhausted, and with
    /// [`QueueError::Unavailable`] while the storage cannot write; a refused job is not
    /// in the queue, also after the storage recovers.
    pub fn enqueue(
        &self,
        kind: &str,
        payload: serde_json::Value,
        opts: EnqueueOptions,
    ) -> Result<JobId, QueueError> {
        self.check_capacity()?;
        let now = Timestamp::now();
        let job = Job {
            id: JobId::generate(),
            kind: kind.to_owned(),
            payload,
            attempts: 0,
            max_attempts: opts.max_attempts.max(1),
            run_at: opts.run_at.unwrap_or(now),
            last_error: None,
            created_at: now,
        };
        let id = self.write(|h| {
            let rec = Record {
                seq: h.db.generate_id()?,
                job,
                state: State::Pending,
            };
            let written = (&h.jobs, &h.due)
                .transaction(|(jobs, due)| {
                    write_tx(jobs, &rec)?;
                    due.insert(&index_key(rec.job.run_at, rec.seq), rec.job.id.as_str())?;
                    Ok(())
                })
                .map_err(tx_err)
                .and_then(|()| {
                    h.db.flush()?;
                    Ok(())
                });
            if let Err(QueueError::Unavailable { .. }) = &written {
                // Recorded while this caller still holds the failed database, so before
                // any reopen can run.
                self.refused().push(rec.job.id.clone());
            }
            written.map(|()| rec.job.id)
        })?;
        self.inner.counters.pending.fetch_add(1, Ordering::Relaxed);
        self.inner.notify.notify_waiters();
        tracing::debug!(job = %id, kind, "job enqueued");
        Ok(id)
    }

    /// Takes the next job due at `now` for this caller alone, or `None` if nothing is due.
    /// The caller must report back with [`Queue::complete`] or [`Queue::fail`].
    pub fn claim(&self, now: Timestamp) -> Result<Option<Job>, QueueError> {
        self.write(|h| {
            loop {
                let Some(entry) = h.due.iter().next() else {
                    return Ok(None);
                };
                let (key, id_bytes) = entry?;
                if index_key_time(&key).is_none_or(|t| t > now) {
                    return Ok(None);
                }
                let id = std::str::from_utf8(&id_bytes)
                    .ok()
                    .and_then(|s| JobId::parse(s).ok());
                let claim = (&h.jobs, &h.due)
                    .transaction(|(jobs, due)| {
                        if due.remove(&key)?.is_none() {
                            return Ok(Claim::Lost);
                        }
                        let Some(id) = &id else {
                            return Ok(Claim::Dangling);
                        };
                        let mut rec = match read_tx(jobs, id) {
                            Ok(rec) if rec.state == State::Pending => rec,
                            Ok(_)
                            | Err(ConflictableTransactionError::Abort(QueueError::NotFound(_))) => {
                                return Ok(Claim::Dangling);
                            }
                            Err(e) => return Err(e),
                        };
                        rec.job.attempts = rec.job.attempts.saturating_add(1);
                        rec.state = State::Running { claimed_at: now };
                        write_tx(jobs, &rec)?;
                        Ok(Claim::Claimed(rec.job))
                    })
                    .map_err(tx_err)?;
                match claim {
                    // Another worker took it first; look again.
                    Claim::Lost => continue,
                    Claim::Dangling => {
                        tracing::error!(key = ?key, "removed a due-index entry without a pending job");
                        continue;
                    }
                    Claim::Claimed(job) => {
                        let c = &self.inner.counters;
                        decrement(&c.pending);
                        c.running.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(job));
                    }
                }
            }
        })
    }

    /// Records that a claimed job succeeded; the job is removed.
    pub fn complete(&self, id: &JobId) -> Result<(), QueueError> {
        let kind = self.write(|h| {
            let kind = h
                .jobs
                .transaction(|jobs| {
                    let rec = read_tx(jobs, id)?;
                    if !matches!(rec.state, State::Running { .. }) {
                        return Err(wrong_state(id, "running", rec.state));
                    }
                    jobs.remove(id.as_str())?;
                    Ok(rec.job.kind)
                })
                .map_err(tx_err)?;
            h.db.flush()?;
            Ok(kind)
        })?;
        let c = &self.inner.counters;
        decrement(&c.running);
        c.completed_total.fetch_add(1, Ordering::Relaxed);
        count("agv_jobs_completed_total", &kind);
        Ok(())
    }

    /// Records that a claimed job failed at `now`: it is retried after a backoff, or moves
    /// to the dead-letter list if that was its last attempt. `error` is kept either way.
    pub fn fail(&self, id: &JobId, error: &str, now: Timestamp) -> Result<Outcome, QueueError> {
        let (outcome, kind) = self.write(|h| {
            let done = (&h.jobs, &h.due, &h.dead)
                .transaction(|(jobs, due, dead)| {
                    let mut rec = read_tx(jobs, id)?;
                    if !matches!(rec.state, State::Running { .. }) {
                        return Err(wrong_state(id, "running", rec.state));
                    }
                    rec.job.last_error = Some(error.to_owned());
                    let outcome = if rec.job.attempts >= rec.job.max_attempts {
                        rec.state = State::Dead { died_at: now };
                        dead.insert(&index_key(now, rec.seq), id.as_str())?;
                        Outcome::Dead
                    } else {
                        let at = now.plus(backoff_delay(rec.job.attempts));
                        rec.job.run_at = at;
                        rec.state = State::Pending;
                        due.insert(&index_key(at, rec.seq), id.as_str())?;
                        Outcome::Retrying { at }
                    };
                    write_tx(jobs, &rec)?;
                    Ok((outcome, rec.job.kind))
                })
                .map_err(tx_err)?;
            h.db.flush()?;
            Ok(done)
        })?;
        let c = &self.inner.counters;
        decrement(&c.running);
        c.failures_total.fetch_add(1, Ordering::Relaxed);
        count("agv_jobs_failures_total", &kind);
        match outcome {
            Outcome::Dead => {
                c.dead.fetch_add(1, Ordering::Relaxed);
                c.dead_total.fetch_add(1, Ordering::Relaxed);
                count("agv_jobs_dead_total", &kind);
                tracing::error!(
                    job = %id,
                    kind,
                    error,
                    "job failed its last attempt and moved to the dead-letter list"
                );
            }
            _ => {
                c.pending.fetch_add(1, Ordering::Relaxed);
                c.retries_total.fetch_add(1, Ordering::Relaxed);
                count("agv_jobs_retries_total", &kind);
                tracing::warn!(job = %id, kind, error, "job failed; it will be retried");
            }
        }
        Ok(outcome)
    }

    /// The job with this id, in any state.
    pub fn get(&self, id: &JobId) -> Result<Option<Job>, QueueError> {
        self.read(|h| match h.jobs.get(id.as_str())? {
            Some(bytes) => Ok(Some(Record::decode(&bytes)?.job)),
            None => Ok(None),
        })
    }

    /// When the earliest pending job is due, if any job is pending.
    pub fn next_due(&self) -> Result<Option<Timestamp>, QueueError> {
        self.read(|h| match h.due.iter().next() {
            Some(entry) => Ok(index_key_time(&entry?.0)),
            None => Ok(None),
        })
    }

    /// The dead-letter list, oldest death first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.read(|h| {
            let mut out = Vec::new();
            for entry in h.dead.iter() {
                let (_, id) = entry?;
                let Some(bytes) = h.jobs.get(&id)? else {
                    continue;
                };
                let rec = Record::decode(&bytes)?;
                if let State::Dead { died_at } = rec.state {
                    out.push(DeadLetter {
                        job: rec.job,
                        died_at,
                    });
                }
            }
            Ok(out)
        })
    }

    /// Puts a dead job back in the queue, due now, with a fresh set of attempts. Its last
    /// error is kept until it fails again.
    pub fn retry_dead(&self, id: &JobId) -> Result<(), QueueError> {
        let now = Timestamp::now();
        self.write(|h| {
            (&h.jobs, &h.due, &h.dead)
                .transaction(|(jobs, due, dead)| {
                    let mut rec = read_tx(jobs, id)?;
                    let State::Dead { died_at } = rec.state else {
                        return Err(wrong_state(id, "dead", rec.state));
                    };
                    dead.remove(&index_key(died_at, rec.seq))?;
                    rec.job.attempts = 0;
                    rec.job.run_at = now;
                    rec.state = State::Pending;
                    due.insert(&index_key(now, rec.seq), id.as_str())?;
                    write_tx(jobs, &rec)?;
                    Ok(())
                })
                .map_err(tx_err)?;
            h.db.flush()?;
            Ok(())
        })?;
        let c = &self.inner.counters;
        decrement(&c.dead);
        c.pending.fetch_add(1, Ordering::Relaxed);
        self.inner.notify.notify_waiters();
        Ok(())
    }

    /// Deletes a dead job for good.
    pub fn discard_dead(&self, id: &JobId) -> Result<(), QueueError> {
        self.write(|h| {
            (&h.jobs, &h.dead)
                .transaction(|(jobs, dead)| {
                    let rec = read_tx(jobs, id)?;
                    let State::Dead { died_at } = rec.state else {
                        return Err(wrong_state(id, "dead", rec.state));
                    };
                    dead.remove(&index_key(died_at, rec.seq))?;
                    jobs.remove(id.as_str())?;
                    Ok(())
                })
                .map_err(tx_err)?;
            h.db.flush()?;
            Ok(())
        })?;
        decrement(&self.inner.counters.dead);
        Ok(())
    }

    /// Counts kept in memory: no disk access, safe to call on every scrape.
    pub fn stats(&self) -> QueueStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            pending: get(&c.pending),
            running: get(&c.running),
            dead: get(&c.dead),
            completed_total: get(&c.completed_total),
            retries_total: get(&c.retries_total),
            failures_total: get(&c.failures_total),
            dead_total: get(&c.dead_total),
        }
    }

    /// Bytes the database files take on disk (what the disk budget is compared with).
    pub fn size_on_disk(&self) -> Result<u64, QueueError> {
        self.read(|h| Ok(h.db.size_on_disk()?))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Notified whenever a job becomes runnable (enqueue, retry of a dead letter, a
    /// reopen after a storage failure).
    pub(crate) fn notify(&self) -> &Notify {
        &self.inner.notify
    }
}

/// Makes the database consistent after it was opened: deletes the `refused` jobs (their
/// enqueue reported an error), and puts every job that was running back to pending, or
/// on the dead-letter list if that was its last attempt. Returns the (pending, dead)
/// counts.
fn recover(
    h: &Handles,
    now: Timestamp,
    why: Interrupted,
    refused: &[JobId],
) -> Result<(u64, u64), QueueError> {
    for id in refused {
        let removed = (&h.jobs, &h.due, &h.dead)
            .transaction(|(jobs, due, dead)| {
                let Some(bytes) = jobs.get(id.as_str())? else {
                    return Ok(false);
                };
                let rec = Record::decode(&bytes).map_err(ConflictableTransactionError::Abort)?;
                match rec.state {
                    State::Pending => {
                        due.remove(&index_key(rec.job.run_at, rec.seq))?;
                    }
                    State::Dead { died_at } => {
                        dead.remove(&index_key(died_at, rec.seq))?;
                    }
                    State::Running { .. } => {}
                }
                jobs.remove(id.as_str())?;
                Ok(true)
            })
            .map_err(tx_err)?;
        if removed {
            tracing::warn!(
                job = %id,
                "removed a job whose enqueue had been refused when the storage failed: it reached the disk all the same"
            );
        }
    }
    let (mut pending, mut dead) = (0u64, 0u64);
    for entry in h.jobs.iter() {
        let (_, bytes) = entry?;
        let rec = Record::decode(&bytes)?;
        match rec.state {
            State::Pending => pending += 1,
            State::Dead { .. } => dead += 1,
            State::Running { .. } => {
                let id = rec.job.id.clone();
                let became_dead = (&h.jobs, &h.due, &h.dead)
                    .transaction(|(jobs, due, dead)| {
                        let mut rec = read_tx(jobs, &id)?;
                        let note = format!(
                            "{} while attempt {} of {} was running",
                            why.cause(),
                            rec.job.attempts,
                            rec.job.max_attempts
                        );
                        let died = rec.job.attempts >= rec.job.max_attempts;
                        if died {
                            rec.job.last_error = Some(format!("{note}; no attempts left"));
                            rec.state = State::Dead { died_at: now };
                            dead.insert(&index_key(now, rec.seq), id.as_str())?;
                        } else {
                            rec.job.last_error = Some(note);
                            rec.state = State::Pending;
                            due.insert(&index_key(rec.job.run_at, rec.seq), id.as_str())?;
                        }
                        write_tx(jobs, &rec)?;
                        Ok(died)
                    })
                    .map_err(tx_err)?;
                if became_dead {
                    dead += 1;
                } else {
                    pending += 1;
                }
                tracing::warn!(
                    job = %id,
                    kind = %rec.job.kind,
                    dead = became_dead,
                    "job was running when {}", why.cause()
                );
            }
        }
    }
    h.db.flush()?;
    Ok((pending, dead))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    pub(in crate::jobs) fn open(dir: &Path) -> Queue {
        Queue::open(&dir.join("queue"), QueueLimits::default()).unwrap()
    }

    /// A queue in a new temporary folder, which holds it while it lives.
    pub(in crate::jobs) fn new_queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path());
        (dir, queue)
    }

    /// The options of a job allowed `n` attempts.
    pub(in crate::jobs) fn attempts(n: u32) -> EnqueueOptions {
        EnqueueOptions {
            max_attempts: n,
            ..Default::default()
        }
    }

    /// Enqueues a job with the default options.
    pub(in crate::jobs) fn add(queue: &Queue, kind: &str, payload: serde_json::Value) -> JobId {
        queue
            .enqueue(kind, payload, EnqueueOptions::default())
            .unwrap()
    }

    #[test]
    fn job_ids_parse_back_and_reject_other_kinds() {
        let id = JobId::generate();
        assert_eq!(JobId::parse(id.as_str()).unwrap(), id);
        assert!(JobId::parse("ten_0123456789abcdef0123456789abcdef").is_err());
        assert!(JobId::parse("job_xyz").is_err());
    }

    #[test]
    fn index_keys_sort_by_time_then_sequence() {
        let a = index_key(Timestamp::from_millis(-5), 9);
        let b = index_key(Timestamp::from_millis(3), 1);
        let c = index_key(Timestamp::from_millis(3), 2);
        assert!(a < b && b < c);
        assert_eq!(index_key_time(&b), Some(Timestamp::from_millis(3)));
        assert_eq!(index_key_time(&a), Some(Timestamp::from_millis(-5)));
    }

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped() {
        for (attempts, base) in [(1u64, 1u64), (2, 2), (3, 4), (10, 512), (40, 3600)] {
            let d = backoff_delay(attempts as u32).as_millis() as u64;
            assert!(
                d >= base * 1000 && d <= base * 1100,
                "attempt {attempts}: {d} ms"
            );
        }
    }

    #[test]
    fn a_queued_job_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = add(&open(dir.path()), "export", json!({"n": 1}));
        let queue = open(dir.path());
        assert_eq!(queue.stats().pending, 1);
        let job = queue.claim(Timestamp::now()).unwrap().unwrap();
        assert_eq!(job.id, id);
        assert_eq!(job.payload, json!({"n": 1}));
        assert_eq!(job.attempts, 1);
    }

    #[test]
    fn a_job_claimed_but_never_finished_is_pending_again_after_reopen() {
        let (dir, queue) = new_queue();
        let id = add(&queue, "export", json!({}));
        assert!(queue.claim(Timestamp::now()).unwrap().is_some());
        assert_eq!(queue.stats().running, 1);
        drop(queue);

        let queue = open(dir.path());
        let stats = queue.stats();
        assert_eq!((stats.pending, stats.running), (1, 0));
        let job = queue.claim(Timestamp::now()).unwrap().unwrap();
        assert_eq!(job.id, id);
        assert_eq!(job.attempts, 2, "the interrupted attempt counts");
        assert!(
            job.last_error
                .unwrap()
                .contains("stopped while attempt 1 of 5")
        );
    }

    #[test]
    fn a_job_interrupted_on_its_last_attempt_is_dead_after_reopen() {
        let (dir, queue) = new_queue();
        queue.enqueue("export", json!({}), attempts(1)).unwrap();
        queue.claim(Timestamp::now()).unwrap().unwrap();
        drop(queue);

        let queue = open(dir.path());
        assert_eq!(queue.stats().dead, 1);
        assert!(queue.claim(Timestamp::now()).unwrap().is_none());
        let dead = queue.dead_letters().unwrap();
        assert!(
            dead[0]
                .job
                .last_error
                .as_deref()
                .unwrap()
                .contains("no attempts left")
        );
    }

    #[test]
    fn a_second_open_of_the_same_path_says_another_server_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let _queue = open(dir.path());
        let err = Queue::open(&dir.path().join("queue"), QueueLimits::default()).unwrap_err();
        assert!(matches!(err, QueueError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another agv-server"), "{err}");
    }

    #[test]
    fn a_path_that_is_a_file_cannot_be_opened_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("queue");
        std::fs::write(&file, b"not a database").unwrap();
        let err = Queue::open(&file, QueueLimits::default()).unwrap_err();
        assert!(
            err.to_string().contains("could not open the job queue"),
            "{err}"
        );
    }

    #[test]
    fn jobs_run_in_due_order_and_not_before_their_time() {
        let (_dir, queue) = new_queue();
        let now = Timestamp::now();
        let later = queue
            .enqueue(
                "a",
                json!(1),
                EnqueueOptions {
                    run_at: Some(now.plus_millis(60_000)),
                    ..Default::default()
                },
            )
            .unwrap();
        let first = add(&queue, "a", json!(2));
        let second = add(&queue, "a", json!(3));
        assert_eq!(
            queue.next_due().unwrap().map(|t| t <= Timestamp::now()),
            Some(true)
        );
        assert_eq!(queue.claim(Timestamp::now()).unwrap().unwrap().id, first);
        assert_eq!(queue.claim(Timestamp::now()).unwrap().unwrap().id, second);
        assert!(queue.claim(Timestamp::now()).unwrap().is_none());
        assert_eq!(
            queue.claim(now.plus_millis(60_000)).unwrap().unwrap().id,
            later
        );
    }

    #[test]
    fn two_concurrent_claimers_never_get_the_same_job() {
        let (_dir, queue) = new_queue();
        let total = 200;
        for i in 0..total {
            add(&queue, "a", json!(i));
        }
        let now = Timestamp::now();
        let claimers: Vec<_> = (0..4)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(job) = queue.claim(now).unwrap() {
                        got.push(job.id);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<JobId> = claimers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), total);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), total, "a job was claimed twice");
        assert_eq!(queue.stats().running, total as u64);
    }

    #[test]
    fn a_full_queue_refuses_new_jobs_and_keeps_the_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue");
        let limits = QueueLimits {
            max_jobs: Some(2),
            ..Default::default()
        };
        let queue = Queue::open(&path, limits).unwrap();
        let a = add(&queue, "a", json!(1));
        let b = add(&queue, "a", json!(2));
        let err = queue
            .enqueue("a", json!(3), EnqueueOptions::default())
            .unwrap_err();
        assert!(matches!(err, QueueError::Full { .. }), "{err}");
        assert!(err.to_string().contains("queue is full"), "{err}");
        assert!(queue.get(&a).unwrap().is_some() && queue.get(&b).unwrap().is_some());
        drop(queue);

        // The disk budget: reopen with a budget smaller than what the files already use.
        let limits = QueueLimits {
            max_disk_bytes: 1,
            max_jobs: None,
        };
        let queue = Queue::open(&path, limits).unwrap();
        let err = queue
            .enqueue("a", json!(3), EnqueueOptions::default())
            .unwrap_err();
        assert!(matches!(err, QueueError::Full { .. }), "{err}");
        assert!(err.to_string().contains("byte budget"), "{err}");
        assert_eq!(queue.stats().pending, 2);
        assert_eq!(queue.claim(Timestamp::now()).unwrap().unwrap().id, a);
    }

    #[test]
    fn completing_or_failing_a_job_that_is_not_running_is_refused() {
        let (_dir, queue) = new_queue();
        let id = add(&queue, "a", json!(1));
        assert!(matches!(
            queue.complete(&id),
            Err(QueueError::WrongState { .. })
        ));
        assert!(matches!(
            queue.fail(&id, "x", Timestamp::now()),
            Err(QueueError::WrongState { .. })
        ));
        assert!(matches!(
            queue.retry_dead(&id),
            Err(QueueError::WrongState { .. })
        ));
        let missing = JobId::generate();
        assert!(matches!(
            queue.complete(&missing),
            Err(QueueError::NotFound(_))
        ));
        assert_eq!(queue.stats().pending, 1);
    }

    #[test]
    fn outcomes_are_counted_in_metrics_by_kind() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (_dir, queue) = new_queue();
        metrics::with_local_recorder(&recorder, || {
            let flaky = queue.enqueue("flaky", json!(1), attempts(2)).unwrap();
            add(&queue, "fine", json!(2));
            let now = Timestamp::now();
            queue.claim(now).unwrap().unwrap();
            assert!(matches!(
                queue.fail(&flaky, "x", now).unwrap(),
                Outcome::Retrying { .. }
            ));
            let fine = queue.claim(now).unwrap().unwrap();
            queue.complete(&fine.id).unwrap();
            queue.claim(now.plus_millis(10_000)).unwrap().unwrap();
            assert_eq!(queue.fail(&flaky, "x", now).unwrap(), Outcome::Dead);
        });
        let text = handle.render();
        for line in [
            r#"agv_jobs_completed_total{kind="fine"} 1"#,
            r#"agv_jobs_retries_total{kind="flaky"} 1"#,
            r#"agv_jobs_failures_total{kind="flaky"} 2"#,
            r#"agv_jobs_dead_total{kind="flaky"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    #[test]
    fn a_dead_job_can_be_discarded() {
        let (dir, queue) = new_queue();
        let id = queue.enqueue("a", json!(1), attempts(1)).unwrap();
        queue.claim(Timestamp::now()).unwrap().unwrap();
        assert_eq!(
            queue.fail(&id, "boom", Timestamp::now()).unwrap(),
            Outcome::Dead
        );
        queue.discard_dead(&id).unwrap();
        assert!(queue.dead_letters().unwrap().is_empty());
        assert!(queue.get(&id).unwrap().is_none());
        assert_eq!(queue.stats().dead, 0);
        drop(queue);
        assert_eq!(open(dir.path()).stats(), QueueStats::default());
    }

    /// Leaves the queue as a failed write on a full disk does (sled's I/O error), with the
    /// first reopen due at `next_try`.
    fn break_storage(queue: &Queue, next_try: Instant) {
        let h = match &*queue.slot() {
            Slot::Open(h) => h.clone(),
            Slot::Failed(_) => panic!("the queue has failed already"),
        };
        queue.mark_failed(
            &h,
            "I/O error: No space left on device (os error 28)",
            next_try,
        );
        assert!(matches!(&*queue.slot(), Slot::Failed(_)));
    }

    fn reopen_due_now(queue: &Queue) {
        if let Slot::Failed(f) = &mut *queue.slot_mut() {
            f.next_try = Instant::now();
        }
    }

    #[test]
    fn sled_io_errors_are_reported_as_unavailable_and_say_what_to_do() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err = QueueError::from(sled::Error::Io(io));
        assert!(matches!(err, QueueError::Unavailable { .. }), "{err}");
        let text = err.to_string();
        for part in ["No space left", "free disk space", "no restart is needed"] {
            assert!(text.contains(part), "missing {part:?} in: {text}");
        }
        let other = QueueError::from(sled::Error::Unsupported("x".into()));
        assert!(matches!(other, QueueError::Storage(_)), "{other}");
    }

    #[test]
    fn a_failed_queue_refuses_work_keeps_reads_and_reopens_with_every_job() {
        let (dir, queue) = new_queue();
        let now = Timestamp::now();
        let not_yet = EnqueueOptions {
            run_at: Some(now.plus_millis(60_000)),
            ..Default::default()
        };
        let waiting = queue.enqueue("a", json!("waiting"), not_yet).unwrap();
        let doomed = queue.enqueue("a", json!("doomed"), attempts(1)).unwrap();
        let running = add(&queue, "a", json!("running"));
        let now = Timestamp::now();
        assert_eq!(queue.claim(now).unwrap().unwrap().id, doomed);
        assert_eq!(queue.claim(now).unwrap().unwrap().id, running);
        assert_eq!(
            (queue.stats().pending, queue.stats().running),
            (1, 2),
            "waiting is pending; doomed and running are running"
        );

        break_storage(&queue, Instant::now() + Duration::from_secs(3600));
        let err = queue
            .enqueue("a", json!("new"), EnqueueOptions::default())
            .unwrap_err();
        assert!(matches!(err, QueueError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(err.to_string().contains("no restart is needed"), "{err}");
        assert!(matches!(
            queue.check_capacity(),
            Err(QueueError::Unavailable { .. })
        ));
        assert!(matches!(
            queue.claim(now.plus_millis(3_600_000)),
            Err(QueueError::Unavailable { .. })
        ));
        assert!(matches!(
            queue.complete(&running),
            Err(QueueError::Unavailable { .. })
        ));
        // Reads are still answered by the failed database.
        assert!(queue.get(&waiting).unwrap().is_some());
        assert!(queue.next_due().unwrap().is_some());

        reopen_due_now(&queue);
        queue.check_capacity().expect("the queue reopened");
        let stats = queue.stats();
        assert_eq!(
            (stats.pending, stats.running, stats.dead),
            (2, 0, 1),
            "the running jobs are pending again or dead, as after a restart"
        );
        let dead = queue.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].job.id, doomed);
        assert!(
            dead[0].job.last_error.as_deref().unwrap().contains(
                "the job queue's storage failed while attempt 1 of 1 was running; no attempts left"
            ),
            "{:?}",
            dead[0].job.last_error
        );
        let again = queue.get(&running).unwrap().unwrap();
        assert_eq!(again.attempts, 1);
        assert!(
            again
                .last_error
                .unwrap()
                .contains("storage failed while attempt 1 of 5 was running")
        );
        // The interrupted worker's late report is refused, not double-counted.
        assert!(matches!(
            queue.complete(&running),
            Err(QueueError::WrongState { .. })
        ));
        let fresh = add(&queue, "a", json!("new"));
        let later = now.plus_millis(3_600_000);
        let mut claimed: Vec<JobId> = std::iter::from_fn(|| queue.claim(later).unwrap())
            .map(|job| job.id)
            .collect();
        claimed.sort();
        let mut expected = vec![waiting.clone(), running.clone(), fresh.clone()];
        expected.sort();
        assert_eq!(claimed, expected, "each job exactly once");
        drop(queue);

        // And all of it is on disk: nothing lost, nothing twice.
        let queue = open(dir.path());
        let stats = queue.stats();
        assert_eq!((stats.pending, stats.dead), (3, 1));
    }

    #[test]
    fn a_reopen_waits_until_no_operation_uses_the_failed_database() {
        let (_dir, queue) = new_queue();
        let id = add(&queue, "a", json!(1));
        break_storage(&queue, Instant::now());
        let in_use = queue.readable().unwrap();
        let err = queue.check_capacity().unwrap_err();
        assert!(
            err.to_string()
                .contains("the latest reopen failed: operations were still using"),
            "{err}"
        );
        // The failed database was given back: reads still work.
        assert!(queue.get(&id).unwrap().is_some());
        drop(in_use);
        reopen_due_now(&queue);
        queue.check_capacity().expect("the queue reopened");
        assert_eq!(queue.claim(Timestamp::now()).unwrap().unwrap().id, id);
    }

    #[test]
    fn a_job_whose_enqueue_reported_the_failure_is_removed_by_the_reopen() {
        let (dir, queue) = new_queue();
        let kept = add(&queue, "a", json!(1));
        // As if this enqueue's record reached the disk but its flush then failed: the
        // caller was told it was refused.
        let refused = add(&queue, "a", json!(2));
        queue.refused().push(refused.clone());
        break_storage(&queue, Instant::now());
        queue.check_capacity().expect("the queue reopened");
        assert!(queue.get(&refused).unwrap().is_none());
        assert!(queue.get(&kept).unwrap().is_some());
        assert_eq!(queue.stats().pending, 1);
        assert!(queue.refused().is_empty());
        drop(queue);
        assert_eq!(open(dir.path()).stats().pending, 1);
    }
}
