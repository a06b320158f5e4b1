//! Bad starts: each gets a clear message and a non-zero exit, never a panic, and nothing
//! stored is changed.

use crate::helpers::{Backend, DataHome, cli_command, spawn_server_process, stderr};
use std::process::Command;
use std::time::{Duration, Instant};

fn assert_fails_clearly(cmd: &mut Command, expected: &[&str]) {
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for e in expected {
        assert!(err.contains(e), "stderr {err:?} should mention {e:?}");
    }
}

#[test]
fn an_unknown_database_url_scheme_is_refused_without_creating_a_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails_clearly(
        cli_command().arg("--data").arg(dir.path()).args([
            "--database-url",
            "mysql://root@localhost/agv",
            "migrate",
        ]),
        &["scheme 'mysql'", "postgres://"],
    );
    assert!(!dir.path().join("agv.db").exists());
}

#[test]
fn an_unreachable_postgres_is_reported_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    assert_fails_clearly(
        cli_command().arg("--data").arg(dir.path()).args([
            "--database-url",
            "postgres://agv:secretpw@127.0.0.1:1/agv",
            "migrate",
        ]),
        &["127.0.0.1:1"],
    );
    let out = cli_command()
        .arg("--data")
        .arg(dir.path())
        .args([
            "--database-url",
            "postgres://agv:secretpw@127.0.0.1:1/agv",
            "migrate",
        ])
        .output()
        .unwrap();
    assert!(
        !stderr(&out).contains("secretpw"),
        "the password is never printed"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_unwritable_data_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    // A path below a regular file cannot be created, even by root.
    assert_fails_clearly(
        cli_command()
            .arg("--data")
            .arg(file.join("data"))
            .args(["tenant", "list"]),
        &["data directory", "--data"],
    );
}

#[test]
fn malformed_and_unknown_config_keys_are_reported_by_name() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    home.cli_ok(&["tenant", "create", "Keep me"]);
    std::fs::write(
        home.path().join("config.toml"),
        "listen = \"127.0.0.1:0\"\nlisten_addr = \"x\"\n",
    )
    .unwrap();
    assert_fails_clearly(
        cli_command().arg("--data").arg(home.path()).arg("serve"),
        &["unknown key 'listen_addr'", "config.toml"],
    );
    std::fs::write(home.path().join("config.toml"), "listen = [1, 2").unwrap();
    assert_fails_clearly(
        cli_command()
            .arg("--data")
            .arg(home.path())
            .args(["tenant", "list"]),
        &["config.toml", "TOML"],
    );
    std::fs::write(home.path().join("config.toml"), "log_format = \"xml\"").unwrap();
    assert_fails_clearly(
        cli_command().arg("--data").arg(home.path()).arg("serve"),
        &["log_format", "config.toml"],
    );
    std::fs::remove_file(home.path().join("config.toml")).unwrap();
    assert!(
        home.cli_ok(&["tenant", "list"]).contains("Keep me"),
        "nothing stored was lost"
    );
}

#[test]
fn an_unknown_durability_is_refused_naming_the_levels_before_anything_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails_clearly(
        cli_command()
            .arg("--data")
            .arg(dir.path())
            .arg("serve")
            .env("AGV_DURABILITY", "fsync"),
        &[
            "invalid durability = 'fsync' (from env AGV_DURABILITY)",
            "'process' or 'power'",
        ],
    );
    assert!(!dir.path().join("agv.db").exists());
}

#[test]
fn a_data_dir_from_a_newer_version_is_refused_and_left_alone() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    home.cli_ok(&["tenant", "create", "Old"]);
    let db = home.path().join("agv.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("INSERT INTO agv_schema_migrations (version, name, checksum, applied_at) VALUES (9999, 'future', 'x', 0)", [])
            .unwrap();
    }
    assert_fails_clearly(
        cli_command().arg("--data").arg(home.path()).arg("migrate"),
        &["newer agv-server", "9999"],
    );
    assert_fails_clearly(
        cli_command()
            .arg("--data")
            .arg(home.path())
            .args(["--listen", "127.0.0.1:0", "serve"]),
        &["newer agv-server"],
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the data is untouched");
}

#[test]
fn a_port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    assert_fails_clearly(
        cli_command()
            .arg("--data")
            .arg(dir.path())
            .args(["--listen", &addr, "serve"]),
        &["cannot listen on", &addr, "--listen"],
    );
}

/// A plain HTTP/1.1 GET over TCP; returns the whole response text.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn sigterm_stops_the_server_gracefully_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let crate::helpers::ServerProcess {
        mut child,
        port,
        mut log,
        ..
    } = spawn_server_process(dir.path(), None, &[]);
    let res = http_get(port, "/health");
    assert!(
        res.starts_with("HTTP/1.1 200") && res.contains("ok"),
        "{res}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut log, &mut rest).unwrap();
    assert!(rest.contains("agv-server stopped"), "{rest}");
}

#[test]
fn the_server_logs_its_effective_settings_and_their_sources_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "upstream_api_key = \"sk-super-secret-value\"\n",
    )
    .unwrap();
    let crate::helpers::ServerProcess {
        mut child,
        startup_log,
        ..
    } = spawn_server_process(dir.path(), None, &[]);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let setting = |name: &str| -> serde_json::Value {
        startup_log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["setting"] == name)
            .unwrap_or_else(|| panic!("no setting {name} in {startup_log}"))
    };
    assert_eq!(setting("upstream_api_key")["value"], "(set)");
    assert_eq!(setting("upstream_api_key")["source"], "config.toml");
    assert_eq!(setting("listen")["source"], "flag");
    assert_eq!(setting("log_format")["source"], "env AGV_LOG_FORMAT");
    assert_eq!(setting("upstream_url")["source"], "default");
    assert!(!startup_log.contains("sk-super-secret-value"));
}
