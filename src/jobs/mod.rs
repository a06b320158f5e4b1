//! Background work: a durable job queue, the workers that drain it and the cron scheduler
//! that feeds it.
//!
//! The queue lives in its own sled database in the data dir (`<data>/queue`), separate
//! from the main store, so background work survives restarts without touching SQLite or
//! Postgres. sled is an implementation detail of [`queue`]: nothing outside that file
//! names it, so it can be replaced without touching callers. This module knows nothing
//! about HTTP or about what individual jobs do; the server registers handlers by kind.

pub mod queue;
pub mod scheduler;
pub mod worker;

pub use queue::{
    DeadLetter, EnqueueOptions, Job, JobId, Outcome, Queue, QueueError, QueueLimits, QueueStats,
    WeakQueue, backoff_delay,
};
pub use scheduler::{
    DEFAULT_HOUSEKEEPING_CRON, HOUSEKEEPING, ScheduleEntry, SchedulerError, SchedulerHandle,
    start_scheduler,
};
pub use worker::{HandlerFuture, Handlers, Step, run_one, spawn_workers};
