//! PLACEHOLDER replaced by the jobs branch (same API).
#![allow(
    dead_code,
    unused_variables,
    clippy::unused_async,
    clippy::new_without_default
)]
use std::sync::Arc;
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueLimits {
    pub max_disk_bytes: u64,
}
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueStats {
    pub pending: u64,
    pub running: u64,
    pub dead: u64,
}
#[derive(Debug, thiserror::Error)]
#[error("queue")]
pub struct QueueError;
pub struct Queue;
impl Queue {
    pub fn open(p: &std::path::Path, l: QueueLimits) -> Result<Queue, QueueError> {
        Ok(Queue)
    }
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        Ok(QueueStats::default())
    }
}
pub struct Job;
pub struct Handlers;
impl Handlers {
    pub fn new() -> Self {
        Handlers
    }
    pub fn register<F, Fut>(&mut self, kind: &str, f: F)
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
    }
}
pub fn spawn_workers(
    q: Arc<Queue>,
    h: Handlers,
    n: usize,
    s: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {})
}
pub mod scheduler {
    pub const HOUSEKEEPING: &str = "housekeeping";
    pub fn validate_cron(expr: &str) -> Result<(), String> {
        if expr.split_whitespace().count() == 6 {
            Ok(())
        } else {
            Err("expected 6 fields".into())
        }
    }
    pub struct ScheduleEntry {
        pub name: String,
        pub cron: String,
        pub kind: String,
        pub payload: serde_json::Value,
    }
    pub struct SchedulerHandle;
    impl SchedulerHandle {
        pub async fn shutdown(&mut self) {}
    }
    pub async fn start_scheduler(
        q: std::sync::Arc<super::Queue>,
        e: Vec<ScheduleEntry>,
    ) -> Result<SchedulerHandle, String> {
        Ok(SchedulerHandle)
    }
}
