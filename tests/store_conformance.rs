//! The store conformance suite: every case is written once against the `Store` trait and
//! runs on SQLite (a fresh temp dir) and on Postgres (a fresh database per test, dropped
//! afterwards). Postgres cases print `SKIPPED: …` when no server is reachable, and fail
//! instead under `AGV_TEST_REQUIRE_ALL=1`.

// Fixtures and harness helpers live outside `#[test]` functions, where clippy's
// allow-unwrap-in-tests does not reach; a failed unwrap in a test is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agv_server::domain::{
    Email, KeyId, NewApiKey, NewSession, NewUser, PasswordHash, Role, Scope, SessionId, Tenant,
    TenantId, TenantName, Timestamp, UserId,
};
use agv_server::store::migrate::known_version;
use agv_server::store::testing::{PgTestDb, fresh_postgres_db};
use agv_server::store::{self, Backend, DynStore, Store, StoreError, StoreResult, run_blocking};
use std::path::PathBuf;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Harness

/// Where a backend under test lives, before any store is opened on it.
struct Target {
    dir: tempfile::TempDir,
    url: Option<String>,
    /// Dropped last: drops the Postgres database.
    _pg: Option<PgTestDb>,
}

impl Target {
    fn sqlite() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            url: None,
            _pg: None,
        }
    }

    fn postgres() -> Option<Self> {
        let pg = fresh_postgres_db()?;
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            url: Some(pg.url.clone()),
            _pg: Some(pg),
        })
    }

    fn open(&self) -> StoreResult<DynStore> {
        store::open(self.dir.path(), self.url.as_deref())
    }

    fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join(store::sqlite::DB_FILE)
    }

    /// Runs SQL directly, outside the store (to fake what another binary would have done).
    fn exec(&self, sql: &str) {
        match &self.url {
            None => rusqlite::Connection::open(self.sqlite_path())
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Some(url) => ::postgres::Client::connect(url, ::postgres::NoTls)
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
        }
    }

    fn scalar(&self, sql: &str) -> i64 {
        match &self.url {
            None => rusqlite::Connection::open(self.sqlite_path())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Some(url) => ::postgres::Client::connect(url, ::postgres::NoTls)
                .unwrap()
                .query_one(sql, &[])
                .unwrap()
                .get(0),
        }
    }

    fn table_count(&self) -> i64 {
        self.scalar(match self.url {
            None => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            Some(_) => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
            }
        })
    }
}

/// An open store on a target. Fields drop in order: the store before its database.
struct Db {
    store: DynStore,
    target: Target,
}

impl Db {
    fn sqlite() -> Self {
        let target = Target::sqlite();
        Self {
            store: target.open().unwrap(),
            target,
        }
    }

    fn postgres() -> Option<Self> {
        let target = Target::postgres()?;
        Some(Self {
            store: target.open().unwrap(),
            target,
        })
    }
}

/// Generates `mod sqlite` and `mod postgres` with one test per case.
/// `store` cases take `&dyn Store`; `db` cases also reopen or inspect the database;
/// `fresh` cases get a `Target` nothing has opened yet; `task` cases are async and get one too.
macro_rules! conformance {
    (
        store: [$($case:ident),* $(,)?],
        db: [$($db_case:ident),* $(,)?],
        fresh: [$($fresh_case:ident),* $(,)?],
        task: [$($task_case:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite {
            $( #[test] fn $case() { let db = super::Db::sqlite(); super::$case(&*db.store); } )*
            $( #[test] fn $db_case() { let db = super::Db::sqlite(); super::$db_case(&db); } )*
            $( #[test] fn $fresh_case() { super::$fresh_case(&super::Target::sqlite()); } )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $task_case() { super::$task_case(super::Target::sqlite()).await; }
            )*
        }
        mod postgres {
            $( #[test] fn $case() { let Some(db) = super::Db::postgres() else { return }; super::$case(&*db.store); } )*
            $( #[test] fn $db_case() { let Some(db) = super::Db::postgres() else { return }; super::$db_case(&db); } )*
            $(
                #[test]
                fn $fresh_case() {
                    let Some(target) = super::Target::postgres() else { return };
                    super::$fresh_case(&target);
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $task_case() {
                    let Some(target) = super::Target::postgres() else { return };
                    super::$task_case(target).await;
                }
            )*
        }
    };
}

conformance! {
    store: [
        tenants_are_created_read_and_listed_in_creation_order,
        a_duplicate_tenant_id_is_a_conflict_and_an_unknown_tenant_is_not_found,
        keys_are_created_and_found_by_hash_by_id_and_by_tenant,
        a_key_of_another_tenant_is_not_found_but_the_operator_sees_it,
        a_key_for_an_unknown_tenant_is_not_found_and_records_no_change,
        a_duplicate_key_hash_is_a_conflict,
        revoking_twice_keeps_the_first_revocation_time,
        setting_and_clearing_an_expiry_updates_the_key,
        touching_keys_only_moves_last_used_forward_and_ignores_unknown_ids,
        the_change_feed_records_key_changes_in_order_and_pages,
        concurrent_key_changes_are_all_recorded_with_distinct_increasing_seqs,
        users_are_created_found_by_email_whatever_its_case_and_counted,
        a_duplicate_email_is_a_conflict_and_an_unknown_tenant_is_not_found,
        sessions_are_found_until_they_expire_and_can_be_deleted,
        expired_sessions_are_purged_and_live_ones_kept,
        ping_answers_and_pool_stats_count_connections,
    ],
    db: [
        migrations_are_applied_and_recorded_with_their_checksums,
        reopening_is_idempotent_and_keeps_the_data,
        a_schema_newer_than_the_binary_is_refused_and_left_untouched,
        an_edited_migration_is_refused_with_a_clear_error,
        sessions_are_deleted_with_their_user,
    ],
    fresh: [
        several_processes_opening_a_fresh_database_at_once_migrate_it_once,
    ],
    task: [
        the_store_is_opened_used_and_dropped_from_async_code_through_run_blocking,
    ],
}

// ---------------------------------------------------------------------------------------
// Fixtures

const T0: i64 = 1_700_000_000_000;

fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + offset_ms)
}

fn new_tenant(store: &dyn Store, name: &str, created: i64) -> Tenant {
    let t = Tenant {
        id: TenantId::generate(),
        name: TenantName::parse(name).unwrap(),
        created_at: at(created),
    };
    store.create_tenant(&t).unwrap();
    t
}

fn new_key(tenant: &TenantId, name: &str) -> NewApiKey {
    NewApiKey::generate(tenant.clone(), name, Scope::Proxy, None)
        .unwrap()
        .0
}

/// One password hash for the whole run: argon2 is deliberately slow.
fn password() -> PasswordHash {
    static HASH: OnceLock<PasswordHash> = OnceLock::new();
    HASH.get_or_init(|| PasswordHash::create("correct horse battery").unwrap())
        .clone()
}

fn new_user(email: &str, tenant: Option<&TenantId>) -> NewUser {
    NewUser {
        id: UserId::generate(),
        email: Email::parse(email).unwrap(),
        password: password(),
        role: if tenant.is_some() {
            Role::Admin
        } else {
            Role::Operator
        },
        tenant_id: tenant.cloned(),
        created_at: at(0),
    }
}

fn new_session(user: &UserId, token_hash: &str, expires: i64) -> NewSession {
    NewSession {
        id: SessionId::generate(),
        user_id: user.clone(),
        token_hash: token_hash.to_owned(),
        created_at: at(0),
        expires_at: at(expires),
    }
}

// ---------------------------------------------------------------------------------------
// Migrations

fn migrations_are_applied_and_recorded_with_their_checksums(db: &Db) {
    assert_eq!(db.store.schema_version().unwrap(), known_version());
    let recorded = db
        .target
        .scalar("SELECT COUNT(*) FROM agv_schema_migrations");
    assert_eq!(recorded, known_version());
    let list = match db.store.backend() {
        Backend::Sqlite => store::migrate::SQLITE,
        Backend::Postgres => store::migrate::POSTGRES,
    };
    for m in list {
        let sql = format!(
            "SELECT COUNT(*) FROM agv_schema_migrations WHERE version = {} AND checksum = '{}' AND name = '{}'",
            m.version,
            store::migrate::checksum(m.sql),
            m.name
        );
        assert_eq!(
            db.target.scalar(&sql),
            1,
            "migration {} not recorded",
            m.version
        );
    }
}

fn several_processes_opening_a_fresh_database_at_once_migrate_it_once(target: &Target) {
    let stores: Vec<DynStore> = std::thread::scope(|s| {
        let opening: Vec<_> = (0..4).map(|_| s.spawn(|| target.open())).collect();
        opening
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for store in &stores {
        assert_eq!(store.schema_version().unwrap(), known_version());
    }
    assert_eq!(
        target.scalar("SELECT COUNT(*) FROM agv_schema_migrations"),
        known_version()
    );
    new_tenant(&*stores[0], "Acme", 0);
    assert_eq!(stores[3].list_tenants().unwrap().len(), 1);
}

fn reopening_is_idempotent_and_keeps_the_data(db: &Db) {
    let t = new_tenant(&*db.store, "Acme", 0);
    for _ in 0..2 {
        let again = db.target.open().unwrap();
        assert_eq!(again.schema_version().unwrap(), known_version());
        assert_eq!(again.get_tenant(&t.id).unwrap(), t);
    }
    assert_eq!(
        db.target
            .scalar("SELECT COUNT(*) FROM agv_schema_migrations"),
        known_version()
    );
}

fn a_schema_newer_than_the_binary_is_refused_and_left_untouched(db: &Db) {
    new_tenant(&*db.store, "Acme", 0);
    let future = known_version() + 1;
    db.target.exec(&format!(
        "INSERT INTO agv_schema_migrations (version, name, checksum, applied_at) VALUES ({future}, 'future', 'x', 0)"
    ));
    let before = (
        db.target.table_count(),
        db.target
            .scalar("SELECT COUNT(*) FROM agv_schema_migrations"),
        db.target.scalar("SELECT COUNT(*) FROM tenants"),
    );

    match db.target.open() {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (future, known_version()));
        }
        Err(other) => panic!("expected SchemaTooNew, got {other:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
    let after = (
        db.target.table_count(),
        db.target
            .scalar("SELECT COUNT(*) FROM agv_schema_migrations"),
        db.target.scalar("SELECT COUNT(*) FROM tenants"),
    );
    assert_eq!(before, after);
}

fn an_edited_migration_is_refused_with_a_clear_error(db: &Db) {
    db.target
        .exec("UPDATE agv_schema_migrations SET checksum = 'edited' WHERE version = 1");
    let err = db
        .target
        .open()
        .err()
        .expect("an edited migration must be refused");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(msg.contains("0001_init") && msg.contains("edited"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Tenants

fn tenants_are_created_read_and_listed_in_creation_order(store: &dyn Store) {
    assert!(store.list_tenants().unwrap().is_empty());
    let b = new_tenant(store, "Beta", 20);
    let a = new_tenant(store, "Alpha", 10);
    assert_eq!(store.get_tenant(&a.id).unwrap(), a);
    assert_eq!(store.list_tenants().unwrap(), vec![a, b]);
}

fn a_duplicate_tenant_id_is_a_conflict_and_an_unknown_tenant_is_not_found(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    let err = store.create_tenant(&t).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains(t.id.as_str())),
        "{err:?}"
    );
    assert!(matches!(
        store.get_tenant(&TenantId::generate()),
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_tenants().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// API keys

fn keys_are_created_and_found_by_hash_by_id_and_by_tenant(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    let other = new_tenant(store, "Other", 1);
    let (mut k1, _) =
        NewApiKey::generate(t.id.clone(), "ci", Scope::Admin, Some(at(1000))).unwrap();
    k1.created_at = at(1);
    let mut k2 = new_key(&t.id, "prod");
    k2.created_at = at(2);
    let rec1 = store.create_api_key(&k1).unwrap();
    let rec2 = store.create_api_key(&k2).unwrap();
    store.create_api_key(&new_key(&other.id, "theirs")).unwrap();

    assert_eq!(rec1.id, k1.id);
    assert_eq!(rec1.tenant_id, t.id);
    assert_eq!(rec1.name, "ci");
    assert_eq!(rec1.scope, Scope::Admin);
    assert_eq!(rec1.hash, k1.hash);
    assert_eq!(rec1.prefix, k1.prefix);
    assert_eq!(rec1.created_at, at(1));
    assert_eq!(rec1.expires_at, Some(at(1000)));
    assert_eq!((rec1.revoked_at, rec1.last_used_at), (None, None));

    assert_eq!(
        store.find_api_key_by_hash(&k1.hash).unwrap(),
        Some(rec1.clone())
    );
    let (_, unknown) = NewApiKey::generate(t.id.clone(), "", Scope::Proxy, None).unwrap();
    assert_eq!(store.find_api_key_by_hash(&unknown.hash()).unwrap(), None);
    assert_eq!(store.get_api_key(Some(&t.id), &k2.id).unwrap(), rec2);
    assert_eq!(store.get_api_key(None, &k2.id).unwrap(), rec2);
    assert_eq!(store.list_api_keys(&t.id).unwrap(), vec![rec1, rec2]);
    assert!(
        store
            .list_api_keys(&TenantId::generate())
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.get_api_key(None, &KeyId::generate()),
        Err(StoreError::NotFound)
    ));
}

fn a_key_of_another_tenant_is_not_found_but_the_operator_sees_it(store: &dyn Store) {
    let mine = new_tenant(store, "Mine", 0);
    let theirs = new_tenant(store, "Theirs", 1);
    let key = store
        .create_api_key(&new_key(&theirs.id, "theirs"))
        .unwrap();
    let seq = store.latest_change_seq().unwrap();

    let wrong = Some(&mine.id);
    assert!(matches!(
        store.get_api_key(wrong, &key.id),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.revoke_api_key(wrong, &key.id, at(5)),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_api_key_expiry(wrong, &key.id, Some(at(5))),
        Err(StoreError::NotFound)
    ));
    assert!(store.list_api_keys(&mine.id).unwrap().is_empty());
    // Nothing changed and nothing was recorded.
    assert_eq!(store.get_api_key(None, &key.id).unwrap(), key);
    assert_eq!(store.latest_change_seq().unwrap(), seq);
    // The owner and the operator both act on it.
    assert_eq!(store.get_api_key(Some(&theirs.id), &key.id).unwrap(), key);
    assert!(
        store
            .revoke_api_key(None, &key.id, at(6))
            .unwrap()
            .revoked_at
            .is_some()
    );
}

fn a_key_for_an_unknown_tenant_is_not_found_and_records_no_change(store: &dyn Store) {
    let seq = store.latest_change_seq().unwrap();
    let key = new_key(&TenantId::generate(), "orphan");
    assert!(matches!(
        store.create_api_key(&key),
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.latest_change_seq().unwrap(), seq);
    assert_eq!(store.find_api_key_by_hash(&key.hash).unwrap(), None);
}

fn a_duplicate_key_hash_is_a_conflict(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    let first = new_key(&t.id, "a");
    store.create_api_key(&first).unwrap();
    let mut same_hash = new_key(&t.id, "b");
    same_hash.hash = first.hash.clone();
    assert!(matches!(
        store.create_api_key(&same_hash),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.list_api_keys(&t.id).unwrap().len(), 1);
}

fn revoking_twice_keeps_the_first_revocation_time(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    let key = store.create_api_key(&new_key(&t.id, "k")).unwrap();
    let first = store.revoke_api_key(Some(&t.id), &key.id, at(100)).unwrap();
    assert_eq!(first.revoked_at, Some(at(100)));
    assert!(!first.is_active(at(101)));
    let seq = store.latest_change_seq().unwrap();

    let second = store.revoke_api_key(None, &key.id, at(200)).unwrap();
    assert_eq!(second.revoked_at, Some(at(100)));
    assert_eq!(
        store.get_api_key(None, &key.id).unwrap().revoked_at,
        Some(at(100))
    );
    assert_eq!(
        store.latest_change_seq().unwrap(),
        seq,
        "a no-op revoke records no change"
    );
    assert!(matches!(
        store.revoke_api_key(None, &KeyId::generate(), at(1)),
        Err(StoreError::NotFound)
    ));
}

fn setting_and_clearing_an_expiry_updates_the_key(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    let key = store.create_api_key(&new_key(&t.id, "k")).unwrap();
    let set = store
        .set_api_key_expiry(Some(&t.id), &key.id, Some(at(500)))
        .unwrap();
    assert_eq!(set.expires_at, Some(at(500)));
    assert!(set.is_active(at(499)) && !set.is_active(at(500)));
    let cleared = store.set_api_key_expiry(None, &key.id, None).unwrap();
    assert_eq!(cleared.expires_at, None);
    assert_eq!(store.get_api_key(None, &key.id).unwrap(), cleared);
    assert!(matches!(
        store.set_api_key_expiry(None, &KeyId::generate(), None),
        Err(StoreError::NotFound)
    ));
}

fn touching_keys_only_moves_last_used_forward_and_ignores_unknown_ids(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    let a = store.create_api_key(&new_key(&t.id, "a")).unwrap();
    let b = store.create_api_key(&new_key(&t.id, "b")).unwrap();
    let seq = store.latest_change_seq().unwrap();
    store.touch_api_keys(&[]).unwrap();

    store
        .touch_api_keys(&[
            (a.id.clone(), at(10)),
            (KeyId::generate(), at(10)),
            (a.id.clone(), at(30)),
        ])
        .unwrap();
    store
        .touch_api_keys(&[(a.id.clone(), at(20)), (b.id.clone(), at(5))])
        .unwrap();

    assert_eq!(
        store.get_api_key(None, &a.id).unwrap().last_used_at,
        Some(at(30))
    );
    assert_eq!(
        store.get_api_key(None, &b.id).unwrap().last_used_at,
        Some(at(5))
    );
    assert_eq!(
        store.latest_change_seq().unwrap(),
        seq,
        "touching records no change"
    );
}

fn the_change_feed_records_key_changes_in_order_and_pages(store: &dyn Store) {
    assert_eq!(store.latest_change_seq().unwrap(), 0);
    assert!(store.changes_since(0, 10).unwrap().is_empty());
    let t = new_tenant(store, "Acme", 0);
    let k1 = store.create_api_key(&new_key(&t.id, "1")).unwrap();
    let k2 = store.create_api_key(&new_key(&t.id, "2")).unwrap();
    store.revoke_api_key(None, &k1.id, at(1)).unwrap();
    store.set_api_key_expiry(None, &k2.id, Some(at(2))).unwrap();

    let all = store.changes_since(0, 100).unwrap();
    let refs: Vec<&str> = all.iter().map(|c| c.ref_id.as_str()).collect();
    assert_eq!(
        refs,
        vec![
            k1.id.as_str(),
            k2.id.as_str(),
            k1.id.as_str(),
            k2.id.as_str()
        ]
    );
    assert!(all.iter().all(|c| c.topic == "api_key"));
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.latest_change_seq().unwrap(), all[3].seq);

    let page1 = store.changes_since(0, 3).unwrap();
    let page2 = store.changes_since(page1[2].seq, 3).unwrap();
    assert_eq!(page1, all[..3]);
    assert_eq!(page2, all[3..]);
    assert!(store.changes_since(all[3].seq, 3).unwrap().is_empty());
}

fn concurrent_key_changes_are_all_recorded_with_distinct_increasing_seqs(store: &dyn Store) {
    let t = new_tenant(store, "Acme", 0);
    std::thread::scope(|s| {
        for w in 0..4 {
            let t = &t;
            s.spawn(move || {
                for i in 0..5 {
                    let rec = store
                        .create_api_key(&new_key(&t.id, &format!("{w}-{i}")))
                        .unwrap();
                    store.revoke_api_key(Some(&t.id), &rec.id, at(i)).unwrap();
                }
            });
        }
    });
    let all = store.changes_since(0, 1000).unwrap();
    assert_eq!(all.len(), 40);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.list_api_keys(&t.id).unwrap().len(), 20);
}

// ---------------------------------------------------------------------------------------
// Users and sessions

fn users_are_created_found_by_email_whatever_its_case_and_counted(store: &dyn Store) {
    assert_eq!(store.count_users().unwrap(), 0);
    let t = new_tenant(store, "Acme", 0);
    let op = store
        .create_user(&new_user("root@example.com", None))
        .unwrap();
    let ada = store
        .create_user(&new_user("Ada@Example.com", Some(&t.id)))
        .unwrap();
    assert_eq!(store.count_users().unwrap(), 2);

    let found = store
        .find_user_by_email(&Email::parse("ADA@example.COM").unwrap())
        .unwrap();
    assert_eq!(found.as_ref(), Some(&ada));
    let found = found.unwrap();
    assert_eq!(found.email.as_str(), "ada@example.com");
    assert_eq!(found.tenant_id, Some(t.id.clone()));
    assert_eq!(found.role, Role::Admin);
    assert!(found.password.verify("correct horse battery"));
    assert_eq!(store.get_user(&op.id).unwrap(), op);
    assert_eq!(op.tenant_id, None);
    assert_eq!(
        store
            .find_user_by_email(&Email::parse("nobody@example.com").unwrap())
            .unwrap(),
        None
    );
    assert!(matches!(
        store.get_user(&UserId::generate()),
        Err(StoreError::NotFound)
    ));
}

fn a_duplicate_email_is_a_conflict_and_an_unknown_tenant_is_not_found(store: &dyn Store) {
    store
        .create_user(&new_user("ada@example.com", None))
        .unwrap();
    let err = store
        .create_user(&new_user("ADA@example.com", None))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("ada@example.com")),
        "{err:?}"
    );
    let orphan = new_user("bob@example.com", Some(&TenantId::generate()));
    assert!(matches!(
        store.create_user(&orphan),
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.count_users().unwrap(), 1);
}

fn sessions_are_found_until_they_expire_and_can_be_deleted(store: &dyn Store) {
    let user = store
        .create_user(&new_user("ada@example.com", None))
        .unwrap();
    let s = new_session(&user.id, "hash-1", 1000);
    store.create_session(&s).unwrap();
    assert!(matches!(
        store.create_session(&new_session(&user.id, "hash-1", 1)),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_session(&new_session(&UserId::generate(), "hash-2", 1)),
        Err(StoreError::NotFound)
    ));

    let found = store.find_session("hash-1", at(999)).unwrap().unwrap();
    assert_eq!(
        (found.id, found.user_id, found.created_at, found.expires_at),
        (s.id, user.id, at(0), at(1000))
    );
    assert_eq!(
        store.find_session("hash-1", at(1000)).unwrap(),
        None,
        "expired at its expiry time"
    );
    assert_eq!(store.find_session("other", at(0)).unwrap(), None);

    store.delete_session("hash-1").unwrap();
    assert_eq!(store.find_session("hash-1", at(1)).unwrap(), None);
    store.delete_session("hash-1").unwrap();
}

fn expired_sessions_are_purged_and_live_ones_kept(store: &dyn Store) {
    let user = store
        .create_user(&new_user("ada@example.com", None))
        .unwrap();
    for (hash, expires) in [("old-1", 10), ("old-2", 20), ("live", 30)] {
        store
            .create_session(&new_session(&user.id, hash, expires))
            .unwrap();
    }
    assert_eq!(store.purge_expired_sessions(at(20)).unwrap(), 2);
    assert_eq!(store.purge_expired_sessions(at(20)).unwrap(), 0);
    assert!(store.find_session("live", at(20)).unwrap().is_some());
}

fn sessions_are_deleted_with_their_user(db: &Db) {
    let user = db
        .store
        .create_user(&new_user("ada@example.com", None))
        .unwrap();
    db.store
        .create_session(&new_session(&user.id, "h", 1000))
        .unwrap();
    db.target.exec(&format!(
        "DELETE FROM users WHERE id = '{}'",
        user.id.as_str()
    ));
    assert_eq!(db.target.scalar("SELECT COUNT(*) FROM sessions"), 0);
}

// ---------------------------------------------------------------------------------------
// Operations

fn ping_answers_and_pool_stats_count_connections(store: &dyn Store) {
    store.ping().unwrap();
    let stats = store.pool_stats();
    assert!(stats.connections >= 1, "{stats:?}");
    assert!(stats.idle <= stats.connections, "{stats:?}");
}

async fn the_store_is_opened_used_and_dropped_from_async_code_through_run_blocking(target: Target) {
    let dir = target.dir.path().to_owned();
    let url = target.url.clone();
    let store = run_blocking(move || store::open(&dir, url.as_deref()))
        .await
        .unwrap();

    let s = store.clone();
    let tenant = run_blocking(move || new_tenant(&*s, "Async", 0)).await;
    let s = store.clone();
    let id = tenant.id.clone();
    let key = run_blocking(move || s.create_api_key(&new_key(&id, "async")))
        .await
        .unwrap();

    // Several store calls in flight at once on the blocking pool.
    let lookups = (0..8).map(|_| {
        let s = store.clone();
        let hash = key.hash.clone();
        tokio::spawn(run_blocking(move || s.find_api_key_by_hash(&hash)))
    });
    for l in lookups {
        assert_eq!(
            l.await.unwrap().unwrap().map(|k| k.id),
            Some(key.id.clone())
        );
    }
    let s = store.clone();
    run_blocking(move || s.ping()).await.unwrap();

    // Dropping the last handle on an async worker thread must not panic.
    drop(store);
    drop(target);
}
