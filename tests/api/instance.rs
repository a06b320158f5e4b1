//! The operator sets the instance up from the console (docs/console-api.md, "Setting the
//! instance up"): tenants made by the operator (a tenant admin gets 403), the instance
//! upstream set with its key sealed at rest and never answered back, used by the very next
//! call and removed again, "Test connection" against the mock and a closed port, and the
//! first-run checklist with the command-line prefix of this server.

use crate::helpers::{Backend, ConsoleSession as Session, DataHome, MockUpstream, TestApp};
use crate::on_both_backends;
use agv_server::domain::audit::AuditFilter;
use agv_testkit::upstream::refused_url;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "a long enough password";
const PROVIDER_KEY: &str = "sk-console-provider-key-7f3a";

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    who: &Session,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = app
        .client
        .request(method.clone(), app.url(path))
        .header("cookie", &who.cookie);
    if method != Method::GET {
        r = r.header("x-csrf-token", &who.csrf);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

async fn json_of(res: reqwest::Response, want: u16) -> Value {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(status, want, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn sign_in(app: &TestApp, email: &str) -> Session {
    Session::sign_in(&app.client, &app.url(""), email, PASSWORD).await
}

/// A server whose configured upstream refuses connections, an operator, and a tenant with
/// an admin user, a proxy key and an admin key made through the CLI.
struct Fresh {
    app: TestApp,
    operator: Session,
    tenant_admin: Session,
    key: String,
    configured: String,
}

async fn fresh(backend: Backend) -> Option<Fresh> {
    let home = DataHome::new(backend)?;
    home.make_user("op@example.com", "operator", None, PASSWORD);
    let (tenant, _admin) = home.tenant_and_key("admin");
    let key = home.cli_ok(&["key", "create", "--tenant", &tenant, "--scope", "proxy"]);
    home.make_user("admin@acme.example", "admin", Some(&tenant), PASSWORD);
    let configured = refused_url();
    let url = configured.clone();
    let app = TestApp::start_with(home, |s| {
        s.upstream_url = url;
        s.upstream_retries = 0;
        s.unauth_rate_limit_per_minute = 0;
    })
    .await;
    let operator = sign_in(&app, "op@example.com").await;
    let tenant_admin = sign_in(&app, "admin@acme.example").await;
    Some(Fresh {
        app,
        operator,
        tenant_admin,
        key,
        configured,
    })
}

async fn an_operator_creates_a_tenant_in_the_console_and_a_tenant_admin_may_not(backend: Backend) {
    let Some(f) = fresh(backend).await else {
        return;
    };
    let app = &f.app;
    let res = send(
        app,
        Method::POST,
        "/api/operator/tenants",
        &f.operator,
        Some(json!({"name": "  Globex  "})),
    )
    .await;
    let made = json_of(res, 201).await;
    let id = made["tenant"]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ten_"), "{made}");
    assert_eq!(made["tenant"]["name"], "Globex");
    let list = json_of(
        send(app, Method::GET, "/api/operator/tenants", &f.operator, None).await,
        200,
    )
    .await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(names.contains(&"Globex"), "{list}");

    // Audited like the CLI's tenant create: instance-wide, by the person, from an address.
    let store = app.app_state.store.clone();
    let entries = agv_server::store::run_blocking(move || {
        store.list_audit(None, &AuditFilter::default(), None, 50)
    })
    .await
    .unwrap();
    let entry = entries
        .iter()
        .find(|e| e.action == "tenant.create" && e.target == id)
        .expect("an audit entry for the new tenant");
    assert_eq!(entry.actor_kind, "user");
    assert!(entry.source.is_some());
    assert_eq!(entry.after.as_ref().unwrap()["name"], "Globex");

    // Bad input: a clear 400 naming the field, and nothing made.
    for body in [
        json!({"name": "   "}),
        json!({}),
        json!({"name": "x".repeat(101)}),
    ] {
        let res = send(
            app,
            Method::POST,
            "/api/operator/tenants",
            &f.operator,
            Some(body),
        )
        .await;
        let err = json_of(res, 400).await;
        assert_eq!(err["error"]["param"], "name", "{err}");
    }
    // Without the CSRF header: 403.
    let res = app
        .client
        .post(app.url("/api/operator/tenants"))
        .header("cookie", &f.operator.cookie)
        .json(&json!({"name": "NoCsrf"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // A tenant admin: 403, and no tenant made.
    let res = send(
        app,
        Method::POST,
        "/api/operator/tenants",
        &f.tenant_admin,
        Some(json!({"name": "Sneaky"})),
    )
    .await;
    let err = json_of(res, 403).await;
    assert_eq!(err["error"]["code"], "role_not_allowed");
    let store = app.app_state.store.clone();
    let count = agv_server::store::run_blocking(move || store.list_tenants())
        .await
        .unwrap()
        .len();
    assert_eq!(count, 2);
    f.app.stop().await;
}

async fn chat_status(app: &TestApp, key: &str) -> u16 {
    app.chat(key, "which upstream?").await.status().as_u16()
}

async fn the_instance_upstream_set_in_the_console_is_used_at_once_and_its_key_is_sealed(
    backend: Backend,
) {
    let Some(f) = fresh(backend).await else {
        return;
    };
    let app = &f.app;
    let mock = MockUpstream::start();
    mock.set_required_key(Some(PROVIDER_KEY));
    // The configured upstream refuses connections.
    assert_eq!(chat_status(app, &f.key).await, 502);
    let before = json_of(
        send(
            app,
            Method::GET,
            "/api/operator/upstream",
            &f.operator,
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(before["source"], "configuration", "{before}");
    assert_eq!(before["base_url"], json!(f.configured));
    assert_eq!(before["api_key_set"], false);

    let res = send(
        app,
        Method::PUT,
        "/api/operator/upstream",
        &f.operator,
        Some(json!({"base_url": format!("{}/", mock.url()), "api_key": PROVIDER_KEY})),
    )
    .await;
    let text = res.text().await.unwrap();
    assert!(
        !text.contains(PROVIDER_KEY),
        "the key is never answered: {text}"
    );
    let set: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(set["source"], "console", "{set}");
    assert_eq!(set["base_url"], json!(mock.url()), "normalized: {set}");
    assert_eq!(set["api_key_set"], true);
    assert_eq!(set["api_key_last4"], "7f3a");
    assert_eq!(set["api_key_from"], "console");
    assert_eq!(set["configured"]["base_url"], json!(f.configured));

    // The very next call goes to the new upstream, with the key.
    assert_eq!(chat_status(app, &f.key).await, 200);
    assert_eq!(mock.hits(), 1);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    let got = send(
        app,
        Method::GET,
        "/api/operator/upstream",
        &f.operator,
        None,
    )
    .await;
    let text = got.text().await.unwrap();
    assert!(!text.contains(PROVIDER_KEY), "{text}");

    // A change of URL alone keeps the key.
    let res = send(
        app,
        Method::PUT,
        "/api/operator/upstream",
        &f.operator,
        Some(json!({"base_url": mock.url()})),
    )
    .await;
    assert_eq!(json_of(res, 200).await["api_key_last4"], "7f3a");
    assert_eq!(chat_status(app, &f.key).await, 200);

    // At rest: ciphertext only, which the master key opens.
    let store = app.app_state.store.clone();
    let row = agv_server::store::run_blocking(move || store.get_instance_upstream())
        .await
        .unwrap()
        .unwrap();
    let sealed = row.api_key_ciphertext.clone().unwrap();
    assert!(!sealed.contains(PROVIDER_KEY));
    assert_eq!(
        app.app_state
            .master_key
            .open("instance", &sealed)
            .unwrap()
            .expose(),
        PROVIDER_KEY
    );
    if backend == Backend::Sqlite {
        crate::helpers::assert_sqlite_files_do_not_hold(app.home.path(), PROVIDER_KEY);
    }
    // The audit log says what changed, never the key.
    let store = app.app_state.store.clone();
    let entries = agv_server::store::run_blocking(move || {
        store.list_audit(None, &AuditFilter::default(), None, 50)
    })
    .await
    .unwrap();
    let updates: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "upstream.update" && e.target == "instance")
        .collect();
    assert_eq!(updates.len(), 2);
    for e in &updates {
        assert!(!serde_json::to_string(e).unwrap().contains(PROVIDER_KEY));
    }

    // Removed: the configured upstream applies again, at once.
    let res = send(
        app,
        Method::DELETE,
        "/api/operator/upstream",
        &f.operator,
        None,
    )
    .await;
    let back = json_of(res, 200).await;
    assert_eq!(back["source"], "configuration");
    assert_eq!(chat_status(app, &f.key).await, 502);
    assert_eq!(mock.hits(), 2);

    // Bad input: 400 naming the field; a tenant admin: 403; nothing changed.
    for (body, param) in [
        (json!({"base_url": "ftp://example.com"}), "base_url"),
        (json!({"base_url": "not a url"}), "base_url"),
        (json!({}), "base_url"),
        (
            json!({"base_url": mock.url(), "api_key": "two words"}),
            "api_key",
        ),
        (json!({"base_url": mock.url(), "api_key": ""}), "api_key"),
    ] {
        let res = send(
            app,
            Method::PUT,
            "/api/operator/upstream",
            &f.operator,
            Some(body),
        )
        .await;
        let err = json_of(res, 400).await;
        assert_eq!(err["error"]["param"], param, "{err}");
    }
    let res = send(
        app,
        Method::PUT,
        "/api/operator/upstream",
        &f.tenant_admin,
        Some(json!({"base_url": mock.url()})),
    )
    .await;
    assert_eq!(res.status(), 403);
    for path in ["/api/operator/upstream", "/api/operator/setup"] {
        let res = send(app, Method::GET, path, &f.tenant_admin, None).await;
        assert_eq!(res.status(), 403, "{path}");
    }
    assert_eq!(chat_status(app, &f.key).await, 502);
    f.app.stop().await;
}

async fn test_connection_answers_for_the_mock_and_fails_plainly_on_a_closed_port(backend: Backend) {
    let Some(f) = fresh(backend).await else {
        return;
    };
    let app = &f.app;
    let test = || async {
        json_of(
            send(
                app,
                Method::POST,
                "/api/operator/upstream/test",
                &f.operator,
                None,
            )
            .await,
            200,
        )
        .await
    };
    // The configured upstream: a closed port.
    let closed = test().await;
    assert_eq!(closed["ok"], false, "{closed}");
    assert_eq!(closed["status"], Value::Null);
    let msg = closed["message"].as_str().unwrap().to_lowercase();
    assert!(
        msg.contains("cannot connect") && msg.contains("refused"),
        "{closed}"
    );
    assert_eq!(closed["url"], json!(format!("{}/models", f.configured)));

    let mock = MockUpstream::start();
    mock.set_required_key(Some(PROVIDER_KEY));
    let op = &f.operator;
    let put = |body: Value| async move {
        let res = send(app, Method::PUT, "/api/operator/upstream", op, Some(body)).await;
        json_of(res, 200).await
    };
    put(json!({"base_url": mock.url(), "api_key": PROVIDER_KEY})).await;
    let ok = test().await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["status"], 200);
    assert!(ok["models"].as_u64().unwrap() > 0, "{ok}");
    // A key the upstream refuses: its status and what to check.
    put(json!({"base_url": mock.url(), "api_key": "sk-wrong-key-000000"})).await;
    let refused = test().await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["status"], 401);
    assert!(
        refused["message"].as_str().unwrap().contains("key"),
        "{refused}"
    );
    // Only the operator may make the server call out.
    let res = send(
        app,
        Method::POST,
        "/api/operator/upstream/test",
        &f.tenant_admin,
        None,
    )
    .await;
    assert_eq!(res.status(), 403);
    f.app.stop().await;
}

async fn the_first_run_checklist_follows_each_step_and_names_this_servers_data(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    home.make_user("op@example.com", "operator", None, PASSWORD);
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    let op = sign_in(&app, "op@example.com").await;
    let state = || async {
        json_of(
            send(&app, Method::GET, "/api/operator/setup", &op, None).await,
            200,
        )
        .await
    };
    let s = state().await;
    assert_eq!(
        s["steps"],
        json!({"tenant": false, "upstream": false, "proxy_key": false, "call": false}),
        "{s}"
    );
    let dir = std::fs::canonicalize(app.home.path()).unwrap();
    let prefix = s["cli"]["prefix"].as_str().unwrap();
    assert!(
        prefix.starts_with(&format!("agv-server --data {}", dir.display())),
        "{s}"
    );
    assert_eq!(s["cli"]["data_dir"], json!(dir.display().to_string()));
    match app.home.database_url() {
        Some(url) => assert!(prefix.contains(&format!("--database-url {url}")), "{s}"),
        None => assert!(!prefix.contains("--database-url"), "{s}"),
    }

    let made = json_of(
        send(
            &app,
            Method::POST,
            "/api/operator/tenants",
            &op,
            Some(json!({"name": "Acme"})),
        )
        .await,
        201,
    )
    .await;
    let tenant = made["tenant"]["id"].as_str().unwrap().to_owned();
    let s = state().await;
    assert_eq!(s["steps"]["tenant"], true);
    assert_eq!(s["tenant"]["id"], json!(tenant));

    let mock = MockUpstream::start();
    json_of(
        send(
            &app,
            Method::PUT,
            "/api/operator/upstream",
            &op,
            Some(json!({"base_url": mock.url(), "api_key": PROVIDER_KEY})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(state().await["steps"]["upstream"], true);

    // An admin key is not what a client calls with: the step wants a proxy key.
    let key = |scope: &'static str| {
        let (app, op, tenant) = (&app, &op, tenant.clone());
        async move {
            let res = app
                .client
                .post(app.url("/api/keys"))
                .header("cookie", &op.cookie)
                .header("x-csrf-token", &op.csrf)
                .header("x-agv-tenant", tenant)
                .json(&json!({"name": scope, "scope": scope}))
                .send()
                .await
                .unwrap();
            json_of(res, 201).await["secret"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    key("admin").await;
    assert_eq!(state().await["steps"]["proxy_key"], false);
    let proxy = key("proxy").await;
    assert_eq!(state().await["steps"]["proxy_key"], true);

    assert_eq!(app.chat(&proxy, "first call").await.status(), 200);
    assert_eq!(
        state().await["steps"],
        json!({"tenant": true, "upstream": true, "proxy_key": true, "call": true})
    );
    app.stop().await;
}

on_both_backends!(
    an_operator_creates_a_tenant_in_the_console_and_a_tenant_admin_may_not,
    the_instance_upstream_set_in_the_console_is_used_at_once_and_its_key_is_sealed,
    test_connection_answers_for_the_mock_and_fails_plainly_on_a_closed_port,
    the_first_run_checklist_follows_each_step_and_names_this_servers_data,
);

/// Another instance on the same database (or the same process after a restart) picks the
/// console's upstream up: at start, and through the change feed while running.
#[tokio::test]
async fn the_instance_upstream_survives_a_restart_and_reaches_a_running_instance_by_the_change_feed()
 {
    let Some(f) = fresh(Backend::Sqlite).await else {
        return;
    };
    let mock = MockUpstream::start();
    let state = f.app.app_state.clone();
    // Written straight to the store, as another instance sharing the database would.
    let row = agv_server::store::InstanceUpstreamRow {
        base_url: mock.url(),
        api_key_ciphertext: Some(state.master_key.seal("instance", PROVIDER_KEY).unwrap()),
        updated_at: agv_server::domain::Timestamp::now(),
    };
    let store = state.store.clone();
    agv_server::store::run_blocking(move || store.put_instance_upstream(&row))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while chat_status(&f.app, &f.key).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the change feed did not install the instance upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let configured = f.configured.clone();
    drop(state); // it holds the job queue's lock
    let home = f.app.stop().await;
    let app = TestApp::start_with(home, |s| {
        s.upstream_url = configured;
        s.upstream_retries = 0;
    })
    .await;
    let before = mock.hits();
    assert_eq!(chat_status(&app, &f.key).await, 200);
    assert_eq!(mock.hits(), before + 1);
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    app.stop().await;
}
