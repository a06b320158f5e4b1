//! install.sh end to end: packaging/release.sh packs and signs the debug binary of this
//! build, a local HTTP server serves it, and install.sh runs as root inside a private mount
//! namespace (`unshare --mount`) where /etc is a copy and /usr/local, /var/lib, /var/log,
//! /var/mail and /run/systemd are temporary directories — the machine's own files and
//! systemd are never touched. Checks the installed binary, the service user, the data
//! directory, the unit and the next steps; that a tampered or foreign release installs
//! nothing; the custom paths; a directory as the source; `--uninstall` (keeps data) and
//! `--uninstall --purge`. Then the whole life of a host install: installed from the served
//! release, the binary updates itself in place from a newer one.
//! Without root or `unshare` the test says SKIPPED (a failure under AGV_TEST_REQUIRE_ALL=1).

use crate::helpers::stderr;
use crate::update::{keypair, openssl, script, serve};
use agv_server::store::testing::skip_or_fail;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn install_sh() -> PathBuf {
    repo().join("install.sh")
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why install.sh cannot be run here, if it cannot.
fn missing_environment() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("install.sh creates a user and must run as root".into());
    }
    if !works("unshare", &["--mount", "--propagation", "private", "true"]) {
        return Some("`unshare --mount` does not work here (needs CAP_SYS_ADMIN)".into());
    }
    for tool in ["openssl", "sha256sum", "tar", "useradd", "setpriv", "rustc"] {
        if !works("sh", &["-c", &format!("command -v {tool}")]) {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !works("sh", &["-c", "command -v curl || command -v wget"]) {
        return Some("neither curl nor wget is installed".into());
    }
    None
}

/// A private copy of the system's mutable places, mounted over the real ones by `run`.
struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new(root: PathBuf) -> Self {
        std::fs::create_dir_all(&root).unwrap();
        let cp = Command::new("cp")
            .arg("-a")
            .arg("/etc")
            .arg(root.join("etc"))
            .output()
            .unwrap();
        assert!(cp.status.success(), "copy /etc: {}", stderr(&cp));
        for d in ["usr-local", "var-lib", "var-log", "var-mail", "run-systemd"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Self { root }
    }

    /// The sandbox's view of a path: `/usr/local/bin/x` → `<root>/usr-local/bin/x`.
    fn path(&self, inside: &str) -> PathBuf {
        for (mount, dir) in [
            ("/usr/local", "usr-local"),
            ("/var/lib", "var-lib"),
            ("/var/log", "var-log"),
            ("/var/mail", "var-mail"),
            ("/etc", "etc"),
        ] {
            if let Some(rest) = inside.strip_prefix(mount) {
                return self.root.join(dir).join(rest.trim_start_matches('/'));
            }
        }
        PathBuf::from(inside)
    }

    /// Runs `argv` as root in a new mount namespace over the sandbox, with a clean
    /// environment plus `envs`.
    fn run(&self, argv: &[&str], envs: &[(&str, &str)]) -> Output {
        let script = r#"set -e
mount --bind "$SANDBOX/etc" /etc
mount --bind "$SANDBOX/usr-local" /usr/local
mount --bind "$SANDBOX/var-lib" /var/lib
mount --bind "$SANDBOX/var-log" /var/log
if [ -d /var/mail ]; then mount --bind "$SANDBOX/var-mail" /var/mail; fi
if [ -d /run/systemd ]; then mount --bind "$SANDBOX/run-systemd" /run/systemd; fi
unset SANDBOX
exec "$@""#;
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .args(argv)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("SANDBOX", &self.root)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn passwd(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/passwd")).unwrap()
    }

    /// The uid of `agv` in the sandbox's passwd.
    fn agv_uid(&self) -> Option<u32> {
        self.passwd()
            .lines()
            .find(|l| l.starts_with("agv:"))
            .map(|l| l.split(':').nth(2).unwrap().parse().unwrap())
    }

    /// Every file under the places install.sh writes to, other than the /etc copy.
    fn written(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for d in ["usr-local", "var-lib", "var-log", "var-mail"] {
            walk(&self.root.join(d), &mut found);
        }
        for p in ["etc/agv-server", "etc/systemd/system/agv-server.service"] {
            if self.root.join(p).exists() {
                found.push(self.root.join(p));
            }
        }
        found
    }
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, found);
        }
        found.push(path);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A debug-stripped copy of this build's debug binary, in `work/build`. The debug info is
/// most of a debug binary; without it a release is quicker to pack, serve and check. The
/// code is the same.
fn stripped_binary(work: &Path) -> PathBuf {
    let binary = work.join("build/agv-server");
    if binary.is_file() {
        return binary;
    }
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    let debug = env!("CARGO_BIN_EXE_agv-server");
    if !works(
        "strip",
        &["--strip-debug", "-o", binary.to_str().unwrap(), debug],
    ) {
        std::fs::copy(debug, &binary).unwrap();
    }
    binary
}

/// packaging/release.sh, writing into `dist` with `envs` (its options) added.
fn release_sh(key: &Path, public: &Path, dist: &Path, envs: &[(&str, &Path)]) -> Output {
    Command::new("sh")
        .arg(repo().join("packaging/release.sh"))
        .env("AGV_RELEASE_KEY", key)
        .env("AGV_RELEASE_DIR", dist)
        .env("AGV_RELEASE_PUBKEY_FILE", public)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// packaging/release.sh run on the stripped binary: this machine's target only.
fn release(work: &Path, key: &Path, public: &Path) -> PathBuf {
    let binary = stripped_binary(work);
    let dist = work.join("dist");
    let out = release_sh(key, public, &dist, &[("AGV_RELEASE_BINARY", &binary)]);
    assert!(out.status.success(), "release.sh: {}", stderr(&out));
    dist
}

/// A copy of the release `dist` in `to`, with `change` applied to it.
fn variant(dist: &Path, to: &Path, change: impl FnOnce(&Path)) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(dist).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    change(to);
    to.to_path_buf()
}

fn archive_name() -> String {
    agv_server::ops::update::archive_name()
}

/// What each end-to-end test starts from: a work directory the agv user can enter, a
/// release key pair, and packaging/release.sh's release of this build signed with it.
struct Setup {
    work: tempfile::TempDir,
    key: PathBuf,
    public: String,
    dist: PathBuf,
}

impl Setup {
    /// None (after saying SKIPPED) when install.sh cannot run here.
    fn new() -> Option<Self> {
        if let Some(why) = missing_environment() {
            skip_or_fail("install.sh end to end", &why);
            return None;
        }
        let work = tempfile::tempdir().unwrap();
        // The agv user must be able to reach the data dir and the binary under it.
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (key, public) = keypair(work.path(), "release");
        let dist = release(work.path(), &key, &public);
        let public = public.to_str().unwrap().to_owned();
        Some(Self {
            work,
            key,
            public,
            dist,
        })
    }

    /// The environment that makes install.sh and the binary trust the test's key.
    fn trust(&self) -> [(&str, &str); 1] {
        [("AGV_RELEASE_PUBKEY_FILE", self.public.as_str())]
    }
}

/// `agv-server args…` run by the service user with the installed unit's data directory.
fn as_agv(sb: &Sandbox, binary: &str, args: &[&str]) -> Output {
    let mut argv = vec![
        "setpriv",
        "--reuid=agv",
        "--regid=agv",
        "--clear-groups",
        "env",
        "AGV_DATA=/var/lib/agv-server",
        binary,
    ];
    argv.extend(args);
    sb.run(&argv, &[])
}

#[test]
fn install_sh_installs_verifies_and_uninstalls_in_a_sandbox() {
    let Some(setup) = Setup::new() else { return };
    let version = env!("CARGO_PKG_VERSION");
    let (work, dist) = (&setup.work, &setup.dist);
    let (other, _) = keypair(work.path(), "other");
    let public = setup.public.clone();
    let trust = setup.trust();
    for f in [
        "VERSION",
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "install.sh",
        "agv-server.service",
        &archive_name(),
    ] {
        assert!(dist.join(f).is_file(), "release.sh wrote no {f}");
    }
    assert_eq!(
        std::fs::read_to_string(dist.join("VERSION")).unwrap(),
        format!("{version}\n")
    );
    // One byte of the archive changed after signing.
    let tampered = variant(dist, &work.path().join("tampered"), |d| {
        let p = d.join(archive_name());
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
    });
    // Signed by a key other than the trusted one.
    let foreign = variant(dist, &work.path().join("foreign"), |d| {
        let (sums, sig) = (d.join("SHA256SUMS"), d.join("SHA256SUMS.sig"));
        openssl(&[
            "pkeyutl",
            "-sign",
            "-inkey",
            other.to_str().unwrap(),
            "-rawin",
            "-in",
            sums.to_str().unwrap(),
            "-out",
            sig.to_str().unwrap(),
        ]);
    });
    let url = serve(dist.clone());

    // `agv-server update` reads the same release.
    let out = Command::new(env!("CARGO_BIN_EXE_agv-server"))
        .arg("--data")
        .arg(work.path().join("update-data"))
        .args(["update", "--check", "--from", &url])
        .env("AGV_RELEASE_PUBKEY_FILE", &public)
        .output()
        .unwrap();
    assert!(out.status.success(), "update --check: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), version);

    let real_passwd = std::fs::read("/etc/passwd").unwrap();
    let real_bin_before = std::fs::metadata("/usr/local/bin/agv-server").is_ok();
    let sb = Sandbox::new(work.path().join("sandbox"));
    let original_passwd = sb.passwd();
    let sh = install_sh();
    let sh = sh.to_str().unwrap();

    // A tampered archive, a foreign signature, a missing mirror: each fails clearly and
    // installs nothing.
    for (dir, says) in [
        (tampered, "does not match its SHA-256"),
        (foreign, "signature does not verify"),
    ] {
        let out = sb.run(&["sh", sh, "--from", &serve(dir)], &trust);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("Nothing was installed"),
            "{}",
            stderr(&out)
        );
    }
    // The right release, but not the trusted key.
    let out = sb.run(&["sh", sh, "--from", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("signature does not verify"),
        "{}",
        stderr(&out)
    );
    let out = sb.run(&["sh", sh, "--from", "http://127.0.0.1:9/none"], &trust);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot download"), "{}", stderr(&out));
    let missing = work.path().join("no-such-release");
    let out = sb.run(&["sh", sh, "--from", missing.to_str().unwrap()], &trust);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nor a directory"), "{}", stderr(&out));
    // Another version than the mirror holds.
    let out = sb.run(&["sh", sh, "--from", &url, "--version", "9.9.9"], &trust);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "holds agv-server {version}, not the requested 9.9.9"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(sb.written(), Vec::<PathBuf>::new(), "nothing was installed");
    assert_eq!(sb.passwd(), original_passwd, "no user was created");

    // Installed as the README says: `curl -fsSL …/install.sh | sudo sh`, default paths.
    let pipe = format!("curl -fsSL '{url}/install.sh' | sh -s -- --from '{url}'");
    let out = sb.run(&["sh", "-c", &pipe], &trust);
    let said = stderr(&out);
    assert!(out.status.success(), "install: {said}");
    assert!(said.contains("signature and checksum verified"), "{said}");
    assert!(said.contains("created the service user agv"), "{said}");
    assert!(said.contains("systemd is not running"), "{said}");
    assert!(
        said.contains("/etc/systemd/system/agv-server.service"),
        "{said}"
    );
    assert!(said.contains("Next:"), "{said}");
    assert!(
        said.contains("AGV_DATA=/var/lib/agv-server /usr/local/bin/agv-server tenant create"),
        "{said}"
    );
    assert!(said.contains("/etc/agv-server/env"), "{said}");

    let bin = sb.path("/usr/local/bin/agv-server");
    assert_eq!(mode(&bin), 0o755);
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("agv-server {version}")
    );

    let uid = sb
        .agv_uid()
        .expect("the agv user is in the sandbox's passwd");
    let agv = sb
        .passwd()
        .lines()
        .find(|l| l.starts_with("agv:"))
        .unwrap()
        .to_owned();
    assert!(
        agv.ends_with(":/var/lib/agv-server:/usr/sbin/nologin"),
        "{agv}"
    );
    let group = std::fs::read_to_string(sb.path("/etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("agv:")), "group agv");

    let data = sb.path("/var/lib/agv-server");
    let meta = std::fs::metadata(&data).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), uid, "the data dir belongs to agv");
    assert_eq!(
        mode(&data) & !0o750,
        0,
        "data dir mode {:o} is 0750 or stricter",
        mode(&data)
    );
    let env_file = sb.path("/etc/agv-server/env");
    assert_eq!(
        mode(&env_file),
        0o640,
        "the settings (secrets) are not world-readable"
    );
    assert_eq!(mode(&sb.path("/etc/agv-server")), 0o750);

    let unit = std::fs::read_to_string(sb.path("/etc/systemd/system/agv-server.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/agv-server serve",
        "Environment=AGV_DATA=/var/lib/agv-server",
        "EnvironmentFile=-/etc/agv-server/env",
        "User=agv",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line}:\n{unit}"
        );
    }

    // Next step 2, as the service user: it can use the data dir.
    let out = as_agv(
        &sb,
        "/usr/local/bin/agv-server",
        &["tenant", "create", "Acme"],
    );
    assert!(
        out.status.success(),
        "tenant create as agv: {}",
        stderr(&out)
    );
    let db = std::fs::read_dir(&data).unwrap().count();
    assert!(db > 0, "the agv user wrote its database into the data dir");

    // The machine's own files are untouched.
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), real_passwd);
    assert_eq!(
        std::fs::metadata("/usr/local/bin/agv-server").is_ok(),
        real_bin_before
    );

    // Run again (an upgrade, with --version, from the release directory itself as an
    // air-gapped site would): the previous binary is kept, the user and the settings are
    // left as they are.
    std::fs::write(&env_file, "AGV_LISTEN=127.0.0.1:8080\n").unwrap();
    let dir = dist.to_str().unwrap();
    let out = sb.run(&["sh", sh, "--from", dir, "--version", version], &trust);
    assert!(out.status.success(), "reinstall: {}", stderr(&out));
    assert!(!stderr(&out).contains("created the service user"));
    assert!(sb.path("/usr/local/bin/agv-server.prev").is_file());
    assert_eq!(
        sb.passwd()
            .lines()
            .filter(|l| l.starts_with("agv:"))
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "AGV_LISTEN=127.0.0.1:8080\n"
    );

    // Chosen paths: the unit follows them.
    let custom = work.path().join("custom");
    let (prefix, cdata, cconf, cunits) = (
        custom.join("opt"),
        custom.join("data"),
        custom.join("conf"),
        custom.join("units"),
    );
    let paths = [
        "--prefix",
        prefix.to_str().unwrap(),
        "--data-dir",
        cdata.to_str().unwrap(),
        "--config-dir",
        cconf.to_str().unwrap(),
        "--unit-dir",
        cunits.to_str().unwrap(),
    ];
    let file_url = format!("file://{dir}");
    let mut args = vec!["sh", sh, "--from", &file_url];
    args.extend(paths);
    let out = sb.run(&args, &trust);
    assert!(out.status.success(), "custom paths: {}", stderr(&out));
    let cbin = prefix.join("bin/agv-server");
    assert_eq!(mode(&cbin), 0o755);
    assert_eq!(std::fs::metadata(&cdata).unwrap().uid(), uid);
    assert_eq!(mode(&cdata), 0o750);
    let unit = std::fs::read_to_string(cunits.join("agv-server.service")).unwrap();
    for line in [
        format!("ExecStart={} serve", cbin.display()),
        format!("Environment=AGV_DATA={}", cdata.display()),
        format!("EnvironmentFile=-{}/env", cconf.display()),
        format!(
            "ReadWritePaths={} {}",
            cdata.display(),
            prefix.join("bin").display()
        ),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line}:\n{unit}"
        );
    }
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    assert!(!unit.contains("/var/lib/agv-server"), "{unit}");
    let mut args = vec!["sh", sh, "--uninstall"];
    args.extend(paths);
    let out = sb.run(&args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!cbin.exists() && !cunits.join("agv-server.service").exists());
    assert!(cdata.is_dir(), "data kept");

    // --uninstall removes the binary, the previous one and the unit; keeps data, settings
    // and the user.
    let out = sb.run(&["sh", sh, "--uninstall"], &[]);
    assert!(out.status.success(), "uninstall: {}", stderr(&out));
    assert!(stderr(&out).contains("kept"), "{}", stderr(&out));
    assert!(!bin.exists() && !sb.path("/usr/local/bin/agv-server.prev").exists());
    assert!(!sb.path("/etc/systemd/system/agv-server.service").exists());
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), db, "data kept");
    assert!(env_file.is_file(), "settings kept");
    assert_eq!(sb.agv_uid(), Some(uid), "user kept");

    // --uninstall --purge deletes them too.
    let out = sb.run(&["sh", sh, "--uninstall", "--purge"], &[]);
    assert!(out.status.success(), "purge: {}", stderr(&out));
    assert!(!data.exists() && !sb.path("/etc/agv-server").exists());
    assert_eq!(sb.agv_uid(), None, "user deleted");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), real_passwd);
}

/// Runs install.sh with `args` outside any sandbox: only for arguments it must refuse
/// before touching anything (the paths and the mirror point nowhere real, in case).
fn refuse(args: &[&str]) -> Output {
    let nowhere = tempfile::tempdir().unwrap();
    let n = nowhere.path().to_str().unwrap();
    Command::new("sh")
        .arg(install_sh())
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("AGV_PREFIX", n)
        .env("AGV_DATA_DIR", format!("{n}/data"))
        .env("AGV_CONFIG_DIR", format!("{n}/conf"))
        .env("AGV_UNIT_DIR", format!("{n}/units"))
        .env("AGV_RELEASE_URL", "http://127.0.0.1:9/none")
        .output()
        .unwrap()
}

#[test]
fn install_sh_refuses_bad_arguments_with_its_usage() {
    for (args, says) in [
        (&["--frobnicate"][..], "unknown option '--frobnicate'"),
        (&["--version"][..], "--version needs a value"),
        (
            &["--prefix", "relative/dir"][..],
            "must be an absolute path",
        ),
        (&["--data-dir", "/srv/my data"][..], "holds a space"),
        (&["--purge"][..], "--purge only goes with --uninstall"),
        (&["--version", "1.0;rm"][..], "takes a version such as"),
    ] {
        let out = refuse(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("Usage:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // --help works when the script comes through a pipe (`curl … | sh -s -- --help`).
    let out = Command::new("sh")
        .args(["-s", "--", "--help"])
        .stdin(std::fs::File::open(install_sh()).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--from", "--prefix", "--data-dir", "--uninstall", "--purge"] {
        assert!(help.contains(option), "{help}");
    }
}

#[test]
fn install_sh_trusts_the_published_release_key() {
    let script = std::fs::read_to_string(install_sh()).unwrap();
    let published = std::fs::read_to_string(repo().join("packaging/release-signing.pub")).unwrap();
    assert!(
        script.contains(published.trim()),
        "install.sh's built-in key is packaging/release-signing.pub"
    );
}

/// The whole life of a host install: packaging/release.sh's release, served over HTTP, is
/// installed by install.sh; the installed binary, pointed at the server by the settings
/// file (`AGV_UPDATE_SOURCE`), then updates itself in place to a newer signed release
/// (`update`'s stand-in binary, as in tests/api/update.rs), keeping the previous binary
/// and the data, which the service user can still use; `--rollback` puts it back.
#[test]
fn a_release_installs_and_the_installed_binary_updates_itself_in_place() {
    let Some(setup) = Setup::new() else { return };
    let version = env!("CARGO_PKG_VERSION");
    let trust = setup.trust();
    let sb = Sandbox::new(setup.work.path().join("sandbox"));
    let sh = install_sh();
    let url = serve(setup.dist.clone());
    let out = sb.run(&["sh", sh.to_str().unwrap(), "--from", &url], &trust);
    assert!(out.status.success(), "install: {}", stderr(&out));
    let bin = "/usr/local/bin/agv-server";
    let out = as_agv(&sb, bin, &["tenant", "create", "Acme"]);
    assert!(out.status.success(), "tenant create: {}", stderr(&out));
    let installed = std::fs::read(sb.path(bin)).unwrap();

    // The next release is published where the first one was.
    let newer = script("99.0.0");
    let next = setup.work.path().join("next");
    crate::update::release(&next, "99.0.0", &newer, &setup.key);
    let url = serve(next);
    std::fs::write(
        sb.path("/etc/agv-server/env"),
        format!("AGV_UPDATE_SOURCE={url}\n"),
    )
    .unwrap();
    // As root, with the service's settings and data directory (README, "Packaging").
    let update = |args: &str| {
        let line = format!(
            "set -a; . /etc/agv-server/env; AGV_DATA=/var/lib/agv-server exec {bin} update {args}"
        );
        sb.run(&["sh", "-c", &line], &trust)
    };
    let out = update("--check");
    assert!(out.status.success(), "update --check: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "99.0.0");
    let out = update("");
    assert!(out.status.success(), "update: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{bin}.prev")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(sb.path(bin)).unwrap(),
        newer,
        "updated in place"
    );
    assert_eq!(mode(&sb.path(bin)), 0o755);
    let out = sb.run(&[bin, "version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "agv-server 99.0.0"
    );
    let prev = format!("{bin}.prev");
    assert_eq!(
        std::fs::read(sb.path(&prev)).unwrap(),
        installed,
        "the installed binary is kept"
    );

    // The data is intact, and still the service user's: the previous binary, as agv, reads
    // the tenant and backs up next to the backup the update took.
    let out = as_agv(&sb, &prev, &["tenant", "list"]);
    assert!(out.status.success(), "tenant list: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Acme"));
    let out = as_agv(&sb, &prev, &["backup"]);
    assert!(out.status.success(), "backup as agv: {}", stderr(&out));
    let backups = sb.path("/var/lib/agv-server/backups");
    assert_eq!(
        agv_server::ops::backup::list(&backups).len(),
        2,
        "{backups:?}"
    );

    // Rolled back (by the kept binary: the stand-in cannot), the release's binary is back.
    let out = sb.run(&[&prev, "update", "--rollback", "--exe", bin], &[]);
    assert!(out.status.success(), "rollback: {}", stderr(&out));
    let out = sb.run(&[bin, "version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("agv-server {version}")
    );
}

/// A release holds every target's archive; a binary is packed only under its own target.
/// (The aarch64 "binary" is this build's with its ELF machine rewritten: it cannot run here,
/// so release.sh finds its version in the user agent, as for a cross-built one.)
#[test]
fn release_sh_packs_each_target_and_refuses_a_binary_built_for_another() {
    let work = tempfile::tempdir().unwrap();
    let (key, public) = keypair(work.path(), "release");
    let x86 = stripped_binary(work.path());
    let arm = work.path().join("arm/agv-server");
    std::fs::create_dir_all(arm.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&x86).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    bytes[18..20].copy_from_slice(&[0xb7, 0x00]);
    std::fs::write(&arm, bytes).unwrap();
    std::fs::set_permissions(&arm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let both = Path::new("x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu");
    let (x86_var, arm_var) = (
        "AGV_RELEASE_BINARY_X86_64_UNKNOWN_LINUX_GNU",
        "AGV_RELEASE_BINARY_AARCH64_UNKNOWN_LINUX_GNU",
    );

    let dist = work.path().join("dist");
    let out = release_sh(
        &key,
        &public,
        &dist,
        &[
            ("AGV_RELEASE_TARGETS", both),
            (x86_var, &x86),
            (arm_var, &arm),
        ],
    );
    assert!(out.status.success(), "release.sh: {}", stderr(&out));
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    for target in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        let name = format!("agv-server-{target}.tar.gz");
        assert!(dist.join(&name).is_file(), "no {name}");
        assert!(sums.contains(&format!("  {name}\n")), "{sums}");
    }

    // Each binary given under the other's target: refused, nothing written.
    let swapped = work.path().join("swapped");
    let out = release_sh(
        &key,
        &public,
        &swapped,
        &[
            ("AGV_RELEASE_TARGETS", both),
            (x86_var, &arm),
            (arm_var, &x86),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not built for x86_64-unknown-linux-gnu"),
        "{}",
        stderr(&out)
    );
    assert!(!swapped.join("SHA256SUMS").exists());
    let out = release_sh(
        &key,
        &public,
        &work.path().join("unknown"),
        &[("AGV_RELEASE_TARGETS", Path::new("x86_64-pc-windows-msvc"))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no release for"), "{}", stderr(&out));
}
