//! Backups uploaded to an S3-compatible bucket, against a real S3 server: moto's standalone
//! server (`target/s3-venv/bin/moto_server`, made by `tests/s3/setup.sh`; `.ci/run` runs
//! it), started on a free port per test. Without it the tests say SKIPPED — or fail when
//! AGV_TEST_REQUIRE_ALL=1.
//!
//! The copies are read back through the S3 API and compared byte for byte (SHA-256) with
//! the local files. moto does not check presigned signatures, so wrong credentials cannot
//! be shown to fail here; an unreachable endpoint and a missing bucket can.

use crate::alerts::{Receiver, operator_hook, system_alert, wait_for};
use crate::helpers::{Backend, ConsoleSession, DataHome, TestApp, cli_command, stderr};
use agv_server::config::BackupS3;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY_ID: &str = "agv-test-key-id";
const SECRET: &str = "agv-test-secret-do-not-print";
const SIGNED: Duration = Duration::from_secs(600);

/// moto's S3 server on 127.0.0.1, killed when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
    client: reqwest::Client,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/s3-venv/bin/moto_server");
    bin.exists().then_some(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// `None` (after SKIPPED) when moto's server is not installed.
    async fn start() -> Option<Self> {
        let Some(bin) = moto_server() else {
            agv_server::store::testing::skip_or_fail(
                "S3 upload tests",
                "target/s3-venv is missing; run `bash tests/s3/setup.sh` to create it",
            );
            return None;
        };
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            client: agv_testkit::http_client(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(res) = server.client.get(&server.endpoint).send().await
                && res.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(server)
    }

    fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(
            self.endpoint.parse().unwrap(),
            UrlStyle::Path,
            name.to_owned(),
            "us-east-1",
        )
        .unwrap()
    }

    fn creds() -> Credentials {
        Credentials::new(KEY_ID, SECRET)
    }

    async fn create_bucket(&self, name: &str) {
        let b = self.bucket(name);
        let url = b.create_bucket(&Self::creds()).sign(SIGNED);
        let res = self
            .client
            .put(url)
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "create bucket: {}", res.status());
    }

    async fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let b = self.bucket(bucket);
        let url = b.put_object(Some(&Self::creds()), key).sign(SIGNED);
        let res = self
            .client
            .put(url)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "put {key}: {}", res.status());
    }

    async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let b = self.bucket(bucket);
        let url = b.get_object(Some(&Self::creds()), key).sign(SIGNED);
        let res = self.client.get(url).send().await.unwrap();
        assert!(res.status().is_success(), "get {key}: {}", res.status());
        res.bytes().await.unwrap().to_vec()
    }

    /// Every key in the bucket, sorted.
    async fn keys(&self, bucket: &str) -> Vec<String> {
        let b = self.bucket(bucket);
        let creds = Self::creds();
        let url = b.list_objects_v2(Some(&creds)).sign(SIGNED);
        let text = self
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).unwrap();
        assert!(page.next_continuation_token.is_none(), "one page in tests");
        let mut keys: Vec<String> = page.contents.into_iter().map(|c| c.key).collect();
        keys.sort();
        keys
    }

    fn settings(&self, bucket: &str, prefix: &str) -> BackupS3 {
        BackupS3 {
            endpoint: self.endpoint.parse().unwrap(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            access_key_id: KEY_ID.into(),
            secret_access_key: SECRET.into(),
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The CLI with `AGV_BACKUP_S3_*` set, on a blocking thread.
async fn cli_s3(home: &DataHome, env: &[(&str, &str)], args: &[&str]) -> Output {
    let path = home.path().to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = cli_command();
        cmd.arg("--data").arg(&path).args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run agv-server")
    })
    .await
    .unwrap()
}

fn s3_env<'a>(endpoint: &'a str, bucket: &'a str, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AGV_BACKUP_S3_ENDPOINT", endpoint),
        ("AGV_BACKUP_S3_BUCKET", bucket),
        ("AGV_BACKUP_S3_PREFIX", prefix),
        ("AGV_BACKUP_S3_ACCESS_KEY_ID", KEY_ID),
        ("AGV_BACKUP_S3_SECRET_ACCESS_KEY", SECRET),
    ]
}

fn local_backups(dir: &Path) -> Vec<PathBuf> {
    agv_server::ops::backup::list(dir)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

#[tokio::test]
async fn the_cli_backup_uploads_a_copy_equal_to_the_local_file_that_verifies() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("agv-backups").await;
    let home = DataHome::new(Backend::Sqlite).unwrap();
    home.tenant_and_key("admin");
    let env = s3_env(&s3.endpoint, "agv-backups", "/site-a/");
    let out = cli_s3(&home, &env, &["backup"]).await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(SECRET), "the secret was printed: {err}");
    let local = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let name = local.file_name().unwrap().to_str().unwrap().to_owned();
    let key = format!("site-a/{name}");
    assert!(
        err.contains(&format!("uploaded to s3://agv-backups/{key}")),
        "{err}"
    );
    assert_eq!(s3.keys("agv-backups").await, vec![key.clone()]);

    // The copy, read back through the S3 API, is the local file byte for byte…
    let remote = s3.get("agv-backups", &key).await;
    assert_eq!(sha256(&remote), sha256(&std::fs::read(&local).unwrap()));
    // …and verifies as a backup on its own.
    let fetched = home.path().join("fetched.tar");
    std::fs::write(&fetched, &remote).unwrap();
    let out = home.cli(&["backup", "verify", fetched.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // --no-upload keeps the backup local.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = cli_s3(&home, &env, &["backup", "--no-upload"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-upload"), "{}", stderr(&out));
    assert_eq!(local_backups(&home.path().join("backups")).len(), 2);
    assert_eq!(s3.keys("agv-backups").await, vec![key]);
}

#[tokio::test]
async fn a_failed_cli_upload_exits_1_with_the_reason_and_keeps_the_local_backup() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let home = DataHome::new(Backend::Sqlite).unwrap();

    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = cli_s3(&home, &s3_env(&closed, "agv-backups", ""), &["backup"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "was written, but the upload to s3://agv-backups/ failed",
        "cannot reach the S3 endpoint",
        "backup_s3_endpoint",
        "The local file is kept",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert!(
        !err.contains(SECRET) && !err.contains("Signature="),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(local_backups(&home.path().join("backups")).len(), 1);

    // A bucket that does not exist: the storage's own answer, and what to fix.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = cli_s3(
        &home,
        &s3_env(&s3.endpoint, "no-such-bucket", ""),
        &["backup"],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(err.contains("backup_s3_bucket"), "{err}");
    assert_eq!(local_backups(&home.path().join("backups")).len(), 2);
}

#[test]
fn bad_s3_settings_are_refused_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = cli_command();
        cmd.arg("--data").arg(dir.path()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let full = s3_env("http://127.0.0.1:9", "agv-backups", "");
    let with = |key: &str, value: &str| -> Vec<(&str, String)> {
        full.iter()
            .map(|(k, v)| {
                if *k == key {
                    (*k, value.to_owned())
                } else {
                    (*k, (*v).to_owned())
                }
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    };
    for (env, expected) in [
        (
            with("AGV_BACKUP_S3_ENDPOINT", "ftp://files.example"),
            "invalid backup_s3_endpoint",
        ),
        (
            with("AGV_BACKUP_S3_ENDPOINT", "not a url"),
            "invalid backup_s3_endpoint",
        ),
        (
            with("AGV_BACKUP_S3_ENDPOINT", ""),
            "missing backup_s3_endpoint",
        ),
        (with("AGV_BACKUP_S3_BUCKET", ""), "missing backup_s3_bucket"),
        (
            with("AGV_BACKUP_S3_BUCKET", "Bad_Bucket"),
            "invalid backup_s3_bucket",
        ),
        (
            with("AGV_BACKUP_S3_SECRET_ACCESS_KEY", ""),
            "missing backup_s3_secret_access_key (AGV_BACKUP_S3_SECRET_ACCESS_KEY)",
        ),
        (
            with("AGV_BACKUP_S3_ACCESS_KEY_ID", ""),
            "missing backup_s3_access_key_id",
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // The server refuses to start, and so does every command reading the settings.
        for args in [&["serve"][..], &["backup"][..]] {
            let out = run(&env, args);
            let err = stderr(&out);
            assert!(!out.status.success(), "{args:?} {env:?} should fail: {err}");
            assert!(err.contains(expected), "{expected:?} not in {err}");
            assert!(!err.contains(SECRET), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // Credentials without a bucket are a half-done setup too.
    let out = run(&[("AGV_BACKUP_S3_SECRET_ACCESS_KEY", SECRET)], &["serve"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("backup_s3_secret_access_key = '(secret)'")
            && err.contains("backup_s3_endpoint and backup_s3_bucket are not"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}

/// Signs the operator in and asks for a backup now; returns the backup job's id.
async fn back_up_now(app: &TestApp) -> String {
    let password = "a long enough password";
    app.home
        .make_user("ops@example.com", "operator", None, password);
    let op = ConsoleSession::sign_in(&app.client, &app.url(""), "ops@example.com", password).await;
    let res = app
        .client
        .post(app.url("/api/operator/backups"))
        .header("cookie", &op.cookie)
        .header("x-csrf-token", &op.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: Value = res.json().await.unwrap();
    let res = app
        .client
        .get(app.url("/api/operator/backups"))
        .header("cookie", &op.cookie)
        .send()
        .await
        .unwrap();
    let list: Value = res.json().await.unwrap();
    let location = app
        .app_state
        .settings
        .backup_s3
        .as_ref()
        .map(BackupS3::location);
    assert_eq!(list["upload_to"].as_str(), location.as_deref(), "{list}");
    job["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn back_up_now_uploads_through_a_job_and_the_keep_rule_prunes_the_remote_copies() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("agv-backups").await;
    // Remote history: one backup a day at 03:00 for the 40 days before today, plus
    // objects the keep rule must never touch.
    let today = chrono::Utc::now().date_naive();
    let day_of = |name: &str| {
        let stamp = name
            .trim_start_matches("prod/agv-backup-")
            .trim_end_matches(".tar");
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
            .unwrap()
            .date()
    };
    for i in 1..=40 {
        let day = today - chrono::Duration::days(i);
        let key = format!("prod/agv-backup-{}T030000Z.tar", day.format("%Y%m%d"));
        s3.put("agv-backups", &key, b"an old backup").await;
    }
    let untouchable = [
        "prod/notes.txt",
        "prod/agv-tenant-ten_x-20200101T000000Z.tar",
        "prod/archive/agv-backup-20200101T000000Z.tar",
        "other/agv-backup-20200101T000000Z.tar",
    ];
    for key in untouchable {
        s3.put("agv-backups", key, b"keep me").await;
    }

    let home = DataHome::new(Backend::Sqlite).unwrap();
    let cfg = s3.settings("agv-backups", "prod/");
    let app = TestApp::start_with(home, |s| {
        s.backup_cron = None;
        s.backup_verify_cron = None;
        s.backup_s3 = Some(cfg);
    })
    .await;
    back_up_now(&app).await;

    // The new backup is uploaded, then the history is cut to 7 days + 4 weeks.
    let backups_dir = app.app_state.settings.backup_dir.clone();
    let kept = wait_for("the upload and the remote keep rule", async || {
        let keys = s3.keys("agv-backups").await;
        let autos: Vec<String> = keys
            .into_iter()
            .filter(|k| k.starts_with("prod/agv-backup-"))
            .collect();
        (autos.len() == 11 && autos.iter().any(|k| day_of(k) == today)).then_some(autos)
    })
    .await;
    let local = local_backups(&backups_dir);
    assert_eq!(local.len(), 1);
    let name = local[0].file_name().unwrap().to_str().unwrap();
    let remote = s3.get("agv-backups", &format!("prod/{name}")).await;
    assert_eq!(sha256(&remote), sha256(&std::fs::read(&local[0]).unwrap()));

    // The newest of each of the last 7 days…
    let mut days: Vec<_> = kept.iter().map(|k| day_of(k)).collect();
    days.sort_unstable_by(|a, b| b.cmp(a));
    for (i, d) in days.iter().take(7).enumerate() {
        assert_eq!(*d, today - chrono::Duration::days(i as i64), "{kept:?}");
    }
    // …and one of each of the 4 weeks before, none of them a week of those days.
    use chrono::Datelike;
    let daily_weeks: Vec<_> = days[..7].iter().map(|d| d.iso_week()).collect();
    let weekly: std::collections::BTreeSet<_> = days[7..].iter().map(|d| d.iso_week()).collect();
    assert_eq!(weekly.len(), 4, "{kept:?}");
    assert!(weekly.iter().all(|w| !daily_weeks.contains(w)), "{kept:?}");
    let keys = s3.keys("agv-backups").await;
    for key in untouchable {
        assert!(keys.contains(&key.to_owned()), "{key} was deleted");
    }
    let dead = app.app_state.queue.dead_letters().unwrap();
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test]
async fn an_unreachable_bucket_is_retried_then_dead_lettered_with_an_alert_and_the_backup_stays() {
    // No S3 server is needed to fail to reach one; the moto check keeps the skip honest.
    if moto_server().is_none() {
        agv_server::store::testing::skip_or_fail(
            "S3 upload tests",
            "target/s3-venv is missing; run `bash tests/s3/setup.sh` to create it",
        );
        return;
    }
    let hook = Receiver::start();
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let url = hook.url.clone();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let cfg = BackupS3 {
        endpoint: closed.parse().unwrap(),
        bucket: "agv-backups".into(),
        region: "us-east-1".into(),
        prefix: String::new(),
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
    };
    let app = TestApp::start_with(home, |s| {
        operator_hook(s, url);
        s.alert_webhook_allowed_hosts =
            agv_server::domain::alert::HostAllowlist::parse("127.0.0.1").unwrap();
        s.backup_cron = None;
        s.backup_verify_cron = None;
        s.backup_s3 = Some(cfg);
        s.backup_s3_upload_attempts = 3;
    })
    .await;
    back_up_now(&app).await;
    let body = system_alert(&hook, "backup_upload_failed").await;
    let message = body["system"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not be uploaded to s3://agv-backups/ after 3 attempts")
            && message.contains("cannot reach the S3 endpoint")
            && message.contains("kept locally"),
        "{message}"
    );
    assert!(!message.contains(SECRET));
    let dead = app.app_state.queue.dead_letters().unwrap();
    let upload = dead
        .iter()
        .find(|d| d.job.kind == "upload_backup")
        .expect("a dead upload job");
    assert_eq!(upload.job.attempts, 3, "one try and two retries");
    let file = upload.job.payload["file"].as_str().unwrap();
    assert!(message.contains(file), "{message}");
    assert!(
        upload
            .job
            .last_error
            .as_deref()
            .unwrap()
            .contains("cannot reach the S3 endpoint")
    );
    // The backup itself succeeded and is kept.
    assert!(app.app_state.settings.backup_dir.join(file).is_file());
    assert!(
        dead.iter().all(|d| d.job.kind == "upload_backup"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn scheduled_backups_are_uploaded_and_the_copy_verifies() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("agv-backups").await;
    let home = DataHome::new(Backend::Sqlite).unwrap();
    home.tenant_and_key("admin");
    let cfg = s3.settings("agv-backups", "");
    let app = TestApp::start_with(home, |s| {
        s.backup_cron = Some("* * * * * *".into());
        s.backup_verify_cron = None;
        s.backup_s3 = Some(cfg);
    })
    .await;
    // A backup a second, each uploaded then pruned to the newest of the day: read one
    // copy back whole (a key may be deleted between the listing and the read).
    let creds = S3Server::creds();
    let bucket = s3.bucket("agv-backups");
    let copy = wait_for("an uploaded scheduled backup", async || {
        let key = s3.keys("agv-backups").await.into_iter().last()?;
        let url = bucket.get_object(Some(&creds), &key).sign(SIGNED);
        let res = s3.client.get(url).send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        Some(res.bytes().await.ok()?.to_vec())
    })
    .await;
    let fetched = app.home.path().join("fetched.tar");
    std::fs::write(&fetched, &copy).unwrap();
    let out = app
        .home
        .cli(&["backup", "verify", fetched.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}
