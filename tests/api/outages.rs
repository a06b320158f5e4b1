//! Storage outages under a running server: the disk holding the SQLite data dir fills up,
//! and the Postgres server is stopped and restarted while calls come in. In both the server
//! stays up, answers an OpenAI-shaped 503 (never a 200 for a call it could not record),
//! reports not ready, recovers by itself, and every call that got a 200 is stored.
//!
//! Both need root-only things (a tmpfs mount; a private Postgres cluster run as the user
//! `postgres`); where those are missing they print SKIPPED, or fail under
//! AGV_TEST_REQUIRE_ALL=1. The shared Postgres on 5432 is never touched.

use crate::helpers::{DataHome, MockUpstream, TestApp, chat_body, cli_command};
use agv_server::store::testing::skip_or_fail;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs the CLI on `data` (and `database_url`); returns trimmed stdout.
fn cli_ok(data: &Path, database_url: Option<&str>, args: &[&str]) -> String {
    let mut cmd = cli_command();
    cmd.arg("--data").arg(data);
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.args(args).output().expect("run agv-server");
    assert!(
        out.status.success(),
        "agv-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A tenant, an admin key and a proxy key, made through the CLI.
fn tenant_and_keys(data: &Path, url: Option<&str>) -> (String, String) {
    let tenant = cli_ok(data, url, &["tenant", "create", "Acme"]);
    let admin = cli_ok(
        data,
        url,
        &["key", "create", "--tenant", &tenant, "--scope", "admin"],
    );
    let key = cli_ok(
        data,
        url,
        &["key", "create", "--tenant", &tenant, "--scope", "proxy"],
    );
    (admin, key)
}

async fn start(home: DataHome, upstream: &MockUpstream, url: Option<String>) -> TestApp {
    let upstream_url = upstream.url();
    TestApp::start_with(home, |s| {
        s.upstream_url = upstream_url;
        // Generous: the large prompts below take a while on a busy machine.
        s.upstream_timeout = Duration::from_secs(15);
        s.unauth_rate_limit_per_minute = 0;
        if url.is_some() {
            s.database_url = url;
        }
    })
    .await
}

/// Lifts the request and token limits (100 requests a minute, 16,000 tokens a request by
/// default) for the traffic and the large prompts below.
async fn allow_load(app: &TestApp, admin: &str) {
    app.set_policy(
        admin,
        serde_json::json!({
            "key_requests_per_minute": 100000, "tenant_requests_per_minute": 100000,
            "max_tokens_per_request": 1000000, "max_cost_per_request_usd": 100.0,
            "key_tokens_per_minute": 100000000, "tenant_tokens_per_minute": 100000000,
        }),
    )
    .await;
}

/// The JSON error body of a non-200 answer; asserts the OpenAI shape.
async fn openai_error(res: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = res.json().await.expect("a JSON error body");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty())
            && err["type"].as_str().is_some()
            && err["code"].as_str().is_some(),
        "not an OpenAI-shaped error: {body}"
    );
    body
}

/// Every id answered with a 200 is readable through the API.
async fn assert_all_recorded(app: &TestApp, admin: &str, acked: &[String]) {
    let mut missing = Vec::new();
    for id in acked {
        let res = app.get_with_key(&format!("/v1/calls/{id}"), admin).await;
        if res.status() != 200 {
            missing.push((id.clone(), res.status()));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} calls answered with 200 are not stored: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Sends chat calls until one gets a 200 (returning its call id), failing after `within`.
async fn until_a_call_succeeds(app: &TestApp, key: &str, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let res = app.chat(key, "are you back?").await;
        if res.status() == 200 {
            let id = crate::helpers::call_id(&res);
            res.bytes().await.unwrap();
            return (id, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "calls still fail {within:?} after the storage came back: {} {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn until_ready(app: &TestApp, within: Duration) {
    let started = Instant::now();
    loop {
        let res = app.get("/ready").await;
        if res.status() == 200 {
            return;
        }
        assert!(
            started.elapsed() < within,
            "/ready still {} after {within:?}: {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------

/// A small tmpfs mounted for one test; unmounted (and its mount point removed) on drop,
/// also when the test fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (after SKIPPED) when mounting is not possible here.
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("agv-diskfull-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            other => {
                let _ = std::fs::remove_dir(&dir);
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                skip_or_fail(
                    "the disk-full test",
                    &format!("cannot mount a tmpfs (needs root): {why}"),
                );
                None
            }
        }
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs only writes the struct given; the path is a valid C string.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0, "statvfs");
            st.f_bavail as u64 * st.f_frsize as u64
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .output()
            .is_ok_and(|o| o.status.success());
        if !unmounted {
            // Something still holds a file open: detach now, freed when it lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A prompt of about `bytes` bytes; stored whole (the default storage cap is 1 MiB).
fn big_prompt(bytes: usize, tag: &str) -> String {
    let mut s = format!("{tag} ");
    while s.len() < bytes {
        s.push_str("the quick brown fox jumps over the lazy dog ");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503s_not_unrecorded_200s_and_recovers_when_space_returns() {
    let Some(disk) = Tmpfs::mount(48) else {
        return;
    };
    let home = DataHome {
        dir: tempfile::tempdir_in(&disk.dir).unwrap(),
        pg: None,
    };
    let (admin, key) = tenant_and_keys(home.path(), None);
    let upstream = MockUpstream::start();
    let app = start(home, &upstream, None).await;
    allow_load(&app, &admin).await;

    // Jobs queued while the disk has room, due in an hour so no worker takes them.
    let later = || agv_server::jobs::EnqueueOptions {
        run_at: Some(agv_server::domain::Timestamp::now().plus_millis(3_600_000)),
        ..Default::default()
    };
    let mut kept_jobs = Vec::new();
    for n in 0..3 {
        let id = app
            .app_state
            .queue
            .enqueue("test.later", serde_json::json!({"n": n}), later())
            .unwrap();
        kept_jobs.push(id);
    }

    let mut acked = Vec::new();
    for i in 0..3 {
        let res = app.chat(&key, &format!("before {i}")).await;
        assert_eq!(res.status(), 200);
        acked.push(crate::helpers::call_id(&res));
    }

    // Leave about 1.5 MB, then send 200 KB prompts until recording fails.
    let filler_path = disk.dir.join("filler");
    let keep = 1_500_000;
    let free = disk.free_bytes();
    assert!(
        free > keep + 1_000_000,
        "the tmpfs has only {free} bytes free"
    );
    let filler = vec![0x5au8; (free - keep) as usize];
    std::fs::write(&filler_path, &filler).unwrap();
    drop(filler);

    let mut refused = None;
    for i in 0..400 {
        let body = chat_body(&big_prompt(200_000, &format!("filling{i}")));
        let res = app.post_json("/v1/chat/completions", &key, &body).await;
        match res.status().as_u16() {
            200 => {
                let id = crate::helpers::call_id(&res);
                res.bytes().await.unwrap();
                acked.push(id);
            }
            503 => {
                refused = Some(openai_error(res).await);
                break;
            }
            other => panic!(
                "call {i} on a filling disk got {other}: {}",
                res.text().await.unwrap_or_default()
            ),
        }
    }
    let refused = refused.expect("the disk never filled up");
    assert_eq!(refused["error"]["code"], "recording_failed", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage is full"),
        "the client is told why: {refused}"
    );
    eprintln!(
        "disk full after {} recorded calls; {} bytes free",
        acked.len(),
        disk.free_bytes()
    );

    // While it is full: calls are refused, a stream ends without [DONE], the server says
    // it is not ready and why, and stays up. (These are at least as large as the refused
    // call: a smaller record can still fit in the WAL space that a failed transaction left
    // allocated, and then it is rightly recorded and answered.)
    for i in 0..3 {
        let body = chat_body(&big_prompt(200_000, &format!("full{i}")));
        let res = app.post_json("/v1/chat/completions", &key, &body).await;
        assert_eq!(
            res.status(),
            503,
            "a call that cannot be recorded is not answered"
        );
        let body = openai_error(res).await;
        assert_eq!(body["error"]["code"], "recording_failed", "{body}");
    }
    let res = app
        .post_json(
            "/v1/chat/completions",
            &key,
            // Larger than any refused record so far (a refused call's request and echoed
            // reply); the mock echoes the prompt, max_tokens keeps the stream short.
            &serde_json::json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 5,
                "messages": [{"role": "user", "content": big_prompt(600_000, "stream")}]}),
        )
        .await;
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("[DONE]") && text.contains("recording_failed"),
        "a stream that could not be recorded ends with an error, not [DONE]: {text}"
    );
    let res = app.get("/ready").await;
    assert_eq!(res.status(), 503);
    let ready: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ready["checks"]["store"]["ok"], false, "{ready}");
    assert!(
        ready["checks"]["store"]["error"]
            .as_str()
            .unwrap()
            .contains("disk holding the database is full"),
        "{ready}"
    );
    assert_eq!(app.get("/health").await.status(), 200);
    // Reading still works: the console can investigate while the disk is full.
    assert_eq!(
        app.get_with_key(&format!("/v1/calls/{}", acked[0]), &admin)
            .await
            .status(),
        200
    );
    // The job queue (sled, same disk) refuses new work with an error once it cannot
    // write; nothing panics and the server stays up.
    let refused_job = loop {
        let pad = "x".repeat(50_000);
        match app.app_state.queue.enqueue(
            "test.later",
            serde_json::json!({"n": kept_jobs.len(), "pad": pad}),
            later(),
        ) {
            Ok(id) => kept_jobs.push(id),
            Err(e) => break e,
        }
        assert!(
            kept_jobs.len() < 100,
            "the job queue never noticed the full disk"
        );
    };
    assert!(
        refused_job.to_string().contains("No space left"),
        "{refused_job}"
    );
    assert!(
        refused_job.to_string().contains("no restart is needed"),
        "the error says what to do: {refused_job}"
    );
    // /ready says the queue cannot write, and why, while the disk is full; queued jobs
    // can still be read.
    let res = app.get("/ready").await;
    assert_eq!(res.status(), 503);
    let ready: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ready["checks"]["queue"]["ok"], false, "{ready}");
    let queue_error = ready["checks"]["queue"]["error"].as_str().unwrap();
    assert!(
        queue_error.contains("No space left") && queue_error.contains("free disk space"),
        "{ready}"
    );
    for id in &kept_jobs {
        assert!(app.app_state.queue.get(id).unwrap().is_some());
    }
    // Give the background writers (WAL checkpoints, the search indexer, sled's flusher)
    // time to run into the full disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.get("/health").await.status(), 200);

    // Space returns: calls succeed again without a restart.
    std::fs::remove_file(&filler_path).unwrap();
    let (id, took) = until_a_call_succeeds(&app, &key, Duration::from_secs(10)).await;
    eprintln!("recorded again {took:?} after space returned");
    acked.push(id);
    for i in 0..5 {
        let res = app.chat(&key, &format!("after recovery {i}")).await;
        assert_eq!(res.status(), 200);
        acked.push(crate::helpers::call_id(&res));
    }
    // The job queue reopens its database by itself too: /ready is 200 again without a
    // restart, every job queued before the disk filled is still there (once), and new
    // work is taken.
    let started = Instant::now();
    until_ready(&app, Duration::from_secs(10)).await;
    eprintln!(
        "/ready ok again {:?} after the calls recovered",
        started.elapsed()
    );
    let queue = &app.app_state.queue;
    for (n, id) in kept_jobs.iter().enumerate() {
        let stored_n = queue.get(id).unwrap().map(|job| job.payload["n"].clone());
        assert_eq!(
            stored_n,
            Some(serde_json::json!(n)),
            "job {id:?}, accepted before the disk filled, survives the reopen intact"
        );
    }
    let after_reopen = queue
        .enqueue("test.later", serde_json::json!({"n": 1}), later())
        .expect("the job queue takes work again without a restart");
    // And a restart finds the same jobs.
    let home = app.stop().await;
    let app = start(home, &upstream, None).await;
    until_ready(&app, Duration::from_secs(5)).await;
    for id in kept_jobs.iter().chain([&after_reopen]) {
        assert!(
            app.app_state.queue.get(id).unwrap().is_some(),
            "job {id:?} survives the restart"
        );
    }
    app.app_state
        .queue
        .enqueue("test.later", serde_json::json!({"n": 2}), later())
        .expect("the job queue takes work after the restart");
    // The text index catches up with a call made after the recovery.
    let res = app
        .chat(&key, "zanzibarquokka after the disk was full")
        .await;
    assert_eq!(res.status(), 200);
    let found_id = crate::helpers::call_id(&res);
    acked.push(found_id.clone());
    let started = Instant::now();
    loop {
        let res = app.get_with_key("/v1/calls?q=zanzibarquokka", &admin).await;
        assert_eq!(res.status(), 200);
        if res.text().await.unwrap().contains(&found_id) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "text search never found a call made after the disk was full"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    assert_all_recorded(&app, &admin, &acked).await;
    let home = app.stop().await;

    // No corruption, and exactly the calls that got a 200 are stored: none of the
    // refused ones half-written.
    let db = home.path().join("agv.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "agv.db after a full disk");
    let search: String = rusqlite::Connection::open(db.with_extension("search.db"))
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(search, "ok", "the search index after a full disk");
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored as usize,
        acked.len(),
        "every stored call is one that got a 200"
    );
    drop(conn);
    drop(home);
    drop(disk);
}

// ---------------------------------------------------------------------------------------
// Postgres stopped and restarted
// ---------------------------------------------------------------------------------------

/// A Postgres cluster of this test's own (initdb into a temp dir, run as the user
/// `postgres` on a free port); stopped and removed on drop.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// The newest `/usr/lib/postgresql/<version>/bin` that has `pg_ctl` and `initdb`.
    fn bin_dir() -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                (bin.join("pg_ctl").is_file() && bin.join("initdb").is_file())
                    .then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    fn run_as_postgres(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .expect("run runuser")
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    /// `None` (after SKIPPED) when the server binaries or the `postgres` user are missing.
    fn start() -> Option<Self> {
        let Some(bin) = Self::bin_dir() else {
            skip_or_fail(
                "the Postgres restart test",
                "no /usr/lib/postgresql/<version>/bin with initdb and pg_ctl; install postgresql",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("agv-pg-")
            .tempdir()
            .unwrap();
        let chown = Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .output();
        if !chown.as_ref().is_ok_and(|o| o.status.success()) {
            skip_or_fail(
                "the Postgres restart test",
                &format!("cannot hand a directory to the user postgres (needs root): {chown:?}"),
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { bin, dir, port };
        let data = pg.data();
        let out = pg.run_as_postgres(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.pg_ctl(&["start"]);
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl start|stop|restart`, waiting until it is done; fast shutdown.
    fn pg_ctl(&self, action: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let mut args = vec![
            "-D",
            &data,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-o",
            &opts,
        ];
        args.extend_from_slice(action);
        let out = self.run_as_postgres("pg_ctl", &args);
        assert!(
            out.status.success(),
            "pg_ctl {action:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run_as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// What one call of the background traffic got.
struct Answer {
    status: u16,
    took: Duration,
    code: Option<String>,
}

/// Two loops of chat calls until `stop`; the ids of 200s (read in full) go to `acked`.
fn traffic(
    app: &TestApp,
    key: &str,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<Vec<Answer>>> {
    (0..2)
        .map(|w| {
            let (client, url, key) = (
                app.client.clone(),
                app.url("/v1/chat/completions"),
                key.to_owned(),
            );
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let started = Instant::now();
                    let res = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&chat_body(&format!("worker {w} call {n}")))
                        .send()
                        .await
                        .expect("the server answers");
                    let status = res.status().as_u16();
                    let mut code = None;
                    if status == 200 {
                        let id = crate::helpers::call_id(&res);
                        if res.bytes().await.is_ok() {
                            acked.lock().unwrap().push(id);
                        }
                    } else {
                        let body: serde_json::Value = res.json().await.unwrap_or_default();
                        code = body["error"]["code"].as_str().map(str::to_owned);
                    }
                    answers.push(Answer {
                        status,
                        took: started.elapsed(),
                        code,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answers
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_while_serving_fails_fast_and_recovers() {
    let Some(pg) = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap()
    else {
        return;
    };
    let pg = Arc::new(pg);
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let (admin, key) = {
        let (path, url) = (dir.path().to_owned(), url.clone());
        tokio::task::spawn_blocking(move || tenant_and_keys(&path, Some(&url)))
            .await
            .unwrap()
    };
    let home = DataHome { dir, pg: None };
    let upstream = MockUpstream::start();
    let app = start(home, &upstream, Some(url.clone())).await;
    allow_load(&app, &admin).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers = traffic(&app, &key, &stop, &acked);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "no call succeeded before the outage");

    // Down: every call fails fast with a clear 503, /ready says so, the process stays up.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.pg_ctl(&["stop"]))
        .await
        .unwrap();
    for i in 0..5 {
        let started = Instant::now();
        let res = app.chat(&key, &format!("while Postgres is down {i}")).await;
        let took = started.elapsed();
        assert_eq!(res.status(), 503, "call {i} while Postgres is down");
        let body = openai_error(res).await;
        assert_eq!(body["error"]["code"], "recording_failed", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("database is unavailable"),
            "{body}"
        );
        assert!(
            took < Duration::from_secs(5),
            "call {i} took {took:?} to fail while Postgres is down"
        );
    }
    let started = Instant::now();
    let res = app.get("/ready").await;
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    let ready: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ready["checks"]["store"]["ok"], false, "{ready}");
    assert!(took < Duration::from_secs(5), "/ready took {took:?}");
    assert_eq!(app.get("/health").await.status(), 200);

    // Up again: calls succeed without restarting agv-server.
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.pg_ctl(&["start"]))
        .await
        .unwrap();
    let (id, took) = until_a_call_succeeds(&app, &key, Duration::from_secs(15)).await;
    eprintln!("recording again {took:?} after Postgres started");
    acked.lock().unwrap().push(id);
    until_ready(&app, Duration::from_secs(10)).await;

    // A restart in the middle of traffic: the same, once more.
    let n = acked.lock().unwrap().len();
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.pg_ctl(&["restart"]))
        .await
        .unwrap();
    let (id, took) = until_a_call_succeeds(&app, &key, Duration::from_secs(15)).await;
    eprintln!("recording again {took:?} after Postgres restarted");
    acked.lock().unwrap().push(id);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.unwrap());
    }
    assert!(
        acked.lock().unwrap().len() > n,
        "the traffic did not resume after the restart"
    );

    // What the traffic saw during both outages: 200s and fast 503s, nothing else.
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    eprintln!(
        "traffic: {} calls, {} refused, slowest refusal {:?}",
        answers.len(),
        failed.len(),
        failed.iter().map(|a| a.took).max()
    );
    for a in &failed {
        assert_eq!(
            a.status, 503,
            "only 503s while Postgres is away ({:?})",
            a.code
        );
        assert!(
            matches!(
                a.code.as_deref(),
                Some("recording_failed" | "store_unavailable")
            ),
            "{:?}",
            a.code
        );
        assert!(
            a.took < Duration::from_secs(5),
            "a refusal took {:?}",
            a.took
        );
    }

    let acked = acked.lock().unwrap().clone();
    assert_all_recorded(&app, &admin, &acked).await;
    app.stop().await;
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}
