//! Where calls go: the instance upstream, its fallback, the upstream timeouts, price
//! overrides from config.toml, and a tenant's own upstream (allowlisted, its key encrypted
//! at rest, surviving a restart).

use crate::helpers::{Backend, DataHome, MockUpstream, ProxySetup, TestApp, call_id, error_code};
use crate::on_both_backends;
use agv_testkit::upstream::Mode;
use std::time::{Duration, Instant};

const TENANT_KEY: &str = "sk-tenant-own-key-4f9a2c";

async fn a_failing_primary_falls_back_and_the_record_names_the_fallback(backend: Backend) {
    let Some(setup) = ProxySetup::new(backend) else {
        return;
    };
    let fallback = MockUpstream::start();
    setup.upstream.set_mode(Mode::error(503));
    let (primary_url, fallback_url) = (setup.upstream.url(), fallback.url());
    let app = TestApp::start_with(setup.home, |s| {
        s.upstream_url = primary_url;
        s.upstream_retries = 1;
        s.fallback_upstream_url = Some(fallback_url.clone());
        s.fallback_upstream_api_key = Some("sk-fallback".into());
        s.unauth_rate_limit_per_minute = 0;
    })
    .await;
    let res = app.chat(&setup.key, "hello").await;
    assert_eq!(res.status(), 200);
    let id = call_id(&res);
    assert_eq!(setup.upstream.hits(), 2, "the primary is tried and retried");
    assert_eq!(fallback.hits(), 1);
    assert_eq!(
        fallback.requests()[0].header("authorization"),
        Some("Bearer sk-fallback")
    );
    let call = app.call(&setup.admin, &id).await;
    assert_eq!(call["upstream"], fallback_url.as_str());
    assert_eq!(call["upstream_attempts"], 3, "{call}");
    app.stop().await;
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504_after_the_first_byte_timeout_not_the_total() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    setup.upstream.set_mode(Mode::Hang);
    let url = setup.upstream.url();
    let app = TestApp::start_with(setup.home, |s| {
        s.upstream_url = url;
        s.upstream_retries = 0;
        s.upstream_timeout = Duration::from_secs(30);
        s.upstream_first_byte_timeout = Duration::from_secs(1);
        s.unauth_rate_limit_per_minute = 0;
    })
    .await;
    let started = Instant::now();
    let res = app.chat(&setup.key, "x").await;
    assert_eq!(res.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(error_code(res).await, "upstream_timeout");
    app.stop().await;
}

#[tokio::test]
async fn a_model_priced_in_config_toml_gets_a_cost_and_an_unknown_model_does_not() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    std::fs::write(
        setup.home.path().join("config.toml"),
        "[prices.\"acme-llm-7b\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n",
    )
    .unwrap();
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    let body = |model: &str| serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let res = app
        .post_json("/v1/chat/completions", &key, &body("acme-llm-7b"))
        .await;
    assert_eq!(res.status(), 200);
    let call = app.call(&admin, &call_id(&res)).await;
    assert!(call["cost"].as_i64().is_some_and(|c| c > 0), "{call}");

    let res = app
        .post_json("/v1/chat/completions", &key, &body("never-heard-of-it"))
        .await;
    assert_eq!(res.status(), 200);
    let call = app.call(&admin, &call_id(&res)).await;
    assert!(call["cost"].is_null(), "{call}");
    app.stop().await;
}

/// An instance upstream, a second upstream the operator allowlisted, and two tenants.
struct TwoUpstreams {
    instance: MockUpstream,
    own: MockUpstream,
    key: String,
    admin: String,
    other_key: String,
}

async fn start_two(home: DataHome, instance: &MockUpstream, own: &MockUpstream) -> TestApp {
    let (url, allow) = (instance.url(), own.url());
    TestApp::start_with(home, |s| {
        s.upstream_url = url;
        s.upstream_timeout = Duration::from_secs(3);
        s.unauth_rate_limit_per_minute = 0;
        s.tenant_upstream_allowlist =
            agv_server::domain::upstream_url::UpstreamAllowlist::parse(&allow).unwrap();
    })
    .await
}

fn two_upstreams(backend: Backend) -> Option<(DataHome, TwoUpstreams)> {
    let setup = ProxySetup::new(backend)?;
    let other = setup.home.cli_ok(&["tenant", "create", "Other"]);
    let other_key = setup
        .home
        .cli_ok(&["key", "create", "--tenant", &other, "--scope", "proxy"]);
    Some((
        setup.home,
        TwoUpstreams {
            instance: setup.upstream,
            own: MockUpstream::start(),
            key: setup.key,
            admin: setup.admin,
            other_key,
        },
    ))
}

async fn put_upstream(app: &TestApp, key: &str, body: serde_json::Value) -> reqwest::Response {
    app.client
        .put(app.url("/v1/upstream"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn a_tenant_routes_its_calls_to_its_own_allowlisted_upstream_with_its_key(backend: Backend) {
    let Some((home, t)) = two_upstreams(backend) else {
        return;
    };
    let app = start_two(home, &t.instance, &t.own).await;

    let res = put_upstream(
        &app,
        &t.admin,
        serde_json::json!({"base_url": format!("{}/", t.own.url()), "api_key": TENANT_KEY}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        !text.contains(TENANT_KEY),
        "the key is never echoed: {text}"
    );
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["base_url"], t.own.url().as_str(), "stored normalized");
    assert_eq!(shown["api_key_set"], true);

    let res = app.get_with_key("/v1/upstream", &t.admin).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains(TENANT_KEY), "{text}");
    assert!(text.contains("\"api_key_set\":true"), "{text}");

    let res = app.chat(&t.key, "to my own upstream").await;
    assert_eq!(res.status(), 200);
    let call = app.call(&t.admin, &call_id(&res)).await;
    assert_eq!(call["upstream"], t.own.url().as_str());
    assert_eq!(t.own.hits(), 1);
    assert_eq!(t.instance.hits(), 0);
    assert_eq!(
        t.own.requests()[0].header("authorization"),
        Some(format!("Bearer {TENANT_KEY}").as_str())
    );

    let res = app.chat(&t.other_key, "another tenant").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        t.instance.hits(),
        1,
        "another tenant still uses the instance upstream"
    );
    assert_eq!(t.own.hits(), 1);

    // The key at rest is ciphertext only.
    if backend == Backend::Sqlite {
        let db = app.home.path().join("agv.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        let stored: String = conn
            .query_row("SELECT api_key_ciphertext FROM tenant_upstreams", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!stored.contains(TENANT_KEY));
        drop(conn);
        crate::helpers::assert_sqlite_files_do_not_hold(app.home.path(), TENANT_KEY);
    }

    // A restart keeps it working (the master key was kept in the data dir).
    let home = app.stop().await;
    let app = start_two(home, &t.instance, &t.own).await;
    let res = app.chat(&t.key, "after restart").await;
    assert_eq!(res.status(), 200);
    assert_eq!(t.own.hits(), 2);
    assert_eq!(
        t.own.requests()[1].header("authorization"),
        Some(format!("Bearer {TENANT_KEY}").as_str())
    );

    // DELETE restores the instance upstream.
    let res = app
        .client
        .delete(app.url("/v1/upstream"))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.get_with_key("/v1/upstream", &t.admin).await.status(),
        404
    );
    let res = app.chat(&t.key, "back to the instance").await;
    assert_eq!(res.status(), 200);
    assert_eq!(t.own.hits(), 2);
    assert_eq!(t.instance.hits(), 2);
    app.stop().await;
}

async fn urls_outside_the_allowlist_are_refused_and_nothing_is_stored(backend: Backend) {
    let Some((home, t)) = two_upstreams(backend) else {
        return;
    };
    let app = start_two(home, &t.instance, &t.own).await;
    let allowed = t.own.url();
    let port = t.own.addr().port();
    let refused = [
        "https://api.openai.com/v1".to_owned(),
        format!("http://127.0.0.1.evil.com:{port}/v1"),
        format!("{allowed}evil"),
        format!("http://user:pw@127.0.0.1:{port}/v1"),
        format!("ftp://127.0.0.1:{port}/v1"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        format!("http://localhost:{port}/v1"),
        "not a url".to_owned(),
    ];
    for url in &refused {
        let res = put_upstream(
            &app,
            &t.admin,
            serde_json::json!({"base_url": url, "api_key": TENANT_KEY}),
        )
        .await;
        assert_eq!(res.status(), 400, "{url} must be refused");
        let body: serde_json::Value = res.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains(TENANT_KEY), "{message}");
        if url.contains("169.254") {
            assert!(
                message.contains(&allowed) && message.contains("AGV_TENANT_UPSTREAM_ALLOWLIST"),
                "the refusal names the allowlist: {message}"
            );
        }
    }
    assert_eq!(
        app.get_with_key("/v1/upstream", &t.admin).await.status(),
        404
    );
    let res = put_upstream(
        &app,
        &t.admin,
        serde_json::json!({"base_url": allowed, "api_key": "has a space"}),
    )
    .await;
    assert_eq!(res.status(), 400);

    // A proxy-scope key may not touch the upstream.
    let res = put_upstream(
        &app,
        &t.key,
        serde_json::json!({"base_url": allowed, "api_key": TENANT_KEY}),
    )
    .await;
    assert_eq!(res.status(), 403);
    assert_eq!(app.get_with_key("/v1/upstream", &t.key).await.status(), 403);
    assert_eq!(
        app.get_with_key("/v1/upstream", &t.admin).await.status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn without_an_allowlist_tenants_may_not_set_an_upstream() {
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let (app, upstream, _tenant, _key, admin) = setup.start().await;
    let res = put_upstream(
        &app,
        &admin,
        serde_json::json!({"base_url": upstream.url(), "api_key": TENANT_KEY}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AGV_TENANT_UPSTREAM_ALLOWLIST"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_master_key_of_the_wrong_length_stops_the_start_with_a_clear_error() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let mut settings = home.settings();
    settings.master_key = Some("abcd".repeat(8));
    let err = agv_server::startup::Application::build(settings)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.0.contains("AGV_MASTER_KEY") && err.0.contains("32"),
        "{err}"
    );
}

#[tokio::test]
async fn the_master_key_file_is_created_once_with_mode_0600() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let app = TestApp::start(home).await;
    let path = app.home.path().join("master.key");
    let first = std::fs::read_to_string(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let home = app.stop().await;
    let app = TestApp::start(home).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    app.stop().await;
}

on_both_backends!(
    a_failing_primary_falls_back_and_the_record_names_the_fallback,
    a_tenant_routes_its_calls_to_its_own_allowlisted_upstream_with_its_key,
    urls_outside_the_allowlist_are_refused_and_nothing_is_stored,
);

#[tokio::test]
async fn a_tenant_upstream_changed_by_another_process_is_picked_up_from_the_change_feed() {
    let (home, t) = two_upstreams(Backend::Sqlite).unwrap();
    let app = start_two(home, &t.instance, &t.own).await;
    let state = app.app_state.clone();
    let tenant = {
        let res = app.chat(&t.key, "who am I").await;
        let call = app.call(&t.admin, &call_id(&res)).await;
        agv_server::domain::TenantId::parse(call["tenant_id"].as_str().unwrap()).unwrap()
    };
    // Written straight to the store, as another instance sharing the database would.
    let row = agv_server::store::TenantUpstreamRow {
        tenant_id: tenant.clone(),
        base_url: t.own.url(),
        api_key_ciphertext: Some(state.master_key.seal(tenant.as_str(), TENANT_KEY).unwrap()),
        updated_at: agv_server::domain::Timestamp::now(),
    };
    let store = state.store.clone();
    agv_server::store::run_blocking(move || store.put_tenant_upstream(&row))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.proxy.tenant_upstream(&tenant).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.chat(&t.key, "now mine").await.status(), 200);
    assert_eq!(t.own.hits(), 1);
    assert_eq!(
        t.own.requests()[0].header("authorization"),
        Some(format!("Bearer {TENANT_KEY}").as_str())
    );

    let store = state.store.clone();
    let t2 = tenant.clone();
    agv_server::store::run_blocking(move || store.delete_tenant_upstream(&t2))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while state.proxy.tenant_upstream(&tenant).is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.chat(&t.key, "instance again").await.status(), 200);
    assert_eq!(t.own.hits(), 1);
    assert_eq!(t.instance.hits(), 2);
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_that_redirects_is_an_upstream_error_and_the_redirect_is_not_followed() {
    let Some((home, t)) = two_upstreams(Backend::Sqlite) else {
        return;
    };
    // The internal service the redirect points at: it must never be reached.
    let internal = MockUpstream::start();
    let allowlisted = agv_testkit::upstream::redirector(internal.url()).unwrap();
    let app = TestApp::start_with(home, |s| {
        s.upstream_url = agv_testkit::upstream::redirector(internal.url()).unwrap();
        s.upstream_timeout = Duration::from_secs(3);
        s.unauth_rate_limit_per_minute = 0;
        s.tenant_upstream_allowlist =
            agv_server::domain::upstream_url::UpstreamAllowlist::parse(&allowlisted).unwrap();
    })
    .await;

    // The instance's own upstream redirects: the call fails, recorded as an upstream error.
    let res = app.chat(&t.other_key, "instance upstream").await;
    assert_eq!(res.status(), 502);
    assert!(!call_id(&res).is_empty(), "the failed call is recorded");
    assert_eq!(error_code(res).await, "upstream_redirect");
    let res = app.get_with_key("/v1/models", &t.other_key).await;
    assert_eq!(res.status(), 502);
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("gpt-4o-mini"),
        "the internal body leaked: {text}"
    );

    // A tenant's allowlisted upstream redirects to an internal address.
    let res = put_upstream(
        &app,
        &t.admin,
        serde_json::json!({"base_url": allowlisted, "api_key": TENANT_KEY}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = app.get_with_key("/v1/models", &t.key).await;
    assert_eq!(res.status(), 502);
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("gpt-4o-mini"),
        "the internal body leaked: {text}"
    );
    let res = app.chat(&t.key, "tenant upstream").await;
    assert_eq!(res.status(), 502);
    let tenant_call = call_id(&res);
    let text = res.text().await.unwrap();
    assert!(
        !text.contains("chatcmpl"),
        "the internal body leaked: {text}"
    );

    assert_eq!(
        internal.hits(),
        0,
        "a redirect was followed to the internal address"
    );
    let call = app.call(&t.admin, &tenant_call).await;
    assert_eq!(call["status"], 502, "{call}");
    assert!(
        call["error"].as_str().unwrap_or("").contains("302"),
        "the record names the redirect: {call}"
    );
    app.stop().await;
}
