//! The CLI, black-box through the real binary: output rules, --json, --help, bad input.

use crate::helpers::{Backend, DataHome, cli_command, stderr};
use crate::on_both_backends;

async fn tenant_and_key_commands_follow_the_output_contract(backend: Backend) {
    let Some(home) = DataHome::new(backend) else {
        return;
    };
    let tenant = home.cli_ok(&["tenant", "create", "Acme Corp"]);
    assert!(
        tenant.starts_with("ten_") && !tenant.contains(char::is_whitespace),
        "stdout is the id alone: {tenant:?}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&home.cli_ok(&["tenant", "create", "Beta", "--json"])).unwrap();
    assert!(json["id"].as_str().unwrap().starts_with("ten_"));
    assert_eq!(json["name"], "Beta");

    let list: serde_json::Value =
        serde_json::from_str(&home.cli_ok(&["tenant", "list", "--json"])).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Acme Corp") && names.contains(&"Beta"),
        "{names:?}"
    );

    let key = home.cli_ok(&["key", "create", "--tenant", &tenant, "--name", "web"]);
    assert!(
        key.starts_with("agv_") && key.len() == 68,
        "stdout is the key alone: {key:?}"
    );
    let keys: serde_json::Value =
        serde_json::from_str(&home.cli_ok(&["key", "list", "--tenant", &tenant, "--json"]))
            .unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["scope"], "proxy", "proxy is the default scope");
    assert_eq!(keys[0]["name"], "web");
    assert_eq!(keys[0]["status"], "active");
    let id = keys[0]["id"].as_str().unwrap();
    assert_eq!(home.cli_ok(&["key", "revoke", id]), id);
    let keys: serde_json::Value =
        serde_json::from_str(&home.cli_ok(&["key", "list", "--tenant", &tenant, "--json"]))
            .unwrap();
    assert_eq!(keys[0]["status"], "revoked");

    let version: i64 = home.cli_ok(&["migrate"]).parse().unwrap();
    assert!(version >= 1);
}

on_both_backends!(tenant_and_key_commands_follow_the_output_contract);

#[test]
fn bad_arguments_fail_with_a_clear_message_and_change_nothing() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let tenant = home.cli_ok(&["tenant", "create", "Acme"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["key", "create", "--tenant", "acme"],
            "must start with 'ten_'",
        ),
        (
            &["key", "create", "--tenant", &tenant, "--scope", "root"],
            "unknown scope",
        ),
        (
            &["key", "create", "--tenant", &tenant, "--expires-in", "soon"],
            "not a duration",
        ),
        (
            &[
                "key",
                "create",
                "--tenant",
                "ten_00000000000000000000000000000000",
            ],
            "no tenant",
        ),
        (
            &["key", "revoke", "key_00000000000000000000000000000000"],
            "no key",
        ),
        (&["key", "rotate", "nonsense"], "must start with 'key_'"),
        (&["tenant", "create", "   "], "must not be empty"),
        (
            &[
                "key",
                "list",
                "--tenant",
                "ten_00000000000000000000000000000000",
            ],
            "no tenant",
        ),
    ];
    for (args, expected) in cases {
        let out = home.cli(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(
            err.contains(expected),
            "{args:?}: stderr {err:?} should contain {expected:?}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
    }
    let keys = home.cli_ok(&["key", "list", "--tenant", &tenant, "--json"]);
    assert_eq!(keys, "[]", "failed commands stored nothing");
    let tenants: serde_json::Value =
        serde_json::from_str(&home.cli_ok(&["tenant", "list", "--json"])).unwrap();
    assert_eq!(tenants.as_array().unwrap().len(), 1);
}

#[test]
fn every_subcommand_has_help_and_version_prints() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["tenant", "--help"],
        &["tenant", "create", "--help"],
        &["tenant", "list", "--help"],
        &["key", "--help"],
        &["key", "create", "--help"],
        &["key", "list", "--help"],
        &["key", "revoke", "--help"],
        &["key", "rotate", "--help"],
        &["migrate", "--help"],
        &["version", "--help"],
    ] {
        let out = cli_command().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = cli_command().arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("agv-server {}", env!("CARGO_PKG_VERSION"))
    );
    let out = cli_command().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_new_data_directory_and_its_files_are_private_to_the_service_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new").join("data");
    let out = cli_command()
        .arg("--data")
        .arg(&data)
        .args(["tenant", "create", "Private"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        } else {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
        }
    }
    assert!(files > 0 && data.join("agv.db").exists());
}

#[test]
fn the_data_dir_can_come_from_agv_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli_command()
        .env("AGV_DATA", dir.path())
        .args(["tenant", "create", "FromEnv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dir.path().join("agv.db").exists(),
        "the SQLite file is in the AGV_DATA dir"
    );
}

#[test]
fn healthcheck_exits_0_for_a_ready_server_and_1_when_none_answers() {
    let home = crate::helpers::DataHome::new(crate::helpers::Backend::Sqlite).unwrap();
    let mut server = crate::helpers::spawn_server_process(home.path(), None, &[]);
    let url = format!("http://127.0.0.1:{}", server.port);
    let out = home.cli(&["healthcheck", "--url", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("healthy"), "{}", stderr(&out));
    // From the listen address, 0.0.0.0 read as the loopback address.
    let out = cli_command()
        .arg("--data")
        .arg(home.path())
        .args([
            "--listen",
            &format!("0.0.0.0:{}", server.port),
            "healthcheck",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let out = home.cli(&["healthcheck", "--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unhealthy"), "{}", stderr(&out));
}
