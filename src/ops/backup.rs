//! Backups: one file holding every table as rows (the same format from SQLite and from
//! Postgres, so a backup moves an instance between them), the data directory's key files
//! sealed with a passphrase when one is given, and a manifest signed with the instance's
//! Ed25519 key.
//!
//! The file is a tar archive (`agv-backup-<UTC time>.tar`; `…-2.tar`, `…-3.tar` for more
//! taken in one second), readable with standard tools:
//!
//! ```text
//! manifest.json            what is inside: versions, per-table row counts and SHA-256
//! manifest.sig             base64 Ed25519 signature of manifest.json's bytes
//! tables/<table>.jsonl.zst zstd-compressed lines: {"table","columns"}, then one JSON array per row
//! files/<name>.sealed      (with a passphrase) master.key, certificate-signing.key, config.toml
//! ```
//!
//! Taking a backup reads one snapshot of the database (a read transaction on SQLite in WAL
//! mode, a repeatable-read transaction on Postgres): writers are not blocked. Restoring
//! imports into a fresh database in one transaction, then checks row counts, SQLite's
//! integrity check and every hash chain before the new database replaces the old one.

use crate::domain::certificate::{CertSigningKey, PublicKey};
use crate::domain::secret_box::MasterKey;
use crate::store::dump::{BATCH, TABLES, TableBatch};
use crate::store::{DynStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "agv-backup";
pub const FORMAT_VERSION: u32 = 1;
/// Data-directory files a backup carries (sealed) when a passphrase is given.
pub const SECRET_FILES: &[&str] = &["master.key", "certificate-signing.key", "config.toml"];
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    pub rows: u64,
    /// SHA-256 of the member's bytes as stored in the archive (compressed).
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub agv_version: String,
    pub schema_version: i64,
    /// The backend it was taken from (`sqlite` or `postgres`).
    pub backend: String,
    pub created_at: String,
    pub instance_id: String,
    /// The signing key's public half (base64); the signature is checked against a trusted
    /// key when one is known, else against this one (and said so).
    pub public_key: String,
    /// Set for a tenant's export: only that tenant's rows are inside.
    #[serde(default)]
    pub tenant_id: Option<String>,
    pub tables: Vec<TableEntry>,
    pub files: Vec<FileEntry>,
    /// Salt of the passphrase's key (base64), when files are included.
    pub secrets_salt: Option<String>,
}

/// What a finished backup wrote.
#[derive(Debug, Clone)]
pub struct BackupDone {
    pub path: PathBuf,
    pub bytes: u64,
    pub manifest: Manifest,
}

/// Progress of long work: the table and the rows done in it so far.
pub type Progress<'a> = dyn FnMut(&str, u64) + 'a;

/// A working directory, removed with what it holds when this goes out of scope.
struct RemovedOnDrop<'a>(&'a Path);

impl Drop for RemovedOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

fn io(what: &str, path: &Path) -> impl Fn(std::io::Error) -> String {
    let (what, path) = (what.to_owned(), path.display().to_string());
    move |e| format!("{what} {path}: {e}")
}

fn hex_sha256_file(path: &Path) -> Result<String, String> {
    let mut f = File::open(path).map_err(io("cannot read", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The key that seals the data directory's files, from a passphrase and a salt.
fn passphrase_key(passphrase: &str, salt: &[u8]) -> Result<MasterKey, String> {
    if passphrase.chars().count() < 12 {
        return Err("the backup passphrase must be at least 12 characters long".into());
    }
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| format!("cannot derive a key from the passphrase: {e}"))?;
    Ok(MasterKey::from_bytes(out))
}

fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// Tells apart the work files of backups taken in the same second, in this process or another.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Gives the finished `partial` its name, `<name>.tar`, or `<name>-2.tar`, `-3`, … when a
/// backup taken in the same second already has it: a backup never replaces another. The
/// link fails when the name exists, so two processes cannot both take one name.
fn place_without_overwriting(partial: &Path, dir: &Path, name: &str) -> Result<PathBuf, String> {
    for n in 1..=1000u32 {
        let path = match n {
            1 => dir.join(format!("{name}.tar")),
            n => dir.join(format!("{name}-{n}.tar")),
        };
        match std::fs::hard_link(partial, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // A file system without hard links: the name is checked, then renamed into.
            Err(_) if !path.exists() => {
                std::fs::rename(partial, &path).map_err(io("cannot rename into place", &path))?;
                return Ok(path);
            }
            Err(_) => continue,
        }
    }
    Err(format!(
        "cannot name the backup: {} already holds 1000 backups named {name}*.tar from this second; \
         move some away and try again",
        dir.display()
    ))
}

/// Writes a backup of `store` (and, with a passphrase, the data directory's key files) into
/// `out_dir`. Returns the file; a failure leaves no partial file behind. With `tenant`,
/// only that tenant's rows (a tenant export, named `agv-tenant-<id>-<time>.tar`;
/// restorable like a backup).
pub fn create(
    store: &DynStore,
    tenant: Option<&crate::domain::TenantId>,
    data_dir: &Path,
    out_dir: &Path,
    key: &CertSigningKey,
    passphrase: Option<&str>,
    progress: &mut Progress<'_>,
) -> Result<BackupDone, String> {
    std::fs::create_dir_all(out_dir).map_err(io("cannot create the backup directory", out_dir))?;
    let stamp = &utc_stamp();
    let work = &out_dir.join(format!(".agv-backup-{stamp}-{}.tmp", unique_suffix()));
    let _cleanup = RemovedOnDrop(work);
    std::fs::create_dir_all(work.join("tables")).map_err(io("cannot create", work))?;
    let schema_version = store
        .schema_version()
        .map_err(|e| format!("cannot read the schema version: {e}"))?;

    // Rows, table by table, each into its own compressed member.
    type Encoder = zstd::stream::write::Encoder<'static, BufWriter<File>>;
    let mut current: Option<(String, Encoder, u64)> = None;
    let mut counts: Vec<(String, u64)> = Vec::new();
    let finish = |cur: Option<(String, Encoder, u64)>,
                  counts: &mut Vec<(String, u64)>|
     -> Result<(), StoreError> {
        if let Some((name, enc, rows)) = cur {
            let mut w = enc
                .finish()
                .map_err(|e| StoreError::Database(e.to_string()))?;
            w.flush().map_err(|e| StoreError::Database(e.to_string()))?;
            counts.push((name, rows));
        }
        Ok(())
    };
    let tables_dir = work.join("tables");
    store
        .export_tables(tenant, &mut |batch: TableBatch| {
            if batch.first {
                finish(current.take(), &mut counts)?;
                let path = tables_dir.join(format!("{}.jsonl.zst", batch.table));
                let file = File::create(&path).map_err(|e| {
                    StoreError::Database(format!("cannot write {}: {e}", path.display()))
                })?;
                let mut enc = zstd::stream::write::Encoder::new(BufWriter::new(file), ZSTD_LEVEL)
                    .map_err(|e| StoreError::Database(e.to_string()))?;
                let head = serde_json::json!({"table": batch.table, "columns": batch.columns});
                writeln!(enc, "{head}").map_err(|e| StoreError::Database(e.to_string()))?;
                current = Some((batch.table.clone(), enc, 0));
            }
            if let Some((name, enc, rows)) = current.as_mut() {
                for row in &batch.rows {
                    serde_json::to_writer(&mut *enc, row)
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                    enc.write_all(b"\n")
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                }
                *rows += batch.rows.len() as u64;
                progress(name, *rows);
            }
            Ok(())
        })
        .map_err(|e| format!("reading the database failed: {e}"))?;
    finish(current.take(), &mut counts).map_err(|e| format!("writing the backup failed: {e}"))?;

    let mut tables = Vec::new();
    for (name, rows) in counts {
        let sha256 = hex_sha256_file(&tables_dir.join(format!("{name}.jsonl.zst")))?;
        tables.push(TableEntry { name, rows, sha256 });
    }

    // The data directory's secrets, sealed with the passphrase.
    let mut files = Vec::new();
    let mut secrets_salt = None;
    if let Some(pass) = passphrase {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let sealer = passphrase_key(pass, &salt)?;
        use base64::Engine;
        secrets_salt = Some(base64::engine::general_purpose::STANDARD.encode(salt));
        std::fs::create_dir_all(work.join("files")).map_err(io("cannot create", work))?;
        for name in SECRET_FILES {
            let src = data_dir.join(name);
            if !src.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&src).map_err(io("cannot read", &src))?;
            let sealed = sealer
                .seal(name, &text)
                .map_err(|e| format!("cannot seal {name}: {e}"))?;
            let dst = work.join("files").join(format!("{name}.sealed"));
            std::fs::write(&dst, sealed.as_bytes()).map_err(io("cannot write", &dst))?;
            files.push(FileEntry {
                name: (*name).to_owned(),
                sha256: hex_sha256_file(&dst)?,
            });
        }
    }

    let public = key.public();
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        agv_version: env!("CARGO_PKG_VERSION").into(),
        schema_version,
        backend: store.backend().as_str().into(),
        created_at: chrono::Utc::now().to_rfc3339(),
        instance_id: public.instance_id(),
        public_key: public.to_base64(),
        tenant_id: tenant.map(ToString::to_string),
        tables,
        files,
        secrets_salt,
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| format!("cannot write the manifest: {e}"))?;
    let signature = key.sign_detached(&manifest_bytes);

    let name = match tenant {
        None => format!("agv-backup-{stamp}"),
        Some(t) => format!("agv-tenant-{t}-{stamp}"),
    };
    let partial = out_dir.join(format!(".{name}-{}.tar.partial", unique_suffix()));
    let written = (|| -> Result<(), String> {
        let file = File::create(&partial).map_err(io("cannot write", &partial))?;
        let mut tar = tar::Builder::new(BufWriter::new(file));
        let mut add_bytes = |name: &str, bytes: &[u8]| -> Result<(), String> {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes)
                .map_err(|e| format!("cannot write {name} into the backup: {e}"))
        };
        add_bytes("manifest.json", &manifest_bytes)?;
        add_bytes("manifest.sig", signature.as_bytes())?;
        for t in &manifest.tables {
            let p = tables_dir.join(format!("{}.jsonl.zst", t.name));
            let bytes = std::fs::read(&p).map_err(io("cannot read", &p))?;
            add_bytes(&format!("tables/{}.jsonl.zst", t.name), &bytes)?;
        }
        for f in &manifest.files {
            let p = work.join("files").join(format!("{}.sealed", f.name));
            let bytes = std::fs::read(&p).map_err(io("cannot read", &p))?;
            add_bytes(&format!("files/{}.sealed", f.name), &bytes)?;
        }
        let mut inner = tar
            .into_inner()
            .map_err(|e| format!("cannot finish the backup file: {e}"))?;
        inner
            .flush()
            .map_err(|e| format!("cannot finish the backup file: {e}"))?;
        inner
            .get_ref()
            .sync_all()
            .map_err(|e| format!("cannot flush the backup file to disk: {e}"))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let placed = place_without_overwriting(&partial, out_dir, &name);
    let _ = std::fs::remove_file(&partial);
    let final_path = placed?;
    let bytes = std::fs::metadata(&final_path)
        .map(|m| m.len())
        .unwrap_or_default();
    Ok(BackupDone {
        path: final_path,
        bytes,
        manifest,
    })
}

/// A backup unpacked into a work directory, its manifest checked.
pub struct Unpacked {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// True when the signature was checked against a key trusted beforehand (given, or the
    /// data directory's), false when only against the manifest's own key.
    pub trusted_signature: bool,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unpacks `file` into a new directory under `work_parent` and checks the manifest's
/// signature and every member's SHA-256. `trusted`: the key the signature must match.
pub fn unpack(
    file: &Path,
    work_parent: &Path,
    trusted: Option<&PublicKey>,
) -> Result<Unpacked, String> {
    let dir = work_parent.join(format!(
        ".agv-restore-{}-{}",
        utc_stamp(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let mut unpacked = Unpacked {
        dir: dir.clone(),
        manifest: Manifest::default(),
        trusted_signature: false,
    };
    let f = File::open(file).map_err(io("cannot open the backup", file))?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let entries = archive
        .entries()
        .map_err(|e| format!("{} is not a backup archive: {e}", file.display()))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| format!("the backup {} is damaged or truncated: {e}", file.display()))?;
        let name = entry
            .path()
            .map_err(|e| format!("the backup holds a bad member name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let allowed = name == "manifest.json"
            || name == "manifest.sig"
            || (name.starts_with("tables/") || name.starts_with("files/"))
                && !name.contains("..")
                && name.matches('/').count() == 1;
        if !allowed {
            return Err(format!(
                "the backup holds an unexpected member '{name}'; it was not made by agv-server"
            ));
        }
        let dst = dir.join(&name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        let mut out = File::create(&dst).map_err(io("cannot write", &dst))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| {
            format!(
                "the backup {} is damaged or truncated ({name}): {e}",
                file.display()
            )
        })?;
    }
    let manifest_bytes = std::fs::read(dir.join("manifest.json")).map_err(|_| {
        format!(
            "{} holds no manifest.json: it is not an agv-server backup, or it is truncated",
            file.display()
        )
    })?;
    let signature = std::fs::read_to_string(dir.join("manifest.sig"))
        .map_err(|_| "the backup holds no manifest.sig: it is not signed".to_owned())?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| format!("the backup's manifest is not valid: {e}"))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "not an agv-server backup (format '{}')",
            manifest.format
        ));
    }
    if manifest.format_version != FORMAT_VERSION {
        return Err(format!(
            "the backup has format version {}; this agv-server reads version {FORMAT_VERSION}. Use the agv-server version that made it",
            manifest.format_version
        ));
    }
    let own = PublicKey::parse(&manifest.public_key)
        .map_err(|e| format!("the backup's public key is not valid: {e}"))?;
    let key = trusted.copied().unwrap_or(own);
    if !key.verify_detached(&manifest_bytes, &signature) {
        return Err(if trusted.is_some() && trusted != Some(&own) {
            format!(
                "the backup was signed by another instance ({}), not by the trusted key; pass that instance's key with --public-key if you trust it",
                manifest.instance_id
            )
        } else {
            "the backup's manifest signature does not match: the manifest was changed after the backup was made".into()
        });
    }
    for t in &manifest.tables {
        if !TABLES.contains(&t.name.as_str()) {
            return Err(format!("the backup holds an unknown table '{}'", t.name));
        }
        let p = dir.join("tables").join(format!("{}.jsonl.zst", t.name));
        let got = hex_sha256_file(&p)
            .map_err(|_| format!("the backup is missing the table '{}'", t.name))?;
        if got != t.sha256 {
            return Err(format!(
                "the table '{}' in the backup is damaged: its SHA-256 does not match the manifest",
                t.name
            ));
        }
    }
    for f in &manifest.files {
        // A restore writes these files into the data directory by name: only the key
        // files a backup holds are accepted, never a path.
        if !SECRET_FILES.contains(&f.name.as_str()) {
            return Err(format!(
                "the backup's manifest names the file '{}', which is not one of the files a backup holds ({}); it was not made by agv-server, and nothing was restored",
                f.name,
                SECRET_FILES.join(", ")
            ));
        }
        let p = dir.join("files").join(format!("{}.sealed", f.name));
        let got = hex_sha256_file(&p)
            .map_err(|_| format!("the backup is missing the file '{}'", f.name))?;
        if got != f.sha256 {
            return Err(format!("the file '{}' in the backup is damaged", f.name));
        }
    }
    unpacked.trusted_signature = trusted.is_some();
    unpacked.manifest = manifest;
    Ok(unpacked)
}

/// The table being read: its name, columns, lines and rows read so far.
type OpenTable<'a> = (String, Vec<String>, Box<dyn BufRead + 'a>, u64);

/// Rows per restored table.
pub type Counts = Vec<(String, i64)>;

/// Reads an unpacked backup's tables batch by batch, in the manifest's order.
struct TableReader<'a> {
    unpacked: &'a Unpacked,
    next_table: usize,
    current: Option<OpenTable<'a>>,
    progress: &'a mut Progress<'a>,
}

impl TableReader<'_> {
    fn next_batch(&mut self) -> Result<Option<TableBatch>, String> {
        loop {
            if let Some((table, columns, lines, done)) = self.current.as_mut() {
                let mut rows = Vec::new();
                let mut line = String::new();
                while rows.len() < BATCH {
                    line.clear();
                    let n = lines.read_line(&mut line).map_err(|e| {
                        format!("the table '{table}' in the backup cannot be read: {e}")
                    })?;
                    if n == 0 {
                        break;
                    }
                    let row: Vec<Value> = serde_json::from_str(&line).map_err(|e| {
                        format!("a row of '{table}' in the backup is not valid: {e}")
                    })?;
                    rows.push(row);
                }
                if rows.is_empty() {
                    let expected = self
                        .unpacked
                        .manifest
                        .tables
                        .iter()
                        .find(|t| &t.name == table)
                        .map_or(0, |t| t.rows);
                    if *done != expected {
                        return Err(format!(
                            "the table '{table}' holds {done} rows but the manifest says {expected}"
                        ));
                    }
                    self.current = None;
                    continue;
                }
                *done += rows.len() as u64;
                (self.progress)(table, *done);
                return Ok(Some(TableBatch {
                    table: table.clone(),
                    columns: columns.clone(),
                    rows,
                    first: false,
                }));
            }
            let Some(entry) = self.unpacked.manifest.tables.get(self.next_table) else {
                return Ok(None);
            };
            self.next_table += 1;
            let path = self
                .unpacked
                .dir
                .join("tables")
                .join(format!("{}.jsonl.zst", entry.name));
            let file = File::open(&path).map_err(io("cannot read", &path))?;
            let unreadable = |e: std::io::Error| {
                format!(
                    "the table '{}' in the backup cannot be read: {e}",
                    entry.name
                )
            };
            let decoder = zstd::stream::read::Decoder::new(file).map_err(unreadable)?;
            let mut lines: Box<dyn BufRead> = Box::new(BufReader::new(decoder));
            let mut head = String::new();
            lines.read_line(&mut head).map_err(unreadable)?;
            let head: Value = serde_json::from_str(&head).map_err(|e| {
                format!(
                    "the table '{}' in the backup has a bad header: {e}",
                    entry.name
                )
            })?;
            let columns: Vec<String> = head
                .get("columns")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .ok_or_else(|| {
                    format!("the table '{}' in the backup names no columns", entry.name)
                })?;
            self.current = Some((entry.name.clone(), columns.clone(), lines, 0));
            return Ok(Some(TableBatch {
                table: entry.name.clone(),
                columns,
                rows: Vec::new(),
                first: true,
            }));
        }
    }
}

/// Imports an unpacked backup into `target` (a fresh, empty database) and checks it: row
/// counts per table and every hash chain. Returns the rows per table.
pub fn load_into(
    unpacked: &Unpacked,
    target: &DynStore,
    progress: &mut Progress<'_>,
) -> Result<Vec<(String, i64)>, String> {
    let known = crate::store::migrate::known_version();
    if unpacked.manifest.schema_version > known {
        return Err(format!(
            "the backup has schema version {}, newer than this agv-server knows ({known}); restore it with the agv-server version that made it ({})",
            unpacked.manifest.schema_version, unpacked.manifest.agv_version
        ));
    }
    let mut reader = TableReader {
        unpacked,
        next_table: 0,
        current: None,
        progress,
    };
    let mut failure: Option<String> = None;
    let result = target.import_tables(&mut || match reader.next_batch() {
        Ok(b) => Ok(b),
        Err(e) => {
            failure = Some(e.clone());
            Err(StoreError::Database(e))
        }
    });
    if let Err(e) = result {
        return Err(failure.unwrap_or_else(|| format!("importing the backup failed: {e}")));
    }
    let counts = target
        .table_counts()
        .map_err(|e| format!("cannot count the restored rows: {e}"))?;
    for t in &unpacked.manifest.tables {
        let got = counts
            .iter()
            .find(|(n, _)| n == &t.name)
            .map_or(-1, |(_, n)| *n);
        if got != i64::try_from(t.rows).unwrap_or(i64::MAX) {
            return Err(format!(
                "the restored table '{}' holds {got} rows, the backup {}",
                t.name, t.rows
            ));
        }
    }
    let chains = crate::evidence::audit::verify_all(&**target, None, &mut |_| {})
        .map_err(|e| format!("cannot check the restored hash chains: {e}"))?;
    if let Some(bad) = chains.iter().find(|c| c.broken.is_some()) {
        return Err(format!(
            "the restored {} chain of {} does not verify: the backup's rows were changed",
            bad.table,
            bad.tenant_id
                .as_ref()
                .map_or("the instance".to_owned(), ToString::to_string)
        ));
    }
    Ok(counts)
}

/// Unseals the backup's data-directory files with the passphrase: (name, content).
pub fn unseal_files(
    unpacked: &Unpacked,
    passphrase: &str,
) -> Result<Vec<(String, String)>, String> {
    use base64::Engine;
    let Some(salt) = &unpacked.manifest.secrets_salt else {
        return Ok(Vec::new());
    };
    let salt = base64::engine::general_purpose::STANDARD
        .decode(salt)
        .map_err(|_| "the backup's secrets salt is not valid".to_owned())?;
    let key = passphrase_key(passphrase, &salt)?;
    let mut out = Vec::new();
    for f in &unpacked.manifest.files {
        let p = unpacked
            .dir
            .join("files")
            .join(format!("{}.sealed", f.name));
        let mut sealed = String::new();
        File::open(&p)
            .and_then(|mut fh| fh.read_to_string(&mut sealed))
            .map_err(io("cannot read", &p))?;
        let secret = key.open(&f.name, &sealed).map_err(|_| {
            "the passphrase does not open the backup's key files: wrong passphrase".to_owned()
        })?;
        out.push((f.name.clone(), secret.expose().to_owned()));
    }
    Ok(out)
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreDone {
    pub counts: Vec<(String, i64)>,
    /// Where the data it replaced was kept (SQLite in the data directory).
    pub safety_copy: Option<PathBuf>,
    /// Data-directory files written from the backup.
    pub files_restored: Vec<String>,
    pub notes: Vec<String>,
}

/// Restores `file`. Without `database_url`, into the data directory's SQLite database:
/// refused while a server uses the directory; the backup is loaded into a staged
/// database and checked, then swapped in, the previous files kept in
/// `<data>/pre-restore-<time>/` (and put back if the swap fails). With a Postgres URL,
/// into that database, which must be empty (the import is one transaction).
pub fn restore(
    file: &Path,
    data_dir: &Path,
    database_url: Option<&str>,
    trusted: Option<PublicKey>,
    passphrase: Option<&str>,
    progress: &mut Progress<'_>,
) -> Result<RestoreDone, String> {
    std::fs::create_dir_all(data_dir).map_err(io("cannot create the data directory", data_dir))?;
    let trusted = match trusted {
        Some(k) => Some(k),
        None => crate::evidence::signing::read_public_key(data_dir)?,
    };
    let mut notes = Vec::new();
    let unpacked = unpack(file, data_dir, trusted.as_ref())?;
    if !unpacked.trusted_signature {
        notes.push(format!(
            "no trusted public key was given or found in the data directory: the signature was checked against the backup's own key (instance {})",
            unpacked.manifest.instance_id
        ));
    }
    let files = match passphrase {
        Some(p) if !unpacked.manifest.files.is_empty() => unseal_files(&unpacked, p)?,
        None if !unpacked.manifest.files.is_empty() => {
            notes.push("the backup holds sealed key files; without the passphrase they were not restored (the data directory's keys are kept)".into());
            Vec::new()
        }
        _ => Vec::new(),
    };
    let stamp = utc_stamp();
    let (counts, safety_copy) = match database_url {
        Some(url) => {
            let store = crate::store::open(data_dir, Some(url))
                .map_err(|e| format!("cannot open the target database: {e}"))?;
            let counts = load_into(&unpacked, &store, progress)?;
            (counts, None)
        }
        None => {
            let queue_dir = data_dir.join("queue");
            // Held until the restore ends, so a server cannot start in between.
            let _queue = match crate::jobs::Queue::open(
                &queue_dir,
                crate::jobs::QueueLimits::default(),
            ) {
                Ok(q) => q,
                Err(crate::jobs::QueueError::Locked { .. }) => {
                    return Err(format!(
                        "agv-server is running on {}: stop it first (restore replaces its database)",
                        data_dir.display()
                    ));
                }
                Err(e) => return Err(format!("cannot check whether the server is running: {e}")),
            };
            let stage = data_dir.join(format!(".restore-stage-{stamp}"));
            std::fs::create_dir_all(&stage).map_err(io("cannot create", &stage))?;
            let staged = (|| {
                let store =
                    crate::store::sqlite::open_store(&stage.join(crate::store::sqlite::DB_FILE))
                        .map_err(|e| format!("cannot create the staged database: {e}"))?;
                let counts = load_into(&unpacked, &store, progress)?;
                store
                    .checkpoint()
                    .map_err(|e| format!("cannot finish the staged database: {e}"))?;
                Ok::<_, String>(counts)
            })();
            let counts = match staged {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&stage);
                    return Err(format!("{e}; nothing was changed"));
                }
            };
            let safety = data_dir.join(format!("pre-restore-{stamp}"));
            let swapped = swap_in(&stage, data_dir, &safety);
            let _ = std::fs::remove_dir_all(&stage);
            swapped?;
            (counts, Some(safety))
        }
    };
    let mut files_restored = Vec::new();
    for (name, content) in files {
        let dst = data_dir.join(&name);
        if dst.exists()
            && let Some(safety) = &safety_copy
        {
            let _ = std::fs::copy(&dst, safety.join(&name));
        }
        write_private(&dst, &content)?;
        files_restored.push(name);
    }
    Ok(RestoreDone {
        counts,
        safety_copy,
        files_restored,
        notes,
    })
}

fn write_private(path: &Path, content: &str) -> Result<(), String> {
    let tmp = path.with_extension("restore-tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io("cannot write", &tmp))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot rename into place", path))
}

/// The database files of the data directory: the main file, its WAL and shared memory, and
/// the text index (derived: it is rebuilt from the calls at the next start).
fn db_files(dir: &Path) -> Vec<PathBuf> {
    let main = crate::store::sqlite::DB_FILE;
    let search = crate::store::sqlite::DB_FILE.replace(".db", ".search.db");
    [main.to_owned(), search]
        .iter()
        .flat_map(|base| ["", "-wal", "-shm", "-journal"].map(|s| dir.join(format!("{base}{s}"))))
        .filter(|p| p.exists())
        .collect()
}

/// Moves the data directory's database files into `safety`, then the staged database in;
/// on failure, moves the previous files back.
fn swap_in(stage: &Path, data_dir: &Path, safety: &Path) -> Result<(), String> {
    std::fs::create_dir_all(safety).map_err(io("cannot create", safety))?;
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let undo = |moved: &[(PathBuf, PathBuf)]| {
        for (from, to) in moved.iter().rev() {
            let _ = std::fs::rename(to, from);
        }
    };
    for old in db_files(data_dir) {
        let Some(name) = old.file_name() else {
            continue;
        };
        let to = safety.join(name);
        if let Err(e) = std::fs::rename(&old, &to) {
            undo(&moved);
            return Err(format!(
                "cannot move {} aside: {e}; nothing was changed",
                old.display()
            ));
        }
        moved.push((old, to));
    }
    let main = crate::store::sqlite::DB_FILE;
    for suffix in ["", "-wal"] {
        let from = stage.join(format!("{main}{suffix}"));
        if !from.exists() {
            continue;
        }
        let to = data_dir.join(format!("{main}{suffix}"));
        if let Err(e) = std::fs::rename(&from, &to) {
            let _ = std::fs::remove_file(data_dir.join(main));
            undo(&moved);
            return Err(format!(
                "cannot move the restored database into place: {e}; the previous database was put back"
            ));
        }
    }
    Ok(())
}

/// Checks a backup without touching the instance: unpacks it, restores it into a temporary
/// SQLite database and checks every row count and hash chain.
pub fn verify(
    file: &Path,
    trusted: Option<PublicKey>,
    progress: &mut Progress<'_>,
) -> Result<(Manifest, Counts, bool), String> {
    let tmp = tempfile_dir()?;
    let unpacked = unpack(file, &tmp, trusted.as_ref())?;
    let store = crate::store::sqlite::open_store(&tmp.join(crate::store::sqlite::DB_FILE))
        .map_err(|e| format!("cannot create a temporary database: {e}"))?;
    let result = load_into(&unpacked, &store, progress);
    drop(store);
    let trusted = unpacked.trusted_signature;
    let manifest = unpacked.manifest.clone();
    drop(unpacked);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|counts| (manifest, counts, trusted))
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "agv-backup-verify-{}-{}",
        std::process::id(),
        utc_stamp()
    ));
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    Ok(dir)
}

/// The automatic backups in `dir`, newest first, with the time in their name.
pub fn list(dir: &Path) -> Vec<(PathBuf, chrono::DateTime<chrono::Utc>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let (at, n) = stamp_of(&e.file_name().to_string_lossy())?;
            Some((e.path(), at, n))
        })
        .collect();
    out.sort_by_key(|b| std::cmp::Reverse((b.1, b.2)));
    out.into_iter().map(|(path, at, _)| (path, at)).collect()
}

/// The time in an automatic backup's file name (`agv-backup-<UTC time>.tar`, or
/// `…-<n>.tar` for the n-th taken in that second); `None` for any other name (tenant
/// exports, partial files, anything else).
pub fn taken_at(name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    stamp_of(name).map(|(at, _)| at)
}

fn stamp_of(name: &str) -> Option<(chrono::DateTime<chrono::Utc>, u32)> {
    let stamp = name.strip_prefix("agv-backup-")?.strip_suffix(".tar")?;
    let (stamp, n) = match stamp.split_once('-') {
        Some((stamp, n)) => (stamp, n.parse().ok().filter(|n| *n >= 2)?),
        None => (stamp, 1),
    };
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    Some((t.and_utc(), n))
}

/// Which backups to delete so that the newest of each of the last `daily` days and the
/// newest of each of the `weekly` ISO weeks before those are kept. `backups` newest first;
/// a backup is named by a path here, by an object key for the remote copies.
pub fn to_prune<T: Clone>(
    backups: &[(T, chrono::DateTime<chrono::Utc>)],
    daily: usize,
    weekly: usize,
) -> Vec<T> {
    use chrono::Datelike;
    let mut days: Vec<chrono::NaiveDate> = Vec::new();
    let mut weeks: Vec<(i32, u32)> = Vec::new();
    let mut prune = Vec::new();
    for (path, at) in backups {
        let day = at.date_naive();
        let week = (at.iso_week().year(), at.iso_week().week());
        if days.len() < daily {
            if !days.contains(&day) {
                days.push(day);
                continue;
            }
        } else if weeks.len() < weekly
            && !weeks.contains(&week)
            && !days
                .iter()
                .any(|d| (d.iso_week().year(), d.iso_week().week()) == week)
        {
            weeks.push(week);
            continue;
        }
        prune.push(path.clone());
    }
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A backup archive as an attacker would make it: any manifest, signed with a key of
    /// their own (a restore into a fresh data directory has no trusted key to hold it to).
    /// Its manifest names one file, `name`, whose sealed bytes stand in the member `member`.
    fn crafted_backup(dir: &Path, name: &str, member: &str, sealed: &[u8]) -> PathBuf {
        let files = vec![FileEntry {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(sealed)),
        }];
        let key = CertSigningKey::generate();
        let public = key.public();
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            agv_version: env!("CARGO_PKG_VERSION").into(),
            schema_version: 1,
            backend: "sqlite".into(),
            created_at: chrono::Utc::now().to_rfc3339(),
            instance_id: public.instance_id(),
            public_key: public.to_base64(),
            tenant_id: None,
            tables: Vec::new(),
            files,
            secrets_salt: Some("AAAAAAAAAAAAAAAAAAAAAA==".into()),
        };
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        let signature = key.sign_detached(&manifest_bytes);
        let path = dir.join("crafted.tar");
        let mut tar = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes).unwrap();
        };
        add("manifest.json", &manifest_bytes);
        add("manifest.sig", signature.as_bytes());
        add(member, sealed);
        tar.finish().unwrap();
        path
    }

    #[test]
    fn a_signed_manifest_naming_a_file_outside_the_known_key_files_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let sealed = b"sealed bytes";
        for name in ["../files/pwned", "pwned", "/etc/agv", "master.key/../x"] {
            let archive = crafted_backup(tmp.path(), name, "files/pwned.sealed", sealed);
            let err = unpack(&archive, tmp.path(), None).map(|_| ()).unwrap_err();
            assert!(
                err.contains(name) && err.contains("master.key"),
                "refused, naming the file and the known ones: {err}"
            );
        }
        // The known names still unpack.
        let archive = crafted_backup(tmp.path(), "master.key", "files/master.key.sealed", sealed);
        assert!(unpack(&archive, tmp.path(), None).is_ok());
    }

    #[test]
    fn pruning_keeps_the_newest_of_seven_days_and_four_weeks_before_them() {
        // Two backups a day for 60 days, newest first.
        let start = chrono::Utc.with_ymd_and_hms(2026, 12, 31, 3, 0, 0).unwrap();
        let backups: Vec<_> = (0..120)
            .map(|i| {
                let at = start - chrono::Duration::hours(12 * i);
                (PathBuf::from(format!("b{i}")), at)
            })
            .collect();
        let prune = to_prune(&backups, 7, 4);
        let kept: Vec<_> = backups
            .iter()
            .filter(|(p, _)| !prune.contains(p))
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(kept.len(), 11, "{kept:?}");
        // The newest of each of the last seven days…
        for (i, t) in kept.iter().take(7).enumerate() {
            let day = (start - chrono::Duration::days(i as i64)).date_naive();
            let newest = backups
                .iter()
                .map(|(_, b)| *b)
                .filter(|b| b.date_naive() == day)
                .max()
                .unwrap();
            assert_eq!(*t, newest);
        }
        // …then one per older week, each in a different ISO week.
        let weeks: std::collections::HashSet<_> = kept
            .iter()
            .skip(7)
            .map(chrono::Datelike::iso_week)
            .collect();
        assert_eq!(weeks.len(), 4);
        assert!(
            to_prune(&backups[..3], 7, 4).len() == 1,
            "two the same day: the older goes"
        );
        assert!(to_prune::<PathBuf>(&[], 7, 4).is_empty());
    }

    #[test]
    fn two_backups_within_one_second_are_two_files() {
        let data = tempfile::tempdir().unwrap();
        let store = crate::store::open(data.path(), None).unwrap();
        let key = CertSigningKey::generate();
        let out = data.path().join("backups");
        let take = || create(&store, None, data.path(), &out, &key, None, &mut |_, _| {}).unwrap();
        let (a, b, c) = (take(), take(), take());
        assert_ne!(a.path, b.path);
        assert_ne!(b.path, c.path);
        let listed = list(&out);
        assert_eq!(listed.len(), 3, "none overwrote another: {listed:?}");
        assert_eq!(listed[0].0, c.path, "the newest is listed first");
        for done in [a, b, c] {
            assert!(unpack(&done.path, data.path(), None).is_ok());
        }
    }

    #[test]
    fn listing_reads_the_time_from_the_name_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "agv-backup-20261201T030000Z.tar",
            "agv-backup-20261202T030000Z.tar",
            "agv-backup-20261202T030000Z-2.tar",
            "agv-backup-20261202T030000Z-x.tar",
            ".agv-backup-20261203T030000Z.tar.partial",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let l = list(dir.path());
        assert_eq!(l.len(), 3);
        assert!(l[0].0.ends_with("agv-backup-20261202T030000Z-2.tar"));
        assert!(l[1].0.ends_with("agv-backup-20261202T030000Z.tar"));
    }
}
