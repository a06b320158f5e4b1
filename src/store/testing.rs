//! Test support shared by unit and integration tests: a fresh Postgres database per test
//! and one policy for tests that cannot run here (skip loudly, or fail under CI).
//!
//! Not `cfg(test)` because integration tests in `tests/` link the library without it.
//! Nothing in the server may call this module.

use rand::RngCore;
use std::time::Duration;

/// The Postgres server tests create their databases on: `AGV_TEST_POSTGRES_URL`, or the
/// local default with trust authentication.
pub fn postgres_admin_url() -> String {
    std::env::var("AGV_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether every test must really run (`AGV_TEST_REQUIRE_ALL=1`, set by CI): a test that
/// would skip for a missing service fails instead.
pub fn require_all() -> bool {
    std::env::var("AGV_TEST_REQUIRE_ALL").is_ok_and(|v| v.trim() == "1")
}

/// Reports a test that cannot run here: prints `SKIPPED: <what> (<why>)` to stderr, or
/// panics with that message when [`require_all`] is set.
pub fn skip_or_fail(what: &str, why: &str) {
    skip_or_fail_with(format!("SKIPPED: {what} ({why})"));
}

fn skip_or_fail_with(msg: String) {
    if require_all() {
        panic!("{msg} — AGV_TEST_REQUIRE_ALL=1 turns skips into failures");
    }
    eprintln!("{msg}");
}

/// A database created for one test and dropped (forcibly) when this value is dropped.
#[derive(Debug)]
pub struct PgTestDb {
    /// Connection URL of the fresh database.
    pub url: String,
    /// Its name (`agv_test_<hex>`).
    pub name: String,
    admin_url: String,
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = on_plain_thread(&self.admin_url, move |c| c.batch_execute(&sql)) {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// Creates a fresh, empty database on [`postgres_admin_url`]. `None` (after printing
/// `SKIPPED: …`) when Postgres is not reachable; panics then under `AGV_TEST_REQUIRE_ALL=1`.
pub fn fresh_postgres_db() -> Option<PgTestDb> {
    let admin_url = postgres_admin_url();
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let name = format!("agv_test_{}", hex::encode(bytes));
    let sql = format!("CREATE DATABASE \"{name}\"");
    match on_plain_thread(&admin_url, move |c| c.batch_execute(&sql)) {
        Ok(()) => Some(PgTestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }),
        Err(cause) => {
            skip_or_fail_with(format!(
                "SKIPPED: Postgres not reachable at {} ({cause}); set AGV_TEST_POSTGRES_URL",
                super::redact_url(&admin_url)
            ));
            None
        }
    }
}

/// Runs `f` on a fresh admin connection on a plain OS thread: the sync postgres client
/// must not run on an async worker, and tests may call this from `#[tokio::test]`.
fn on_plain_thread<F>(admin_url: &str, f: F) -> Result<(), String>
where
    F: FnOnce(&mut postgres::Client) -> Result<(), postgres::Error> + Send + 'static,
{
    let admin_url = admin_url.to_owned();
    let worker = std::thread::spawn(move || -> Result<(), String> {
        let mut config: postgres::Config =
            admin_url.parse().map_err(|e| format!("invalid URL: {e}"))?;
        config.connect_timeout(Duration::from_secs(3));
        let mut client = config
            .connect(postgres::NoTls)
            .map_err(|e| error_text(&e))?;
        f(&mut client).map_err(|e| error_text(&e))
    });
    worker
        .join()
        .unwrap_or_else(|_| Err("the Postgres helper thread panicked".to_owned()))
}

fn error_text(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.message().to_owned(),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// `url` with its database name replaced by `db` (query parameters kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_in_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "agv_test_1"),
            "postgres://postgres@127.0.0.1:5432/agv_test_1"
        );
        assert_eq!(with_database("postgres://u:p@h", "d"), "postgres://u:p@h/d");
        assert_eq!(
            with_database("postgresql://u@h:1/x?sslmode=disable", "d"),
            "postgresql://u@h:1/d?sslmode=disable"
        );
    }
}
