//! Logical export and import of whole tables, for backups (see `ops::backup`): the same
//! row format on both backends, so a backup of one restores into the other.
//!
//! A row is a list of JSON values in the table's column order: `null`, integers, floats
//! and strings; booleans are written as 0/1 (SQLite has none), and nothing else occurs in
//! agv-server's schema. The export reads every table in one snapshot — a read transaction
//! on SQLite (WAL lets writers go on), `REPEATABLE READ READ ONLY` on Postgres — so the
//! tables agree with each other and no writer waits. The import writes everything in one
//! transaction into a database that must hold no rows yet.

use super::sql::{self, Cells, Db, Param};
use super::{StoreError, StoreResult, changes};
use crate::domain::TenantId;
use serde_json::Value;

/// The tables a backup holds, parents before children (foreign keys), and what only the
/// current schema version knows. Derived tables (the text index and its bookkeeping) are
/// left out and rebuilt after a restore; the migration ledger is made by the restore's own
/// migrations.
pub const TABLES: &[&str] = &[
    "tenants",
    "api_keys",
    "users",
    "sessions",
    "changes",
    "calls",
    "freeze_events",
    "tenant_policies",
    "tenant_upstreams",
    "instance_upstream",
    "incidents",
    "incident_signals",
    "incident_events",
    "demo_tenants",
    "alert_routes",
    "alert_deliveries",
    "replays",
    "certificates",
    "chain_heads",
    "audit_entries",
    "tasks",
    "invitations",
];

/// Tables (and one column) that are derived from the others and rebuilt, never backed up.
pub const DERIVED_TABLES: &[&str] = &[
    "agv_schema_migrations",
    "call_search_source",
    "call_search",
    "call_search_state",
    // Which instance ran which scheduled run: coordination, not data.
    "schedule_claims",
    // What is left of each shared rate limit and budget: coordination, rebuilt from use.
    "shared_quotas",
];
/// Columns that only one backend has and that are derived (Postgres' search sequence).
pub const DERIVED_COLUMNS: &[(&str, &str)] = &[("calls", "search_seq")];

/// The name prefixes of a tenant's shared quota rows (see `guard::shared`): its budgets,
/// its tenant rate limits and its keys' rate limits.
fn quota_prefixes(tenant: &str, keys: &[String]) -> Vec<String> {
    use crate::domain::quota;
    let mut out = vec![
        quota::budget_prefix(tenant),
        quota::tenant_rate_prefix(tenant),
    ];
    out.extend(keys.iter().map(|k| quota::key_rate_prefix(k)));
    out
}

/// Rows per batch handed to the sink and to the import.
pub const BATCH: usize = 1_000;

/// One batch of a table's rows. The first batch of every table comes with its columns,
/// even when the table is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct TableBatch {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// True for the first batch of the table.
    pub first: bool,
}

/// Columns as a quoted SQL list: `"a", "b"`.
fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl TableBatch {
    /// The backup has a column this schema lacks (made by a newer version).
    fn unknown_column(&self, column: &str) -> StoreError {
        StoreError::Database(format!(
            "the backup's table '{}' has a column '{column}' this version does not know; restore with the agv-server version that made the backup",
            self.table
        ))
    }

    /// A row holds one value for each column, or the backup is broken.
    fn check_row(&self, row: &[Value]) -> StoreResult<()> {
        if row.len() == self.columns.len() {
            return Ok(());
        }
        Err(StoreError::Database(format!(
            "a row of '{}' in the backup has {} values for {} columns",
            self.table,
            row.len(),
            self.columns.len()
        )))
    }
}

pub type Sink<'a> = dyn FnMut(TableBatch) -> StoreResult<()> + 'a;

/// The rows of `table` that belong to one tenant: a condition on the tenant id, which is
/// the statement's only parameter, spelled `{t}` (each backend puts its placeholder in).
pub fn tenant_condition(table: &str) -> &'static str {
    match table {
        "tenants" => "id = {t}",
        "sessions" => "user_id IN (SELECT id FROM users WHERE tenant_id = {t})",
        // The instance's change feed holds ids only; a tenant's export leaves it out.
        "changes" | "instance_upstream" => "{t} IS NULL",
        "chain_heads" => "chain IN ('calls/' || {t}, 'audit/' || {t})",
        _ => "tenant_id = {t}",
    }
}

/// Deletes every row of the tenant (children first), its shared quotas, and records the
/// changes that make every instance forget it (see [`changes::erased`]); returns the rows
/// deleted per table. Its text-index entries go in the same transaction (see
/// `Store::erase_tenant`).
pub(super) fn erase(db: &mut dyn Db, tenant: &TenantId) -> StoreResult<Vec<(String, i64)>> {
    let t = [Param::Text(tenant.as_str())];
    let keys = db
        .query("SELECT id FROM api_keys WHERE tenant_id = $1", &t)?
        .iter()
        .map(|r| Cells::new(r, "API key").text(0))
        .collect::<StoreResult<Vec<String>>>()?;
    let mut out = Vec::new();
    for table in TABLES.iter().rev() {
        if *table == "changes" {
            continue;
        }
        let n = db.execute(
            &format!(
                "DELETE FROM \"{table}\" WHERE {}",
                tenant_condition(table).replace("{t}", "CAST($1 AS TEXT)")
            ),
            &t,
        )?;
        out.push(((*table).to_owned(), i64::try_from(n).unwrap_or(i64::MAX)));
    }
    // Its shared rate limits and budgets (coordination rows named by its ids).
    for prefix in quota_prefixes(tenant.as_str(), &keys) {
        db.execute(
            "DELETE FROM shared_quotas WHERE substr(name, 1, length($1)) = $1",
            &[Param::Text(&prefix)],
        )?;
    }
    changes::erased(db, tenant, &keys)?;
    out.reverse();
    Ok(out)
}

/// Rows per backed-up table, in [`TABLES`] order.
pub(super) fn counts(db: &mut dyn Db) -> StoreResult<Vec<(String, i64)>> {
    TABLES
        .iter()
        .map(|t| {
            Ok((
                (*t).to_owned(),
                sql::number(db, &format!("SELECT count(*) FROM \"{t}\""), &[])?,
            ))
        })
        .collect()
}

pub type Source<'a> = dyn FnMut() -> StoreResult<Option<TableBatch>> + 'a;

fn derived_column(table: &str, column: &str) -> bool {
    DERIVED_COLUMNS
        .iter()
        .any(|(t, c)| *t == table && *c == column)
}

fn known_table(table: &str) -> StoreResult<()> {
    if TABLES.contains(&table) {
        Ok(())
    } else {
        Err(StoreError::Database(format!(
            "'{table}' is not a table agv-server backs up or restores"
        )))
    }
}

pub(super) mod sqlite {
    use super::*;
    use rusqlite::Connection;
    use rusqlite::types::{Value as SqlValue, ValueRef};

    fn db_err(e: rusqlite::Error) -> StoreError {
        super::super::sqlite_conn::db_err(e)
    }

    fn columns(conn: &Connection, table: &str) -> StoreResult<Vec<String>> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info(\"{table}\")"))
            .map_err(db_err)?;
        let cols = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(cols
            .into_iter()
            .filter(|c| !derived_column(table, c))
            .collect())
    }

    fn json_of(v: ValueRef<'_>) -> StoreResult<Value> {
        Ok(match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::from(i),
            ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(_) => {
                return Err(StoreError::Database(
                    "a binary value: agv-server's schema holds none, so this database was changed by something else".into(),
                ));
            }
        })
    }

    pub(in crate::store) fn export(
        conn: &Connection,
        tenant: Option<&str>,
        sink: &mut Sink<'_>,
    ) -> StoreResult<()> {
        // One read transaction: a snapshot of every table; WAL lets writers go on.
        conn.execute_batch("BEGIN DEFERRED").map_err(db_err)?;
        let result = (|| {
            for table in TABLES {
                let cols = columns(conn, table)?;
                let list = column_list(&cols);
                let filter = tenant.map_or(String::new(), |_| {
                    format!(" WHERE {}", tenant_condition(table).replace("{t}", "?1"))
                });
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {list} FROM \"{table}\"{filter} ORDER BY rowid"
                    ))
                    .map_err(db_err)?;
                let mut rows = match tenant {
                    Some(t) => stmt.query([t]),
                    None => stmt.query([]),
                }
                .map_err(db_err)?;
                let mut batch = Vec::with_capacity(BATCH);
                let mut first = true;
                while let Some(row) = rows.next().map_err(db_err)? {
                    let mut values = Vec::with_capacity(cols.len());
                    for i in 0..cols.len() {
                        values.push(json_of(row.get_ref(i).map_err(db_err)?)?);
                    }
                    batch.push(values);
                    if batch.len() == BATCH {
                        sink(TableBatch {
                            table: (*table).to_owned(),
                            columns: cols.clone(),
                            rows: std::mem::take(&mut batch),
                            first,
                        })?;
                        first = false;
                    }
                }
                if first || !batch.is_empty() {
                    sink(TableBatch {
                        table: (*table).to_owned(),
                        columns: cols.clone(),
                        rows: batch,
                        first,
                    })?;
                }
            }
            Ok(())
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn sql_of(v: &Value) -> StoreResult<SqlValue> {
        Ok(match v {
            Value::Null => SqlValue::Null,
            Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => SqlValue::Integer(i),
                None => SqlValue::Real(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) => SqlValue::Text(s.clone()),
            other => {
                return Err(StoreError::Database(format!(
                    "a backup row holds a nested JSON value ({other}); agv-server writes none"
                )));
            }
        })
    }

    /// Imports into an empty database, in one transaction (all or nothing). Columns of the
    /// backup that this schema lacks are an error; columns it has and the backup lacks get
    /// their defaults.
    pub(in crate::store) fn import(
        conn: &mut Connection,
        source: &mut Source<'_>,
    ) -> StoreResult<()> {
        let tx = conn.transaction().map_err(db_err)?;
        for table in TABLES {
            let n: i64 = tx
                .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                    r.get(0)
                })
                .map_err(db_err)?;
            if n > 0 {
                return Err(StoreError::Conflict(format!(
                    "the target database already holds rows in '{table}'; restore into an empty database"
                )));
            }
        }
        while let Some(batch) = source()? {
            known_table(&batch.table)?;
            let have = columns(&tx, &batch.table)?;
            if let Some(missing) = batch.columns.iter().find(|c| !have.contains(c)) {
                return Err(batch.unknown_column(missing));
            }
            if batch.rows.is_empty() {
                continue;
            }
            let list = column_list(&batch.columns);
            let marks = (1..=batch.columns.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO \"{}\" ({list}) VALUES ({marks})",
                    batch.table
                ))
                .map_err(db_err)?;
            for row in &batch.rows {
                batch.check_row(row)?;
                let values = row.iter().map(sql_of).collect::<StoreResult<Vec<_>>>()?;
                stmt.execute(rusqlite::params_from_iter(values))
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }
}

pub(super) mod postgres {
    use super::*;
    use ::postgres::Client;

    fn db_err(e: ::postgres::Error) -> StoreError {
        super::super::postgres_conn::db_err(e)
    }

    fn columns(
        tx: &mut ::postgres::Transaction<'_>,
        table: &str,
    ) -> StoreResult<Vec<(String, String)>> {
        Ok(tx
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .map_err(db_err)?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|(c, _)| !derived_column(table, c))
            .collect())
    }

    /// Booleans as 0/1 and every other value as JSON gives it.
    fn normalize(v: Value) -> Value {
        match v {
            Value::Bool(b) => Value::from(i64::from(b)),
            other => other,
        }
    }

    pub(in crate::store) fn export(
        client: &mut Client,
        tenant: Option<&str>,
        sink: &mut Sink<'_>,
    ) -> StoreResult<()> {
        let mut tx = client
            .build_transaction()
            .isolation_level(::postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(db_err)?;
        for table in TABLES {
            let cols: Vec<String> = columns(&mut tx, table)?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            let list = column_list(&cols);
            // json_build_array keeps the column order and gives native JSON types.
            let filter = tenant.map_or(String::new(), |_| {
                format!(
                    " WHERE {}",
                    tenant_condition(table).replace("{t}", "$1::text")
                )
            });
            let sql = format!(
                "SELECT json_build_array({list})::text FROM \"{table}\"{filter} ORDER BY ctid"
            );
            let portal = match tenant {
                Some(t) => tx.bind(&sql, &[&t]),
                None => tx.bind(&sql, &[]),
            }
            .map_err(db_err)?;
            let mut first = true;
            loop {
                let page = tx.query_portal(&portal, BATCH as i32).map_err(db_err)?;
                let done = page.len() < BATCH;
                let mut rows = Vec::with_capacity(page.len());
                for r in &page {
                    let text: String = r.get(0);
                    let Value::Array(values) = serde_json::from_str(&text).map_err(|e| {
                        StoreError::Database(format!(
                            "a row of '{table}' did not read as JSON: {e}"
                        ))
                    })?
                    else {
                        return Err(StoreError::Database(format!(
                            "a row of '{table}' did not read as a JSON array"
                        )));
                    };
                    rows.push(values.into_iter().map(normalize).collect());
                }
                if first || !rows.is_empty() {
                    sink(TableBatch {
                        table: (*table).to_owned(),
                        columns: cols.clone(),
                        rows,
                        first,
                    })?;
                    first = false;
                }
                if done {
                    break;
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    pub(in crate::store) fn import(
        client: &mut Client,
        source: &mut Source<'_>,
    ) -> StoreResult<()> {
        let mut tx = client.transaction().map_err(db_err)?;
        for table in TABLES {
            let row = tx
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM \"{table}\")"), &[])
                .map_err(db_err)?;
            if row.get::<_, bool>(0) {
                return Err(StoreError::Conflict(format!(
                    "the target database already holds rows in '{table}'; restore into an empty database (createdb a new one)"
                )));
            }
        }
        while let Some(batch) = source()? {
            known_table(&batch.table)?;
            let have = columns(&mut tx, &batch.table)?;
            let kinds: Vec<&str> = batch
                .columns
                .iter()
                .map(|c| {
                    have.iter()
                        .find(|(name, _)| name == c)
                        .map(|(_, kind)| kind.as_str())
                        .ok_or_else(|| batch.unknown_column(c))
                })
                .collect::<StoreResult<_>>()?;
            if batch.rows.is_empty() {
                continue;
            }
            let mut objects = Vec::with_capacity(batch.rows.len());
            for row in &batch.rows {
                batch.check_row(row)?;
                let mut obj = serde_json::Map::with_capacity(row.len());
                for ((c, v), kind) in batch.columns.iter().zip(row).zip(&kinds) {
                    // SQLite keeps booleans as 0/1; Postgres' boolean input wants true/false.
                    let v = match (*kind, v) {
                        ("boolean", Value::Number(n)) => Value::Bool(n.as_i64() != Some(0)),
                        _ => v.clone(),
                    };
                    obj.insert(c.clone(), v);
                }
                objects.push(Value::Object(obj));
            }
            let list = column_list(&batch.columns);
            let payload = Value::Array(objects).to_string();
            tx.execute(
                &format!(
                    "INSERT INTO \"{t}\" ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM json_populate_recordset(NULL::\"{t}\", $1::text::json)",
                    t = batch.table
                ),
                &[&payload],
            )
            .map_err(db_err)?;
        }
        // Sequences and identities continue after the restored values.
        let seqs = tx
            .query(
                "SELECT table_name::text, column_name::text, pg_get_serial_sequence(quote_ident(table_name), column_name)::text FROM information_schema.columns WHERE table_schema = current_schema() AND (column_default LIKE 'nextval%' OR is_identity = 'YES')",
                &[],
            )
            .map_err(db_err)?;
        for r in seqs {
            let (table, column, seq): (String, String, Option<String>) =
                (r.get(0), r.get(1), r.get(2));
            let Some(seq) = seq else { continue };
            if !TABLES.contains(&table.as_str()) {
                continue;
            }
            tx.execute(
                &format!(
                    "SELECT setval($1::text::regclass, COALESCE((SELECT max(\"{column}\") FROM \"{table}\"), 0) + 1, false)"
                ),
                &[&seq],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }
}
