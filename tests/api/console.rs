//! The console's API (`/api`, docs/console-api.md): every endpoint the UI uses answers 401
//! without a session, 404 for another tenant's ids, 403 without the CSRF header on a
//! change, 403 for a viewer's change (and nothing changes); the first-run setup URL,
//! invitations, password change, keys, the overview, live events and the operator views.

use crate::helpers::{
    Backend, ConsoleSession as Session, DataHome, ProxySetup, TestApp, spawn_server_process,
};
use crate::on_both_backends;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "a long enough password";

fn make_user(home: &DataHome, email: &str, role: &str, tenant: Option<&str>) -> String {
    home.make_user(email, role, tenant, PASSWORD)
}

async fn sign_in_as(app: &TestApp, email: &str, password: &str) -> Session {
    Session::sign_in(&app.client, &app.url(""), email, password).await
}

async fn session_of(res: reqwest::Response) -> Session {
    Session::from_response(res).await
}

/// One console request. `csrf`: send the session's CSRF token; `tenant`: x-agv-tenant.
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    who: Option<&Session>,
    csrf: bool,
    tenant: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = app.client.request(method, app.url(path));
    if let Some(s) = who {
        r = r.header("cookie", &s.cookie);
        if csrf {
            r = r.header("x-csrf-token", &s.csrf);
        }
    }
    if let Some(t) = tenant {
        r = r.header("x-agv-tenant", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

async fn get(app: &TestApp, path: &str, who: &Session, tenant: Option<&str>) -> Value {
    let res = call(app, Method::GET, path, Some(who), false, tenant, None).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Two tenants with calls and a user of each role; A's first call and B's first call.
struct World {
    app: TestApp,
    _upstream: crate::helpers::MockUpstream,
    tenant_a: String,
    tenant_b: String,
    key_a: String,
    key_b_id: String,
    b_key: String,
    admin_b: String,
    call_b: String,
    owner: Session,
    viewer: Session,
    operator: Session,
    other: Session,
}

async fn world(backend: Backend) -> Option<World> {
    let setup = ProxySetup::new(backend)?;
    let home = &setup.home;
    let tenant_a = setup.tenant.clone();
    let (tenant_b, admin_b) = home.tenant_and_key("admin");
    let key_b = home.cli_ok(&["key", "create", "--tenant", &tenant_b, "--scope", "proxy"]);
    make_user(home, "owner@a.example", "owner", Some(&tenant_a));
    make_user(home, "viewer@a.example", "viewer", Some(&tenant_a));
    make_user(home, "admin@b.example", "admin", Some(&tenant_b));
    make_user(home, "op@example.com", "operator", None);
    let (app, upstream, _t, key_a, _admin_a) = setup.start().await;
    for key in [&key_a, &key_b] {
        let res = app.chat(key, "hello from the console test").await;
        assert_eq!(res.status(), 200);
    }
    let calls: Value = app
        .get_with_key("/v1/calls", &admin_b)
        .await
        .json()
        .await
        .unwrap();
    let call_b = calls["data"][0]["id"].as_str().unwrap().to_owned();
    let keys_b = b_key_ids(&app, &admin_b).await;
    let key_b_id = keys_b.iter().find(|k| k["scope"] == "proxy").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = sign_in_as(&app, "owner@a.example", PASSWORD).await;
    let viewer = sign_in_as(&app, "viewer@a.example", PASSWORD).await;
    let operator = sign_in_as(&app, "op@example.com", PASSWORD).await;
    let other = sign_in_as(&app, "admin@b.example", PASSWORD).await;
    Some(World {
        app,
        _upstream: upstream,
        tenant_a,
        tenant_b,
        key_a,
        key_b_id,
        b_key: key_b.clone(),
        admin_b,
        call_b,
        owner,
        viewer,
        operator,
        other,
    })
}

/// The keys that made tenant B's calls (read with B's admin key).
async fn b_key_ids(app: &TestApp, admin_b: &str) -> Vec<Value> {
    let calls: Value = app
        .get_with_key("/v1/calls", admin_b)
        .await
        .json()
        .await
        .unwrap();
    calls["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!({"id": c["key_id"], "scope": "proxy"}))
        .collect()
}

/// The GET endpoints the console uses, for a tenant person.
const TENANT_READS: &[&str] = &[
    "/api/auth/me",
    "/api/overview",
    "/api/usage",
    "/api/keys",
    "/api/status",
    "/api/killswitch/status",
    "/api/policies/active",
    "/api/incidents",
    "/api/incidents/stats",
    "/api/calls",
    "/api/calls?q=hello",
    "/api/audit",
    "/api/alerts/routes",
    "/api/tasks",
];

const OPERATOR_READS: &[&str] = &[
    "/api/operator/health",
    "/api/operator/tenants",
    "/api/operator/incidents",
    "/api/operator/backups",
    "/api/operator/jobs",
];

/// The changes the console makes: (method, path, body).
fn tenant_changes(call: &str) -> Vec<(Method, String, Value)> {
    vec![
        (
            Method::POST,
            "/api/killswitch/tenant".into(),
            json!({"reason": "test"}),
        ),
        (Method::POST, "/api/keys".into(), json!({"name": "new"})),
        (
            Method::PUT,
            "/api/policies".into(),
            json!({"key_requests_per_minute": 7}),
        ),
        (
            Method::POST,
            "/api/alerts/routes".into(),
            json!({"name": "r", "kind": "webhook", "url": "http://127.0.0.1:9/x", "secret": "0123456789abcdef"}),
        ),
        (
            Method::POST,
            "/api/invitations".into(),
            json!({"email": "new@a.example", "role": "viewer"}),
        ),
        (
            Method::POST,
            format!("/api/replay/{call}"),
            json!({"mode": "policy"}),
        ),
        (
            Method::POST,
            "/api/certificates".into(),
            json!({"call_id": call}),
        ),
        (
            Method::POST,
            "/api/incidents/inc_00000000000000000000000000000000/ack".into(),
            Value::Null,
        ),
        (
            Method::POST,
            "/api/incidents/inc_00000000000000000000000000000000/notes".into(),
            json!({"note": "n"}),
        ),
        (
            Method::POST,
            "/api/incidents/inc_00000000000000000000000000000000/replay".into(),
            json!({"mode": "policy"}),
        ),
        (
            Method::DELETE,
            "/api/alerts/routes/alr_00000000000000000000000000000000".into(),
            Value::Null,
        ),
        (
            Method::POST,
            "/api/keys/key_00000000000000000000000000000000/revoke".into(),
            Value::Null,
        ),
        (
            Method::POST,
            "/api/policies/backtest".into(),
            json!({"policy": {}}),
        ),
        (Method::DELETE, "/api/upstream".into(), Value::Null),
        (
            Method::PUT,
            "/api/upstream".into(),
            json!({"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test"}),
        ),
        (
            Method::POST,
            "/api/incidents/inc_00000000000000000000000000000000/resolve".into(),
            Value::Null,
        ),
        (
            Method::POST,
            "/api/incidents/inc_00000000000000000000000000000000/assign".into(),
            json!({"assignee": "someone"}),
        ),
        (
            Method::POST,
            "/api/incidents/inc_00000000000000000000000000000000/severity".into(),
            json!({"severity": "high"}),
        ),
        (
            Method::PATCH,
            "/api/alerts/routes/alr_00000000000000000000000000000000".into(),
            json!({"name": "renamed"}),
        ),
        (
            Method::POST,
            "/api/alerts/routes/alr_00000000000000000000000000000000/test".into(),
            Value::Null,
        ),
        (
            Method::DELETE,
            "/api/killswitch/tenant".into(),
            json!({"reason": "viewer"}),
        ),
    ]
}

/// The operator's changes.
fn operator_changes() -> Vec<(Method, &'static str, Value)> {
    vec![
        (Method::POST, "/api/operator/backups", Value::Null),
        (
            Method::POST,
            "/api/operator/backups/verify",
            json!({"file": "agv-backup-x.tar"}),
        ),
        (Method::POST, "/api/operator/jobs/job_x/retry", Value::Null),
        (Method::DELETE, "/api/operator/jobs/job_x", Value::Null),
    ]
}

async fn the_console_api_needs_a_session_csrf_and_the_right_role(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let app = &w.app;
    let my_calls = get(app, "/api/calls", &w.owner, None).await;
    let call_a = my_calls["data"][0]["id"].as_str().unwrap().to_owned();

    // B gets an incident: its frozen key's call is stopped.
    let b_key_secret = w.b_key.clone();
    let res = app
        .post_json(
            "/v1/killswitch/key",
            &w.admin_b,
            &json!({"key_id": w.key_b_id, "reason": "make an incident"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.chat(&b_key_secret, "stopped").await.status(), 423);
    let mut inc_b = String::new();
    for _ in 0..100 {
        let list: Value = app
            .get_with_key("/v1/incidents", &w.admin_b)
            .await
            .json()
            .await
            .unwrap();
        if let Some(id) = list["data"][0]["id"].as_str() {
            inc_b = id.to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!inc_b.is_empty(), "B's incident was opened");

    // Not signed in: 401 everywhere, reads and changes alike.
    let by_id = [
        format!("/api/incidents/{inc_b}"),
        format!("/api/incidents/{inc_b}/timeline"),
        format!("/api/incidents/{inc_b}/export?format=json"),
        format!("/api/calls/{}", w.call_b),
        format!("/api/calls/{}/timeline", w.call_b),
        "/api/replays/rpl_00000000000000000000000000000000".to_owned(),
        "/api/certificates/cert_00000000000000000000000000000000".to_owned(),
        "/api/tasks/tsk_00000000000000000000000000000000".to_owned(),
        "/api/tasks/tsk_00000000000000000000000000000000/download".to_owned(),
    ];
    for path in TENANT_READS
        .iter()
        .chain(OPERATOR_READS)
        .chain(&["/api/upstream", "/api/events"])
        .map(|p| p.to_string())
        .chain(by_id.iter().cloned())
    {
        let path = path.as_str();
        let (status, c) = code(call(app, Method::GET, path, None, false, None, None).await).await;
        assert_eq!(status, 401, "GET {path}");
        assert_eq!(c, "not_signed_in", "GET {path}");
    }
    for (m, path, body) in tenant_changes(&call_a) {
        let res = call(app, m.clone(), &path, None, false, None, Some(body)).await;
        assert_eq!(res.status(), 401, "{m} {path}");
    }
    // An API key is not a session: the console's doors do not take it.
    let res = app
        .client
        .get(app.url("/api/overview"))
        .header("authorization", format!("Bearer {}", w.admin_b))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let policies_before = get(app, "/api/policies/active", &w.owner, None).await;
    for (m, path, body) in operator_changes() {
        let res = call(app, m.clone(), path, None, false, None, Some(body.clone())).await;
        assert_eq!(res.status(), 401, "{m} {path}");
        let (status, c) = code(
            call(
                app,
                m.clone(),
                path,
                Some(&w.operator),
                false,
                None,
                Some(body.clone()),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, c.as_str()),
            (403, "csrf_token_missing"),
            "{m} {path}"
        );
        let (status, c) =
            code(call(app, m.clone(), path, Some(&w.owner), true, None, Some(body)).await).await;
        assert_eq!(
            (status, c.as_str()),
            (403, "role_not_allowed"),
            "{m} {path}"
        );
    }
    // Signed in, every read works for owner and viewer.
    for who in [&w.owner, &w.viewer] {
        for path in TENANT_READS {
            get(app, path, who, None).await;
        }
    }
    // Operator views are the operator's only.
    for path in OPERATOR_READS {
        get(app, path, &w.operator, None).await;
        let (status, c) =
            code(call(app, Method::GET, path, Some(&w.owner), false, None, None).await).await;
        assert_eq!((status, c.as_str()), (403, "role_not_allowed"), "{path}");
    }

    // A change without the CSRF header: 403, and nothing changed.
    for (m, path, body) in tenant_changes(&call_a) {
        let (status, c) = code(
            call(
                app,
                m.clone(),
                &path,
                Some(&w.owner),
                false,
                None,
                Some(body),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, c.as_str()),
            (403, "csrf_token_missing"),
            "{m} {path}"
        );
    }
    let wrong = Session {
        cookie: w.owner.cookie.clone(),
        csrf: w.viewer.csrf.clone(),
    };
    let res = call(
        app,
        Method::POST,
        "/api/killswitch/tenant",
        Some(&wrong),
        true,
        None,
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(
        res.status(),
        403,
        "another session's token is not this one's"
    );

    // A viewer's change, even with the CSRF header: 403 role_not_allowed, nothing changed.
    for (m, path, body) in tenant_changes(&call_a) {
        let (status, c) = code(
            call(
                app,
                m.clone(),
                &path,
                Some(&w.viewer),
                true,
                None,
                Some(body),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, c.as_str()),
            (403, "role_not_allowed"),
            "{m} {path}"
        );
    }
    let status = get(app, "/api/killswitch/status", &w.owner, None).await;
    assert_eq!(status["tenant"]["frozen"], json!(false), "{status}");
    let keys = get(app, "/api/keys", &w.owner, None).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 2, "{keys}");
    let policies = get(app, "/api/policies/active", &w.owner, None).await;
    assert_eq!(policies, policies_before);
    assert_eq!(app.chat(&w.key_a, "still served").await.status(), 200);

    // Another tenant's ids are 404, through every door.
    for path in &by_id[..5] {
        let res = call(app, Method::GET, path, Some(&w.owner), false, None, None).await;
        assert_eq!(res.status(), 404, "{path}");
    }
    for (m, path, body) in [
        (
            Method::POST,
            format!("/api/keys/{}/revoke", w.key_b_id),
            Value::Null,
        ),
        (
            Method::POST,
            format!("/api/replay/{}", w.call_b),
            json!({"mode": "policy"}),
        ),
        (
            Method::POST,
            "/api/killswitch/key".to_owned(),
            json!({"key_id": w.key_b_id, "reason": "not mine"}),
        ),
        (
            Method::POST,
            format!("/api/incidents/{inc_b}/ack"),
            Value::Null,
        ),
        (
            Method::POST,
            format!("/api/incidents/{inc_b}/notes"),
            json!({"note": "not mine"}),
        ),
        (
            Method::POST,
            format!("/api/incidents/{inc_b}/replay"),
            json!({"mode": "policy"}),
        ),
        (
            Method::POST,
            "/api/certificates".to_owned(),
            json!({"incident_id": inc_b}),
        ),
    ] {
        let res = call(
            app,
            m.clone(),
            &path,
            Some(&w.owner),
            true,
            None,
            Some(body),
        )
        .await;
        assert_eq!(res.status(), 404, "{m} {path}");
    }
    let b_calls = get(app, "/api/calls", &w.other, None).await;
    let b_calls = b_calls["data"].as_array().unwrap();
    assert_eq!(b_calls.len(), 2, "B's call and its stopped call");
    assert!(b_calls.iter().all(|c| c["tenant_id"] == json!(w.tenant_b)));
    assert!(b_calls.iter().any(|c| c["id"] == json!(w.call_b)));
    let searched = get(app, "/api/calls?q=hello", &w.owner, None).await;
    assert!(
        searched["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tenant_id"] == json!(w.tenant_a)),
        "{searched}"
    );
    // Nothing of B's changed: its incident is still open, its tenant not frozen.
    let b_status = get(app, "/api/killswitch/status", &w.other, None).await;
    assert_eq!(b_status["tenant"]["frozen"], json!(false));
    let b_inc = get(app, &format!("/api/incidents/{inc_b}"), &w.other, None).await;
    assert_eq!(b_inc["status"], "open", "{b_inc}");
    let b_keys = get(app, "/api/keys", &w.other, None).await;
    assert!(
        b_keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["revoked_at"].is_null()),
        "{b_keys}"
    );

    // The operator names the tenant; without it 400, with an unknown one 404.
    let (status, c) = code(
        call(
            app,
            Method::GET,
            "/api/overview",
            Some(&w.operator),
            false,
            None,
            None,
        )
        .await,
    )
    .await;
    assert_eq!((status, c.as_str()), (400, "tenant_required"));
    let res = call(
        app,
        Method::GET,
        "/api/overview",
        Some(&w.operator),
        false,
        Some("ten_00000000000000000000000000000000"),
        None,
    )
    .await;
    assert_eq!(res.status(), 404);
    let b_overview = get(app, "/api/overview", &w.operator, Some(&w.tenant_b)).await;
    assert_eq!(b_overview["tenant"]["id"], json!(w.tenant_b));
    // A tenant person cannot pick another tenant with the header.
    let mine = get(app, "/api/overview", &w.owner, Some(&w.tenant_b)).await;
    assert_eq!(mine["tenant"]["id"], json!(w.tenant_a));

    // Bad input to the console's own endpoints: 400 naming the field, server up.
    for (path, body, field) in [
        ("/api/keys", json!({"name": ""}), "name"),
        ("/api/keys", json!({"name": "k", "scope": "root"}), "scope"),
        (
            "/api/invitations",
            json!({"email": "nope", "role": "viewer"}),
            "email",
        ),
        (
            "/api/invitations",
            json!({"email": "x@a.example", "role": "operator"}),
            "role",
        ),
        (
            "/api/auth/password",
            json!({"current_password": PASSWORD, "new_password": "short"}),
            "new_password",
        ),
        (
            "/api/auth/password",
            json!({"current_password": "wrong one!!", "new_password": "another long password"}),
            "current_password",
        ),
    ] {
        let res = call(
            app,
            Method::POST,
            path,
            Some(&w.owner),
            true,
            None,
            Some(body),
        )
        .await;
        assert_eq!(res.status(), 400, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["param"], json!(field), "{path}: {v}");
    }
    for raw in ["{", "[]", "{\"name\": 5}", "\u{0}"] {
        let res = app
            .client
            .post(app.url("/api/keys"))
            .header("cookie", &w.owner.cookie)
            .header("x-csrf-token", &w.owner.csrf)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{raw:?}");
    }
    let keys = get(app, "/api/keys", &w.owner, None).await;
    assert_eq!(
        keys["data"].as_array().unwrap().len(),
        2,
        "nothing was made"
    );
    assert_eq!(app.get("/health").await.status(), 200);
}

async fn keys_freeze_and_overview_work_through_the_console(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let app = &w.app;
    // Create a key: the secret once, then it works at the proxy.
    let res = call(
        app,
        Method::POST,
        "/api/keys",
        Some(&w.owner),
        true,
        None,
        Some(json!({"name": "from the console", "scope": "proxy"})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await.unwrap();
    let secret = made["secret"].as_str().unwrap().to_owned();
    let id = made["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.chat(&secret, "new key").await.status(), 200);
    let keys = get(app, "/api/keys", &w.owner, None).await;
    let row = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(id))
        .unwrap()
        .clone();
    assert!(row.get("secret").is_none() && !row.to_string().contains(&secret));
    assert_eq!(row["today"]["calls"], json!(1), "{row}");

    // Freeze the key: its calls get 423, the overview says at risk; unfreeze.
    let res = call(
        app,
        Method::POST,
        "/api/killswitch/key",
        Some(&w.owner),
        true,
        None,
        Some(json!({"key_id": id, "reason": "console test"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.chat(&secret, "frozen").await.status(), 423);
    let o = get(app, "/api/overview", &w.owner, None).await;
    assert_eq!(o["protection"], "at_risk", "{o}");
    assert_eq!(o["frozen"]["keys"], json!([id]));
    let res = call(
        app,
        Method::DELETE,
        "/api/killswitch/key",
        Some(&w.owner),
        true,
        None,
        Some(json!({"key_id": id})),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.chat(&secret, "thawed").await.status(), 200);

    // Freeze the tenant: traffic stopped.
    let res = call(
        app,
        Method::POST,
        "/api/killswitch/tenant",
        Some(&w.owner),
        true,
        None,
        Some(json!({"reason": "big red button"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let o = get(app, "/api/overview", &w.viewer, None).await;
    assert_eq!(o["protection"], "stopped", "{o}");
    assert_eq!(app.chat(&w.key_a, "stopped").await.status(), 423);
    // The audit log names the person.
    let audit = get(app, "/api/audit?action=killswitch.freeze", &w.owner, None).await;
    assert_eq!(audit["data"][0]["actor_kind"], "user", "{audit}");
    let res = call(
        app,
        Method::DELETE,
        "/api/killswitch/tenant",
        Some(&w.operator),
        true,
        Some(&w.tenant_a),
        None,
    )
    .await;
    assert_eq!(res.status(), 200, "the operator unfreezes the tenant");
    assert_eq!(app.chat(&w.key_a, "back").await.status(), 200);

    // The overview's figures and series add up.
    let o = get(app, "/api/overview", &w.owner, None).await;
    let today = o["today"]["calls"].as_i64().unwrap();
    assert!(today >= 6, "{o}");
    let day: i64 = o["series"]["24h"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(o["series"]["24h"].as_array().unwrap().len(), 24);
    assert_eq!(o["series"]["7d"].as_array().unwrap().len(), 7);
    let week: i64 = o["series"]["7d"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(
        day, week,
        "every call is recent: both series hold all of them"
    );
    assert!(day >= today);
    let usage = get(app, "/api/usage", &w.owner, None).await;
    let by_model: i64 = usage["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(by_model, week, "{usage}");

    // The policy editor sees the stored overrides, to keep what it does not show.
    let res = call(
        app,
        Method::PUT,
        "/api/policies",
        Some(&w.owner),
        true,
        None,
        Some(json!({"key_requests_per_minute": 500})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let active = get(app, "/api/policies/active", &w.viewer, None).await;
    assert_eq!(active["overrides"], json!({"key_requests_per_minute": 500}));

    // Revoke: the key stops working at once.
    let res = call(
        app,
        Method::POST,
        &format!("/api/keys/{id}/revoke"),
        Some(&w.owner),
        true,
        None,
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.chat(&secret, "revoked").await.status(), 401);

    // The operator's tenants list shows both, with today's calls.
    let tenants = get(app, "/api/operator/tenants", &w.operator, None).await;
    let ids: Vec<&str> = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&w.tenant_a.as_str()) && ids.contains(&w.tenant_b.as_str()));
    let health = get(app, "/api/operator/health", &w.operator, None).await;
    assert!(health["calls_5m"].as_u64().unwrap() >= 4, "{health}");
}

async fn invitations_and_password_change(backend: Backend) {
    let Some(w) = world(backend).await else {
        return;
    };
    let app = &w.app;
    let res = call(
        app,
        Method::POST,
        "/api/invitations",
        Some(&w.owner),
        true,
        None,
        Some(json!({"email": "New.Person@A.example", "role": "admin"})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let inv: Value = res.json().await.unwrap();
    let token = inv["token"].as_str().unwrap().to_owned();
    assert!(
        inv["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("#/invite?token={token}"))
    );
    // An admin may not invite (owners and the operator do).
    let other_admin = call(
        app,
        Method::POST,
        "/api/invitations",
        Some(&w.other),
        true,
        None,
        Some(json!({"email": "x@b.example", "role": "viewer"})),
    )
    .await;
    assert_eq!(other_admin.status(), 403);
    // Inviting someone who has an account: 409 on the email field.
    let res = call(
        app,
        Method::POST,
        "/api/invitations",
        Some(&w.owner),
        true,
        None,
        Some(json!({"email": "viewer@a.example", "role": "viewer"})),
    )
    .await;
    assert_eq!(res.status(), 409);

    let seen: Value = app
        .get(&format!("/api/invitations/{token}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["email"], "new.person@a.example");
    assert_eq!(seen["tenant"]["id"], json!(w.tenant_a));
    assert_eq!(app.get("/api/invitations/nonsense").await.status(), 404);
    // Accept: a short password is refused and the invitation stays open.
    let res = app
        .client
        .post(app.url("/api/invitations/accept"))
        .json(&json!({"token": token, "password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .post(app.url("/api/invitations/accept"))
        .json(&json!({"token": token, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let newcomer = session_of(res).await;
    let me = get(app, "/api/auth/me", &newcomer, None).await;
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(me["tenant"]["id"], json!(w.tenant_a));
    // Used once only.
    let res = app
        .client
        .post(app.url("/api/invitations/accept"))
        .json(&json!({"token": token, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let people = get(app, "/api/users", &w.owner, None).await;
    let emails: Vec<&str> = people["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        vec![
            "owner@a.example",
            "viewer@a.example",
            "new.person@a.example"
        ]
    );
    assert_eq!(
        call(
            app,
            Method::GET,
            "/api/users",
            Some(&w.viewer),
            false,
            None,
            None
        )
        .await
        .status(),
        403
    );

    // Password change: the other sessions end, this one stays, the new password works.
    let second = sign_in_as(app, "new.person@a.example", PASSWORD).await;
    let res = call(
        app,
        Method::POST,
        "/api/auth/password",
        Some(&newcomer),
        true,
        None,
        Some(json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    get(app, "/api/auth/me", &newcomer, None).await;
    let res = call(
        app,
        Method::GET,
        "/api/auth/me",
        Some(&second),
        false,
        None,
        None,
    )
    .await;
    assert_eq!(res.status(), 401, "the other session ended");
    let res = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": "new.person@a.example", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    sign_in_as(app, "new.person@a.example", "a brand new passphrase").await;
    let audit = get(app, "/api/audit", &w.owner, None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["user.invite", "user.create", "user.password_change"] {
        assert!(actions.contains(&a), "{a}: {actions:?}");
    }
}

async fn first_run_setup_makes_the_operator_once(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    let needed: Value = app.get("/api/setup").await.json().await.unwrap();
    assert_eq!(needed["needed"], json!(true));
    let token = app.app_state.setup.issue();
    let post = |body: Value| app.client.post(app.url("/api/setup")).json(&body).send();
    for (body, status) in [
        (
            json!({"token": "wrong", "email": "op@example.com", "password": PASSWORD}),
            403,
        ),
        (
            json!({"token": token, "email": "not-an-email", "password": PASSWORD}),
            400,
        ),
        (
            json!({"token": token, "email": "op@example.com", "password": "short"}),
            400,
        ),
        (json!({"token": token}), 400),
    ] {
        assert_eq!(post(body.clone()).await.unwrap().status(), status, "{body}");
    }
    let res = post(json!({"token": token, "email": "op@example.com", "password": PASSWORD}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let op = session_of(res).await;
    let me = get(&app, "/api/auth/me", &op, None).await;
    assert_eq!(me["user"]["role"], "operator");
    let needed: Value = app.get("/api/setup").await.json().await.unwrap();
    assert_eq!(needed["needed"], json!(false));
    // Used once: again is refused, whatever the token.
    let again = app.app_state.setup.issue();
    let res = post(json!({"token": again, "email": "two@example.com", "password": PASSWORD}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let res = post(json!({"token": token, "email": "two@example.com", "password": PASSWORD}))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    app.stop().await;
}

on_both_backends!(
    the_console_api_needs_a_session_csrf_and_the_right_role,
    keys_freeze_and_overview_work_through_the_console,
    invitations_and_password_change,
    first_run_setup_makes_the_operator_once,
);

/// The real binary prints the setup URL while no user exists, and not once one does.
#[test]
fn the_server_prints_a_setup_url_only_while_no_user_exists() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let mut server = spawn_server_process(home.path(), None, &[]);
    let log = server.startup_log.clone();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let url = log
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(['"', ' ', '\n']).next())
        .unwrap_or_else(|| panic!("no setup URL in: {log}"));
    assert!(url.contains("/#/setup?token="), "{url}");
    make_user(&home, "op@example.com", "operator", None);
    let mut server = spawn_server_process(home.path(), None, &[]);
    let log = server.startup_log.clone();
    let _ = server.child.kill();
    let _ = server.child.wait();
    assert!(!log.contains("#/setup?token="), "{log}");
}

/// Live events: the first message carries the overview, a freeze shows within seconds.
#[tokio::test]
async fn live_events_stream_the_overview_and_changes() {
    let Some(w) = world(Backend::Sqlite).await else {
        return;
    };
    let app = &w.app;
    let res = call(
        app,
        Method::GET,
        "/api/events",
        Some(&w.owner),
        false,
        None,
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut froze = false;
    while tokio::time::Instant::now() < deadline {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !froze && seen.contains("event: overview") {
            assert!(seen.contains("\"protection\":\"protected\""), "{seen}");
            froze = true;
            let res = call(
                app,
                Method::POST,
                "/api/killswitch/tenant",
                Some(&w.owner),
                true,
                None,
                Some(json!({"reason": "live"})),
            )
            .await;
            assert_eq!(res.status(), 200);
        }
        if seen.contains("\"protection\":\"stopped\"") {
            break;
        }
    }
    assert!(seen.contains("\"protection\":\"stopped\""), "{seen}");
    // Unauthenticated: 401, no stream.
    let res = call(app, Method::GET, "/api/events", None, false, None, None).await;
    assert_eq!(res.status(), 401);
}
