//! Built-in TLS (`--tls-cert`, `--tls-key`): HTTPS with HSTS, `Secure` session cookies, the
//! health check over HTTPS, and clear startup errors for a missing or wrong certificate or
//! key.

use crate::helpers::{Backend, DataHome, TestApp, stderr};
use agv_server::config::TlsFiles;
use agv_server::startup::Application;
use serde_json::json;
use std::path::{Path, PathBuf};

fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package) makes the test certificates");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A test CA (`ca.pem`, what the client trusts) and a certificate it signed for localhost
/// and 127.0.0.1 with its key: the server's files.
fn self_signed(dir: &Path) -> TlsFiles {
    let subj = |cn: &str| format!("/CN={cn}");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subj("agv test CA"),
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &subj("localhost"),
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
        dir,
    );
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// A client that trusts the test CA next to `cert`.
fn https_client(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert.with_file_name("ca.pem")).unwrap();
    agv_testkit::http_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_server_speaks_https_with_hsts_and_secure_cookies() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let tls = self_signed(home.path());
    let pass = home.path().join("pw");
    std::fs::write(&pass, "a long enough password").unwrap();
    home.cli_ok(&[
        "user",
        "create",
        "--email",
        "op@example.com",
        "--role",
        "operator",
        "--password-file",
        pass.to_str().unwrap(),
    ]);
    let files = tls.clone();
    // Idle HTTPS keep-alive connections hold a graceful stop until the shutdown timeout
    // (actix does not close them early, as it does for plain HTTP): keep it short here.
    let app = TestApp::start_with(home, |s| {
        s.tls = Some(files);
        s.shutdown_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let base = app.address.replace("http://", "https://");
    let client = https_client(&tls.cert);

    let res = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let res = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": "op@example.com", "password": "a long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");

    // Plain HTTP on the TLS port gets no answer from the application.
    let plain = agv_testkit::http_client()
        .get(format!("{}/health", app.address))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP must not be served on the TLS port"
    );
    // A client that does not trust the certificate is refused by its own TLS check.
    assert!(
        agv_testkit::http_client()
            .get(format!("{base}/health"))
            .send()
            .await
            .is_err()
    );

    // The health check speaks HTTPS when TLS is on.
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let out = app.home.cli(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-cert",
        tls.cert.to_str().unwrap(),
        "--tls-key",
        tls.key.to_str().unwrap(),
        "healthcheck",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    app.stop().await;
}

async fn refused(home: &DataHome, tls: TlsFiles) -> String {
    let mut settings = home.settings();
    settings.tls = Some(tls);
    match Application::build(settings).await {
        Ok(_) => panic!("the server started with a bad TLS setup"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_missing_or_wrong_certificate_or_key_is_a_clear_startup_error() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let good = self_signed(home.path());
    let other_dir = home.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = self_signed(&other_dir);
    let garbage = home.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file at all").unwrap();
    let missing = PathBuf::from("/nonexistent/cert.pem");

    let e = refused(
        &home,
        TlsFiles {
            cert: missing.clone(),
            key: good.key.clone(),
        },
    )
    .await;
    assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    let e = refused(
        &home,
        TlsFiles {
            cert: garbage.clone(),
            key: good.key.clone(),
        },
    )
    .await;
    assert!(e.contains("holds no certificate"), "{e}");
    let e = refused(
        &home,
        TlsFiles {
            cert: good.cert.clone(),
            key: garbage,
        },
    )
    .await;
    assert!(e.contains("private key"), "{e}");
    let e = refused(
        &home,
        TlsFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        },
    )
    .await;
    assert!(e.contains("does not fit"), "{e}");

    // Half a TLS setup on the command line: a usage error naming the missing half.
    let out = home.cli(&["--tls-cert", good.cert.to_str().unwrap(), "healthcheck"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));
}
