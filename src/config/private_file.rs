//! Files only their owner may read (mode 0600 on Unix): the master key and the
//! certificate signing key, made at the first start.

use std::io::Write;
use std::path::Path;

/// Writes `text` to a new file at `path` that only its owner may read, synced to disk.
/// `Ok(false)` when the file exists already (another process made it first: use theirs).
pub fn create(path: &Path, text: &str) -> std::io::Result<bool> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}
