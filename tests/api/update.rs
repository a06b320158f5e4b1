//! Self-update end to end against a local release server: the signature and the SHA-256
//! are checked, the instance is backed up, the previous binary is kept and can be put
//! back; a tampered or badly signed release changes nothing; inside a container it refuses.
//! An older release is refused unless `--allow-downgrade`, a VERSION that is not a version
//! always; a local directory (a path or a file:// URL) is a source like a URL.

use crate::helpers::stderr;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Serves the files of `dir` over HTTP/1.0 on 127.0.0.1; returns the base URL.
pub(crate) fn serve(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/releases", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let name = path.trim_start_matches("/releases/");
            match std::fs::read(dir.join(name)) {
                Ok(body) if !name.contains('/') => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
                _ => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    url
}

pub(crate) fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

pub(crate) fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub")),
    );
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

fn archive(binary: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(binary.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        tar.append_data(&mut h, "agv-server", binary).unwrap();
        tar.finish().unwrap();
    }
    gz.finish().unwrap()
}

/// Writes a signed release of `binary` as `version` into `dir`.
pub(crate) fn release(dir: &Path, version: &str, binary: &[u8], key: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let name = agv_server::ops::update::archive_name();
    let files = [
        ("VERSION".to_owned(), format!("{version}\n").into_bytes()),
        (name, archive(binary)),
    ];
    let mut sums = String::new();
    for (n, bytes) in &files {
        std::fs::write(dir.join(n), bytes).unwrap();
        sums.push_str(&format!("{}  {n}\n", hex::encode(Sha256::digest(bytes))));
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    let (sums, sig) = (dir.join("SHA256SUMS"), dir.join("SHA256SUMS.sig"));
    openssl(&[
        "pkeyutl",
        "-sign",
        "-inkey",
        key.to_str().unwrap(),
        "-rawin",
        "-in",
        sums.to_str().unwrap(),
        "-out",
        sig.to_str().unwrap(),
    ]);
}

struct Installed {
    _dir: tempfile::TempDir,
    exe: PathBuf,
    data: PathBuf,
    original: Vec<u8>,
}

/// A stand-in for an installed binary: a script that answers `version` (the real debug
/// binary is hundreds of megabytes; the updater under test is the real one, `--exe`).
pub(crate) fn script(version: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho \"agv-server {version}\"\n").into_bytes()
}

fn installed() -> Installed {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("agv-server");
    std::fs::write(&exe, script("0.1.0")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = dir.path().join("data");
    let original = std::fs::read(&exe).unwrap();
    Installed {
        _dir: dir,
        exe,
        data,
        original,
    }
}

fn run(i: &Installed, public: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agv-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AGV_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--data")
        .arg(&i.data)
        .env("AGV_RELEASE_PUBKEY_FILE", public)
        .envs(envs.iter().copied())
        .args(args)
        .args(if args.first() == Some(&"update") {
            vec!["--exe", i.exe.to_str().unwrap()]
        } else {
            vec![]
        })
        .output()
        .unwrap()
}

#[test]
fn an_update_is_verified_backed_up_kept_and_rolled_back() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let i = installed();
    let out = run(&i, &public, &["tenant", "create", "Acme"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let newer = script("99.0.0");
    let dist = keys.path().join("dist");
    release(&dist, "99.0.0", &newer, &key);
    let url = serve(dist.clone());

    let out = run(&i, &public, &["update", "--check", "--from", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "99.0.0");
    assert!(stderr(&out).contains("available"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&i.exe).unwrap(),
        i.original,
        "--check changes nothing"
    );

    let out = run(&i, &public, &["update", "--from", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&i.exe).unwrap(),
        newer,
        "the new binary is in place"
    );
    let prev = agv_server::ops::update::prev_path(&i.exe);
    assert_eq!(
        std::fs::read(&prev).unwrap(),
        i.original,
        "the previous one is kept"
    );
    assert_eq!(
        agv_server::ops::backup::list(&i.data.join("backups")).len(),
        1,
        "backed up first"
    );

    let out = run(&i, &public, &["update", "--rollback"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&i.exe).unwrap(), i.original, "rolled back");
}

#[test]
fn a_tampered_or_foreign_release_changes_nothing_and_containers_refuse() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let (other, _) = keypair(keys.path(), "other");
    let i = installed();
    let newer = script("99.0.0");

    // Signed by another key.
    let foreign = keys.path().join("foreign");
    release(&foreign, "99.0.0", &newer, &other);
    let out = run(&i, &public, &["update", "--from", &serve(foreign)], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));

    // The archive swapped after signing.
    let tampered = keys.path().join("tampered");
    release(&tampered, "99.0.0", &newer, &key);
    let evil = script("6.6.6");
    std::fs::write(
        tampered.join(agv_server::ops::update::archive_name()),
        archive(&evil),
    )
    .unwrap();
    let out = run(&i, &public, &["update", "--from", &serve(tampered)], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SHA-256"), "{}", stderr(&out));

    // Not newer: nothing to do.
    let same = keys.path().join("same");
    release(&same, env!("CARGO_PKG_VERSION"), &newer, &key);
    let out = run(&i, &public, &["update", "--from", &serve(same)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("up to date"), "{}", stderr(&out));

    // Unreachable mirror, and inside a container.
    let out = run(
        &i,
        &public,
        &["update", "--from", "http://127.0.0.1:9/none"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot download"), "{}", stderr(&out));
    let out = run(&i, &public, &["update"], &[("AGV_IN_CONTAINER", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("image"), "{}", stderr(&out));

    assert_eq!(std::fs::read(&i.exe).unwrap(), i.original, "never changed");
    assert!(!agv_server::ops::update::prev_path(&i.exe).exists());
    // Nothing to roll back to.
    let out = run(&i, &public, &["update", "--rollback"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no previous binary"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_older_or_unreadable_version_is_refused_unless_a_downgrade_is_asked_for() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let i = installed();
    let older = script("0.0.1");
    let old = keys.path().join("old");
    release(&old, "0.0.1", &older, &key);
    let old = serve(old);

    // A mirror replaying an older signed release cannot roll the server back.
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["update", "--from", &old];
        args.extend(extra);
        let out = run(&i, &public, &args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let said = stderr(&out);
        assert!(
            said.contains("older") && said.contains("--allow-downgrade"),
            "{said}"
        );
    }
    let out = run(&i, &public, &["update", "--check", "--from", &old], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0.0.1");
    assert!(stderr(&out).contains("older"), "{}", stderr(&out));

    // A VERSION that is not a version is refused whatever is asked.
    let odd = keys.path().join("odd");
    release(&odd, "latest-build", &older, &key);
    let odd = serve(odd);
    for args in [
        &["update", "--from", &odd][..],
        &["update", "--check", "--from", &odd][..],
        &["update", "--allow-downgrade", "--force", "--from", &odd][..],
    ] {
        let out = run(&i, &public, args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a version"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read(&i.exe).unwrap(), i.original, "never changed");
    assert!(!agv_server::ops::update::prev_path(&i.exe).exists());

    // Asked for explicitly, the downgrade goes through like an update.
    let out = run(
        &i,
        &public,
        &["update", "--allow-downgrade", "--from", &old],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&i.exe).unwrap(), older);
    assert_eq!(
        std::fs::read(agv_server::ops::update::prev_path(&i.exe)).unwrap(),
        i.original
    );
}

#[test]
fn a_local_release_directory_is_a_source_as_a_path_or_a_file_url() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = keypair(keys.path(), "release");
    let i = installed();
    let newer = script("99.0.0");
    let dist = keys.path().join("dist");
    release(&dist, "99.0.0", &newer, &key);
    let dir = dist.to_str().unwrap();

    for from in [dir.to_owned(), format!("file://{dir}"), format!("{dir}/")] {
        let out = run(&i, &public, &["update", "--check", "--from", &from], &[]);
        assert!(out.status.success(), "{from}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "99.0.0");
    }
    // A relative path or a missing directory says what is wrong.
    let out = run(&i, &public, &["update", "--from", "dist"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("absolute"), "{}", stderr(&out));
    let missing = keys.path().join("missing");
    let out = run(
        &i,
        &public,
        &["update", "--from", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "cannot read {}",
            missing.join("SHA256SUMS").display()
        )),
        "{}",
        stderr(&out)
    );

    // The update_source setting takes the directory too.
    let out = run(&i, &public, &["update"], &[("AGV_UPDATE_SOURCE", dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&i.exe).unwrap(), newer);
}
