//! Tasks: evidence work too long for one HTTP request (replaying every call of an incident,
//! a large export), run by the job queue and followed through `GET /v1/tasks/{id}`.

use super::{ParseError, TaskId, TenantId, Timestamp};
use serde::Serialize;

/// What a task does.
pub mod kind {
    /// Replay every call of an incident (`params`: incident_id, mode, key_id).
    pub const INCIDENT_REPLAY: &str = "incident.replay";
    /// Build an incident export (`params`: incident_id, format).
    pub const INCIDENT_EXPORT: &str = "incident.export";
}

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum TaskStatus {
        Queued => "queued",
        Running => "running",
        Done => "done",
        Failed => "failed",
    }
}

impl TaskStatus {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Self::from_name(s).ok_or_else(|| ParseError::new(format!("unknown task status '{s}'")))
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// A task as stored, without its output file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub id: TaskId,
    pub tenant_id: TenantId,
    pub kind: String,
    pub status: TaskStatus,
    /// Who asked: `key:<key id>`, `user:<user id>`.
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub params: serde_json::Value,
    pub progress_done: i64,
    pub progress_total: i64,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Set when the task produced a file (an export).
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

impl Task {
    pub fn new(
        tenant: &TenantId,
        kind: &str,
        created_by: String,
        params: serde_json::Value,
        now: Timestamp,
    ) -> Self {
        Self {
            id: TaskId::generate(),
            tenant_id: tenant.clone(),
            kind: kind.to_owned(),
            status: TaskStatus::Queued,
            created_by,
            created_at: now,
            updated_at: now,
            params,
            progress_done: 0,
            progress_total: 0,
            result: None,
            error: None,
            content_type: None,
            filename: None,
        }
    }
}

/// A change to a task: what `update_task` writes (fields left `None` keep their value).
#[derive(Debug, Clone, Default)]
pub struct TaskUpdate {
    pub status: Option<TaskStatus>,
    pub progress: Option<(i64, i64)>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// content type, file name and the file's bytes.
    pub output: Option<(String, String, Vec<u8>)>,
}
