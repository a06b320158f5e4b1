//! Tasks (see `domain::task`), written once for both backends (see [`super::sql`]). Every
//! read takes the tenant id: another tenant's task is NotFound. The output file is kept as
//! base64 text so both backends store it the same way and a backup carries it.

use super::sql::{Cells, Db, Param, SqlRow};
use super::{StoreError, StoreResult};
use crate::domain::task::{Task, TaskStatus, TaskUpdate};
use crate::domain::{TaskId, TenantId, Timestamp};
use base64::Engine;

const COLUMNS: &str = "id, tenant_id, kind, status, created_by, created_at, updated_at, params, progress_done, progress_total, result, error, content_type, filename";

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    super::sql::bad(&format!("task {what}"), e)
}

fn json(s: Option<String>) -> StoreResult<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| bad("holds bad JSON", e)))
        .transpose()
}

fn task_from(row: &SqlRow) -> StoreResult<Task> {
    let c = Cells::new(row, "task");
    Ok(Task {
        id: TaskId::parse(&c.text(0)?).map_err(|e| bad("has a bad id", e))?,
        tenant_id: TenantId::parse(&c.text(1)?).map_err(|e| bad("has a bad tenant", e))?,
        kind: c.text(2)?,
        status: TaskStatus::parse(&c.text(3)?).map_err(|e| bad("has a bad status", e))?,
        created_by: c.text(4)?,
        created_at: Timestamp::from_millis(c.int(5)?),
        updated_at: Timestamp::from_millis(c.int(6)?),
        params: json(Some(c.text(7)?))?.unwrap_or_default(),
        progress_done: c.int(8)?,
        progress_total: c.int(9)?,
        result: json(c.opt_text(10)?)?,
        error: c.opt_text(11)?,
        content_type: c.opt_text(12)?,
        filename: c.opt_text(13)?,
    })
}

/// An unknown tenant is NotFound.
pub(super) fn insert(db: &mut dyn Db, t: &Task) -> StoreResult<()> {
    super::tenants::require(db, &t.tenant_id)?;
    let params = t.params.to_string();
    let result = t.result.as_ref().map(ToString::to_string);
    db.execute(
        &format!(
            "INSERT INTO tasks ({COLUMNS}, output) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL)"
        ),
        &[
            Param::Text(t.id.as_str()),
            Param::Text(t.tenant_id.as_str()),
            Param::Text(&t.kind),
            Param::Text(t.status.as_str()),
            Param::Text(&t.created_by),
            Param::BigInt(t.created_at.millis()),
            Param::BigInt(t.updated_at.millis()),
            Param::Text(&params),
            Param::BigInt(t.progress_done),
            Param::BigInt(t.progress_total),
            Param::OptText(result.as_deref()),
            Param::OptText(t.error.as_deref()),
            Param::OptText(t.content_type.as_deref()),
            Param::OptText(t.filename.as_deref()),
        ],
    )
    .map_err(|e| super::rows::explain_conflict(e, || format!("task {} exists already", t.id)))?;
    Ok(())
}

/// Keeps two instances from starting the same work at once (see [`insert_alone`]).
const START_LOCK: i64 = 0x6167_765f_7461_736b;

/// Stores `t` unless a queued or running task of its tenant and kind has the same
/// `params[key]`; then stores nothing and returns that task.
pub(super) fn insert_alone(db: &mut dyn Db, t: &Task, key: &str) -> StoreResult<Option<Task>> {
    db.serialize(START_LOCK)?;
    let running = db.query(
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE tenant_id = $1 AND kind = $2 AND status IN ('queued', 'running')"
        ),
        &[Param::Text(t.tenant_id.as_str()), Param::Text(&t.kind)],
    )?;
    let same = t.params.get(key);
    for row in &running {
        let other = task_from(row)?;
        if same.is_some() && other.params.get(key) == same {
            return Ok(Some(other));
        }
    }
    insert(db, t).map(|()| None)
}

pub(super) fn get(db: &mut dyn Db, tenant: &TenantId, id: &TaskId) -> StoreResult<Task> {
    super::sql::one(
        db,
        &format!("SELECT {COLUMNS} FROM tasks WHERE tenant_id = $1 AND id = $2"),
        &[Param::Text(tenant.as_str()), Param::Text(id.as_str())],
        task_from,
    )
}

/// The tenant's tasks, newest first.
pub(super) fn list(db: &mut dyn Db, tenant: &TenantId, limit: u32) -> StoreResult<Vec<Task>> {
    super::sql::all(
        db,
        &format!(
            "SELECT {COLUMNS} FROM tasks WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ),
        &[
            Param::Text(tenant.as_str()),
            Param::BigInt(i64::from(limit)),
        ],
        task_from,
    )
}

/// Applies `u` to the task; returns the task as it is now. NotFound when there is no such
/// task of the tenant.
pub(super) fn update(
    db: &mut dyn Db,
    tenant: &TenantId,
    id: &TaskId,
    u: &TaskUpdate,
    at: Timestamp,
) -> StoreResult<Task> {
    let current = get(db, tenant, id)?;
    let status = u.status.unwrap_or(current.status);
    let (done, total) = u
        .progress
        .unwrap_or((current.progress_done, current.progress_total));
    let result = u
        .result
        .as_ref()
        .or(current.result.as_ref())
        .map(ToString::to_string);
    let error = u.error.clone().or(current.error.clone());
    let (content_type, filename, output) = match &u.output {
        Some((ct, name, bytes)) => (
            Some(ct.clone()),
            Some(name.clone()),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
        None => (current.content_type.clone(), current.filename.clone(), None),
    };
    let mut sql = String::from(
        "UPDATE tasks SET status = $3, progress_done = $4, progress_total = $5, result = $6, error = $7, content_type = $8, filename = $9, updated_at = $10",
    );
    let mut args = vec![
        Param::Text(tenant.as_str()),
        Param::Text(id.as_str()),
        Param::Text(status.as_str()),
        Param::BigInt(done),
        Param::BigInt(total),
        Param::OptText(result.as_deref()),
        Param::OptText(error.as_deref()),
        Param::OptText(content_type.as_deref()),
        Param::OptText(filename.as_deref()),
        Param::BigInt(at.millis()),
    ];
    if let Some(out) = output.as_deref() {
        sql.push_str(", output = $11");
        args.push(Param::Text(out));
    }
    sql.push_str(" WHERE tenant_id = $1 AND id = $2");
    db.execute(&sql, &args)?;
    get(db, tenant, id)
}

/// The task's output file: content type, file name and bytes. NotFound when the task does
/// not exist or produced no file (yet).
pub(super) fn output(
    db: &mut dyn Db,
    tenant: &TenantId,
    id: &TaskId,
) -> StoreResult<(String, String, Vec<u8>)> {
    let rows = db.query(
        "SELECT content_type, filename, output FROM tasks WHERE tenant_id = $1 AND id = $2 AND output IS NOT NULL",
        &[Param::Text(tenant.as_str()), Param::Text(id.as_str())],
    )?;
    let row = rows.first().ok_or(StoreError::NotFound)?;
    let c = Cells::new(row, "task output");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c.text(2)?)
        .map_err(|e| bad("output is not base64", e))?;
    Ok((
        c.opt_text(0)?.unwrap_or_default(),
        c.opt_text(1)?.unwrap_or_default(),
        bytes,
    ))
}
