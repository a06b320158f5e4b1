//! /health, /ready, /metrics, request ids, the unauthenticated rate limit, restarts.

use crate::helpers::{Backend, DataHome, TestApp, spawn_app};
use crate::on_both_backends;

async fn health_ready_and_metrics_answer(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let res = app.get("/health").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["status"],
        "ok"
    );

    let res = app.get("/ready").await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let expected = if backend == Backend::Postgres {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(body["checks"]["store"]["backend"], expected);
    assert_eq!(body["checks"]["queue"]["ok"], true);

    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    for name in [
        "agv_http_requests_total",
        "agv_http_request_duration_seconds_bucket",
        "agv_store_pool_connections",
        "agv_store_pool_in_use",
        "agv_queue_depth",
        "agv_queue_dead_letters",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        text.contains(r#"route="/ready""#),
        "requests are labelled by route:\n{text}"
    );
    app.stop().await;
}

async fn restart_keeps_tenants_and_keys(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let (tenant, key) = home.tenant_and_key("admin");
    let app = TestApp::start(home).await;
    assert_eq!(
        app.get_with_key("/v1/killswitch/status", &key)
            .await
            .status(),
        200
    );
    let home = app.stop().await;

    let app = TestApp::start(home).await;
    let res = app.get_with_key("/v1/killswitch/status", &key).await;
    assert_eq!(res.status(), 200, "the key survives a restart");
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["tenant_id"],
        tenant.as_str()
    );
    let listed = app.home.cli_ok(&["tenant", "list", "--json"]);
    assert!(listed.contains(&tenant));
    app.stop().await;
}

async fn a_queued_job_survives_a_restart(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    // Far in the future so no worker runs it before the restart.
    let app = TestApp::start(home).await;
    let later = agv_server::domain::Timestamp::now().plus_millis(3_600_000);
    let id = app
        .app_state
        .queue
        .enqueue(
            "test.later",
            serde_json::json!({"n": 1}),
            agv_server::jobs::EnqueueOptions {
                run_at: Some(later),
                ..Default::default()
            },
        )
        .unwrap();
    let before = app.app_state.queue.stats().pending;
    let home = app.stop().await;

    let app = TestApp::start(home).await;
    let stats = app.app_state.queue.stats();
    assert_eq!(stats.pending, before, "pending jobs survive a restart");
    assert!(
        app.app_state.queue.get(&id).unwrap().is_some(),
        "job {id:?} is still there"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_job_is_retried_by_the_workers_then_dead_lettered() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    // No handler knows this kind, so every attempt fails.
    let id = app
        .app_state
        .queue
        .enqueue(
            "test.nobody_handles_this",
            serde_json::json!({}),
            agv_server::jobs::EnqueueOptions {
                max_attempts: 2,
                ..Default::default()
            },
        )
        .unwrap();
    let started = std::time::Instant::now();
    let dead = loop {
        let dead = app.app_state.queue.dead_letters().unwrap();
        if let Some(d) = dead.into_iter().find(|d| d.job.id == id) {
            break d;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the job never reached the dead letters"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        dead.job.attempts, 2,
        "it was retried once after the first failure"
    );
    assert!(
        dead.job
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no handler"),
        "{:?}",
        dead.job.last_error
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("agv_jobs_retries_total{kind=\"test.nobody_handles_this\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agv_jobs_dead_total{kind=\"test.nobody_handles_this\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("agv_queue_dead_letters"), "{metrics}");
    app.stop().await;
}

async fn ready_is_503_when_the_store_goes_away(backend: Backend) {
    // Postgres only: dropping the database under the running server is a real outage.
    if backend != Backend::Postgres {
        return;
    }
    let Some(mut home) = DataHome::new(backend) else {
        return;
    };
    let app_home_pg = home.pg.take().unwrap();
    let url = app_home_pg.url.clone();
    let app = TestApp::start_with(home, |s| s.database_url = Some(url)).await;
    assert_eq!(app.get("/ready").await.status(), 200);
    drop(app_home_pg); // DROP DATABASE … WITH (FORCE)
    let res = app.get("/ready").await;
    assert_eq!(res.status(), 503);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["store"]["ok"], false, "{body}");
    assert_eq!(
        app.get("/health").await.status(),
        200,
        "the process stays up"
    );
    app.stop().await;
}

on_both_backends!(
    health_ready_and_metrics_answer,
    restart_keeps_tenants_and_keys,
    a_queued_job_survives_a_restart,
    ready_is_503_when_the_store_goes_away,
);

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_a_sane_one() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let res = app.get("/health").await;
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-123");
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "bad id with spaces");
    app.stop().await;
}

#[tokio::test]
async fn unauthenticated_endpoints_are_rate_limited_per_address() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 5).await;
    for i in 0..5 {
        assert_eq!(
            app.get("/health").await.status(),
            200,
            "request {i} is within the limit"
        );
    }
    let res = app.get("/health").await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(crate::helpers::error_code(res).await, "rate_limit_exceeded");
    app.stop().await;
}

#[tokio::test]
async fn security_headers_are_set_on_every_response() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    for path in ["/", "/health", "/v1/nope"] {
        let res = app.get(path).await;
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_scheduled_housekeeping_job_purges_expired_sessions() {
    use agv_server::domain::{
        Email, NewSession, NewUser, PasswordHash, Role, SessionId, Timestamp, UserId,
    };
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let app = TestApp::start_with(home, |s| s.housekeeping_cron = "* * * * * *".into()).await;
    let store = app.app_state.store.clone();
    let user = NewUser {
        id: UserId::generate(),
        email: Email::parse("ops@example.com").unwrap(),
        password: PasswordHash::create("a long enough password").unwrap(),
        role: Role::Operator,
        tenant_id: None,
        created_at: Timestamp::now(),
    };
    store.create_user(&user).unwrap();
    let expired_at = Timestamp::now().plus_millis(-1000);
    let session = |token: &str, expires_at| NewSession {
        id: SessionId::generate(),
        user_id: user.id.clone(),
        token_hash: token.into(),
        created_at: Timestamp::now(),
        expires_at,
    };
    store
        .create_session(&session("expired", expired_at))
        .unwrap();
    store
        .create_session(&session("live", Timestamp::now().plus_millis(3_600_000)))
        .unwrap();
    // Wait for a housekeeping run that started after the sessions existed.
    let done_before = app.app_state.queue.stats().completed_total;
    let started = std::time::Instant::now();
    while app.app_state.queue.stats().completed_total < done_before + 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "housekeeping never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.purge_expired_sessions(Timestamp::now()).unwrap(),
        0,
        "the job already purged the expired session"
    );
    assert!(
        store
            .find_session("live", Timestamp::now())
            .unwrap()
            .is_some(),
        "live sessions are kept"
    );
    app.stop().await;
}

/// A container's health check polls every 15 s: successful probes are logged at DEBUG so
/// that they do not bury the requests that matter; other requests, and a failing probe,
/// are still logged at INFO.
#[tokio::test]
async fn health_probes_are_not_logged_at_info_but_other_requests_are() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let mut server = crate::helpers::spawn_server_process(home.path(), None, &[]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let client = agv_testkit::http_client();
    for path in ["/health", "/ready", "/health", "/ready", "/v1/models"] {
        client.get(format!("{base}{path}")).send().await.unwrap();
    }
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    server.child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut server.log, &mut rest).unwrap();
    let logged: Vec<String> = rest
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .map(|v| v["route"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(logged, ["/v1/models"], "{rest}");
}

#[tokio::test]
async fn with_a_metrics_token_set_metrics_need_it() {
    let home = crate::helpers::DataHome::new(crate::helpers::Backend::Sqlite).unwrap();
    let app = crate::helpers::TestApp::start_with(home, |s| {
        s.metrics_token = Some("scrape-token-0123456789".into());
    })
    .await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let wrong = app
        .get_with_key("/metrics", "scrape-token-0000000000")
        .await;
    assert_eq!(wrong.status(), 401);
    let res = app
        .get_with_key("/metrics", "scrape-token-0123456789")
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("agv_uptime_seconds"));
    app.stop().await;
}
