//! The operator console's update state (`/api/operator/update`, docs/console-api.md): the
//! operator only, CSRF on "check now"; a newer signed release on a local release server is
//! "available", the same version is not, a release signed by another key is an error and
//! never "available", an unreachable mirror is a normal state with a clear reason, and the
//! outcome is cached until "check now". A local release directory is read like a mirror; an
//! older release is not "available", and a VERSION that is not a version is an error. The release key is overridden as for the CLI
//! (`AGV_RELEASE_PUBKEY_FILE`), so the signed cases run the real binary.

use crate::helpers::{
    Backend, ConsoleSession as Session, DataHome, ServerProcess, TestApp, spawn_server_process,
};
use crate::update::{keypair, release, serve};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "a long enough password";
const CURRENT: &str = env!("CARGO_PKG_VERSION");

async fn sign_in(client: &reqwest::Client, base: &str, email: &str) -> Session {
    Session::sign_in(client, base, email, PASSWORD).await
}

/// One request to `path`; `csrf`: send the session's CSRF token.
async fn call(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    who: Option<&Session>,
    csrf: bool,
) -> reqwest::Response {
    let mut r = client.request(method, format!("{base}{path}"));
    if let Some(s) = who {
        r = r.header("cookie", &s.cookie);
        if csrf {
            r = r.header("x-csrf-token", &s.csrf);
        }
    }
    r.send().await.unwrap()
}

/// The update state as the operator sees it: GET, or POST …/check ("check now").
async fn state(client: &reqwest::Client, base: &str, op: &Session, check_now: bool) -> Value {
    let (method, path) = if check_now {
        (Method::POST, "/api/operator/update/check")
    } else {
        (Method::GET, "/api/operator/update")
    };
    let res = call(client, base, method, path, Some(op), true).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The real server (its own process: the release key comes from its environment) with
/// op@example.com as its operator, trusting `public` and reading releases at `source`.
struct Console {
    _home: DataHome,
    server: ServerProcess,
    base: String,
    client: reqwest::Client,
    op: Session,
}

impl Console {
    async fn start(source: &str, public: &Path, envs: &[(&str, &str)]) -> Self {
        let home = DataHome::new(Backend::Sqlite).unwrap();
        home.make_user("op@example.com", "operator", None, PASSWORD);
        let mut all = vec![
            ("AGV_RELEASE_PUBKEY_FILE", public.to_str().unwrap()),
            ("AGV_UPDATE_SOURCE", source),
        ];
        all.extend(envs);
        let server = spawn_server_process(home.path(), None, &all);
        let base = format!("http://127.0.0.1:{}", server.port);
        let client = agv_testkit::http_client();
        let op = sign_in(&client, &base, "op@example.com").await;
        Self {
            _home: home,
            server,
            base,
            client,
            op,
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
    }
}

async fn error_code(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").into())
}

#[tokio::test]
async fn the_update_state_is_for_the_operator_only_and_an_unreachable_mirror_is_a_clear_state() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let tenant = home.cli_ok(&["tenant", "create", "Acme"]);
    home.make_user("op@example.com", "operator", None, PASSWORD);
    home.make_user("owner@acme.example", "owner", Some(&tenant), PASSWORD);
    // Nothing listens on the discard port: the connection is refused, as on a site
    // without a way out.
    let app = TestApp::start_with(home, |s| {
        s.update_source = "http://127.0.0.1:9/releases".into();
    })
    .await;
    let (client, base) = (&app.client, app.address.as_str());
    let op = sign_in(client, base, "op@example.com").await;
    let owner = sign_in(client, base, "owner@acme.example").await;

    for (method, path) in [
        (Method::GET, "/api/operator/update"),
        (Method::POST, "/api/operator/update/check"),
    ] {
        let res = call(client, base, method.clone(), path, None, false).await;
        assert_eq!(res.status(), 401, "{method} {path} without a session");
        let (status, code) =
            error_code(call(client, base, method.clone(), path, Some(&owner), true).await).await;
        assert_eq!(
            (status.as_u16(), code.as_str()),
            (403, "role_not_allowed"),
            "{method} {path} as a tenant's owner"
        );
    }
    let res = call(
        client,
        base,
        Method::POST,
        "/api/operator/update/check",
        Some(&op),
        false,
    )
    .await;
    assert_eq!(res.status(), 403, "check now without the CSRF header");

    let started = Instant::now();
    let s = state(client, base, &op, false).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refused connection is told at once"
    );
    assert_eq!(s["current"], CURRENT, "{s}");
    assert_eq!(s["available"], false, "{s}");
    assert_eq!(s["latest"], Value::Null, "{s}");
    let error = s["error"].as_str().unwrap_or_else(|| panic!("{s}"));
    assert!(
        error.contains("cannot download http://127.0.0.1:9/releases/SHA256SUMS"),
        "says what failed: {error}"
    );
    assert!(
        error.to_lowercase().contains("refused"),
        "says why: {error}"
    );
    assert!(
        error.contains("AGV_UPDATE_SOURCE"),
        "says what to do: {error}"
    );
    assert!(s["checked_at"].as_i64().is_some_and(|t| t > 0), "{s}");
    assert_eq!(s["in_container"], false, "{s}");
    assert_eq!(s["how_to"], "agv-server update", "{s}");
    assert_eq!(s["rollback_available"], false, "{s}");
    // Check now answers the same, freshly.
    let again = state(client, base, &op, true).await;
    assert!(again["error"].as_str().is_some(), "{again}");
    assert!(again["checked_at"].as_i64() >= s["checked_at"].as_i64());
}

#[tokio::test]
async fn a_newer_signed_release_is_available_cached_and_a_foreign_signature_is_an_error() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let (other, _) = keypair(keys.path(), "other");
    let binary = b"#!/bin/sh\necho agv-server\n";
    let dist = keys.path().join("dist");
    release(&dist, "99.0.0", binary, &key);
    let url = serve(dist.clone());

    let console = Console::start(&url, &public, &[("AGV_IN_CONTAINER", "1")]).await;
    let (client, base, op) = (&console.client, console.base.as_str(), &console.op);

    let s = state(client, base, op, false).await;
    assert_eq!(
        (&s["available"], &s["latest"], &s["current"], &s["error"]),
        (
            &json!(true),
            &json!("99.0.0"),
            &json!(CURRENT),
            &Value::Null
        ),
        "{s}"
    );
    assert_eq!(s["in_container"], true, "{s}");
    assert!(
        s["how_to"]
            .as_str()
            .unwrap()
            .contains("docker compose up -d --build"),
        "in a container the image is rebuilt, not the binary replaced: {s}"
    );

    // The same version is published: the cached state stands until "check now".
    release(&dist, CURRENT, binary, &key);
    let cached = state(client, base, op, false).await;
    assert_eq!(cached["latest"], "99.0.0", "cached for an hour: {cached}");
    assert_eq!(cached["checked_at"], s["checked_at"], "{cached}");
    let fresh = state(client, base, op, true).await;
    assert_eq!(
        (&fresh["available"], &fresh["latest"], &fresh["error"]),
        (&json!(false), &json!(CURRENT), &Value::Null),
        "{fresh}"
    );

    // A newer version signed by another key is refused, never offered.
    release(&dist, "99.0.0", binary, &other);
    let foreign = state(client, base, op, true).await;
    assert_eq!(foreign["available"], false, "{foreign}");
    assert_eq!(foreign["latest"], Value::Null, "{foreign}");
    let error = foreign["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{foreign}"));
    assert!(error.contains("signature does not verify"), "{error}");
    let later = state(client, base, op, false).await;
    assert_eq!(
        later["error"], foreign["error"],
        "the failure is cached too"
    );
}

#[tokio::test]
async fn a_release_directory_is_checked_like_a_mirror_and_a_version_that_does_not_parse_is_an_error()
 {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let binary = b"#!/bin/sh\necho agv-server\n";
    let dist = keys.path().join("dist");
    release(&dist, "99.0.0", binary, &key);

    let console = Console::start(dist.to_str().unwrap(), &public, &[]).await;
    let (client, base, op) = (&console.client, console.base.as_str(), &console.op);

    let s = state(client, base, op, false).await;
    assert_eq!(
        (&s["available"], &s["latest"], &s["error"]),
        (&json!(true), &json!("99.0.0"), &Value::Null),
        "{s}"
    );

    // A signed VERSION that is no version is never offered (it would compare as anything).
    release(&dist, "nightly", binary, &key);
    let odd = state(client, base, op, true).await;
    assert_eq!(
        (&odd["available"], &odd["latest"]),
        (&json!(false), &Value::Null),
        "{odd}"
    );
    let error = odd["error"].as_str().unwrap_or_else(|| panic!("{odd}"));
    assert!(error.contains("not a version"), "{error}");

    // An older release is not an update.
    release(&dist, "0.0.1", binary, &key);
    let older = state(client, base, op, true).await;
    assert_eq!(
        (&older["available"], &older["latest"], &older["error"]),
        (&json!(false), &json!("0.0.1"), &Value::Null),
        "{older}"
    );
}
