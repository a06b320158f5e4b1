//! The instance's certificate signing key: `<data>/certificate-signing.key`, made at the
//! first start (32 random bytes as hex, mode 0600), like the master key. It lives in the
//! data directory on Postgres instances too: the database never sees it.
//!
//! [`load_or_create`] is for the server; [`read_public_key`] is for offline tools and never
//! creates anything.

use crate::domain::certificate::{CertSigningKey, PublicKey};
use std::path::{Path, PathBuf};

/// The file holding the signing key, in the data directory.
pub const SIGNING_KEY_FILE: &str = "certificate-signing.key";

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SIGNING_KEY_FILE)
}

fn read(path: &Path) -> Result<CertSigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the certificate signing key {}: {e}; fix its permissions",
            path.display()
        )
    })?;
    CertSigningKey::parse(&text).map_err(|e| {
        format!(
            "the certificate signing key {} is not valid: {e}. Restore the original file from a backup (certificates already issued verify only with its public key)",
            path.display()
        )
    })
}

/// The instance's signing key, created when missing. Blocking (file I/O).
pub fn load_or_create(data_dir: &Path) -> Result<CertSigningKey, String> {
    let path = key_path(data_dir);
    if path.exists() {
        return read(&path);
    }
    let key = CertSigningKey::generate();
    let created = crate::config::private_file::create(&path, &format!("{}\n", key.to_hex()))
        .map_err(|e| {
            format!(
                "cannot create the certificate signing key {}: {e}; check the data directory's permissions",
                path.display()
            )
        })?;
    if !created {
        return read(&path);
    }
    tracing::info!(path = %path.display(), public_key = %key.public().to_base64(), "created the certificate signing key; back it up with the data directory");
    Ok(key)
}

/// The public half of the data directory's signing key, if it has one. Never creates it.
pub fn read_public_key(data_dir: &Path) -> Result<Option<PublicKey>, String> {
    let path = key_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    read(&path).map(|k| Some(k.public()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_with_owner_only_permissions_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_public_key(dir.path()).unwrap(), None);
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public(), again.public());
        assert_eq!(read_public_key(dir.path()).unwrap(), Some(first.public()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(key_path(dir.path()), "garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.contains("not valid"), "{err}");
    }
}
