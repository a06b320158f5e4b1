//! API-key authentication on /v1: good, missing, malformed, unknown, revoked, expired,
//! wrong scope; keys made by the CLI while the server runs.

use crate::helpers::{Backend, DataHome, TestApp, error_code};
use crate::on_both_backends;
use std::time::{Duration, Instant};

const STATUS: &str = "/v1/killswitch/status";

async fn keys_authenticate_and_scopes_are_enforced(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let (tenant, admin) = home.tenant_and_key("admin");
    let proxy = home.cli_ok(&["key", "create", "--tenant", &tenant, "--scope", "proxy"]);
    let app = TestApp::start(home).await;

    let res = app.get_with_key(STATUS, &admin).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["tenant_id"], tenant.as_str());
    assert_eq!(body["tenant"]["frozen"], false);

    let res = app.get_with_key(STATUS, &proxy).await;
    assert_eq!(res.status(), 403, "a proxy key may not use admin endpoints");
    assert_eq!(error_code(res).await, "insufficient_scope");

    let res = app.get(STATUS).await;
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "missing_api_key");

    let res = app.get_with_key(STATUS, "sk-not-ours").await;
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "invalid_api_key");

    let unknown = format!("agv_{}", "0".repeat(64));
    let res = app.get_with_key(STATUS, &unknown).await;
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "invalid_api_key");

    let res = app
        .client
        .get(app.url(STATUS))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    app.stop().await;
}

async fn a_key_created_while_the_server_runs_works_at_once_and_revocation_takes_under_a_second(
    backend: Backend,
) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let tenant = home.cli_ok(&["tenant", "create", "Live"]);
    let app = TestApp::start(home).await;

    let json = app.home.cli_ok(&[
        "key", "create", "--tenant", &tenant, "--scope", "admin", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&json).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["tenant_id"], tenant.as_str());
    assert_eq!(created["scope"], "admin");
    assert_eq!(
        app.get_with_key(STATUS, &key).await.status(),
        200,
        "a new key works at once"
    );

    app.home.cli_ok(&["key", "revoke", &key_id]);
    let revoked_at = Instant::now();
    loop {
        let res = app.get_with_key(STATUS, &key).await;
        if res.status() == 401 {
            assert_eq!(error_code(res).await, "api_key_revoked");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "a revoked key must stop working within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

async fn rotation_issues_a_new_key_and_the_old_one_expires_after_the_grace(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let tenant = home.cli_ok(&["tenant", "create", "Rotating"]);
    let json = home.cli_ok(&[
        "key", "create", "--tenant", &tenant, "--scope", "admin", "--name", "ci", "--json",
    ]);
    let old: serde_json::Value = serde_json::from_str(&json).unwrap();
    let app = TestApp::start(home).await;

    let rotated = app.home.cli_ok(&[
        "key",
        "rotate",
        old["id"].as_str().unwrap(),
        "--grace",
        "0s",
        "--json",
    ]);
    let new: serde_json::Value = serde_json::from_str(&rotated).unwrap();
    assert_ne!(new["key"], old["key"]);
    assert_eq!(new["name"], "ci");
    assert_eq!(new["scope"], "admin");
    assert_eq!(
        app.get_with_key(STATUS, new["key"].as_str().unwrap())
            .await
            .status(),
        200
    );
    let started = Instant::now();
    loop {
        let res = app.get_with_key(STATUS, old["key"].as_str().unwrap()).await;
        if res.status() == 401 {
            assert_eq!(error_code(res).await, "api_key_expired");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the old key must stop after a zero grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = app
        .home
        .cli_ok(&["key", "list", "--tenant", &tenant, "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let statuses: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"expired") && statuses.contains(&"active"),
        "{statuses:?}"
    );
    assert!(
        !listed.contains(new["key"].as_str().unwrap()),
        "list never shows secrets"
    );
    app.stop().await;
}

on_both_backends!(
    keys_authenticate_and_scopes_are_enforced,
    a_key_created_while_the_server_runs_works_at_once_and_revocation_takes_under_a_second,
    rotation_issues_a_new_key_and_the_old_one_expires_after_the_grace,
);

#[tokio::test]
async fn last_used_is_recorded_for_keys() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let (tenant, key) = home.tenant_and_key("admin");
    let app = TestApp::start(home).await;
    assert_eq!(app.get_with_key(STATUS, &key).await.status(), 200);
    let home = app.stop().await; // shutdown flushes last-used times
    let listed = home.cli_ok(&["key", "list", "--tenant", &tenant, "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(keys[0]["last_used_at"].is_string(), "{listed}");
}

#[tokio::test]
async fn a_use_just_before_a_cache_invalidation_still_reaches_last_used() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let (tenant, key) = home.tenant_and_key("admin");
    let app = TestApp::start(home).await;
    assert_eq!(app.get_with_key(STATUS, &key).await.status(), 200);
    // Another key created from the CLI makes the server drop its whole key cache.
    app.home.cli_ok(&["key", "create", "--tenant", &tenant]);
    tokio::time::sleep(Duration::from_millis(600)).await; // two change-feed polls
    let home = app.stop().await;
    let listed = home.cli_ok(&["key", "list", "--tenant", &tenant, "--json"]);
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let used: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["last_used_at"].is_string())
        .collect();
    assert_eq!(
        used.len(),
        1,
        "the used key has a last-used time, the new one none: {listed}"
    );
}

#[tokio::test]
async fn unauthenticated_v1_requests_are_limited_per_address_and_keyed_ones_are_not() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let (_tenant, key) = home.tenant_and_key("admin");
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 5).await;
    // Wrong keys: five answers, then 429 with retry-after.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let res = app
            .get_with_key(
                "/v1/killswitch/status",
                "agv_not_a_real_key_0000000000000000",
            )
            .await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429, 429], "{statuses:?}");
    // The public certificate check draws on the same budget.
    let res = app
        .get("/v1/certificates/cert_00000000000000000000000000/verify")
        .await;
    assert_eq!(res.status(), 429);
    // A valid key is never held back by the address's budget.
    for _ in 0..10 {
        let res = app.get_with_key("/v1/killswitch/status", &key).await;
        assert_eq!(res.status(), 200);
    }
    app.stop().await;
}
