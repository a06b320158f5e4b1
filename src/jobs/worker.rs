//! Running jobs: a registry of handlers by job kind, [`run_one`] which performs exactly
//! one step (claim, run, record the outcome), and a pool of workers that loops it.
//!
//! `run_one` takes the current time as an argument so tests drain the queue step by step
//! and test backoff without sleeping. Handlers run on the async runtime, each in its own
//! task so that a panicking handler fails its job instead of killing the worker. This
//! module must not touch the queue's storage directly; it only uses [`Queue`]'s methods.

use super::queue::{Job, JobId, Outcome, Queue, QueueError};
use crate::domain::Timestamp;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a handler returns: `Err` carries a message saying what went wrong, which is kept
/// on the job as its `last_error` and shown to operators.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type Handler = Arc<dyn Fn(Job) -> HandlerFuture + Send + Sync>;

/// How long an idle worker sleeps before looking again when nothing wakes it; a safety
/// net only, since enqueue wakes idle workers and they also wake for the next due job.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long a worker waits before trying again after the queue itself failed.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Handlers by job kind. Cheap to clone.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Handler>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<&str> = self.kinds().collect();
        kinds.sort_unstable();
        f.debug_struct("Handlers").field("kinds", &kinds).finish()
    }
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler for `kind`, replacing any earlier one.
    ///
    /// ```ignore
    /// handlers.register("housekeeping", move |job| {
    ///     let store = store.clone();
    ///     async move { store.sweep(&job.payload).map_err(|e| e.to_string()) }
    /// });
    /// ```
    pub fn register<F, Fut>(&mut self, kind: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        self.by_kind.insert(kind.into(), handler);
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.by_kind.keys().map(String::as_str)
    }

    fn get(&self, kind: &str) -> Option<Handler> {
        self.by_kind.get(kind).cloned()
    }
}

/// The result of one [`run_one`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No job was due.
    Empty,
    /// One job ran.
    Done { id: JobId, outcome: Outcome },
}

/// Claims the next job due at `now`, runs its handler and records the outcome. A failed
/// attempt's backoff counts from `now`. A job whose kind has no handler fails like any
/// other, so a misconfigured server ends up with visible dead letters, not lost jobs.
pub async fn run_one(
    queue: &Queue,
    handlers: &Handlers,
    now: Timestamp,
) -> Result<Step, QueueError> {
    // Claiming writes, and after a storage failure it is what reopens the queue's
    // database: keep both off the runtime's threads.
    let q = queue.clone();
    let claimed = tokio::task::spawn_blocking(move || q.claim(now))
        .await
        .map_err(|e| QueueError::Storage(format!("claiming the next job did not finish: {e}")))?;
    let Some(job) = claimed? else {
        return Ok(Step::Empty);
    };
    let id = job.id.clone();
    let kind = job.kind.clone();
    let span = tracing::info_span!("job", job = %id, kind = %kind, attempt = job.attempts);
    let result = match handlers.get(&kind) {
        None => Err(format!(
            "no handler is registered for job kind '{kind}': this agv-server does not know how to run it. Upgrade to a version that does, then retry the job from the dead-letter list"
        )),
        Some(handler) => {
            // Its own task, so a panic becomes this job's failure instead of the worker's end.
            match tokio::spawn(tracing::Instrument::instrument(handler(job), span.clone())).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => {
                    Err(format!("the handler panicked: {}", panic_message(e)))
                }
                Err(e) => Err(format!("the handler was cancelled: {e}")),
            }
        }
    };
    // Recording the outcome waits for a disk flush; keep that off the runtime's threads.
    let (q, job_id) = (queue.clone(), id.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        match result {
            Ok(()) => {
                q.complete(&job_id)?;
                tracing::info!("job succeeded");
                Ok(Outcome::Succeeded)
            }
            Err(error) => q.fail(&job_id, &error, now),
        }
    })
    .await
    .map_err(|e| {
        QueueError::Storage(format!(
            "recording the outcome of job {id} did not finish: {e}"
        ))
    })??;
    Ok(Step::Done { id, outcome })
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Starts `count` workers that run jobs until `shutdown` turns `true` (or its sender is
/// dropped). A worker busy with a job finishes it first. The returned handle completes
/// when every worker has stopped.
pub fn spawn_workers(
    queue: Queue,
    handlers: Handlers,
    count: usize,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..count.max(1) {
        set.spawn(worker_loop(
            worker,
            queue.clone(),
            handlers.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(async move {
        while let Some(res) = set.join_next().await {
            if let Err(e) = res {
                tracing::error!(error = %e, "a job worker stopped abnormally");
            }
        }
    })
}

/// Logs why the queue failed a worker and returns how long to pause. While its storage
/// is failing the queue logs that once itself, and each pause ends with another try, which
/// is what reopens the queue when no request asks for it.
fn queue_failed(worker: usize, e: &QueueError) -> Duration {
    match e {
        QueueError::Unavailable { .. } => {
            tracing::debug!(worker, error = %e, "job worker waits for the queue's storage");
        }
        _ => tracing::error!(worker, error = %e, "job worker could not use the queue"),
    }
    ERROR_PAUSE
}

async fn worker_loop(
    worker: usize,
    queue: Queue,
    handlers: Handlers,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::debug!(worker, "job worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Registered before looking at the queue, so an enqueue between the look and the
        // wait still wakes this worker.
        let notified = queue.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let wait = match run_one(&queue, &handlers, Timestamp::now()).await {
            Ok(Step::Done { .. }) => continue,
            Ok(Step::Empty) => match queue.next_due() {
                Ok(Some(at)) => {
                    let ms = at.millis().saturating_sub(Timestamp::now().millis()).max(0);
                    Duration::from_millis(ms as u64).min(IDLE_POLL)
                }
                Ok(None) => IDLE_POLL,
                Err(e) => queue_failed(worker, &e),
            },
            Err(e) => queue_failed(worker, &e),
        };
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::debug!(worker, "job worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::queue::tests::{add, attempts, new_queue};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn failing() -> Handlers {
        let mut h = Handlers::new();
        h.register("flaky", |job: Job| async move {
            Err(format!("attempt {} failed", job.attempts))
        });
        h
    }

    /// What [`run_one`] reports when job `id` ran with `outcome`.
    fn done(id: &JobId, outcome: Outcome) -> Step {
        Step::Done {
            id: id.clone(),
            outcome,
        }
    }

    #[tokio::test]
    async fn an_enqueued_job_runs_once_and_succeeds() {
        let (_dir, queue) = new_queue();
        let seen = Arc::new(AtomicUsize::new(0));
        let mut handlers = Handlers::new();
        let s = seen.clone();
        handlers.register("count", move |job: Job| {
            let s = s.clone();
            async move {
                assert_eq!(job.payload, json!({"n": 7}));
                s.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
        let id = add(&queue, "count", json!({"n": 7}));
        let now = Timestamp::now();
        let step = run_one(&queue, &handlers, now).await.unwrap();
        assert_eq!(step, done(&id, Outcome::Succeeded));
        assert_eq!(run_one(&queue, &handlers, now).await.unwrap(), Step::Empty);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert!(
            queue.get(&id).unwrap().is_none(),
            "a finished job is removed"
        );
        assert_eq!(queue.stats().completed_total, 1);
    }

    #[tokio::test]
    async fn a_failed_job_is_retried_after_its_backoff_and_dies_after_the_last_attempt() {
        let (_dir, queue) = new_queue();
        let handlers = failing();
        let id = queue.enqueue("flaky", json!({}), attempts(3)).unwrap();

        let mut now = Timestamp::now();
        for attempt in 1..=2 {
            let Step::Done {
                outcome: Outcome::Retrying { at },
                ..
            } = run_one(&queue, &handlers, now).await.unwrap()
            else {
                panic!("attempt {attempt} should be retried");
            };
            assert!(at.millis() - now.millis() >= 1000 * (1 << (attempt - 1)));
            let one_ms_early = at.plus_millis(-1);
            assert_eq!(
                run_one(&queue, &handlers, one_ms_early).await.unwrap(),
                Step::Empty,
                "ran before its backoff"
            );
            now = at;
        }
        let step = run_one(&queue, &handlers, now).await.unwrap();
        assert_eq!(step, done(&id, Outcome::Dead));
        assert_eq!(
            run_one(&queue, &handlers, now.plus_millis(10_000_000))
                .await
                .unwrap(),
            Step::Empty
        );

        let dead = queue.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].job.id, id);
        assert_eq!(dead[0].job.attempts, 3);
        assert_eq!(dead[0].job.last_error.as_deref(), Some("attempt 3 failed"));
        let stats = queue.stats();
        assert_eq!((stats.pending, stats.running, stats.dead), (0, 0, 1));
        assert_eq!(
            (stats.failures_total, stats.retries_total, stats.dead_total),
            (3, 2, 1)
        );
    }

    #[tokio::test]
    async fn a_dead_job_put_back_runs_again_with_fresh_attempts() {
        let (_dir, queue) = new_queue();
        let id = queue.enqueue("flaky", json!({}), attempts(1)).unwrap();
        let step = run_one(&queue, &failing(), Timestamp::now()).await.unwrap();
        assert_eq!(step, done(&id, Outcome::Dead));

        queue.retry_dead(&id).unwrap();
        assert!(queue.dead_letters().unwrap().is_empty());
        let job = queue.get(&id).unwrap().unwrap();
        assert_eq!(job.attempts, 0);
        assert_eq!(
            job.last_error.as_deref(),
            Some("attempt 1 failed"),
            "the last error stays visible"
        );

        let mut fixed = Handlers::new();
        fixed.register("flaky", |_job: Job| async { Ok(()) });
        let step = run_one(&queue, &fixed, Timestamp::now()).await.unwrap();
        assert_eq!(step, done(&id, Outcome::Succeeded));
        assert_eq!(queue.stats().dead, 0);
    }

    #[tokio::test]
    async fn a_missing_or_panicking_handler_fails_its_job_with_a_clear_error_and_the_worker_carries_on()
     {
        let mut panicking = Handlers::new();
        panicking.register("boom", |_job: Job| async { panic!("kaboom") });
        for (kind, handlers, error) in [
            (
                "mystery",
                Handlers::new(),
                "no handler is registered for job kind 'mystery'",
            ),
            ("boom", panicking, "kaboom"),
        ] {
            let (_dir, queue) = new_queue();
            let id = queue.enqueue(kind, json!({}), attempts(1)).unwrap();
            let step = run_one(&queue, &handlers, Timestamp::now()).await.unwrap();
            assert_eq!(step, done(&id, Outcome::Dead), "{kind}");
            let dead = queue.dead_letters().unwrap();
            let last_error = dead[0].job.last_error.as_deref().unwrap();
            assert!(last_error.contains(error), "{kind}: {last_error}");
        }
    }

    #[tokio::test]
    async fn stats_count_pending_running_and_dead_jobs() {
        let (_dir, queue) = new_queue();
        queue.enqueue("flaky", json!(1), attempts(1)).unwrap();
        add(&queue, "flaky", json!(2));
        add(&queue, "flaky", json!(3));
        assert_eq!(queue.stats().pending, 3);

        let now = Timestamp::now();
        run_one(&queue, &failing(), now).await.unwrap(); // dies
        run_one(&queue, &failing(), now).await.unwrap(); // retrying later
        queue.claim(now).unwrap().unwrap(); // running
        let stats = queue.stats();
        assert_eq!((stats.pending, stats.running, stats.dead), (1, 1, 1));
        assert_eq!(
            (stats.failures_total, stats.retries_total, stats.dead_total),
            (2, 1, 1)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_pool_runs_an_enqueued_job_and_shuts_down_cleanly() {
        let (_dir, queue) = new_queue();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let mut handlers = Handlers::new();
        let r = release.clone();
        handlers.register("ping", move |job: Job| {
            let (started_tx, release) = (started_tx.clone(), r.clone());
            async move {
                let _ = started_tx.send(job.id);
                // Holds the job until the test lets go, so shutdown arrives mid-job.
                let _permit = release.acquire().await.map_err(|e| e.to_string())?;
                Ok(())
            }
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let pool = spawn_workers(queue.clone(), handlers, 2, stop_rx);

        // Let the workers go idle; the enqueue must wake them well before their idle poll.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = add(&queue, "ping", json!({}));
        let started = tokio::time::timeout(IDLE_POLL / 2, started_rx.recv()).await;
        assert_eq!(
            started.unwrap().unwrap(),
            id,
            "an idle worker was not woken by enqueue"
        );

        stop_tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !pool.is_finished(),
            "the pool stopped before its running job finished"
        );
        release.add_permits(1);
        tokio::time::timeout(Duration::from_secs(5), pool)
            .await
            .unwrap()
            .unwrap();

        let stats = queue.stats();
        assert_eq!(
            (stats.completed_total, stats.running, stats.pending),
            (1, 0, 0)
        );
    }
}
