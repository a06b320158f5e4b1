//! Schema migrations: numbered SQL files under `migrations/<backend>/`, embedded in the
//! binary at compile time and applied when a store opens.
//!
//! Each migration runs in its own transaction together with the row that records it in
//! `agv_schema_migrations(version, name, checksum, applied_at)`. Before anything is
//! written the recorded history is checked against the embedded list ([`plan`]): a
//! database migrated by a newer binary is refused untouched (`SchemaTooNew`), and a
//! recorded checksum that differs from the embedded file is an error, because the two
//! schemas can no longer be assumed equal. Postgres serialises concurrent starts of
//! several instances with a transaction-scoped advisory lock; SQLite with `BEGIN IMMEDIATE`.
//!
//! This module decides and applies schema changes only; it must not hold data queries.

use super::{StoreError, StoreResult};
use crate::domain::Timestamp;
use sha2::{Digest, Sha256};
use std::fmt;

/// One embedded migration.
#[derive(Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Migration({:04}_{})", self.version, self.name)
    }
}

/// The migrations of one backend, oldest first: version, file number and name of each
/// `migrations/<backend>/<number>_<name>.sql`. Both backends have the same list.
macro_rules! migrations {
    ($backend:literal) => {
        migration_list!($backend;
            1 "0001" "init",
            2 "0002" "calls",
            3 "0003" "tenant_upstreams",
            4 "0004" "partial_call_indexes",
            5 "0005" "incidents",
            6 "0006" "call_search",
            7 "0007" "alerts",
            8 "0008" "evidence",
            9 "0009" "chains_and_audit",
            10 "0010" "tasks",
            11 "0011" "invitations",
            12 "0012" "call_retention",
            13 "0013" "schedule_claims",
            14 "0014" "shared_quotas",
            15 "0015" "ascending_call_indexes",
            16 "0016" "instance_upstream",
            17 "0017" "people_management",
            18 "0018" "pagerduty_routes",
            19 "0019" "call_stopped_by",
            20 "0020" "incident_merges",
            21 "0021" "call_model",
        )
    };
}

/// The [`Migration`]s of a backend's list, each with its file's SQL built in.
macro_rules! migration_list {
    ($backend:literal; $($version:literal $number:literal $name:literal,)*) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(
                "../../migrations/", $backend, "/", $number, "_", $name, ".sql"
            )),
        },)*]
    };
}

/// SQLite migrations, oldest first.
pub const SQLITE: &[Migration] = migrations!("sqlite");

/// Postgres migrations, oldest first; the same versions and meaning as [`SQLITE`].
pub const POSTGRES: &[Migration] = migrations!("postgres");

/// The newest schema version this binary knows (the same on both backends).
pub fn known_version() -> i64 {
    newest(SQLITE)
}

fn newest(migrations: &[Migration]) -> i64 {
    migrations.iter().map(|m| m.version).max().unwrap_or(0)
}

/// SHA-256 of a migration's SQL, lowercase hex. Line endings are normalised so that a
/// checkout with CRLF line endings does not look like an edited migration.
pub fn checksum(sql: &str) -> String {
    let normalised = sql.replace("\r\n", "\n");
    hex::encode(Sha256::digest(normalised.as_bytes()))
}

/// A migration as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

/// Why the recorded history cannot be brought up to date by this binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the database schema is at version {found}, newer than the {known} this binary knows")]
    TooNew { found: i64, known: i64 },
    #[error(
        "migration {version:04}_{name} recorded in the database (checksum {recorded}) differs from the one built into this binary (checksum {embedded}): the migration file was edited after it was applied. Restore the original migration file (never edit an applied migration; add a new one), or restore a backup made by a matching build"
    )]
    ChecksumMismatch {
        version: i64,
        name: String,
        recorded: String,
        embedded: String,
    },
    #[error(
        "the database records migration {version:04}_{name}, which this binary does not know: it was migrated by a different build. Run the build that migrated it"
    )]
    Unknown { version: i64, name: String },
}

impl From<PlanError> for StoreError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::TooNew { found, known } => StoreError::SchemaTooNew { found, known },
            other => StoreError::Unavailable(format!("cannot migrate the database: {other}")),
        }
    }
}

/// Decides which embedded migrations still have to run, oldest first, after checking
/// the recorded history against the embedded list. Pure: no I/O.
pub fn plan<'a>(
    known: &'a [Migration],
    applied: &[AppliedMigration],
) -> Result<Vec<&'a Migration>, PlanError> {
    let newest_known = newest(known);
    if let Some(found) = applied.iter().map(|a| a.version).max()
        && found > newest_known
    {
        return Err(PlanError::TooNew {
            found,
            known: newest_known,
        });
    }
    for a in applied {
        let Some(m) = known.iter().find(|m| m.version == a.version) else {
            return Err(PlanError::Unknown {
                version: a.version,
                name: a.name.clone(),
            });
        };
        let embedded = checksum(m.sql);
        if embedded != a.checksum {
            return Err(PlanError::ChecksumMismatch {
                version: m.version,
                name: m.name.to_owned(),
                recorded: a.checksum.clone(),
                embedded,
            });
        }
    }
    let mut pending: Vec<&Migration> = known
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .collect();
    pending.sort_by_key(|m| m.version);
    Ok(pending)
}

/// The table recording applied migrations, the same on both backends.
const LEDGER: &str = "CREATE TABLE IF NOT EXISTS agv_schema_migrations (
    version BIGINT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// Advisory lock key held while migrating Postgres ("agv_migr" in ASCII).
const POSTGRES_MIGRATION_LOCK: i64 = 0x6167_765f_6d69_6772;

/// Applies pending SQLite migrations, one transaction each. Refuses (without writing
/// anything) a database whose history this binary cannot continue.
pub(crate) fn run_sqlite(conn: &mut rusqlite::Connection) -> StoreResult<()> {
    use super::sqlite_conn::db_err;
    loop {
        // IMMEDIATE takes the write lock up front, so two processes opening the same
        // file at once apply each migration exactly once (the other waits, then re-plans).
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let applied = sqlite_applied(&tx)?;
        let pending = plan(SQLITE, &applied)?;
        let Some(m) = pending.first() else {
            // Nothing to do: dropping the transaction rolls back, i.e. writes nothing.
            return Ok(());
        };
        tx.execute_batch(LEDGER).map_err(db_err)?;
        tx.execute_batch(m.sql).map_err(|e| {
            StoreError::Database(format!("migration {:04}_{} failed: {e}", m.version, m.name))
        })?;
        tx.execute(
            "INSERT INTO agv_schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![m.version, m.name, checksum(m.sql), Timestamp::now().millis()],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied SQLite migration"
        );
    }
}

fn sqlite_applied(conn: &rusqlite::Connection) -> StoreResult<Vec<AppliedMigration>> {
    use super::sqlite_conn::db_err;
    let exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'agv_schema_migrations'",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT version, name, checksum FROM agv_schema_migrations ORDER BY version")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(AppliedMigration {
                version: r.get(0)?,
                name: r.get(1)?,
                checksum: r.get(2)?,
            })
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Applies pending Postgres migrations, one transaction each, under an advisory lock so
/// that several instances starting at once against one database do not race.
pub(crate) fn run_postgres(client: &mut postgres::Client) -> StoreResult<()> {
    use super::postgres_conn::db_err;
    loop {
        let mut tx = client.transaction().map_err(db_err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&POSTGRES_MIGRATION_LOCK],
        )
        .map_err(db_err)?;
        let applied = postgres_applied(&mut tx)?;
        let pending = plan(POSTGRES, &applied)?;
        let Some(m) = pending.first() else {
            // Nothing to do: dropping the transaction rolls back and releases the lock.
            return Ok(());
        };
        tx.batch_execute(LEDGER).map_err(db_err)?;
        tx.batch_execute(m.sql).map_err(|e| {
            StoreError::Database(format!("migration {:04}_{} failed: {e}", m.version, m.name))
        })?;
        tx.execute(
            "INSERT INTO agv_schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
            &[&m.version, &m.name, &checksum(m.sql), &Timestamp::now().millis()],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied Postgres migration"
        );
    }
}

fn postgres_applied(tx: &mut postgres::Transaction<'_>) -> StoreResult<Vec<AppliedMigration>> {
    use super::postgres_conn::db_err;
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass('agv_schema_migrations') IS NOT NULL",
            &[],
        )
        .map_err(db_err)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            "SELECT version, name, checksum FROM agv_schema_migrations ORDER BY version",
            &[],
        )
        .map_err(db_err)?;
    Ok(rows
        .iter()
        .map(|r| AppliedMigration {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Migration = Migration {
        version: 1,
        name: "init",
        sql: "CREATE TABLE a (x INT);",
    };
    const B: Migration = Migration {
        version: 2,
        name: "more",
        sql: "CREATE TABLE b (x INT);",
    };

    fn recorded(m: &Migration) -> AppliedMigration {
        AppliedMigration {
            version: m.version,
            name: m.name.to_owned(),
            checksum: checksum(m.sql),
        }
    }

    #[test]
    fn a_fresh_database_gets_every_migration_in_order() {
        let pending = plan(&[B, A], &[]).unwrap();
        let versions: Vec<i64> = pending.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![1, 2]);
    }

    #[test]
    fn only_missing_migrations_are_planned() {
        let pending = plan(&[A, B], &[recorded(&A)]).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].version, 2);
        assert!(
            plan(&[A, B], &[recorded(&A), recorded(&B)])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_schema_newer_than_the_binary_is_refused() {
        let err = plan(&[A], &[recorded(&A), recorded(&B)]).unwrap_err();
        assert_eq!(err, PlanError::TooNew { found: 2, known: 1 });
        assert!(matches!(
            StoreError::from(err),
            StoreError::SchemaTooNew { found: 2, known: 1 }
        ));
    }

    #[test]
    fn an_edited_migration_is_reported_with_both_checksums() {
        let mut edited = recorded(&A);
        edited.checksum = checksum("CREATE TABLE a (y INT);");
        let err = plan(&[A, B], &[edited.clone()]).unwrap_err();
        assert!(
            matches!(err, PlanError::ChecksumMismatch { version: 1, .. }),
            "{err:?}"
        );
        let msg = StoreError::from(err).to_string();
        assert!(
            msg.contains("0001_init") && msg.contains(&edited.checksum),
            "{msg}"
        );
        assert!(msg.contains("never edit an applied migration"), "{msg}");
    }

    #[test]
    fn a_recorded_version_unknown_to_the_binary_is_refused() {
        let gap = AppliedMigration {
            version: 1,
            name: "x".into(),
            checksum: checksum("x"),
        };
        let err = plan(&[B], &[gap]).unwrap_err();
        assert!(
            matches!(err, PlanError::Unknown { version: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn checksums_ignore_line_endings_but_not_content() {
        assert_eq!(checksum("a;\nb;\n"), checksum("a;\r\nb;\r\n"));
        assert_ne!(checksum("a;"), checksum("b;"));
        assert_eq!(checksum("").len(), 64);
    }

    #[test]
    fn embedded_migrations_are_numbered_alike_on_both_backends() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(
                    m.version,
                    i as i64 + 1,
                    "versions must be 1, 2, 3… without gaps"
                );
                assert!(!m.sql.trim().is_empty());
            }
        }
        let names = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
        assert_eq!(known_version(), newest(POSTGRES));
        assert!(known_version() >= 1);
    }
}
