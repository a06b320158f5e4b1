//! Durability: kill -9 the real server binary under load; after a restart every call that
//! got a 200 is recorded.

use crate::helpers::{Backend, DataHome, MockUpstream, chat_body, spawn_server_process};
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
    let client = reqwest::Client::new();
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

crate::on_both_backends!(every_acknowledged_call_survives_kill_9);
