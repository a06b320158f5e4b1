//! The values settings parse into that lower layers act on: the database backend and its
//! durability, the update source, a cron expression's check, and how a URL is shown in
//! logs. They live with the settings so that `config` imports nothing above it; `store`,
//! `ops` and `jobs` take them from here.

use std::fmt;
use std::path::PathBuf;
use tokio_cron_scheduler::Job as CronJob;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// The backend a database URL names: Postgres for `postgres://` and `postgresql://`,
    /// SQLite otherwise (no URL, or `sqlite://`; [`open`](crate::store::open) refuses any other scheme).
    pub fn of_url(database_url: Option<&str>) -> Self {
        match database_url.and_then(|u| u.split_once("://")) {
            Some(("postgres" | "postgresql", _)) => Self::Postgres,
            _ => Self::Sqlite,
        }
    }
}

/// What a commit waits for, and so what an acknowledged call survives (README,
/// "Durability"). Chosen by the `durability` setting; unset, each backend keeps
/// [`Durability::default_for`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A commit reaches the database, not necessarily the disk: a call survives a crash
    /// of agv-server (kill -9); a power cut or an OS crash can lose the latest calls.
    /// SQLite: `synchronous=NORMAL` (the WAL is synced by the checkpointer's rounds);
    /// Postgres: the recorder's transactions run with `synchronous_commit = off`.
    Process,
    /// Every commit waits for the disk (`fsync`): a call survives a power cut too.
    /// SQLite: `synchronous=FULL`; Postgres: its own `synchronous_commit` (`on` unless its
    /// configuration says otherwise).
    Power,
}

impl Durability {
    /// The values the setting accepts, for error messages.
    pub const CHOICES: &'static str = "'process' or 'power'";

    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim().to_ascii_lowercase();
        [Self::Process, Self::Power]
            .into_iter()
            .find(|d| d.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Power => "power",
        }
    }

    /// The level of a backend whose `durability` is unset: what each did before the
    /// setting existed, so that an upgrade never weakens a promise silently. SQLite runs
    /// its WAL with `synchronous=NORMAL`; Postgres flushes every commit (its default).
    pub fn default_for(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::Process,
            Backend::Postgres => Self::Power,
        }
    }
}

/// A URL with any password replaced by `***`, safe to log.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _pw)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

pub const DEFAULT_SOURCE: &str =
    "https://github.com/agv-server/agv-server/releases/latest/download";

/// What a release source may be, for messages about one that is not.
pub const SOURCE_FORMS: &str = "an http:// or https:// URL of a release directory (e.g. https://mirror.example/agv-server/latest), or a local release directory: an absolute path (e.g. /srv/agv-releases) or a file:// URL";

/// Where release files are read from: a URL (GitHub releases, a mirror), or a local
/// directory holding the files `packaging/release.sh` writes (an air-gapped site copies it
/// over or mounts it). `Display` and `Debug` hide a URL's password.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    Dir(PathBuf),
}

impl Source {
    /// An http(s) URL, an absolute directory path or a `file://` URL. A relative path is
    /// refused: the server and the CLI may run from different directories.
    pub fn parse(source: &str) -> Result<Self, String> {
        let source = source.trim();
        if source.starts_with("http://") || source.starts_with("https://") {
            return Ok(Self::Url(source.trim_end_matches('/').to_owned()));
        }
        let path = if source.starts_with("file:") {
            url::Url::parse(source)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| format!("expected {SOURCE_FORMS}; a file:// URL names a local absolute path, e.g. file:///srv/agv-releases"))?
        } else {
            PathBuf::from(source)
        };
        if path.is_absolute() {
            Ok(Self::Dir(path))
        } else {
            Err(format!("expected {SOURCE_FORMS}"))
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url) => f.write_str(&redact_url(url)),
            Self::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({self})")
    }
}

/// Checks a cron expression the way the scheduler will read it; for config validation.
pub fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "'{expr}' has {fields} fields, expected 6: seconds, minutes, hours, day of month, month, day of week (e.g. \"0 */10 * * * *\" for every 10 minutes)"
        ));
    }
    CronJob::new(expr, |_, _| {}).map(|_| ()).map_err(|_| {
        format!(
            "'{expr}' is not a valid cron expression: expected 6 fields, seconds first (e.g. \"0 0 3 * * *\" for 03:00 every day)"
        )
    })
}
