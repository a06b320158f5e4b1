//! Console sign-in: users made headless with the CLI, sign-in with a secure cookie,
//! throttled failures, the CSRF token on sign-out, and an audit entry for each.

use crate::helpers::{Backend, DataHome, TestApp, stderr};
use crate::on_both_backends;
use serde_json::{Value, json};

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

fn session_cookie(res: &reqwest::Response) -> (String, String) {
    let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

async fn a_user_made_by_the_cli_signs_in_and_out_with_a_cookie_and_csrf(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let (tenant, admin_key) = home.tenant_and_key("admin");
    let pass = home.path().join("pw");
    std::fs::write(&pass, "a long enough password\n").unwrap();
    let user_id = home.cli_ok(&[
        "user",
        "create",
        "--email",
        "Ada@Example.com",
        "--role",
        "admin",
        "--tenant",
        &tenant,
        "--password-file",
        pass.to_str().unwrap(),
    ]);
    assert!(user_id.starts_with("usr_"), "{user_id}");
    // Bad input: clear errors, nothing made.
    for (args, code) in [
        (
            vec![
                "--email",
                "not-an-email",
                "--role",
                "admin",
                "--tenant",
                tenant.as_str(),
            ],
            2,
        ),
        (vec!["--email", "b@example.com", "--role", "owner"], 2),
        (
            vec![
                "--email",
                "b@example.com",
                "--role",
                "king",
                "--tenant",
                tenant.as_str(),
            ],
            2,
        ),
        (
            vec![
                "--email",
                "ada@example.com",
                "--role",
                "admin",
                "--tenant",
                tenant.as_str(),
            ],
            1,
        ),
    ] {
        let mut a = vec!["user", "create"];
        a.extend(args.iter());
        let out = home.cli(&a);
        assert_eq!(out.status.code(), Some(code), "{a:?}: {}", stderr(&out));
    }
    let out = home.cli(&[
        "user",
        "create",
        "--email",
        "op@example.com",
        "--role",
        "operator",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("password"),
        "the generated password is shown once"
    );

    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    let res = login(&app, "ada@example.com", "a long enough password").await;
    assert_eq!(res.status(), 200);
    let (cookie, set) = session_cookie(&res);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["user"]["role"], "admin");
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let me = |cookie: Option<String>| {
        let mut r = app.client.get(app.url("/api/auth/me"));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    assert_eq!(me(Some(cookie.clone())).await.unwrap().status(), 200);
    assert_eq!(me(None).await.unwrap().status(), 401);
    assert_eq!(
        me(Some("agv_session=forged".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    // Sign-out needs the CSRF token.
    let res = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        me(Some(cookie.clone())).await.unwrap().status(),
        200,
        "still signed in"
    );
    let res = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        me(Some(cookie)).await.unwrap().status(),
        401,
        "the session is gone"
    );

    let audit: Value = app
        .get_with_key("/v1/audit", &admin_key)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["user.create", "user.sign_in", "user.sign_out"] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
    let sign_in = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.sign_in")
        .unwrap();
    assert_eq!(sign_in["actor_kind"], "user", "{sign_in}");
    assert!(
        sign_in["source"].as_str().unwrap().contains("127.0.0.1"),
        "{sign_in}"
    );
}

async fn failed_sign_ins_are_401_then_throttled_and_bad_input_is_400(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let (tenant, _key) = home.tenant_and_key("admin");
    let pass = home.path().join("pw");
    std::fs::write(&pass, "a long enough password").unwrap();
    home.cli_ok(&[
        "user",
        "create",
        "--email",
        "bo@example.com",
        "--role",
        "viewer",
        "--tenant",
        &tenant,
        "--password-file",
        pass.to_str().unwrap(),
    ]);
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    // Unknown email and wrong password answer alike.
    for (email, pw) in [
        ("nobody@example.com", "whatever at all"),
        ("bo@example.com", "wrong password!"),
    ] {
        let res = login(&app, email, pw).await;
        assert_eq!(res.status(), 401);
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_credentials");
    }
    for _ in 0..4 {
        assert_eq!(
            login(&app, "bo@example.com", "wrong again!!")
                .await
                .status(),
            401
        );
    }
    // Five failures for the account: even the right password waits now.
    let res = login(&app, "bo@example.com", "a long enough password").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    for bad in [
        json!({}),
        json!({"email": "bo@example.com"}),
        json!({"email": "not an email", "password": "x"}),
        json!({"email": "bo@example.com", "password": ""}),
        json!({"email": "bo@example.com", "password": "x", "extra": 1}),
    ] {
        let res = app
            .client
            .post(app.url("/api/auth/login"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    assert_eq!(app.get("/health").await.status(), 200);
}

async fn login_from(app: &TestApp, from: &str, email: &str, password: &str) -> u16 {
    app.client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A data directory with the operator `ops@example.com`.
fn operator_home() -> DataHome {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    home.make_user(
        "ops@example.com",
        "operator",
        None,
        "the operator's password",
    );
    home
}

#[tokio::test]
async fn an_attack_on_the_operators_account_does_not_lock_the_operator_out() {
    let home = operator_home();
    let app = TestApp::start_with(home, |s| {
        s.unauth_rate_limit_per_minute = 0;
        // The server sits behind a reverse proxy on this machine.
        s.trusted_proxies =
            agv_server::domain::trusted_proxies::TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    // Two attacking addresses, each held back after five wrong passwords.
    for attacker in ["203.0.113.9", "203.0.113.10"] {
        for _ in 0..5 {
            assert_eq!(
                login_from(&app, attacker, "ops@example.com", "guess!!!!!").await,
                401
            );
        }
        assert_eq!(
            login_from(&app, attacker, "ops@example.com", "guess!!!!!").await,
            429
        );
        assert_eq!(
            login_from(&app, attacker, "ops@example.com", "the operator's password").await,
            429,
            "the attacker's address stays locked even with the right password"
        );
    }
    // The operator, from their own address, still signs in (slowed, not locked).
    assert_eq!(
        login_from(
            &app,
            "198.51.100.7",
            "ops@example.com",
            "the operator's password"
        )
        .await,
        200
    );
    app.stop().await;

    // Without a trusted proxy the header is ignored: rotating it does not escape the lock.
    let home = operator_home();
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    for i in 0..5 {
        let spoofed = format!("192.0.2.{i}");
        assert_eq!(
            login_from(&app, &spoofed, "ops@example.com", "guess!!!!!").await,
            401
        );
    }
    assert_eq!(
        login_from(&app, "192.0.2.99", "ops@example.com", "guess!!!!!").await,
        429
    );
    app.stop().await;
}

on_both_backends!(
    a_user_made_by_the_cli_signs_in_and_out_with_a_cookie_and_csrf,
    failed_sign_ins_are_401_then_throttled_and_bad_input_is_400,
);

#[tokio::test]
async fn set_up_checks_its_link_before_hashing_and_a_made_up_cookie_earns_no_exemption() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 5).await;
    let setup = |cookie: Option<&str>, password: &str| {
        let mut req = app.client.post(app.url("/api/setup")).json(
            &json!({"token": "not-the-token", "email": "op@example.com", "password": password}),
        );
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    // The link is checked first: a wrong one is refused whatever the password (which is
    // hashed only for the holder of the right link).
    let res = setup(None, "short").await.unwrap();
    assert_eq!(res.status(), 403);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_setup_token", "{v}");
    // A made-up session cookie does not lift the address's limit.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let res = setup(Some("agv_session=bogus"), "a long enough password")
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses[..4], [403; 4], "{statuses:?}");
    assert_eq!(statuses[4..], [429, 429], "{statuses:?}");
    app.stop().await;
}

#[tokio::test]
async fn one_person_may_hold_only_a_few_live_event_streams_open() {
    let home = operator_home();
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    let me = crate::helpers::ConsoleSession::sign_in(
        &app.client,
        &app.url(""),
        "ops@example.com",
        "the operator's password",
    )
    .await;
    let open = || {
        app.client
            .get(app.url("/api/events"))
            .header("cookie", &me.cookie)
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..8 {
        let res = open().await.unwrap();
        assert_eq!(res.status(), 200);
        streams.push(res);
    }
    let res = open().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    // A closed stream frees its place once the server notices (its next tick).
    drop(streams.pop());
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let res = open().await.unwrap();
        status = res.status().as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the closed stream's place is free again");
    drop(streams);
    app.stop().await;
}
