//! The official OpenAI Python SDK against the real server: runs `tests/sdk` with pytest
//! from the virtualenv that `tests/sdk/setup.sh` creates (`.ci/run` does). Without that
//! virtualenv the test says SKIPPED — or fails when AGV_TEST_REQUIRE_ALL=1.

use crate::helpers::{Backend, ProxySetup};
use std::path::PathBuf;

fn venv_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/sdk-venv/bin/python");
    python.exists().then_some(python)
}

#[tokio::test]
async fn the_official_openai_python_sdk_works_against_agv_server() {
    let Some(python) = venv_python() else {
        agv_server::store::testing::skip_or_fail(
            "OpenAI Python SDK suite",
            "target/sdk-venv is missing; run `bash tests/sdk/setup.sh` to create it",
        );
        return;
    };
    let setup = ProxySetup::new(Backend::Sqlite).unwrap();
    let home = &setup.home;
    let frozen = home.cli_ok(&["key", "create", "--tenant", &setup.tenant, "--json"]);
    let frozen: serde_json::Value = serde_json::from_str(&frozen).unwrap();
    let (broke_tenant, broke_admin) = home.tenant_and_key("admin");
    let broke_key = home.cli_ok(&["key", "create", "--tenant", &broke_tenant]);
    let (limited_tenant, limited_admin) = home.tenant_and_key("admin");
    let limited_key = home.cli_ok(&["key", "create", "--tenant", &limited_tenant]);
    let (app, _upstream, _tenant, key, admin) = setup.start().await;
    let res = app
        .post_json(
            "/v1/killswitch/key",
            &admin,
            &serde_json::json!({"reason": "sdk test", "key_id": frozen["id"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.set_policy(&broke_admin, serde_json::json!({"budget_daily_usd": 0.0}))
        .await;
    app.set_policy(
        &limited_admin,
        serde_json::json!({"key_requests_per_minute": 1}),
    )
    .await;

    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let out = tokio::process::Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("AGV_BASE_URL", app.url("/v1"))
        .env("AGV_KEY", &key)
        .env("AGV_ADMIN_KEY", &admin)
        .env("AGV_FROZEN_KEY", frozen["key"].as_str().unwrap())
        .env("AGV_BROKE_KEY", &broke_key)
        .env("AGV_LIMITED_KEY", &limited_key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the OpenAI SDK suite failed:\n{stdout}"
    );
    assert!(
        stdout.contains("passed") && !stdout.contains("skipped"),
        "{stdout}"
    );
    app.stop().await;
}
