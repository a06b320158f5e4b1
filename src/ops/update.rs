//! Self-update: fetches a release (GitHub releases, a mirror's URL, or a local directory
//! for air-gapped sites), checks the Ed25519 signature of its `SHA256SUMS` and the archive's
//! SHA-256, backs the instance up, keeps the running binary as `agv-server.prev` and swaps
//! the new one in (`self_update`'s self-replace, safe for a running executable).
//! `--rollback` puts the previous binary back. Inside a container it refuses: pull the new
//! image instead.
//!
//! A release directory holds `VERSION`, `SHA256SUMS`, `SHA256SUMS.sig` (the raw 64-byte
//! Ed25519 signature of `SHA256SUMS`, as `openssl pkeyutl -sign -rawin` writes it) and
//! `agv-server-<target>.tar.gz` per target (written by `packaging/release.sh`).
//!
//! Only a newer version is an update. A signed release can be replayed by whoever serves
//! the files, so an older one is refused unless a downgrade is asked for, and a `VERSION`
//! that is not a semantic version is refused always: it could not be ordered.

use sha2::{Digest, Sha256};
use std::cmp::Ordering;

use crate::domain::Timestamp;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The release signing key's public half (SPKI PEM), as built into install.sh.
pub const RELEASE_PUBLIC_KEY: &str = include_str!("../../packaging/release-signing.pub");
/// How to update inside agv-server's container image, where an update in place is refused.
pub const IN_CONTAINER_HOW_TO: &str = "rebuild the image from the new sources, which keeps the data volume \
     (git pull && docker compose up -d --build)";
pub use crate::config::values::{DEFAULT_SOURCE, SOURCE_FORMS, Source};

/// A release whose `SHA256SUMS` carries a valid signature and whose `VERSION` is a version.
#[derive(Debug, Clone)]
pub struct Release {
    pub source: Source,
    pub version: String,
    sums: String,
}

/// The archive name for this machine.
pub fn archive_name() -> String {
    format!(
        "agv-server-{}-unknown-{}-gnu.tar.gz",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// True inside agv-server's container image, which sets `AGV_IN_CONTAINER=1`: an update
/// there must come from a new image. (Docker's marker files are not used: a binary
/// installed by hand in a general-purpose container may update itself.)
pub fn in_container() -> bool {
    std::env::var("AGV_IN_CONTAINER").is_ok_and(|v| v == "1")
}

/// Names a PEM file whose key replaces the built-in release key (a site re-signing its own
/// mirror; tests sign local releases with a key of their own).
pub const PUBKEY_FILE_ENV: &str = "AGV_RELEASE_PUBKEY_FILE";

/// The key releases must be signed with: the one in `AGV_RELEASE_PUBKEY_FILE`, else the
/// built-in [`RELEASE_PUBLIC_KEY`]. Both `agv-server update` and the server's update
/// check use it.
pub fn release_key() -> Result<ed25519_dalek::VerifyingKey, String> {
    let pem = match std::env::var_os(PUBKEY_FILE_ENV) {
        Some(f) => std::fs::read_to_string(&f).map_err(|e| {
            format!(
                "cannot read {PUBKEY_FILE_ENV} {}: {e}",
                Path::new(&f).display()
            )
        })?,
        None => RELEASE_PUBLIC_KEY.to_owned(),
    };
    parse_public_key_pem(&pem)
}

/// An Ed25519 public key from SPKI PEM (`openssl pkey -pubout`).
pub fn parse_public_key_pem(pem: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the release public key is not PEM".to_owned())?;
    // SubjectPublicKeyInfo for Ed25519: a fixed 12-byte prefix and the 32-byte key.
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    if der.len() != 44 || der[..12] != PREFIX {
        return Err("the release public key is not an Ed25519 key".into());
    }
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&der[12..]);
    ed25519_dalek::VerifyingKey::from_bytes(&raw)
        .map_err(|_| "the release public key is not a valid Ed25519 key".into())
}

/// The release file `name` from `source`.
async fn fetch(client: &reqwest::Client, source: &Source, name: &str) -> Result<Vec<u8>, String> {
    match source {
        Source::Url(base) => get(client, &format!("{base}/{name}")).await,
        Source::Dir(dir) => {
            let path = dir.join(name);
            tokio::fs::read(&path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    // Messages name the URL without its password.
    let shown = crate::store::redact_url(url);
    let failed = |e: reqwest::Error| {
        format!(
            "cannot download {shown}: {}",
            crate::telemetry::error_chain(&e.without_url())
        )
    };
    let res = client.get(url).send().await.map_err(failed)?;
    if !res.status().is_success() {
        return Err(format!(
            "cannot download {shown}: the server answered {}",
            res.status()
        ));
    }
    res.bytes().await.map(|b| b.to_vec()).map_err(failed)
}

fn client() -> Result<reqwest::Client, String> {
    // The one outbound client that follows redirects, on purpose: release downloads
    // redirect (GitHub sends `latest/download/…` on to its file host). The source is the
    // operator's own setting, never a tenant's, and every file is checked against the
    // signed SHA256SUMS, so where a redirect leads cannot change what is installed.
    crate::outbound::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// Fetches the release's version and checksums from `source` (see [`Source::parse`]) and
/// checks their signature and that the version is one.
pub async fn check(source: &str, key: &ed25519_dalek::VerifyingKey) -> Result<Release, String> {
    let source = Source::parse(source)?;
    let client = client()?;
    let sums = fetch(&client, &source, "SHA256SUMS").await?;
    let sig = fetch(&client, &source, "SHA256SUMS.sig").await?;
    let sig = ed25519_dalek::Signature::from_slice(&sig)
        .map_err(|_| "the release's SHA256SUMS.sig is not an Ed25519 signature".to_owned())?;
    key.verify_strict(&sums, &sig).map_err(|_| {
        "the release's signature does not verify: SHA256SUMS was not signed by the agv-server release key; nothing was changed".to_owned()
    })?;
    let sums = String::from_utf8(sums).map_err(|_| "SHA256SUMS is not text".to_owned())?;
    let version = fetch(&client, &source, "VERSION").await?;
    let version = String::from_utf8_lossy(&version).trim().to_owned();
    // VERSION is not signed by itself: it must be listed, with its hash, in SHA256SUMS.
    expect_sum(&sums, "VERSION", format!("{version}\n").as_bytes())
        .or_else(|_| expect_sum(&sums, "VERSION", version.as_bytes()))?;
    parse_version(&version)?;
    Ok(Release {
        source,
        version,
        sums,
    })
}

fn expect_sum(sums: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
    let want = sums
        .lines()
        .find_map(|l| {
            let (hash, file) = l.split_once(char::is_whitespace)?;
            (file.trim().trim_start_matches('*') == name).then(|| hash.to_owned())
        })
        .ok_or_else(|| format!("the release's SHA256SUMS does not list {name}"))?;
    let got = hex::encode(Sha256::digest(bytes));
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{name} does not match its SHA-256 in the signed SHA256SUMS (tampered or damaged download); nothing was changed"
        ))
    }
}

/// A semantic version as in Cargo.toml (1.2.3, 1.2.3-rc.1; a leading `v` is allowed).
fn parse_version(v: &str) -> Result<semver::Version, String> {
    let v = v.trim();
    semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).map_err(|_| {
        let shown: String = v.chars().take(40).collect();
        format!(
            "the release's VERSION {shown:?} is not a version such as 1.2.3; it is refused, since it cannot be ordered against this one"
        )
    })
}

/// How the release version `candidate` orders against `current` (semantic versioning's
/// precedence: a release follows its pre-releases; build metadata does not count). An
/// error when either is not a version.
pub fn compare(candidate: &str, current: &str) -> Result<Ordering, String> {
    let (a, b) = (parse_version(candidate)?, parse_version(current)?);
    Ok((a.major, a.minor, a.patch, &a.pre).cmp(&(b.major, b.minor, b.patch, &b.pre)))
}

/// Whether `candidate` is newer than `current`; a version that does not parse never is.
pub fn is_newer(candidate: &str, current: &str) -> bool {
    compare(candidate, current) == Ok(Ordering::Greater)
}

/// Downloads the archive, checks it against the signed checksums and returns the binary.
pub async fn download(release: &Release) -> Result<Vec<u8>, String> {
    let name = archive_name();
    let bytes = fetch(&client()?, &release.source, &name).await?;
    expect_sum(&release.sums, &name, &bytes)?;
    let damaged = |e: std::io::Error| format!("{name} is damaged: {e}");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    for entry in archive
        .entries()
        .map_err(|e| format!("{name} is not a tar.gz archive: {e}"))?
    {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        if path.file_name().is_some_and(|n| n == "agv-server") {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).map_err(damaged)?;
            return Ok(out);
        }
    }
    Err(format!("{name} holds no agv-server binary"))
}

/// Runs `work` as the owner of the data directory `data_dir` when this process runs as root
/// and the directory belongs to another user: `sudo agv-server update` on a host install,
/// where root must replace the binary but the backup, and a signing key made on the way,
/// must stay the service user's, or the service could no longer read or write them.
/// The effective user and group are switched for `work` and back to root after it (root's
/// saved set-user-ID allows that); files are never chowned after the fact, since the
/// service user controls what the data directory holds.
#[cfg(unix)]
pub fn as_data_owner<T>(data_dir: &Path, work: impl FnOnce() -> T) -> Result<T, String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let owner = std::fs::metadata(data_dir).ok().filter(|m| m.uid() != 0);
    let Some(owner) = owner.filter(|_| root) else {
        return Ok(work());
    };
    let (uid, gid) = (owner.uid(), owner.gid());
    // SAFETY: setegid and seteuid change only this process's effective ids (glibc applies
    // them to every thread); their results are checked.
    if unsafe { libc::setegid(gid) } != 0 {
        return Err(format!(
            "cannot act as group {gid}, the owner of {}: {}",
            data_dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::seteuid(uid) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: as above; the effective user is still root.
        unsafe { libc::setegid(0) };
        return Err(format!(
            "cannot act as user {uid}, the owner of {}: {e}",
            data_dir.display()
        ));
    }
    let out = work();
    // SAFETY: as above; root's saved set-user-ID lets it take back uid and gid 0.
    if unsafe { libc::seteuid(0) } != 0 || unsafe { libc::setegid(0) } != 0 {
        return Err(format!(
            "cannot become root again after the backup: {}; nothing was changed",
            std::io::Error::last_os_error()
        ));
    }
    Ok(out)
}

#[cfg(not(unix))]
pub fn as_data_owner<T>(_data_dir: &Path, work: impl FnOnce() -> T) -> Result<T, String> {
    Ok(work())
}

pub fn prev_path(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    exe.with_file_name(name)
}

/// Writes `binary` beside `exe`, checks that it runs (`version`), keeps `exe` as
/// `<exe>.prev` and swaps the new binary in.
pub fn install(exe: &Path, binary: &[u8]) -> Result<String, String> {
    let dir = exe
        .parent()
        .ok_or_else(|| "cannot tell the binary's directory".to_owned())?;
    let staged = dir.join(".agv-server.update");
    std::fs::write(&staged, binary).map_err(|e| {
        format!(
            "cannot write {}: {e}; is the directory writable?",
            staged.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", staged.display()))?;
    }
    let ran = std::process::Command::new(&staged).arg("version").output();
    let version = match ran {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => {
            let _ = std::fs::remove_file(&staged);
            return Err("the new binary does not run on this machine; nothing was changed".into());
        }
    };
    let prev = prev_path(exe);
    std::fs::copy(exe, &prev)
        .map_err(|e| format!("cannot keep the current binary as {}: {e}", prev.display()))?;
    swap(&staged, exe)
        .map_err(|e| format!("cannot swap the new binary in: {e}; the current one is unchanged"))?;
    Ok(version)
}

/// Puts `<exe>.prev` back in place of `exe`.
pub fn rollback(exe: &Path) -> Result<(), String> {
    let prev = prev_path(exe);
    if !prev.is_file() {
        return Err(format!(
            "there is no previous binary ({}) to go back to",
            prev.display()
        ));
    }
    let dir = exe
        .parent()
        .ok_or_else(|| "cannot tell the binary's directory".to_owned())?;
    let staged = dir.join(".agv-server.rollback");
    std::fs::copy(&prev, &staged).map_err(|e| format!("cannot copy {}: {e}", prev.display()))?;
    swap(&staged, exe).map_err(|e| format!("cannot put the previous binary back: {e}"))
}

/// Renames `staged` over `exe` (same directory: atomic; a running process keeps its
/// image), moving the old file aside first and back if the rename fails.
fn swap(staged: &Path, exe: &Path) -> Result<(), String> {
    let aside = exe.with_file_name(".agv-server.replaced");
    let moved = self_update::Move::from_source(staged)
        .replace_using_temp(&aside)
        .to_dest(exe);
    let _ = std::fs::remove_file(&aside);
    let _ = std::fs::remove_file(staged);
    moved.map_err(|e| e.to_string())
}

/// How long an update check's outcome is shown before the next request checks again.
const UPDATE_CHECK_TTL: Duration = Duration::from_secs(3600);
/// The longest an update check may take: an air-gapped site's firewall may drop packets
/// instead of refusing them, and the console must not hang on it.
const UPDATE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one update check.
#[derive(Debug, Clone)]
pub struct Checked {
    done: Instant,
    pub at_millis: i64,
    /// The signed release's version; `None` when the check failed.
    pub latest: Option<String>,
    pub error: Option<String>,
}

/// The cached update check of this process: one check at a time, kept for an hour.
#[derive(Default)]
pub struct UpdateCheck {
    last: std::sync::Mutex<Option<Checked>>,
    running: tokio::sync::Mutex<()>,
}

impl UpdateCheck {
    pub fn cached(&self) -> Option<Checked> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// The cached outcome while it is fresh, else a new check; `force`: a check that
    /// ended after this call began. Requests arriving during a check wait for its outcome
    /// instead of starting their own.
    pub async fn get(&self, source: &str, force: bool) -> Checked {
        let asked = Instant::now();
        let fresh = |c: &Checked| {
            if force {
                c.done >= asked
            } else {
                c.done.elapsed() < UPDATE_CHECK_TTL
            }
        };
        if let Some(c) = self.cached().filter(fresh) {
            return c;
        }
        let _one = self.running.lock().await;
        if let Some(c) = self.cached().filter(fresh) {
            return c;
        }
        let outcome = check_release(source).await;
        let checked = Checked {
            done: Instant::now(),
            at_millis: Timestamp::now().millis(),
            latest: outcome.as_ref().ok().cloned(),
            error: outcome.err(),
        };
        if let Some(e) = &checked.error {
            tracing::info!(source = %crate::config::values::redact_url(source), error = %e, "update check failed");
        }
        if let Ok(mut g) = self.last.lock() {
            *g = Some(checked.clone());
        }
        checked
    }
}

/// The version of the signed release at `source`, or why it cannot be told.
async fn check_release(source: &str) -> Result<String, String> {
    let key = release_key()?;
    let hint = "; if this server cannot reach it (an air-gapped site), set update_source (AGV_UPDATE_SOURCE) to a mirror it can reach";
    match tokio::time::timeout(UPDATE_CHECK_TIMEOUT, check(source, &key)).await {
        Ok(Ok(release)) => Ok(release.version),
        Ok(Err(e)) if e.starts_with("cannot download") => Err(format!("{e}{hint}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "the update source {} did not answer within {} s{hint}",
            crate::config::values::redact_url(source),
            UPDATE_CHECK_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_release_key_parses_and_versions_compare() {
        parse_public_key_pem(RELEASE_PUBLIC_KEY).unwrap();
        assert!(
            parse_public_key_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
        assert!(is_newer("0.2.0", "0.1.9"));
        assert!(is_newer("v1.0.0", "0.9.0"));
        assert!(!is_newer("0.1.0", "0.1.0"));
        assert!(!is_newer("0.1.0", "0.2.0"));
        let sums = format!("{}  VERSION\n", hex::encode(Sha256::digest(b"1.0.0\n")));
        expect_sum(&sums, "VERSION", b"1.0.0\n").unwrap();
        assert!(expect_sum(&sums, "VERSION", b"6.6.6\n").is_err());
        assert!(expect_sum(&sums, "other", b"").is_err());
    }

    #[test]
    fn a_version_that_does_not_parse_is_never_newer() {
        for odd in ["latest", "nightly-2026", "1.2", "1.2.3.4", "", "1.2.x"] {
            assert!(!is_newer(odd, "0.1.0"), "{odd:?}");
        }
        assert!(is_newer("0.1.1", "0.1.0"));
        assert!(is_newer("0.10.0", "0.9.9"));
        assert!(
            is_newer("1.0.0", "1.0.0-rc.1"),
            "a release follows its candidates"
        );
        assert!(!is_newer("1.0.0-rc.1", "1.0.0"));
    }
}
