//! Durability: kill -9 the real server binary under load; after a restart every call that
//! got a 200 is recorded. Each `durability` level reaches the connections that commit.

use crate::helpers::{Backend, DataHome, MockUpstream, TestApp, chat_body, spawn_server_process};
use agv_server::store::{CommitSettings, Durability, run_blocking};
use std::io::BufRead;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn spawn_server(home: &DataHome, upstream: &str) -> (Child, u16) {
    let url = home.database_url();
    let server = spawn_server_process(
        home.path(),
        url.as_deref(),
        &[
            ("AGV_UPSTREAM_URL", upstream),
            ("AGV_UNAUTH_RATE_LIMIT_PER_MINUTE", "0"),
            // The weaker level, whose promise is exactly this: a crash of agv-server
            // loses no acknowledged call (Postgres then commits calls asynchronously).
            ("AGV_DURABILITY", "process"),
        ],
    );
    let log = server.log;
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in log.lines() {});
    (server.child, server.port)
}

async fn every_acknowledged_call_survives_kill_9(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let upstream = MockUpstream::start();
    let (tenant, admin) = home.tenant_and_key("admin");
    let key = home.cli_ok(&["key", "create", "--tenant", &tenant]);
    let (mut child, port) = spawn_server(&home, &upstream.url());
    let base = format!("http://127.0.0.1:{port}");
    let client = agv_testkit::http_client();
    // Allow the load: the default is 100 requests per minute per key.
    let res = client.put(format!("{base}/v1/policies")).bearer_auth(&admin).json(&serde_json::json!({"key_requests_per_minute": 100000, "tenant_requests_per_minute": 100000})).send().await.unwrap();
    assert_eq!(res.status(), 200);

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, base, key, acked) = (client.clone(), base.clone(), key.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            while started.elapsed() < Duration::from_secs(5) {
                match client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&chat_body("durable"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let id = r.headers()["x-agv-call-id"].to_str().unwrap().to_owned();
                        // Only a complete response counts as acknowledged.
                        if r.bytes().await.is_ok() {
                            acked.lock().unwrap().push(id);
                        }
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "only {} calls were acknowledged before the kill",
        acked.len()
    );

    let (mut child, port) = spawn_server(&home, &upstream.url());
    let base = format!("http://127.0.0.1:{port}");
    let mut missing = Vec::new();
    for id in &acked {
        let res = client
            .get(format!("{base}/v1/calls/{id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        if res.status() != 200 {
            missing.push(id.clone());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged calls were lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// What the database must report for `level` (`None`: the setting left unset) on
/// `backend`: SQLite's `synchronous` on every connection; on Postgres,
/// `synchronous_commit` inside the recorder's transaction and on other connections.
fn expected_commits(backend: Backend, level: Option<Durability>) -> CommitSettings {
    let (calls, other_writes, calls_wait_for_disk) = match (backend, level) {
        (Backend::Sqlite, None | Some(Durability::Process)) => {
            ("synchronous=NORMAL", "synchronous=NORMAL", false)
        }
        (Backend::Sqlite, Some(Durability::Power)) => {
            ("synchronous=FULL", "synchronous=FULL", true)
        }
        (Backend::Postgres, Some(Durability::Process)) => {
            ("synchronous_commit=off", "synchronous_commit=on", false)
        }
        (Backend::Postgres, None | Some(Durability::Power)) => {
            ("synchronous_commit=on", "synchronous_commit=on", true)
        }
    };
    CommitSettings {
        calls: calls.into(),
        other_writes: other_writes.into(),
        calls_wait_for_disk,
    }
}

async fn each_durability_level_reaches_the_connections_that_commit(backend: Backend) {
    let Some(mut home) = DataHome::new(backend) else {
        return;
    };
    let upstream = MockUpstream::start();
    let (tenant, _admin) = home.tenant_and_key("admin");
    let key = home.cli_ok(&["key", "create", "--tenant", &tenant]);
    for level in [None, Some(Durability::Power), Some(Durability::Process)] {
        let url = upstream.url();
        let app = TestApp::start_with(home, |s| {
            s.durability = level;
            s.upstream_url = url;
        })
        .await;
        // A call recorded at this level, through the recorder's transaction.
        let res = app.chat(&key, "durable").await;
        assert_eq!(res.status(), 200, "{level:?}");
        let store = app.app_state.store.clone();
        let commits = run_blocking(move || store.commit_settings()).await.unwrap();
        assert_eq!(commits, expected_commits(backend, level), "{level:?}");
        home = app.stop().await;
    }
}

async fn agv_durability_is_described_and_logged_with_what_the_database_commits_with(
    backend: Backend,
) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    // The level that is not the backend's default.
    let level = match backend {
        Backend::Sqlite => Durability::Power,
        Backend::Postgres => Durability::Process,
    };
    let url = home.database_url();
    let mut server = spawn_server_process(
        home.path(),
        url.as_deref(),
        &[("AGV_DURABILITY", level.as_str())],
    );
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    server.child.wait().unwrap();
    let line = |pick: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        server
            .startup_log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| pick(v))
            .unwrap_or_else(|| panic!("not in the log: {}", server.startup_log))
    };
    let setting = line(&|v| v["setting"] == "durability");
    assert_eq!(setting["value"], level.as_str());
    assert_eq!(setting["source"], "env AGV_DURABILITY");
    let commits = line(&|v| v["message"] == "commits");
    let expected = expected_commits(backend, Some(level));
    assert_eq!(commits["durability"], level.as_str());
    assert_eq!(commits["calls"], expected.calls.as_str());
    assert_eq!(commits["other_writes"], expected.other_writes.as_str());
}

crate::on_both_backends!(
    every_acknowledged_call_survives_kill_9,
    each_durability_level_reaches_the_connections_that_commit,
    agv_durability_is_described_and_logged_with_what_the_database_commits_with,
);
