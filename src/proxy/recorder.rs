//! The call recorder: one writer at a time, which commits whatever has queued in one
//! transaction (group commit) and then releases the waiting requests.
//!
//! A request hands its record over and waits; the response — or a stream's final
//! `[DONE]` — is sent only after the commit, so an acknowledged call is never lost. While a
//! commit runs, new records pile up and go in the next one, so the cost of a commit is
//! shared by everyone who arrived during the previous one.
//!
//! The writer is a plain OS thread blocked on the queue, not a task: a record goes from the
//! request's task straight to the thread that commits it and the acknowledgement straight
//! back, with no runtime or blocking pool in between.
//!
//! Even those two hand-overs (a wake-up of the writer thread, then one of the request's
//! thread) were most of the recorder's share of the proxy's added latency at moderate load.
//! So a request that finds nothing queued and the store's writer free commits its own
//! record on its own thread, as a group of one ([`Recording::try_insert`], which never
//! waits: the writer lock is only tried). The writer is still one at a time — the store's
//! writer lock — and under load, when records queue, the thread commits them in groups as
//! before. Measured at 1,000 req/s (bench/README.md, the 2026-12-05 runs recorded in 294b470): the recorder's wait
//! under 100 µs for 80% of calls instead of 8%, and ~47 µs less CPU per call.
//!
//! [`Recording::try_insert`]: crate::store::Recording::try_insert

use crate::domain::CallRecord;
use crate::store::{DynRecording, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The most records one transaction takes.
const MAX_BATCH: usize = 1024;
/// Records waiting for the writer before `record` itself waits for room.
const QUEUE_CAPACITY: usize = 16_384;
/// A record that arrives sooner than this after the previous one goes to the writer
/// thread even when the writer is free. Calls are then coming faster than one every
/// ~2.5 single-call commits (about 4,000 a second), and a group of one per call would
/// spend the CPU that groups share: under saturation, own-thread commits of one record
/// each were an eighth of the server's CPU.
const OWN_COMMIT_MIN_GAP: Duration = Duration::from_micros(250);

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// What a call learns when the writer thread has ended.
const STOPPED: &str = "the call recorder has stopped; restart agv-server";

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(CallRecord, Ack)>,
    health: Arc<Health>,
    /// The writer thread has a group in hand (from taking it off the queue until its
    /// calls are answered): a request then queues its record rather than slip a group of
    /// one in between, which under load would split the groups.
    writing: Arc<AtomicBool>,
    /// For commits on the request's own thread.
    store: DynRecording,
    /// Whether records arrive far enough apart for own-thread commits.
    arrivals: Arc<Arrivals>,
}

/// When the latest record arrived: tells whether calls are spaced out enough that each
/// may commit its own record ([`OWN_COMMIT_MIN_GAP`]).
struct Arrivals {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the latest arrival; 0 before the first.
    latest: AtomicU64,
}

impl Arrivals {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            latest: AtomicU64::new(0),
        }
    }

    /// Notes an arrival at `at`; true when the previous one was at least
    /// [`OWN_COMMIT_MIN_GAP`] earlier (or there was none).
    fn spaced(&self, at: Instant) -> bool {
        let now = u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let previous = self.latest.swap(now, Ordering::Relaxed);
        previous == 0 || now.saturating_sub(previous) >= OWN_COMMIT_MIN_GAP.as_nanos() as u64
    }
}

/// How long `/ready` keeps reporting a failed commit when no commit has been tried since:
/// with no new calls there is nothing to learn from, and a load balancer that stopped
/// sending traffic must get a chance to try again.
pub const FAILURE_REPORTED_FOR: Duration = Duration::from_secs(30);

/// The outcome of the latest commit, for `/ready`. The writer touches the lock only when
/// a commit fails or the first one succeeds after a failure.
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    last_failure: Mutex<Option<(Instant, StoreError)>>,
}

impl Health {
    fn note(&self, outcome: Result<(), &StoreError>) {
        match outcome {
            Ok(()) => {
                // A load first: the usual case (nothing failed) writes nothing shared.
                if self.failing.load(Ordering::Relaxed)
                    && self.failing.swap(false, Ordering::Relaxed)
                {
                    *self.lock() = None;
                }
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                *self.lock() = Some((Instant::now(), e.clone()));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, StoreError)>> {
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Resolves once the writer thread has committed everything queued and ended.
pub struct RecorderDone(oneshot::Receiver<()>);

impl RecorderDone {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

impl Recorder {
    /// Starts the writer thread. It ends when every `Recorder` clone is dropped, after
    /// committing what was queued.
    pub fn start(store: DynRecording) -> std::io::Result<(Self, RecorderDone)> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done_rx) = oneshot::channel();
        let health = Arc::new(Health::default());
        let writer_health = health.clone();
        let writing = Arc::new(AtomicBool::new(false));
        let writer_writing = writing.clone();
        let own = store.clone();
        std::thread::Builder::new()
            .name("agv-recorder".into())
            .spawn(move || {
                writer(&store, rx, &writer_health, &writer_writing);
                let _ = done_tx.send(());
            })?;
        Ok((
            Self {
                tx,
                health,
                writing,
                store: own,
                arrivals: Arc::new(Arrivals::new(Instant::now())),
            },
            RecorderDone(done_rx),
        ))
    }

    /// Commits `record` — at once on this thread when nothing is queued and the writer is
    /// free, otherwise through the writer thread's queue — and returns once it is committed.
    pub async fn record(&self, record: CallRecord) -> Result<(), StoreError> {
        let started = Instant::now();
        let spaced = self.arrivals.spaced(started);
        // Calls spaced out, nothing queued (a record queued earlier must not wait behind
        // this one) and the writer thread idle.
        if spaced
            && self.tx.capacity() == self.tx.max_capacity()
            && !self.writing.load(Ordering::Relaxed)
            && let Some(Ok(())) = try_insert(&self.store, std::slice::from_ref(&record))
        {
            note_commit(1, started);
            metrics::histogram!("agv_recorder_wait_seconds")
                .record(started.elapsed().as_secs_f64());
            self.health.note(Ok(()));
            return Ok(());
        }
        // The writer was busy, or the commit failed: the writer thread tries (again), with
        // its handling of failures (one by one in a failed group, logging, `/ready`).
        let (ack, done) = oneshot::channel();
        self.tx
            .send((record, ack))
            .await
            .map_err(|_| StoreError::Unavailable(STOPPED.into()))?;
        let outcome = done.await.map_err(|_| {
            StoreError::Unavailable(
                "the call recorder stopped before committing; restart agv-server".into(),
            )
        })?;
        // What a call waits for its record, hand-overs and queueing included: the
        // recorder's share of the proxy's added latency.
        metrics::histogram!("agv_recorder_wait_seconds").record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Why the latest commit failed, when it did and no commit has succeeded since, within
    /// the last [`FAILURE_REPORTED_FOR`]; or that the writer has stopped.
    pub fn recent_failure(&self) -> Option<StoreError> {
        if self.tx.is_closed() {
            return Some(StoreError::Unavailable(STOPPED.into()));
        }
        if !self.health.failing.load(Ordering::Relaxed) {
            return None;
        }
        match &*self.health.lock() {
            Some((at, e)) if at.elapsed() < FAILURE_REPORTED_FOR => Some(e.clone()),
            _ => None,
        }
    }
}

fn writer(
    store: &DynRecording,
    mut rx: mpsc::Receiver<(CallRecord, Ack)>,
    health: &Health,
    writing: &AtomicBool,
) {
    let mut records: Vec<CallRecord> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<Ack> = Vec::with_capacity(MAX_BATCH);
    let mut log = FailureLog::default();
    // Blocks this thread (never a runtime's) until the first record of a batch arrives,
    // then takes whatever else is already waiting.
    while let Some(first) = rx.blocking_recv() {
        writing.store(true, Ordering::Relaxed);
        let mut next = Some(first);
        while let Some((record, ack)) = next {
            records.push(record);
            acks.push(ack);
            if records.len() == MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        let started = Instant::now();
        let size = records.len();
        let outcomes: Vec<Result<(), StoreError>> = match insert(store, &records) {
            Ok(()) => vec![Ok(()); size],
            // The store itself cannot write (a full disk, a database that is down): one
            // by one would fail the same way, only slower.
            Err(e @ (StoreError::Full(_) | StoreError::Unavailable(_))) => {
                vec![Err(e); size]
            }
            // One bad record must not fail its neighbours: retry them one by one.
            Err(e) if size > 1 => {
                tracing::warn!(error = %e, size, "group commit failed; committing the records one by one");
                records
                    .iter()
                    .map(|r| insert(store, std::slice::from_ref(r)))
                    .collect()
            }
            Err(e) => vec![Err(e)],
        };
        records.clear();
        note_commit(size, started);
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        let first_error = outcomes.iter().find_map(|o| o.as_ref().err());
        // Ready again as soon as anything commits; not ready when nothing did.
        match first_error {
            Some(e) if failed == size => health.note(Err(e)),
            _ => health.note(Ok(())),
        }
        if let Some(e) = first_error {
            metrics::counter!("agv_recorder_failures_total").increment(failed as u64);
            log.failed(e, failed);
        } else {
            log.committed();
        }
        for (ack, outcome) in acks.drain(..).zip(outcomes) {
            let _ = ack.send(outcome);
        }
        writing.store(false, Ordering::Relaxed);
        // Whatever arrives meanwhile waits in the queue and goes in the next commit.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.between_commits()))
            .is_err()
        {
            tracing::error!("the store's upkeep between commits panicked; the recorder goes on");
        }
    }
}

/// Commits `records`; a panic in the store becomes an error, so that it fails these
/// records instead of ending the writer thread (and with it every later call).
fn insert(store: &DynRecording, records: &[CallRecord]) -> Result<(), StoreError> {
    guarded(|| store.insert(records)).unwrap_or_else(Err)
}

/// [`insert`] on the caller's thread if the store's writer is free right now (`None` if not).
fn try_insert(store: &DynRecording, records: &[CallRecord]) -> Option<Result<(), StoreError>> {
    guarded(|| store.try_insert(records)).unwrap_or_else(|e| Some(Err(e)))
}

/// Runs `commit`, turning a panic in the store into the error that says so.
fn guarded<T>(commit: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(commit)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        StoreError::Database(format!(
            "the store panicked while committing call records: {what}"
        ))
    })
}

/// The metrics of one commit of `size` records that took from `started` until now.
fn note_commit(size: usize, started: Instant) {
    metrics::histogram!("agv_recorder_batch_size").record(size as f64);
    metrics::histogram!("agv_recorder_commit_seconds").record(started.elapsed().as_secs_f64());
}

/// How often a lasting failure (a full disk, a database that is down) is logged again.
const LOG_AGAIN_EVERY: Duration = Duration::from_secs(10);

/// Logs commit failures without flooding the log: the first failure at once, then a line
/// every [`LOG_AGAIN_EVERY`] with the number of records refused meanwhile, and one line
/// when commits work again. Lives on the writer thread only.
#[derive(Default)]
struct FailureLog {
    last_logged: Option<Instant>,
    refused_since_log: u64,
    refused_in_episode: u64,
    since: Option<Instant>,
}

impl FailureLog {
    fn failed(&mut self, e: &StoreError, records: usize) {
        self.refused_since_log += records as u64;
        self.refused_in_episode += records as u64;
        let since = *self.since.get_or_insert_with(Instant::now);
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < LOG_AGAIN_EVERY)
        {
            return;
        }
        tracing::error!(
            error = %e,
            refused = self.refused_since_log,
            failing_for_secs = since.elapsed().as_secs(),
            "call records could not be committed, so their calls were answered 503 instead; retrying with every new call"
        );
        self.last_logged = Some(Instant::now());
        self.refused_since_log = 0;
    }

    fn committed(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                refused = self.refused_in_episode,
                failed_for_secs = since.elapsed().as_secs(),
                "call records are committed again"
            );
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Arrivals, OWN_COMMIT_MIN_GAP};
    use std::time::{Duration, Instant};

    #[test]
    fn only_calls_spaced_out_commit_their_own_record() {
        let epoch = Instant::now();
        let arrivals = Arrivals::new(epoch);
        let at = |us: u64| epoch + Duration::from_micros(us);
        let gap = OWN_COMMIT_MIN_GAP.as_micros() as u64;
        // The first call, however early, and calls a millisecond apart (1,000 req/s).
        assert!(arrivals.spaced(at(0)));
        assert!(arrivals.spaced(at(1_000)));
        assert!(arrivals.spaced(at(2_000)));
        // 10,000 req/s: every call but the first of the burst goes to the writer thread.
        assert!(!arrivals.spaced(at(2_100)));
        assert!(!arrivals.spaced(at(2_200)));
        // Measured from the latest arrival, not the latest own commit.
        assert!(!arrivals.spaced(at(2_200 + gap - 1)));
        assert!(arrivals.spaced(at(2_200 + gap - 1 + gap)));
    }
}
