//! Settings: flags > `AGV_*` environment > `<data>/config.toml` > defaults.
//!
//! Every setting is described once in [`FIELDS`] (its config-file key, its environment
//! variable, whether it is a secret), read from each layer as text, then parsed into the
//! typed [`Settings`]. Each value remembers where it came from so the server can log its
//! effective configuration at start — secrets only as "(set)". Unknown keys in
//! config.toml are rejected by name. Secrets may also come from `*_FILE` variables.
//! This module does no network I/O and never prints a secret.

use crate::domain::alert::HostAllowlist;
use crate::domain::time::parse_duration;
use crate::domain::upstream_url::UpstreamAllowlist;
use crate::guard::pricing::{ModelPrice, Pricing};
use crate::jobs::scheduler::validate_cron;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.toml";
pub const DEFAULT_DATA_DIR: &str = "./data";

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    ConfigFile,
    Env(String),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::ConfigFile => f.write_str("config.toml"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::Flag => f.write_str("flag"),
        }
    }
}

/// One setting: its config-file key, environment variable and default.
pub struct Field {
    pub key: &'static str,
    pub env: &'static str,
    /// Secrets are never logged and may be read from a file named by `<env>_FILE`.
    pub secret: bool,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// The certificate chain and private key files of built-in TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The S3-compatible bucket backups are uploaded to (path-style addressing: the bucket is
/// the first segment of the path, which MinIO, Garage, Ceph and AWS all accept).
#[derive(Clone, PartialEq, Eq)]
pub struct BackupS3 {
    /// `http://` or `https://`, without a query; the bucket goes after its path.
    pub endpoint: reqwest::Url,
    pub bucket: String,
    pub region: String,
    /// Empty, or ends with `/`; never starts with `/`.
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for BackupS3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupS3")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"(secret)")
            .finish()
    }
}

impl BackupS3 {
    /// `s3://bucket/prefix` for messages.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Parses the `backup_s3_*` settings: all unset means no upload; a half-given block is an
/// error naming the missing setting. `get` gives a setting's trimmed, non-empty value.
fn parse_backup_s3(
    get: &dyn Fn(&str) -> Option<String>,
    bad: &dyn Fn(&str, &str) -> ConfigError,
) -> Result<Option<BackupS3>, ConfigError> {
    let endpoint = get("backup_s3_endpoint");
    let bucket = get("backup_s3_bucket");
    let key_id = get("backup_s3_access_key_id");
    let secret = get("backup_s3_secret_access_key");
    let prefix = get("backup_s3_prefix");
    if endpoint.is_none() && bucket.is_none() {
        // Credentials or a prefix without a bucket to use them on: a half-done setup.
        for (key, given) in [
            ("backup_s3_access_key_id", key_id.is_some()),
            ("backup_s3_secret_access_key", secret.is_some()),
            ("backup_s3_prefix", prefix.is_some()),
        ] {
            if given {
                return Err(bad(
                    key,
                    "is set but backup_s3_endpoint and backup_s3_bucket are not: set both to upload backups, or unset it",
                ));
            }
        }
        return Ok(None);
    }
    let Some(endpoint) = endpoint else {
        return Err(bad(
            "backup_s3_endpoint",
            "has no value but backup_s3_bucket is set: give the S3 endpoint URL too (e.g. https://s3.eu-west-1.amazonaws.com or http://minio:9000), or unset backup_s3_bucket",
        ));
    };
    let url = reqwest::Url::parse(&endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
        .filter(|u| u.query().is_none() && u.fragment().is_none())
        .filter(|u| u.username().is_empty() && u.password().is_none())
        .ok_or_else(|| {
            bad(
                "backup_s3_endpoint",
                "expected an http:// or https:// URL without credentials or query, e.g. https://s3.eu-west-1.amazonaws.com or http://minio:9000",
            )
        })?;
    let Some(bucket) = bucket else {
        return Err(bad(
            "backup_s3_bucket",
            "has no value but backup_s3_endpoint is set: name the bucket to upload to, or unset backup_s3_endpoint",
        ));
    };
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if !valid_bucket {
        return Err(bad(
            "backup_s3_bucket",
            "expected an S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit",
        ));
    }
    let region = get("backup_s3_region").unwrap_or_else(|| "us-east-1".to_owned());
    if !region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(
            "backup_s3_region",
            "expected a region name such as us-east-1 (letters, digits and hyphens)",
        ));
    }
    let mut prefix = prefix.unwrap_or_default().trim_matches('/').to_owned();
    if prefix.contains("//") || prefix.chars().any(char::is_control) || prefix.len() > 512 {
        return Err(bad(
            "backup_s3_prefix",
            "expected a key prefix such as agv/prod/ (no empty segments or control characters, at most 512 bytes)",
        ));
    }
    if !prefix.is_empty() {
        prefix.push('/');
    }
    let Some(access_key_id) = key_id else {
        return Err(bad(
            "backup_s3_access_key_id",
            "has no value but backups are uploaded (backup_s3_endpoint and backup_s3_bucket are set): give the access key id of the bucket's credentials",
        ));
    };
    let Some(secret_access_key) = secret else {
        return Err(bad(
            "backup_s3_secret_access_key",
            "has no value but backups are uploaded (backup_s3_endpoint and backup_s3_bucket are set): give the secret access key (AGV_BACKUP_S3_SECRET_ACCESS_KEY or AGV_BACKUP_S3_SECRET_ACCESS_KEY_FILE)",
        ));
    };
    Ok(Some(BackupS3 {
        endpoint: url,
        bucket,
        region,
        prefix,
        access_key_id,
        secret_access_key,
    }))
}

pub const FIELDS: &[Field] = &[
    Field {
        key: "listen",
        env: "AGV_LISTEN",
        secret: false,
        default: Some("127.0.0.1:8080"),
        help: "address and port the HTTP server listens on",
    },
    Field {
        key: "tls_cert",
        env: "AGV_TLS_CERT",
        secret: false,
        default: None,
        help: "PEM certificate chain: serve HTTPS (TLS 1.2+, with HSTS) instead of HTTP; needs tls_key",
    },
    Field {
        key: "tls_key",
        env: "AGV_TLS_KEY",
        secret: false,
        default: None,
        help: "PEM private key of tls_cert",
    },
    Field {
        key: "database_url",
        env: "AGV_DATABASE_URL",
        secret: true,
        default: None,
        help: "postgres://… to use Postgres; unset: SQLite in the data dir",
    },
    Field {
        key: "durability",
        env: "AGV_DURABILITY",
        secret: false,
        default: None,
        help: "what an acknowledged call survives: process (a crash of agv-server) or power (a power cut too: every commit waits for the disk); unset: process on SQLite, power on Postgres",
    },
    Field {
        key: "upstream_url",
        env: "AGV_UPSTREAM_URL",
        secret: false,
        default: Some("https://api.openai.com/v1"),
        help: "the OpenAI-compatible upstream calls are forwarded to",
    },
    Field {
        key: "upstream_api_key",
        env: "AGV_UPSTREAM_API_KEY",
        secret: true,
        default: None,
        help: "API key sent to the upstream (falls back to OPENAI_API_KEY)",
    },
    Field {
        key: "upstream_timeout",
        env: "AGV_UPSTREAM_TIMEOUT",
        secret: false,
        default: Some("30s"),
        help: "total time an upstream call may take",
    },
    Field {
        key: "upstream_retries",
        env: "AGV_UPSTREAM_RETRIES",
        secret: false,
        default: Some("3"),
        help: "retries before any byte reached the client",
    },
    Field {
        key: "upstream_connect_timeout",
        env: "AGV_UPSTREAM_CONNECT_TIMEOUT",
        secret: false,
        default: Some("5s"),
        help: "time to open a connection to the upstream",
    },
    Field {
        key: "upstream_first_byte_timeout",
        env: "AGV_UPSTREAM_FIRST_BYTE_TIMEOUT",
        secret: false,
        default: Some("30s"),
        help: "time until the upstream's response headers arrive, per try",
    },
    Field {
        key: "fallback_upstream_url",
        env: "AGV_FALLBACK_UPSTREAM_URL",
        secret: false,
        default: None,
        help: "an OpenAI-compatible upstream tried once after the primary's last failed try",
    },
    Field {
        key: "fallback_upstream_api_key",
        env: "AGV_FALLBACK_UPSTREAM_API_KEY",
        secret: true,
        default: None,
        help: "API key sent to the fallback upstream",
    },
    Field {
        key: "tenant_upstream_allowlist",
        env: "AGV_TENANT_UPSTREAM_ALLOWLIST",
        secret: false,
        default: Some(""),
        help: "comma-separated base-URL prefixes tenants may set as their own upstream (empty: none)",
    },
    Field {
        key: "master_key",
        env: "AGV_MASTER_KEY",
        secret: true,
        default: None,
        help: "32 bytes (hex or base64) encrypting stored provider keys; unset: <data>/master.key",
    },
    Field {
        key: "metrics_token",
        env: "AGV_METRICS_TOKEN",
        secret: true,
        default: None,
        help: "bearer token /metrics asks of scrapers from other hosts; unset: /metrics answers only on loopback",
    },
    Field {
        key: "max_stored_body_bytes",
        env: "AGV_MAX_STORED_BODY_BYTES",
        secret: false,
        default: Some("1048576"),
        help: "request/response bodies longer than this are stored truncated",
    },
    Field {
        key: "log_format",
        env: "AGV_LOG_FORMAT",
        secret: false,
        default: Some("text"),
        help: "text or json",
    },
    Field {
        key: "log_level",
        env: "AGV_LOG_LEVEL",
        secret: false,
        default: Some("info"),
        help: "error, warn, info, debug, trace, or a tracing filter",
    },
    Field {
        key: "max_body_bytes",
        env: "AGV_MAX_BODY_BYTES",
        secret: false,
        default: Some("8388608"),
        help: "largest request body accepted (413 above)",
    },
    Field {
        key: "trusted_proxies",
        env: "AGV_TRUSTED_PROXIES",
        secret: false,
        default: Some(""),
        help: "comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed for the client's address (empty: none, the TCP peer is the client)",
    },
    Field {
        key: "unauth_rate_limit_per_minute",
        env: "AGV_UNAUTH_RATE_LIMIT_PER_MINUTE",
        secret: false,
        default: Some("100"),
        help: "requests per minute per client address on unauthenticated endpoints (0 = off)",
    },
    Field {
        key: "queue_max_bytes",
        env: "AGV_QUEUE_MAX_BYTES",
        secret: false,
        default: Some("1073741824"),
        help: "disk budget of the job queue; new jobs are refused above it",
    },
    Field {
        key: "job_workers",
        env: "AGV_JOB_WORKERS",
        secret: false,
        default: Some("2"),
        help: "background job workers",
    },
    Field {
        key: "housekeeping_cron",
        env: "AGV_HOUSEKEEPING_CRON",
        secret: false,
        default: Some("0 */10 * * * *"),
        help: "cron schedule (with seconds) of the housekeeping job",
    },
    Field {
        key: "backup_cron",
        env: "AGV_BACKUP_CRON",
        secret: false,
        default: Some("0 0 3 * * *"),
        help: "cron schedule (with seconds) of the automatic backup; \"off\" disables it",
    },
    Field {
        key: "backup_verify_cron",
        env: "AGV_BACKUP_VERIFY_CRON",
        secret: false,
        default: Some("0 30 4 * * Sun"),
        help: "cron schedule of the check of the newest backup (a failure raises a system alert); \"off\" disables it",
    },
    Field {
        key: "retention_days",
        env: "AGV_RETENTION_DAYS",
        secret: false,
        default: Some("90"),
        help: "days the request and response bodies of calls are kept; then they are removed (metadata, tokens, cost, decisions and hashes stay); 0 keeps them forever",
    },
    Field {
        key: "retention_cron",
        env: "AGV_RETENTION_CRON",
        secret: false,
        default: Some("0 30 3 * * *"),
        help: "cron schedule (with seconds) of the retention sweep; \"off\" disables it",
    },
    Field {
        key: "backup_dir",
        env: "AGV_BACKUP_DIR",
        secret: false,
        default: None,
        help: "where automatic backups are written; unset: <data>/backups",
    },
    Field {
        key: "backup_keep_daily",
        env: "AGV_BACKUP_KEEP_DAILY",
        secret: false,
        default: Some("7"),
        help: "automatic backups kept: the newest of each of this many days",
    },
    Field {
        key: "backup_keep_weekly",
        env: "AGV_BACKUP_KEEP_WEEKLY",
        secret: false,
        default: Some("4"),
        help: "and the newest of each of this many weeks before those",
    },
    Field {
        key: "backup_passphrase",
        env: "AGV_BACKUP_PASSPHRASE",
        secret: true,
        default: None,
        help: "seals the data directory's key files into backups (12+ characters); unset: they are left out",
    },
    Field {
        key: "backup_s3_endpoint",
        env: "AGV_BACKUP_S3_ENDPOINT",
        secret: false,
        default: None,
        help: "S3-compatible endpoint (http:// or https:// URL, path-style addressing) each automatic backup is uploaded to; unset: no upload",
    },
    Field {
        key: "backup_s3_bucket",
        env: "AGV_BACKUP_S3_BUCKET",
        secret: false,
        default: None,
        help: "the bucket backups are uploaded to (needs backup_s3_endpoint)",
    },
    Field {
        key: "backup_s3_region",
        env: "AGV_BACKUP_S3_REGION",
        secret: false,
        default: Some("us-east-1"),
        help: "the region the uploads are signed for",
    },
    Field {
        key: "backup_s3_prefix",
        env: "AGV_BACKUP_S3_PREFIX",
        secret: false,
        default: Some(""),
        help: "key prefix of the uploaded backups in the bucket, e.g. agv/prod/",
    },
    Field {
        key: "backup_s3_access_key_id",
        env: "AGV_BACKUP_S3_ACCESS_KEY_ID",
        secret: false,
        default: None,
        help: "access key id of the bucket's credentials",
    },
    Field {
        key: "backup_s3_secret_access_key",
        env: "AGV_BACKUP_S3_SECRET_ACCESS_KEY",
        secret: true,
        default: None,
        help: "secret access key of the bucket's credentials",
    },
    Field {
        key: "backup_s3_upload_attempts",
        env: "AGV_BACKUP_S3_UPLOAD_ATTEMPTS",
        secret: false,
        default: Some("12"),
        help: "attempts of one upload job (retried with backoff 1 s, 2 s, 4 s, … — about 34 minutes for 12) before it is dead-lettered and raises the backup_upload_failed system alert",
    },
    Field {
        key: "body_read_timeout",
        env: "AGV_BODY_READ_TIMEOUT",
        secret: false,
        default: Some("30s"),
        help: "how long a client may take to send a request body (408 after); the request head has 5 s",
    },
    Field {
        key: "shutdown_timeout",
        env: "AGV_SHUTDOWN_TIMEOUT",
        secret: false,
        default: Some("30s"),
        help: "how long in-flight requests may take to finish at shutdown",
    },
    Field {
        key: "alert_webhook_allowed_hosts",
        env: "AGV_ALERT_WEBHOOK_ALLOWED_HOSTS",
        secret: false,
        default: Some(""),
        help: "comma-separated hosts alert webhooks may reach although they resolve to internal addresses",
    },
    Field {
        key: "operator_alert_webhook_url",
        env: "AGV_OPERATOR_ALERT_WEBHOOK_URL",
        secret: true,
        default: None,
        help: "webhook (generic, HMAC-signed) receiving system alerts; unset: no system alerts",
    },
    Field {
        key: "operator_alert_webhook_secret",
        env: "AGV_OPERATOR_ALERT_WEBHOOK_SECRET",
        secret: true,
        default: None,
        help: "HMAC secret signing system alerts (x-agv-signature)",
    },
    Field {
        key: "system_alert_interval",
        env: "AGV_SYSTEM_ALERT_INTERVAL",
        secret: false,
        default: Some("60s"),
        help: "how often the system-alert checks run",
    },
    Field {
        key: "system_alert_disk_percent",
        env: "AGV_SYSTEM_ALERT_DISK_PERCENT",
        secret: false,
        default: Some("80"),
        help: "alert when the data dir's filesystem is fuller than this (percent)",
    },
    Field {
        key: "system_alert_queue_stuck",
        env: "AGV_SYSTEM_ALERT_QUEUE_STUCK",
        secret: false,
        default: Some("10m"),
        help: "alert when the oldest due job has waited longer than this",
    },
    Field {
        key: "llm_base_url",
        env: "AGV_LLM_BASE_URL",
        secret: false,
        default: None,
        help: "OpenAI-compatible API for incident narratives; unset: none are written",
    },
    Field {
        key: "llm_api_key",
        env: "AGV_LLM_API_KEY",
        secret: true,
        default: None,
        help: "API key for llm_base_url",
    },
    Field {
        key: "llm_model",
        env: "AGV_LLM_MODEL",
        secret: false,
        default: Some("gpt-4o-mini"),
        help: "model writing incident narratives",
    },
    Field {
        key: "update_source",
        env: "AGV_UPDATE_SOURCE",
        secret: false,
        default: Some(crate::ops::update::DEFAULT_SOURCE),
        help: "where releases are looked for (the console's update check, agv-server update): an http(s) URL, or on an air-gapped site a mirror's URL or a local release directory (absolute path or file:// URL)",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective, typed settings.
#[derive(Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: String,
    /// Serve HTTPS with this certificate chain and key (both PEM), instead of HTTP.
    pub tls: Option<TlsFiles>,
    pub database_url: Option<String>,
    /// What a commit waits for; `None`: the backend's own default
    /// ([`crate::store::Durability::default_for`]).
    pub durability: Option<crate::store::Durability>,
    pub upstream_url: String,
    pub upstream_api_key: Option<String>,
    pub upstream_timeout: std::time::Duration,
    pub upstream_retries: u32,
    pub upstream_connect_timeout: std::time::Duration,
    pub upstream_first_byte_timeout: std::time::Duration,
    pub fallback_upstream_url: Option<String>,
    pub fallback_upstream_api_key: Option<String>,
    /// Base-URL prefixes tenants may use as their own upstream; empty: none.
    pub tenant_upstream_allowlist: UpstreamAllowlist,
    /// The master key as given (hex or base64); unset: `<data>/master.key`.
    pub master_key: Option<String>,
    /// The bearer token `/metrics` asks of any client; unset: loopback clients only.
    pub metrics_token: Option<String>,
    /// Price overrides from the `[prices."model"]` tables of config.toml.
    pub prices: HashMap<String, ModelPrice>,
    pub max_stored_body_bytes: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub max_body_bytes: usize,
    pub unauth_rate_limit_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client; empty: none.
    pub trusted_proxies: crate::domain::trusted_proxies::TrustedProxies,
    pub queue_max_bytes: u64,
    pub job_workers: usize,
    pub housekeeping_cron: String,
    /// `None` when switched off.
    pub backup_cron: Option<String>,
    pub backup_verify_cron: Option<String>,
    /// Days call bodies are kept; 0: forever.
    pub retention_days: u32,
    /// The retention sweep's schedule; `None` when switched off.
    pub retention_cron: Option<String>,
    pub backup_dir: PathBuf,
    pub backup_keep_daily: usize,
    pub backup_keep_weekly: usize,
    pub backup_passphrase: Option<String>,
    /// Where backups are uploaded; `None`: no upload.
    pub backup_s3: Option<BackupS3>,
    /// Attempts of one upload job before it is dead-lettered.
    pub backup_s3_upload_attempts: u32,
    pub shutdown_timeout: std::time::Duration,
    pub body_read_timeout: std::time::Duration,
    /// Hosts alert webhooks may reach although they resolve to internal addresses.
    pub alert_webhook_allowed_hosts: HostAllowlist,
    /// The operator's webhook for system alerts, and its signing secret.
    pub operator_alert_webhook_url: Option<String>,
    pub operator_alert_webhook_secret: Option<String>,
    pub system_alert_interval: std::time::Duration,
    pub system_alert_disk_percent: f64,
    pub system_alert_queue_stuck: std::time::Duration,
    /// An OpenAI-compatible API writing incident narratives; `None`: none are written.
    pub llm_base_url: Option<String>,
    pub llm_api_key: Option<String>,
    pub llm_model: String,
    /// The release directory (GitHub releases or a mirror) the update check and
    /// `agv-server update` read; no trailing `/`.
    pub update_source: String,
    /// Where each setting came from, by config key (plus `data`).
    pub sources: BTreeMap<&'static str, Source>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.describe().into_iter().map(|(k, v, _)| (k, v)))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Values given on the command line, by config key.
pub type Flags = BTreeMap<&'static str, String>;

impl Settings {
    /// Loads settings from the process environment and `<data>/config.toml`.
    pub fn load(data_flag: Option<PathBuf>, flags: &Flags) -> Result<Self, ConfigError> {
        Self::load_with(data_flag, flags, &|k| std::env::var(k).ok())
    }

    /// Loads settings with an injected environment (tests pass a map).
    pub fn load_with(
        data_flag: Option<PathBuf>,
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (data_dir, data_source) = match (data_flag, env("AGV_DATA").filter(|v| !v.is_empty())) {
            (Some(p), _) => (p, Source::Flag),
            (None, Some(v)) => (PathBuf::from(v), Source::Env("AGV_DATA".into())),
            (None, None) => (PathBuf::from(DEFAULT_DATA_DIR), Source::Default),
        };
        let (file, prices) = read_config_file(&data_dir)?;
        let mut raw: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
        for field in FIELDS {
            if let Some(v) = flags.get(field.key) {
                raw.insert(field.key, (v.clone(), Source::Flag));
            } else if let Some(v) = read_env(field, env)? {
                raw.insert(field.key, v);
            } else if let Some(v) = file.get(field.key) {
                raw.insert(field.key, (v.clone(), Source::ConfigFile));
            } else if let Some(d) = field.default {
                raw.insert(field.key, (d.to_owned(), Source::Default));
            }
        }
        // The upstream key falls back to the variable the OpenAI SDKs use.
        if !raw.contains_key("upstream_api_key")
            && let Some(v) = env("OPENAI_API_KEY").filter(|v| !v.is_empty())
        {
            raw.insert(
                "upstream_api_key",
                (v, Source::Env("OPENAI_API_KEY".into())),
            );
        }
        let mut sources: BTreeMap<&'static str, Source> =
            raw.iter().map(|(k, (_, s))| (*k, s.clone())).collect();
        sources.insert("data", data_source);
        let get = |key: &str| raw.get(key).map(|(v, _)| v.as_str());
        let bad = |key: &str, why: &str| {
            if !raw.contains_key(key) {
                let env = FIELDS
                    .iter()
                    .find(|f| f.key == key)
                    .map_or(String::new(), |f| format!(" ({})", f.env));
                return ConfigError(format!("missing {key}{env}: {why}"));
            }
            let (value, source) = raw
                .get(key)
                .map(|(v, s)| (v.as_str(), s.to_string()))
                .unwrap_or(("", String::new()));
            let shown = if FIELDS.iter().any(|f| f.key == key && f.secret) {
                "(secret)"
            } else {
                value
            };
            ConfigError(format!("invalid {key} = '{shown}' (from {source}): {why}"))
        };
        let number = |key: &str| -> Result<u64, ConfigError> {
            get(key)
                .ok_or_else(|| {
                    bad(
                        key,
                        "has no value (a setting without a default must be given)",
                    )
                })?
                .trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| bad(key, "expected a whole number"))
        };

        let listen = get("listen").unwrap_or_default().trim().to_owned();
        if listen.parse::<std::net::SocketAddr>().is_err() && !listen.contains(':') {
            return Err(bad(
                "listen",
                "expected ADDRESS:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080",
            ));
        }
        let path_of = |key: &str| {
            get(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let tls = match (path_of("tls_cert"), path_of("tls_key")) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(bad(
                    "tls_key",
                    "a TLS certificate needs its key: give --tls-key (AGV_TLS_KEY) too",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls_cert",
                    "a TLS key needs its certificate: give --tls-cert (AGV_TLS_CERT) too",
                ));
            }
        };
        let log_format = match get("log_format").unwrap_or("text").trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(bad("log_format", "expected 'text' or 'json'")),
        };
        let durability = match get("durability").map(str::trim).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(crate::store::Durability::parse(v).ok_or_else(|| {
                bad(
                    "durability",
                    &format!(
                        "expected {}: process commits survive a crash of agv-server, power commits a power cut too",
                        crate::store::Durability::CHOICES
                    ),
                )
            })?),
        };
        let upstream_url = get("upstream_url")
            .unwrap_or_default()
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if !(upstream_url.starts_with("http://") || upstream_url.starts_with("https://")) {
            return Err(bad(
                "upstream_url",
                "expected an http:// or https:// URL, e.g. https://api.openai.com/v1",
            ));
        }
        let max_body_bytes = number("max_body_bytes")?;
        if !(1024..=1 << 30).contains(&max_body_bytes) {
            return Err(bad(
                "max_body_bytes",
                "expected between 1024 and 1073741824",
            ));
        }
        let unauth_rate_limit_per_minute =
            u32::try_from(number("unauth_rate_limit_per_minute")?)
                .map_err(|_| bad("unauth_rate_limit_per_minute", "too large"))?;
        let trusted_proxies = crate::domain::trusted_proxies::TrustedProxies::parse(
            get("trusted_proxies").unwrap_or_default(),
        )
        .map_err(|e| bad("trusted_proxies", &e.0))?;
        let queue_max_bytes = number("queue_max_bytes")?;
        if queue_max_bytes < 1 << 20 {
            return Err(bad("queue_max_bytes", "expected at least 1048576 (1 MiB)"));
        }
        let job_workers = number("job_workers")?;
        if !(1..=64).contains(&job_workers) {
            return Err(bad("job_workers", "expected between 1 and 64"));
        }
        let housekeeping_cron = get("housekeeping_cron")
            .unwrap_or_default()
            .trim()
            .to_owned();
        validate_cron(&housekeeping_cron).map_err(|e| bad("housekeeping_cron", &e))?;
        let cron_or_off = |key: &str| -> Result<Option<String>, ConfigError> {
            let v = get(key).unwrap_or_default().trim().to_owned();
            if v.is_empty() || v.eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            validate_cron(&v).map_err(|e| bad(key, &e))?;
            Ok(Some(v))
        };
        let backup_cron = cron_or_off("backup_cron")?;
        let backup_dir = get("backup_dir")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map_or_else(|| data_dir.join("backups"), PathBuf::from);
        let backup_verify_cron = cron_or_off("backup_verify_cron")?;
        let retention_days = u32::try_from(number("retention_days")?)
            .ok()
            .filter(|d| *d <= 36_500)
            .ok_or_else(|| {
                bad(
                    "retention_days",
                    "expected between 0 (keep call bodies forever) and 36500 days",
                )
            })?;
        let retention_cron = cron_or_off("retention_cron")?;
        let backup_keep_daily = usize::try_from(number("backup_keep_daily")?)
            .map_err(|_| bad("backup_keep_daily", "too large"))?;
        let backup_keep_weekly = usize::try_from(number("backup_keep_weekly")?)
            .map_err(|_| bad("backup_keep_weekly", "too large"))?;
        if backup_keep_daily == 0 {
            return Err(bad("backup_keep_daily", "keep at least 1"));
        }
        let backup_passphrase = get("backup_passphrase")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        if backup_passphrase
            .as_ref()
            .is_some_and(|p| p.chars().count() < 12)
        {
            return Err(bad(
                "backup_passphrase",
                "must be at least 12 characters long",
            ));
        }
        let backup_s3 = parse_backup_s3(
            &|key: &str| {
                get(key)
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            },
            &bad,
        )?;
        let backup_s3_upload_attempts = u32::try_from(number("backup_s3_upload_attempts")?)
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| bad("backup_s3_upload_attempts", "expected between 1 and 100"))?;
        let upstream_timeout = parse_duration(get("upstream_timeout").unwrap_or("30s"))
            .map_err(|e| bad("upstream_timeout", &e.0))?;
        if upstream_timeout.is_zero() {
            return Err(bad("upstream_timeout", "must be more than zero"));
        }
        let upstream_retries = number("upstream_retries")?;
        if upstream_retries > 10 {
            return Err(bad("upstream_retries", "expected between 0 and 10"));
        }
        let duration = |key: &str, default: &str| -> Result<std::time::Duration, ConfigError> {
            let d = parse_duration(get(key).unwrap_or(default)).map_err(|e| bad(key, &e.0))?;
            if d.is_zero() {
                return Err(bad(key, "must be more than zero"));
            }
            Ok(d)
        };
        let upstream_connect_timeout = duration("upstream_connect_timeout", "5s")?;
        let upstream_first_byte_timeout = duration("upstream_first_byte_timeout", "30s")?;
        let optional = |key: &str| {
            get(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let fallback_upstream_url =
            optional("fallback_upstream_url").map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &fallback_upstream_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad(
                "fallback_upstream_url",
                "expected an http:// or https:// URL, e.g. https://api.openai.com/v1",
            ));
        }
        let fallback_upstream_api_key = optional("fallback_upstream_api_key");
        let tenant_upstream_allowlist =
            UpstreamAllowlist::parse(get("tenant_upstream_allowlist").unwrap_or_default())
                .map_err(|e| bad("tenant_upstream_allowlist", &e))?;
        let master_key = optional("master_key");
        let metrics_token = optional("metrics_token");
        if metrics_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(bad(
                "metrics_token",
                "expected at least 16 characters (e.g. from `openssl rand -hex 32`)",
            ));
        }
        Pricing::with_overrides(prices.clone()).map_err(|e| {
            ConfigError(format!(
                "invalid [prices] in {}: {} — prices are USD per 1M tokens, finite and not negative",
                data_dir.join(CONFIG_FILE).display(),
                e.0
            ))
        })?;
        let max_stored_body_bytes = usize::try_from(number("max_stored_body_bytes")?)
            .map_err(|_| bad("max_stored_body_bytes", "too large"))?;
        let shutdown_timeout = parse_duration(get("shutdown_timeout").unwrap_or("30s"))
            .map_err(|e| bad("shutdown_timeout", &e.0))?;
        let body_read_timeout = parse_duration(get("body_read_timeout").unwrap_or("30s"))
            .map_err(|e| bad("body_read_timeout", &e.0))?;
        let database_url = get("database_url")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let alert_webhook_allowed_hosts =
            HostAllowlist::parse(get("alert_webhook_allowed_hosts").unwrap_or_default())
                .map_err(|e| bad("alert_webhook_allowed_hosts", &e))?;
        let operator_alert_webhook_url = optional("operator_alert_webhook_url");
        if let Some(u) = &operator_alert_webhook_url {
            crate::domain::alert::parse_webhook_url(u)
                .map_err(|e| bad("operator_alert_webhook_url", &e))?;
        }
        let operator_alert_webhook_secret = optional("operator_alert_webhook_secret");
        let system_alert_interval = duration("system_alert_interval", "60s")?;
        let system_alert_disk_percent = get("system_alert_disk_percent")
            .unwrap_or("80")
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| {
                bad(
                    "system_alert_disk_percent",
                    "expected a number from 0 to 100",
                )
            })?;
        let system_alert_queue_stuck = duration("system_alert_queue_stuck", "10m")?;
        let llm_base_url = optional("llm_base_url").map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &llm_base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad(
                "llm_base_url",
                "expected an http:// or https:// URL, e.g. https://api.openai.com/v1",
            ));
        }
        let llm_api_key = optional("llm_api_key");
        let llm_model = optional("llm_model").unwrap_or_else(|| "gpt-4o-mini".to_owned());
        let update_source = optional("update_source").map_or_else(
            || crate::ops::update::DEFAULT_SOURCE.to_owned(),
            |u| u.trim_end_matches('/').to_owned(),
        );
        if crate::ops::update::Source::parse(&update_source).is_err() {
            return Err(bad(
                "update_source",
                &format!("expected {}", crate::ops::update::SOURCE_FORMS),
            ));
        }
        let upstream_api_key = get("upstream_api_key")
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);

        Ok(Self {
            data_dir,
            listen,
            tls,
            database_url,
            durability,
            upstream_url,
            upstream_api_key,
            upstream_timeout,
            upstream_retries: upstream_retries as u32,
            upstream_connect_timeout,
            upstream_first_byte_timeout,
            fallback_upstream_url,
            fallback_upstream_api_key,
            tenant_upstream_allowlist,
            master_key,
            metrics_token,
            prices,
            max_stored_body_bytes,
            log_format,
            log_level: get("log_level").unwrap_or("info").trim().to_owned(),
            max_body_bytes: usize::try_from(max_body_bytes)
                .map_err(|_| bad("max_body_bytes", "too large"))?,
            unauth_rate_limit_per_minute,
            trusted_proxies,
            queue_max_bytes,
            job_workers: usize::try_from(job_workers)
                .map_err(|_| bad("job_workers", "too large"))?,
            housekeeping_cron,
            backup_cron,
            backup_verify_cron,
            retention_days,
            retention_cron,
            backup_dir,
            backup_keep_daily,
            backup_keep_weekly,
            backup_passphrase,
            backup_s3,
            backup_s3_upload_attempts,
            shutdown_timeout,
            body_read_timeout,
            alert_webhook_allowed_hosts,
            operator_alert_webhook_url,
            operator_alert_webhook_secret,
            system_alert_interval,
            system_alert_disk_percent,
            system_alert_queue_stuck,
            llm_base_url,
            llm_api_key,
            llm_model,
            update_source,
            sources,
        })
    }

    /// Settings for a server in a fresh data dir with everything else at its default
    /// (tests and embedding). Listens on an ephemeral port.
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, ConfigError> {
        let mut flags = Flags::new();
        flags.insert("listen", "127.0.0.1:0".into());
        Self::load_with(Some(data_dir.to_path_buf()), &flags, &|_| None)
    }

    /// `(key, shown value, source)` for every setting; secrets are shown as "(set)".
    pub fn describe(&self) -> Vec<(&'static str, String, String)> {
        let src = |k: &str| {
            self.sources
                .get(k)
                .map(ToString::to_string)
                .unwrap_or_else(|| "default".into())
        };
        let secret = |v: &Option<String>| {
            if v.is_some() {
                "(set)".to_owned()
            } else {
                "(not set)".to_owned()
            }
        };
        vec![
            ("data", self.data_dir.display().to_string(), src("data")),
            ("listen", self.listen.clone(), src("listen")),
            (
                "tls_cert",
                self.tls
                    .as_ref()
                    .map_or_else(|| "(off)".to_owned(), |t| t.cert.display().to_string()),
                src("tls_cert"),
            ),
            (
                "tls_key",
                self.tls
                    .as_ref()
                    .map_or_else(|| "(off)".to_owned(), |t| t.key.display().to_string()),
                src("tls_key"),
            ),
            (
                "database_url",
                self.database_url
                    .as_deref()
                    .map(crate::store::redact_url)
                    .unwrap_or_else(|| "(not set: SQLite in the data dir)".into()),
                src("database_url"),
            ),
            (
                "durability",
                match self.durability {
                    Some(level) => level.as_str().to_owned(),
                    None => {
                        let backend = crate::store::Backend::of_url(self.database_url.as_deref());
                        format!(
                            "{} (not set: the {} default)",
                            crate::store::Durability::default_for(backend).as_str(),
                            match backend {
                                crate::store::Backend::Sqlite => "SQLite",
                                crate::store::Backend::Postgres => "Postgres",
                            }
                        )
                    }
                },
                src("durability"),
            ),
            (
                "upstream_url",
                self.upstream_url.clone(),
                src("upstream_url"),
            ),
            (
                "upstream_api_key",
                secret(&self.upstream_api_key),
                src("upstream_api_key"),
            ),
            (
                "upstream_timeout",
                format!("{}s", self.upstream_timeout.as_secs()),
                src("upstream_timeout"),
            ),
            (
                "upstream_connect_timeout",
                format!("{}s", self.upstream_connect_timeout.as_secs()),
                src("upstream_connect_timeout"),
            ),
            (
                "upstream_first_byte_timeout",
                format!("{}s", self.upstream_first_byte_timeout.as_secs()),
                src("upstream_first_byte_timeout"),
            ),
            (
                "upstream_retries",
                self.upstream_retries.to_string(),
                src("upstream_retries"),
            ),
            (
                "fallback_upstream_url",
                self.fallback_upstream_url
                    .clone()
                    .unwrap_or_else(|| "(not set)".into()),
                src("fallback_upstream_url"),
            ),
            (
                "fallback_upstream_api_key",
                secret(&self.fallback_upstream_api_key),
                src("fallback_upstream_api_key"),
            ),
            (
                "tenant_upstream_allowlist",
                self.tenant_upstream_allowlist.to_string(),
                src("tenant_upstream_allowlist"),
            ),
            (
                "master_key",
                if self.master_key.is_some() {
                    "(set)".to_owned()
                } else {
                    "(not set: <data>/master.key)".to_owned()
                },
                src("master_key"),
            ),
            (
                "metrics_token",
                if self.metrics_token.is_some() {
                    "(set)".to_owned()
                } else {
                    "(not set: /metrics answers on loopback only)".to_owned()
                },
                src("metrics_token"),
            ),
            (
                "prices",
                format!("{} model price override(s)", self.prices.len()),
                "config.toml".to_owned(),
            ),
            (
                "log_format",
                format!("{:?}", self.log_format).to_lowercase(),
                src("log_format"),
            ),
            ("log_level", self.log_level.clone(), src("log_level")),
            (
                "max_body_bytes",
                self.max_body_bytes.to_string(),
                src("max_body_bytes"),
            ),
            (
                "unauth_rate_limit_per_minute",
                self.unauth_rate_limit_per_minute.to_string(),
                src("unauth_rate_limit_per_minute"),
            ),
            (
                "trusted_proxies",
                self.trusted_proxies.to_string(),
                src("trusted_proxies"),
            ),
            (
                "queue_max_bytes",
                self.queue_max_bytes.to_string(),
                src("queue_max_bytes"),
            ),
            (
                "job_workers",
                self.job_workers.to_string(),
                src("job_workers"),
            ),
            (
                "housekeeping_cron",
                self.housekeeping_cron.clone(),
                src("housekeeping_cron"),
            ),
            (
                "backup_cron",
                self.backup_cron.clone().unwrap_or_else(|| "off".into()),
                src("backup_cron"),
            ),
            (
                "backup_verify_cron",
                self.backup_verify_cron
                    .clone()
                    .unwrap_or_else(|| "off".into()),
                src("backup_verify_cron"),
            ),
            (
                "retention_days",
                if self.retention_days == 0 {
                    "0 (call bodies are kept forever)".to_owned()
                } else {
                    self.retention_days.to_string()
                },
                src("retention_days"),
            ),
            (
                "retention_cron",
                self.retention_cron.clone().unwrap_or_else(|| "off".into()),
                src("retention_cron"),
            ),
            (
                "backup_dir",
                self.backup_dir.display().to_string(),
                src("backup_dir"),
            ),
            (
                "backup_keep_daily",
                self.backup_keep_daily.to_string(),
                src("backup_keep_daily"),
            ),
            (
                "backup_keep_weekly",
                self.backup_keep_weekly.to_string(),
                src("backup_keep_weekly"),
            ),
            (
                "backup_passphrase",
                secret(&self.backup_passphrase),
                src("backup_passphrase"),
            ),
            (
                "backup_s3_endpoint",
                self.backup_s3.as_ref().map_or_else(
                    || "(not set: backups are not uploaded)".to_owned(),
                    |s| s.endpoint.to_string(),
                ),
                src("backup_s3_endpoint"),
            ),
            (
                "backup_s3_bucket",
                self.backup_s3
                    .as_ref()
                    .map_or_else(|| "(not set)".to_owned(), |s| s.bucket.clone()),
                src("backup_s3_bucket"),
            ),
            (
                "backup_s3_region",
                self.backup_s3
                    .as_ref()
                    .map_or_else(|| "(not used)".to_owned(), |s| s.region.clone()),
                src("backup_s3_region"),
            ),
            (
                "backup_s3_prefix",
                self.backup_s3
                    .as_ref()
                    .map_or_else(|| "(not used)".to_owned(), |s| s.prefix.clone()),
                src("backup_s3_prefix"),
            ),
            (
                "backup_s3_access_key_id",
                self.backup_s3
                    .as_ref()
                    .map_or_else(|| "(not set)".to_owned(), |s| s.access_key_id.clone()),
                src("backup_s3_access_key_id"),
            ),
            (
                "backup_s3_secret_access_key",
                if self.backup_s3.is_some() {
                    "(set)".to_owned()
                } else {
                    "(not set)".to_owned()
                },
                src("backup_s3_secret_access_key"),
            ),
            (
                "backup_s3_upload_attempts",
                self.backup_s3_upload_attempts.to_string(),
                src("backup_s3_upload_attempts"),
            ),
            (
                "shutdown_timeout",
                format!("{}s", self.shutdown_timeout.as_secs()),
                src("shutdown_timeout"),
            ),
            (
                "body_read_timeout",
                format!("{}s", self.body_read_timeout.as_secs()),
                src("body_read_timeout"),
            ),
            (
                "alert_webhook_allowed_hosts",
                self.alert_webhook_allowed_hosts.to_string(),
                src("alert_webhook_allowed_hosts"),
            ),
            (
                "operator_alert_webhook_url",
                secret(&self.operator_alert_webhook_url),
                src("operator_alert_webhook_url"),
            ),
            (
                "operator_alert_webhook_secret",
                secret(&self.operator_alert_webhook_secret),
                src("operator_alert_webhook_secret"),
            ),
            (
                "system_alert_interval",
                format!("{}s", self.system_alert_interval.as_secs()),
                src("system_alert_interval"),
            ),
            (
                "system_alert_disk_percent",
                self.system_alert_disk_percent.to_string(),
                src("system_alert_disk_percent"),
            ),
            (
                "system_alert_queue_stuck",
                format!("{}s", self.system_alert_queue_stuck.as_secs()),
                src("system_alert_queue_stuck"),
            ),
            (
                "llm_base_url",
                self.llm_base_url
                    .clone()
                    .unwrap_or_else(|| "(not set: no AI-written narratives)".into()),
                src("llm_base_url"),
            ),
            ("llm_api_key", secret(&self.llm_api_key), src("llm_api_key")),
            ("llm_model", self.llm_model.clone(), src("llm_model")),
            (
                "update_source",
                crate::store::redact_url(&self.update_source),
                src("update_source"),
            ),
        ]
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }
}

fn read_env(
    field: &Field,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, Source)>, ConfigError> {
    let direct = env(field.env).filter(|v| !v.is_empty());
    if !field.secret {
        return Ok(direct.map(|v| (v, Source::Env(field.env.into()))));
    }
    let file_var = format!("{}_FILE", field.env);
    match (direct, env(&file_var).filter(|v| !v.is_empty())) {
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "both {} and {file_var} are set: set only one of them",
            field.env
        ))),
        (Some(v), None) => Ok(Some((v, Source::Env(field.env.into())))),
        (None, Some(path)) => {
            let v = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("cannot read {file_var}={path}: {e} — point it at a readable file holding the secret")))?;
            Ok(Some((
                v.trim_end_matches(['\r', '\n']).to_owned(),
                Source::Env(file_var),
            )))
        }
        (None, None) => Ok(None),
    }
}

/// What config.toml holds: scalar settings as text, and the `[prices]` table.
type ConfigFileContents = (BTreeMap<String, String>, HashMap<String, ModelPrice>);

/// Reads `<data>/config.toml` (absent is fine) into key → text plus the price overrides,
/// rejecting unknown keys.
fn read_config_file(data_dir: &Path) -> Result<ConfigFileContents, ConfigError> {
    let path = data_dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Ok(Default::default());
        }
        Err(e) => return Err(ConfigError(format!("cannot read {}: {e}", path.display()))),
    };
    parse_config_text(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

/// The one table key config.toml accepts: `[prices."model-name"]`.
const PRICES_KEY: &str = "prices";

fn parse_config_text(text: &str) -> Result<ConfigFileContents, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message().trim()))?;
    let mut out = BTreeMap::new();
    let mut prices = HashMap::new();
    for (key, value) in table {
        if key == PRICES_KEY {
            prices = parse_prices(value)?;
            continue;
        }
        if !FIELDS.iter().any(|f| f.key == key) {
            let known: Vec<&str> = FIELDS.iter().map(|f| f.key).collect();
            return Err(format!(
                "unknown key '{key}'; known keys are: {}, and the table [prices.\"MODEL\"]",
                known.join(", ")
            ));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "key '{key}' must be a string or a number, not {}",
                    other.type_str()
                ));
            }
        };
        out.insert(key, text);
    }
    Ok((out, prices))
}

/// `[prices."model"] input = …, cached_input = …, output = …` (USD per 1M tokens).
fn parse_prices(value: toml::Value) -> Result<HashMap<String, ModelPrice>, String> {
    let toml::Value::Table(models) = value else {
        return Err(format!(
            "'{PRICES_KEY}' must be a table of models, e.g. [prices.\"my-model\"] input = 1.0, cached_input = 0.5, output = 2.0; not {}",
            value.type_str()
        ));
    };
    let mut prices = HashMap::new();
    for (model, entry) in models {
        if !entry.is_table() {
            return Err(format!(
                "[prices.\"{model}\"] must be a table with input, cached_input and output (USD per 1M tokens), not {}",
                entry.type_str()
            ));
        }
        let price: ModelPrice = entry.try_into().map_err(|e: toml::de::Error| {
            format!(
                "[prices.\"{model}\"]: {} (expected input, cached_input and output, USD per 1M tokens)",
                e.message().trim()
            )
        })?;
        prices.insert(model, price);
    }
    Ok(prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_update_source_defaults_to_github_and_takes_a_mirror_url_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| {
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(vars))
        };
        let s = load(&[]).unwrap();
        assert_eq!(s.update_source, crate::ops::update::DEFAULT_SOURCE);
        let s = load(&[(
            "AGV_UPDATE_SOURCE",
            "https://mirror:s3cret@mirror.example/agv/",
        )])
        .unwrap();
        assert_eq!(s.update_source, "https://mirror:s3cret@mirror.example/agv");
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "a mirror's password is never described"
        );
        // An air-gapped site's release directory: an absolute path or a file:// URL.
        let s = load(&[("AGV_UPDATE_SOURCE", "/srv/agv-releases/")]).unwrap();
        assert_eq!(s.update_source, "/srv/agv-releases");
        let s = load(&[("AGV_UPDATE_SOURCE", "file:///srv/agv-releases")]).unwrap();
        assert_eq!(s.update_source, "file:///srv/agv-releases");
        for bad in ["mirror.example/agv", "releases", "ftp://mirror.example/agv"] {
            let err = load(&[("AGV_UPDATE_SOURCE", bad)]).unwrap_err();
            assert!(
                err.0.contains("update_source")
                    && err.0.contains("AGV_UPDATE_SOURCE")
                    && err.0.contains("absolute"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn retention_defaults_to_90_days_daily_and_refuses_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| {
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(vars))
        };
        let s = load(&[]).unwrap();
        assert_eq!(s.retention_days, 90);
        assert_eq!(s.retention_cron.as_deref(), Some("0 30 3 * * *"));
        let s = load(&[("AGV_RETENTION_DAYS", "0"), ("AGV_RETENTION_CRON", "off")]).unwrap();
        assert_eq!((s.retention_days, s.retention_cron), (0, None));
        for bad in ["-1", "abc", "99999"] {
            let err = load(&[("AGV_RETENTION_DAYS", bad)]).unwrap_err();
            assert!(
                err.0.contains("retention_days") && err.0.contains("AGV_RETENTION_DAYS"),
                "{err}"
            );
        }
        let err = load(&[("AGV_RETENTION_CRON", "nightly")]).unwrap_err();
        assert!(err.0.contains("retention_cron"), "{err}");
    }

    #[test]
    fn flags_beat_env_which_beats_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = \"10.0.0.1:1\"\nlog_format = \"json\"\nmax_body_bytes = 4096\n",
        )
        .unwrap();
        let env = env_of(&[("AGV_LISTEN", "10.0.0.2:2"), ("AGV_LOG_FORMAT", "text")]);
        let mut flags = Flags::new();
        flags.insert("listen", "10.0.0.3:3".into());
        let s = Settings::load_with(Some(dir.path().into()), &flags, &env).unwrap();
        assert_eq!(s.listen, "10.0.0.3:3");
        assert_eq!(s.sources["listen"], Source::Flag);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(
            s.sources["log_format"],
            Source::Env("AGV_LOG_FORMAT".into())
        );
        assert_eq!(s.max_body_bytes, 4096);
        assert_eq!(s.sources["max_body_bytes"], Source::ConfigFile);
        assert_eq!(s.upstream_url, "https://api.openai.com/v1");
        assert_eq!(s.upstream_retries, 3);
        assert_eq!(s.max_stored_body_bytes, 1_048_576);
        assert_eq!(s.upstream_timeout.as_secs(), 30);
        assert_eq!(s.sources["upstream_url"], Source::Default);
    }

    #[test]
    fn durability_defaults_per_backend_takes_process_or_power_and_names_both_when_wrong() {
        use crate::store::Durability;
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| {
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(vars))
        };
        let shown = |s: &Settings| {
            s.describe()
                .into_iter()
                .find(|(k, _, _)| *k == "durability")
                .unwrap()
        };
        let s = load(&[]).unwrap();
        assert_eq!(s.durability, None);
        assert_eq!(
            shown(&s),
            (
                "durability",
                "process (not set: the SQLite default)".into(),
                "default".into()
            )
        );
        let s = load(&[("AGV_DATABASE_URL", "postgres://agv@db/agv")]).unwrap();
        assert_eq!(shown(&s).1, "power (not set: the Postgres default)");
        let s = load(&[("AGV_DURABILITY", "power")]).unwrap();
        assert_eq!(s.durability, Some(Durability::Power));
        assert_eq!(
            shown(&s),
            ("durability", "power".into(), "env AGV_DURABILITY".into())
        );
        std::fs::write(dir.path().join(CONFIG_FILE), "durability = \"process\"\n").unwrap();
        let s = load(&[("AGV_DATABASE_URL", "postgres://agv@db/agv")]).unwrap();
        assert_eq!(s.durability, Some(Durability::Process));
        assert_eq!(s.sources["durability"], Source::ConfigFile);
        for bad in ["fsync", "FULL", "1"] {
            let err = load(&[("AGV_DURABILITY", bad)]).unwrap_err();
            assert!(
                err.0.contains(&format!(
                    "invalid durability = '{bad}' (from env AGV_DURABILITY)"
                )) && err.0.contains("'process' or 'power'"),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_keys_in_the_config_file_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = \"127.0.0.1:1\"\nlisten_port = 9\n",
        )
        .unwrap();
        let err =
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap_err();
        assert!(err.0.contains("unknown key 'listen_port'"), "{err}");
    }

    #[test]
    fn malformed_toml_and_bad_values_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "listen = ").unwrap();
        let err =
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap_err();
        assert!(err.0.contains("not valid TOML"), "{err}");
        std::fs::write(dir.path().join(CONFIG_FILE), "max_body_bytes = \"lots\"").unwrap();
        let err =
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap_err();
        assert!(
            err.0.contains("max_body_bytes") && err.0.contains("config.toml"),
            "{err}"
        );
        let err = Settings::load_with(
            Some(dir.path().join("x")),
            &Flags::new(),
            &env_of(&[("AGV_LOG_FORMAT", "xml")]),
        )
        .unwrap_err();
        assert!(
            err.0.contains("log_format") && err.0.contains("AGV_LOG_FORMAT"),
            "{err}"
        );
        let err = Settings::load_with(
            Some(dir.path().join("x")),
            &Flags::new(),
            &env_of(&[("AGV_HOUSEKEEPING_CRON", "every tuesday")]),
        )
        .unwrap_err();
        assert!(err.0.contains("housekeeping_cron"), "{err}");
    }

    #[test]
    fn secrets_come_from_files_and_are_never_described() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("key.txt");
        std::fs::write(&secret_file, "sk-very-secret\n").unwrap();
        let env = env_of(&[("AGV_UPSTREAM_API_KEY_FILE", secret_file.to_str().unwrap())]);
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env).unwrap();
        assert_eq!(s.upstream_api_key.as_deref(), Some("sk-very-secret"));
        let described = format!("{:?} {:?}", s.describe(), s);
        assert!(!described.contains("sk-very-secret"), "{described}");
        let both = env_of(&[
            ("AGV_UPSTREAM_API_KEY", "a"),
            ("AGV_UPSTREAM_API_KEY_FILE", "b"),
        ]);
        assert!(Settings::load_with(Some(dir.path().into()), &Flags::new(), &both).is_err());
    }

    #[test]
    fn the_s3_upload_is_off_by_default_and_a_whole_block_turns_it_on() {
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| {
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(vars))
        };
        let s = load(&[]).unwrap();
        assert!(s.backup_s3.is_none());
        assert_eq!(s.backup_s3_upload_attempts, 12);
        let secret_file = dir.path().join("s3-secret");
        std::fs::write(&secret_file, "s3-very-secret\n").unwrap();
        let s = load(&[
            ("AGV_BACKUP_S3_ENDPOINT", "http://minio:9000"),
            ("AGV_BACKUP_S3_BUCKET", "agv-backups"),
            ("AGV_BACKUP_S3_PREFIX", "/agv//prod/"),
            ("AGV_BACKUP_S3_ACCESS_KEY_ID", "AKID"),
            (
                "AGV_BACKUP_S3_SECRET_ACCESS_KEY_FILE",
                secret_file.to_str().unwrap(),
            ),
        ]);
        let err = s.unwrap_err();
        assert!(err.0.contains("invalid backup_s3_prefix"), "{err}");
        let s = load(&[
            ("AGV_BACKUP_S3_ENDPOINT", "http://minio:9000"),
            ("AGV_BACKUP_S3_BUCKET", "agv-backups"),
            ("AGV_BACKUP_S3_PREFIX", "/agv/prod"),
            ("AGV_BACKUP_S3_ACCESS_KEY_ID", "AKID"),
            (
                "AGV_BACKUP_S3_SECRET_ACCESS_KEY_FILE",
                secret_file.to_str().unwrap(),
            ),
            ("AGV_BACKUP_S3_UPLOAD_ATTEMPTS", "3"),
        ])
        .unwrap();
        let b = s.backup_s3.clone().unwrap();
        assert_eq!(
            (b.bucket.as_str(), b.region.as_str(), b.prefix.as_str()),
            ("agv-backups", "us-east-1", "agv/prod/")
        );
        assert_eq!(b.secret_access_key, "s3-very-secret");
        assert_eq!(s.backup_s3_upload_attempts, 3);
        let described = format!("{:?} {:?}", s.describe(), s);
        assert!(!described.contains("s3-very-secret"), "{described}");
        assert!(described.contains("agv-backups"), "{described}");
        let err = load(&[("AGV_BACKUP_S3_UPLOAD_ATTEMPTS", "0")]).unwrap_err();
        assert!(err.0.contains("backup_s3_upload_attempts"), "{err}");
    }

    #[test]
    fn a_half_given_s3_block_names_the_missing_setting() {
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| {
            Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(vars))
                .unwrap_err()
                .0
        };
        let err = load(&[("AGV_BACKUP_S3_BUCKET", "agv-backups")]);
        assert!(
            err.contains("missing backup_s3_endpoint (AGV_BACKUP_S3_ENDPOINT)"),
            "{err}"
        );
        let err = load(&[("AGV_BACKUP_S3_ENDPOINT", "https://s3.example.com")]);
        assert!(err.contains("missing backup_s3_bucket"), "{err}");
        let err = load(&[
            ("AGV_BACKUP_S3_ENDPOINT", "https://s3.example.com"),
            ("AGV_BACKUP_S3_BUCKET", "agv-backups"),
        ]);
        assert!(err.contains("missing backup_s3_access_key_id"), "{err}");
        for bad in [
            "s3.example.com",
            "ftp://s3.example.com",
            "https://user:pw@s3.example.com",
            "https://s3.example.com/?x=1",
        ] {
            let err = load(&[
                ("AGV_BACKUP_S3_ENDPOINT", bad),
                ("AGV_BACKUP_S3_BUCKET", "agv-backups"),
            ]);
            assert!(err.contains("invalid backup_s3_endpoint"), "{bad}: {err}");
        }
        let err = load(&[("AGV_BACKUP_S3_ACCESS_KEY_ID", "AKID")]);
        assert!(
            err.contains("backup_s3_access_key_id")
                && err.contains("backup_s3_endpoint and backup_s3_bucket are not"),
            "{err}"
        );
        let err = load(&[("AGV_BACKUP_S3_SECRET_ACCESS_KEY", "s3-very-secret")]);
        assert!(!err.contains("s3-very-secret"), "{err}");
    }

    #[test]
    fn the_upstream_key_falls_back_to_openai_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[("OPENAI_API_KEY", "sk-x")]),
        )
        .unwrap();
        assert_eq!(s.upstream_api_key.as_deref(), Some("sk-x"));
        assert_eq!(
            s.sources["upstream_api_key"],
            Source::Env("OPENAI_API_KEY".into())
        );
    }

    #[test]
    fn database_url_passwords_are_redacted_in_the_description() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[("AGV_DATABASE_URL", "postgres://agv:hunter2@db/agv")]);
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env).unwrap();
        assert!(!format!("{:?}", s.describe()).contains("hunter2"));
    }

    #[test]
    fn the_data_dir_comes_from_the_flag_then_agv_data() {
        let s = Settings::load_with(
            None,
            &Flags::new(),
            &env_of(&[("AGV_DATA", "/nonexistent/agv")]),
        )
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/nonexistent/agv"));
        let s = Settings::load_with(None, &Flags::new(), &env_of(&[])).unwrap();
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn the_upstream_timeouts_have_defaults_and_can_be_set() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap();
        assert_eq!(s.upstream_connect_timeout.as_secs(), 5);
        assert_eq!(s.upstream_first_byte_timeout.as_secs(), 30);
        let s = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[
                ("AGV_UPSTREAM_CONNECT_TIMEOUT", "2s"),
                ("AGV_UPSTREAM_FIRST_BYTE_TIMEOUT", "3s"),
            ]),
        )
        .unwrap();
        assert_eq!(s.upstream_connect_timeout.as_secs(), 2);
        assert_eq!(s.upstream_first_byte_timeout.as_secs(), 3);
        let err = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[("AGV_UPSTREAM_FIRST_BYTE_TIMEOUT", "soon")]),
        )
        .unwrap_err();
        assert!(err.0.contains("upstream_first_byte_timeout"), "{err}");
        let err = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[("AGV_UPSTREAM_CONNECT_TIMEOUT", "0s")]),
        )
        .unwrap_err();
        assert!(err.0.contains("upstream_connect_timeout"), "{err}");
    }

    #[test]
    fn the_fallback_upstream_is_optional_and_its_key_is_a_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap();
        assert_eq!(s.fallback_upstream_url, None);
        let key_file = dir.path().join("fb.txt");
        std::fs::write(&key_file, "sk-fallback-secret\n").unwrap();
        let s = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[
                ("AGV_FALLBACK_UPSTREAM_URL", "https://backup.example/v1/"),
                (
                    "AGV_FALLBACK_UPSTREAM_API_KEY_FILE",
                    key_file.to_str().unwrap(),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.fallback_upstream_url.as_deref(),
            Some("https://backup.example/v1")
        );
        assert_eq!(
            s.fallback_upstream_api_key.as_deref(),
            Some("sk-fallback-secret")
        );
        assert!(!format!("{s:?}").contains("sk-fallback-secret"));
        let err = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[("AGV_FALLBACK_UPSTREAM_URL", "backup.example")]),
        )
        .unwrap_err();
        assert!(err.0.contains("fallback_upstream_url"), "{err}");
    }

    #[test]
    fn the_tenant_upstream_allowlist_is_empty_by_default_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap();
        assert!(s.tenant_upstream_allowlist.is_empty());
        let s = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[(
                "AGV_TENANT_UPSTREAM_ALLOWLIST",
                "https://api.openai.com/v1,https://myco.openai.azure.com/",
            )]),
        )
        .unwrap();
        assert!(
            s.tenant_upstream_allowlist
                .check("https://api.openai.com/v1")
                .is_ok()
        );
        let err = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[("AGV_TENANT_UPSTREAM_ALLOWLIST", "ftp://files.example")]),
        )
        .unwrap_err();
        assert!(err.0.contains("tenant_upstream_allowlist"), "{err}");
    }

    #[test]
    fn the_master_key_is_a_secret_from_env_or_file_and_never_described() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap();
        assert_eq!(s.master_key, None);
        let hex_key = "ab".repeat(32);
        let file = dir.path().join("mk");
        std::fs::write(&file, format!("{hex_key}\n")).unwrap();
        let s = Settings::load_with(
            Some(dir.path().into()),
            &Flags::new(),
            &env_of(&[("AGV_MASTER_KEY_FILE", file.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(s.master_key.as_deref(), Some(hex_key.as_str()));
        assert!(!format!("{s:?}").contains(&hex_key));
    }

    #[test]
    fn prices_in_the_config_file_become_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = \"127.0.0.1:1\"\n[prices.\"my-model\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n",
        )
        .unwrap();
        let s = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[])).unwrap();
        assert_eq!(s.prices["my-model"], ModelPrice::new(1.0, 0.5, 2.0));
        assert_eq!(s.listen, "127.0.0.1:1");
    }

    #[test]
    fn unknown_fields_and_bad_shapes_in_prices_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[prices.\"m\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\nouput = 3.0\n",
                "ouput",
            ),
            ("prices = 3\n", "prices"),
            ("[prices]\nm = 1.0\n", "prices.\"m\""),
            ("[prices.\"m\"]\ninput = 1.0\n", "prices.\"m\""),
            (
                "[prices.\"m\"]\ninput = -1.0\ncached_input = 0.5\noutput = 2.0\n",
                "prices",
            ),
            ("[listen]\nx = 1\n", "listen"),
        ];
        for (text, named) in cases {
            std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
            let err = Settings::load_with(Some(dir.path().into()), &Flags::new(), &env_of(&[]))
                .unwrap_err();
            assert!(err.0.contains(named), "{text:?}: {err}");
        }
    }
}
