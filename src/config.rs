//! Settings: flags > `AGV_*` environment > `<data>/config.toml` > defaults.
//!
//! Every setting is declared once, as one entry of [`FIELDS`]: its config-file key (and
//! so its environment variable `AGV_<KEY>`), default, flag, help text, whether it is a
//! secret, how its text is parsed into the typed [`Settings`] and how its effective value
//! is described. The file keys, the environment, the flags of `cli.rs`, `--help` and the
//! startup log all read that table, so a setting cannot be known to one and missing from
//! another. Each value remembers where it came from so the server can log its effective
//! configuration at start — secrets only as "(set)". Unknown keys in config.toml are
//! rejected by name. Secrets may also come from `*_FILE` variables.
//! This module does no network I/O and never prints a secret.

use crate::domain::TenantId;
use crate::domain::alert::HostAllowlist;
use crate::domain::pricing::{ModelPrice, Pricing};
use crate::domain::time::parse_duration;
use crate::domain::trusted_proxies::TrustedProxies;
use crate::domain::upstream_url::UpstreamAllowlist;
use crate::domain::user::Role;
use values::validate_cron;
pub mod private_file;
pub mod values;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// One setting, declared once; everything else about it is derived from this.
pub struct Field {
    /// The config.toml key; the environment variable is [`Field::env`].
    pub key: &'static str,
    /// Secrets are never logged and may be read from a file named by `<env>_FILE`.
    pub secret: bool,
    pub default: Option<&'static str>,
    /// The command-line flag and its value name, `("tls-cert", "FILE")` for
    /// `--tls-cert FILE`, for the few settings that have one.
    pub flag: Option<(&'static str, &'static str)>,
    pub help: &'static str,
    /// Parses the setting's text into [`Settings`]. A group of settings that are only
    /// valid together (TLS, the S3 upload, single sign-on) is parsed by its first key; the
    /// rest do nothing.
    apply: fn(&mut Settings, &Given) -> Result<(), ConfigError>,
    /// The effective value for [`Settings::describe`]; never a secret.
    show: fn(&Settings) -> String,
}

impl Field {
    /// A setting with only its key: the methods below add its help, default, flag and
    /// secrecy, how its text is parsed ([`Field::parse`]) and how its value is described
    /// ([`Field::show`]). Without `parse` it parses nothing, as the members of a group
    /// whose first key parses them all.
    const fn new(key: &'static str) -> Self {
        Self {
            key,
            secret: false,
            default: None,
            flag: None,
            help: "",
            apply: |_, _| Ok(()),
            show: |_| String::new(),
        }
    }

    const fn help(mut self, help: &'static str) -> Self {
        self.help = help;
        self
    }

    const fn default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// `--long VALUE_NAME` on the command line.
    const fn flag(mut self, long: &'static str, value_name: &'static str) -> Self {
        self.flag = Some((long, value_name));
        self
    }

    const fn parse(mut self, apply: fn(&mut Settings, &Given) -> Result<(), ConfigError>) -> Self {
        self.apply = apply;
        self
    }

    const fn show(mut self, show: fn(&Settings) -> String) -> Self {
        self.show = show;
        self
    }

    /// `AGV_` and the key in capitals.
    pub fn env(&self) -> String {
        format!("AGV_{}", self.key.to_ascii_uppercase())
    }
}

/// The field declared under `key`.
pub fn field(key: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.key == key)
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

/// Parses the `backup_s3_*` settings (`g` is `backup_s3_endpoint`): all unset means no
/// upload; a half-given block is an error naming the missing setting.
fn parse_backup_s3(g: &Given) -> Result<Option<BackupS3>, ConfigError> {
    let get = |key| g.other(key).trimmed();
    let bad = |key, why| g.other(key).bad(why);
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
    let url = web_url(&endpoint)
        .filter(|u| u.query().is_none())
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

/// Sign-in with the company's identity provider over OpenID Connect (`oidc_*`): on when
/// the issuer and the client id are set.
#[derive(Clone, PartialEq, Eq)]
pub struct Oidc {
    /// The issuer URL as configured (its discovery document is under
    /// `/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only).
    pub client_secret: Option<String>,
    /// Lower-case email domains that may sign in; empty: any.
    pub allowed_domains: Vec<String>,
    /// The role of a person made by their first sign-in when no group maps to one.
    pub default_role: Role,
    /// The tenant people made by a first sign-in join; `None`: only people who have an
    /// account already may sign in this way.
    pub tenant: Option<TenantId>,
    /// The claim holding the person's groups; `None`: groups are not read.
    pub groups_claim: Option<String>,
    /// Group → role, for the first sign-in (the strongest role of the person's groups wins).
    pub group_roles: Vec<(String, Role)>,
    /// Shown on the sign-in page: "Sign in with <provider_name>".
    pub provider_name: String,
    /// The callback URL registered at the provider; `None`: this server's address as the
    /// request reached it, plus `/api/auth/oidc/callback`.
    pub redirect_url: Option<String>,
}

impl fmt::Debug for Oidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "(secret)"),
            )
            .field("allowed_domains", &self.allowed_domains)
            .field("default_role", &self.default_role)
            .field("tenant", &self.tenant)
            .field("groups_claim", &self.groups_claim)
            .field("group_roles", &self.group_roles)
            .field("provider_name", &self.provider_name)
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

/// The settings of single sign-on that only make sense with an issuer and a client id.
const OIDC_DEPENDENT: [&str; 6] = [
    "oidc_client_secret",
    "oidc_allowed_domains",
    "oidc_tenant",
    "oidc_groups_claim",
    "oidc_group_roles",
    "oidc_redirect_url",
];

const TENANT_ROLE: &str = "expected owner, admin or viewer (the operator belongs to the instance: make one with `agv-server user create --role operator`)";

/// An `http://` or `https://` URL without credentials or fragment.
fn web_url(text: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
        .filter(|u| u.fragment().is_none())
        .filter(|u| u.username().is_empty() && u.password().is_none())
}

/// Parses the `oidc_*` settings (`g` is `oidc_issuer`): without an issuer and a client id
/// single sign-on is off, and any other `oidc_*` setting given is an error naming it.
fn parse_oidc(g: &Given) -> Result<Option<Oidc>, ConfigError> {
    let get = |key: &str| g.other(key).trimmed();
    let bad = |key: &str, why: &str| g.other(key).bad(why);
    let (issuer, client_id) = match (get("oidc_issuer"), get("oidc_client_id")) {
        (None, None) => {
            if let Some(key) = OIDC_DEPENDENT.into_iter().find(|k| get(k).is_some()) {
                return Err(bad(
                    key,
                    "is set but oidc_issuer and oidc_client_id are not: set both to turn on single sign-on, or unset it",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(bad(
                "oidc_client_id",
                "has no value but oidc_issuer is set: give the client id agv-server is registered under at the identity provider, or unset oidc_issuer",
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "oidc_issuer",
                "has no value but oidc_client_id is set: give the identity provider's issuer URL (e.g. https://login.example.com/realms/acme), or unset oidc_client_id",
            ));
        }
        (Some(issuer), Some(client_id)) => (issuer, client_id),
    };
    if web_url(&issuer).is_none_or(|u| u.query().is_some()) {
        return Err(bad(
            "oidc_issuer",
            "expected the identity provider's issuer: an https:// URL without query, e.g. https://login.example.com/realms/acme (its discovery document is under /.well-known/openid-configuration)",
        ));
    }
    let mut allowed_domains = Vec::new();
    for d in get("oidc_allowed_domains").unwrap_or_default().split(',') {
        let d = d.trim().trim_start_matches('@').to_lowercase();
        if d.is_empty() {
            continue;
        }
        let valid = d.contains('.')
            && !d.starts_with('.')
            && !d.ends_with('.')
            && d.chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if !valid {
            return Err(bad(
                "oidc_allowed_domains",
                "expected comma-separated email domains, e.g. example.com,example.org (empty: any domain)",
            ));
        }
        allowed_domains.push(d);
    }
    let tenant_role = |key: &'static str, text: &str| match Role::parse(text) {
        Ok(r) if r.is_tenant_role() => Ok(r),
        _ => Err(bad(key, TENANT_ROLE)),
    };
    let default_role = tenant_role(
        "oidc_default_role",
        &g.other("oidc_default_role").trimmed_or_default(),
    )?;
    let tenant = get("oidc_tenant")
        .map(|t| TenantId::parse(&t))
        .transpose()
        .map_err(|e| {
            bad(
                "oidc_tenant",
                &format!("{e}; give the id of the tenant people join at their first sign-in (`agv-server tenant list`)"),
            )
        })?;
    let groups_claim = get("oidc_groups_claim");
    if groups_claim
        .as_deref()
        .is_some_and(|c| c.len() > 200 || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
    {
        return Err(bad(
            "oidc_groups_claim",
            "expected the name of a claim, e.g. groups (no spaces)",
        ));
    }
    let mut group_roles = Vec::new();
    for pair in get("oidc_group_roles").unwrap_or_default().split(',') {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((group, role)) = pair.rsplit_once('=') else {
            return Err(bad(
                "oidc_group_roles",
                "expected comma-separated GROUP=ROLE pairs, e.g. agv-owners=owner,agv-admins=admin",
            ));
        };
        let group = group.trim();
        if group.is_empty() {
            return Err(bad(
                "oidc_group_roles",
                "a GROUP=ROLE pair has no group: expected e.g. agv-admins=admin",
            ));
        }
        group_roles.push((
            group.to_owned(),
            tenant_role("oidc_group_roles", role.trim())?,
        ));
    }
    if !group_roles.is_empty() && groups_claim.is_none() {
        return Err(bad(
            "oidc_group_roles",
            "maps groups to roles but oidc_groups_claim is not set: name the claim that holds the groups (e.g. groups)",
        ));
    }
    let provider_name = g.other("oidc_provider_name").trimmed_or_default();
    if provider_name.chars().count() > 60 || provider_name.chars().any(char::is_control) {
        return Err(bad(
            "oidc_provider_name",
            "expected a short name for the sign-in button (at most 60 characters)",
        ));
    }
    let redirect_url = get("oidc_redirect_url");
    if redirect_url
        .as_deref()
        .is_some_and(|u| web_url(u).is_none())
    {
        return Err(bad(
            "oidc_redirect_url",
            "expected this server's callback URL as registered at the provider, e.g. https://agv.example.com/api/auth/oidc/callback",
        ));
    }
    Ok(Some(Oidc {
        issuer,
        client_id,
        client_secret: get("oidc_client_secret"),
        allowed_domains,
        default_role,
        tenant,
        groups_claim,
        group_roles,
        provider_name,
        redirect_url,
    }))
}

pub const FIELDS: &[Field] = &[
    Field::new("listen")
        .help("address and port the HTTP server listens on")
        .default("127.0.0.1:8080")
        .flag("listen", "ADDR")
        .parse(|s, g| {
            s.listen = g.text().trim().to_owned();
            if s.listen.parse::<std::net::SocketAddr>().is_err() && !s.listen.contains(':') {
                return Err(g.bad("expected ADDRESS:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080"));
            }
            Ok(())
        })
        .show(|s| s.listen.clone()),
    // tls_cert parses tls_key with it.
    Field::new("tls_cert")
        .help(
            "PEM certificate chain: serve HTTPS (TLS 1.2+, with HSTS) instead of HTTP; needs \
            tls_key",
        )
        .flag("tls-cert", "FILE")
        .parse(|s, g| set(&mut s.tls, tls(g)))
        .show(|s| tls_or_off(s, |t| &t.cert)),
    Field::new("tls_key")
        .help("PEM private key of tls_cert")
        .flag("tls-key", "FILE")
        .show(|s| tls_or_off(s, |t| &t.key)),
    Field::new("database_url")
        .help("postgres://… to use Postgres; unset: SQLite in the data dir")
        .secret()
        .flag("database-url", "URL")
        .parse(|s, g| set(&mut s.database_url, Ok(g.trimmed())))
        .show(|s| {
            s.database_url.as_deref().map_or(
                "(not set: SQLite in the data dir)".into(),
                values::redact_url,
            )
        }),
    Field::new("durability")
        .help(
            "what an acknowledged call survives: process (a crash of agv-server) or power (a \
            power cut too: every commit waits for the disk); unset: process on SQLite, power on \
            Postgres",
        )
        .parse(|s, g| set(&mut s.durability, durability(g)))
        .show(show_durability),
    Field::new("upstream_url")
        .help("the OpenAI-compatible upstream calls are forwarded to")
        .default("https://api.openai.com/v1")
        .parse(|s, g| set(&mut s.upstream_url, g.url()?.ok_or_else(|| g.bad(HTTP_URL))))
        .show(|s| s.upstream_url.clone()),
    Field::new("upstream_api_key")
        .help("API key sent to the upstream (falls back to OPENAI_API_KEY)")
        .secret()
        .parse(|s, g| set(&mut s.upstream_api_key, Ok(g.trimmed())))
        .show(|s| set_or(&s.upstream_api_key, "(not set)")),
    Field::new("upstream_timeout")
        .help("total time an upstream call may take")
        .default("30s")
        .parse(|s, g| set(&mut s.upstream_timeout, g.nonzero_duration()))
        .show(|s| secs(s.upstream_timeout)),
    Field::new("upstream_retries")
        .help("retries before any byte reached the client")
        .default("3")
        .parse(|s, g| {
            let n = g.number_in(..=10, "expected between 0 and 10");
            set(&mut s.upstream_retries, n)
        })
        .show(|s| s.upstream_retries.to_string()),
    Field::new("upstream_connect_timeout")
        .help("time to open a connection to the upstream")
        .default("5s")
        .parse(|s, g| set(&mut s.upstream_connect_timeout, g.nonzero_duration()))
        .show(|s| secs(s.upstream_connect_timeout)),
    Field::new("upstream_first_byte_timeout")
        .help("time until the upstream's response headers arrive, per try")
        .default("30s")
        .parse(|s, g| set(&mut s.upstream_first_byte_timeout, g.nonzero_duration()))
        .show(|s| secs(s.upstream_first_byte_timeout)),
    Field::new("fallback_upstream_url")
        .help("an OpenAI-compatible upstream tried once after the primary's last failed try")
        .parse(|s, g| set(&mut s.fallback_upstream_url, g.url()))
        .show(|s| value_or(&s.fallback_upstream_url, "(not set)")),
    Field::new("fallback_upstream_api_key")
        .help("API key sent to the fallback upstream")
        .secret()
        .parse(|s, g| set(&mut s.fallback_upstream_api_key, Ok(g.trimmed())))
        .show(|s| set_or(&s.fallback_upstream_api_key, "(not set)")),
    Field::new("tenant_upstream_allowlist")
        .help(
            "comma-separated base-URL prefixes tenants may set as their own upstream (empty: none)",
        )
        .default("")
        .parse(|s, g| {
            let list = UpstreamAllowlist::parse(g.text()).map_err(|e| g.bad(&e));
            set(&mut s.tenant_upstream_allowlist, list)
        })
        .show(|s| s.tenant_upstream_allowlist.to_string()),
    Field::new("master_key")
        .help("32 bytes (hex or base64) encrypting stored provider keys; unset: <data>/master.key")
        .secret()
        .parse(|s, g| set(&mut s.master_key, Ok(g.trimmed())))
        .show(|s| set_or(&s.master_key, "(not set: <data>/master.key)")),
    Field::new("metrics_token")
        .help(
            "bearer token /metrics asks of scrapers from other hosts; unset: /metrics answers \
            only on loopback",
        )
        .secret()
        .parse(|s, g| {
            s.metrics_token = g.trimmed();
            if s.metrics_token.as_deref().is_some_and(|t| t.len() < 16) {
                return Err(
                    g.bad("expected at least 16 characters (e.g. from `openssl rand -hex 32`)")
                );
            }
            Ok(())
        })
        .show(|s| {
            set_or(
                &s.metrics_token,
                "(not set: /metrics answers on loopback only)",
            )
        }),
    Field::new("max_stored_body_bytes")
        .help("request/response bodies longer than this are stored truncated")
        .default("1048576")
        .parse(|s, g| set(&mut s.max_stored_body_bytes, g.number_in(.., "too large")))
        .show(|s| s.max_stored_body_bytes.to_string()),
    Field::new("log_format")
        .help("text or json")
        .default("text")
        .parse(|s, g| {
            s.log_format = match g.text().trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(g.bad("expected 'text' or 'json'")),
            };
            Ok(())
        })
        .show(|s| format!("{:?}", s.log_format).to_lowercase()),
    Field::new("log_level")
        .help("error, warn, info, debug, trace, or a tracing filter")
        .default("info")
        .parse(|s, g| set(&mut s.log_level, Ok(g.text().trim().to_owned())))
        .show(|s| s.log_level.clone()),
    Field::new("max_body_bytes")
        .help("largest request body accepted (413 above)")
        .default("8388608")
        .parse(|s, g| {
            let bytes = g.number_in(1024..=1 << 30, "expected between 1024 and 1073741824");
            set(&mut s.max_body_bytes, bytes)
        })
        .show(|s| s.max_body_bytes.to_string()),
    Field::new("trusted_proxies")
        .help(
            "comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is \
            believed for the client's address (empty: none, the TCP peer is the client)",
        )
        .default("")
        .parse(|s, g| {
            let proxies = TrustedProxies::parse(g.text()).map_err(|e| g.bad(&e.0));
            set(&mut s.trusted_proxies, proxies)
        })
        .show(|s| s.trusted_proxies.to_string()),
    Field::new("unauth_rate_limit_per_minute")
        .help("requests per minute per client address on unauthenticated endpoints (0 = off)")
        .default("100")
        .parse(|s, g| {
            let n = g.number_in(.., "too large");
            set(&mut s.unauth_rate_limit_per_minute, n)
        })
        .show(|s| s.unauth_rate_limit_per_minute.to_string()),
    Field::new("queue_max_bytes")
        .help("disk budget of the job queue; new jobs are refused above it")
        .default("1073741824")
        .parse(|s, g| {
            let bytes = g.number_in(1 << 20.., "expected at least 1048576 (1 MiB)");
            set(&mut s.queue_max_bytes, bytes)
        })
        .show(|s| s.queue_max_bytes.to_string()),
    Field::new("job_workers")
        .help("background job workers")
        .default("2")
        .parse(|s, g| {
            let n = g.number_in(1..=64, "expected between 1 and 64");
            set(&mut s.job_workers, n)
        })
        .show(|s| s.job_workers.to_string()),
    Field::new("housekeeping_cron")
        .help("cron schedule (with seconds) of the housekeeping job")
        .default("0 */10 * * * *")
        .parse(|s, g| {
            s.housekeeping_cron = g.text().trim().to_owned();
            validate_cron(&s.housekeeping_cron).map_err(|e| g.bad(&e))
        })
        .show(|s| s.housekeeping_cron.clone()),
    Field::new("backup_cron")
        .help("cron schedule (with seconds) of the automatic backup; \"off\" disables it")
        .default("0 0 3 * * *")
        .parse(|s, g| set(&mut s.backup_cron, g.cron_or_off()))
        .show(|s| value_or(&s.backup_cron, "off")),
    Field::new("backup_verify_cron")
        .help(
            "cron schedule of the check of the newest backup (a failure raises a system alert); \
            \"off\" disables it",
        )
        .default("0 30 4 * * Sun")
        .parse(|s, g| set(&mut s.backup_verify_cron, g.cron_or_off()))
        .show(|s| value_or(&s.backup_verify_cron, "off")),
    Field::new("retention_days")
        .help(
            "days the request and response bodies of calls are kept; then they are removed \
            (metadata, tokens, cost, decisions and hashes stay); 0 keeps them forever",
        )
        .default("90")
        .parse(|s, g| {
            let days = g.number_in(
                ..=36_500,
                "expected between 0 (keep call bodies forever) and 36500 days",
            );
            set(&mut s.retention_days, days)
        })
        .show(|s| match s.retention_days {
            0 => "0 (call bodies are kept forever)".into(),
            days => days.to_string(),
        }),
    Field::new("retention_cron")
        .help("cron schedule (with seconds) of the retention sweep; \"off\" disables it")
        .default("0 30 3 * * *")
        .parse(|s, g| set(&mut s.retention_cron, g.cron_or_off()))
        .show(|s| value_or(&s.retention_cron, "off")),
    Field::new("backup_dir")
        .help("where automatic backups are written; unset: <data>/backups")
        .parse(|s, g| {
            let dir = g
                .trimmed()
                .map_or_else(|| s.data_dir.join("backups"), PathBuf::from);
            set(&mut s.backup_dir, Ok(dir))
        })
        .show(|s| s.backup_dir.display().to_string()),
    Field::new("backup_keep_daily")
        .help("automatic backups kept: the newest of each of this many days")
        .default("7")
        .parse(|s, g| {
            let n = g.number_in(1.., "keep at least 1");
            set(&mut s.backup_keep_daily, n)
        })
        .show(|s| s.backup_keep_daily.to_string()),
    Field::new("backup_keep_weekly")
        .help("and the newest of each of this many weeks before those")
        .default("4")
        .parse(|s, g| set(&mut s.backup_keep_weekly, g.number_in(.., "too large")))
        .show(|s| s.backup_keep_weekly.to_string()),
    Field::new("backup_passphrase")
        .help(
            "seals the data directory's key files into backups (12+ characters); unset: they are \
            left out",
        )
        .secret()
        .parse(|s, g| {
            // Taken as given, spaces and all: it is a passphrase.
            s.backup_passphrase = g.given().filter(|v| !v.is_empty()).map(str::to_owned);
            if s.backup_passphrase
                .as_ref()
                .is_some_and(|p| p.chars().count() < 12)
            {
                return Err(g.bad("must be at least 12 characters long"));
            }
            Ok(())
        })
        .show(|s| set_or(&s.backup_passphrase, "(not set)")),
    // backup_s3_endpoint parses the other backup_s3_* settings but the upload attempts.
    Field::new("backup_s3_endpoint")
        .help(
            "S3-compatible endpoint (http:// or https:// URL, path-style addressing) each \
            automatic backup is uploaded to; unset: no upload",
        )
        .parse(|s, g| set(&mut s.backup_s3, parse_backup_s3(g)))
        .show(|s| {
            s3_or(s, "(not set: backups are not uploaded)", |b| {
                b.endpoint.to_string()
            })
        }),
    Field::new("backup_s3_bucket")
        .help("the bucket backups are uploaded to (needs backup_s3_endpoint)")
        .show(|s| s3_or(s, "(not set)", |b| b.bucket.clone())),
    Field::new("backup_s3_region")
        .help("the region the uploads are signed for")
        .default("us-east-1")
        .show(|s| s3_or(s, "(not used)", |b| b.region.clone())),
    Field::new("backup_s3_prefix")
        .help("key prefix of the uploaded backups in the bucket, e.g. agv/prod/")
        .default("")
        .show(|s| s3_or(s, "(not used)", |b| b.prefix.clone())),
    Field::new("backup_s3_access_key_id")
        .help("access key id of the bucket's credentials")
        .show(|s| s3_or(s, "(not set)", |b| b.access_key_id.clone())),
    Field::new("backup_s3_secret_access_key")
        .help("secret access key of the bucket's credentials")
        .secret()
        .show(|s| s3_or(s, "(not set)", |_| "(set)".into())),
    Field::new("backup_s3_upload_attempts")
        .help(
            "attempts of one upload job (retried with backoff 1 s, 2 s, 4 s, … — about 34 minutes \
            for 12) before it is dead-lettered and raises the backup_upload_failed system alert",
        )
        .default("12")
        .parse(|s, g| {
            let attempts = g.number_in(1..=100, "expected between 1 and 100");
            set(&mut s.backup_s3_upload_attempts, attempts)
        })
        .show(|s| s.backup_s3_upload_attempts.to_string()),
    Field::new("body_read_timeout")
        .help(
            "how long a client may take to send a request body (408 after); the request head has \
            5 s",
        )
        .default("30s")
        .parse(|s, g| set(&mut s.body_read_timeout, g.duration()))
        .show(|s| secs(s.body_read_timeout)),
    Field::new("shutdown_timeout")
        .help("how long in-flight requests may take to finish at shutdown")
        .default("30s")
        .parse(|s, g| set(&mut s.shutdown_timeout, g.duration()))
        .show(|s| secs(s.shutdown_timeout)),
    Field::new("alert_webhook_allowed_hosts")
        .help(
            "comma-separated hosts alert webhooks may reach although they resolve to internal \
            addresses",
        )
        .default("")
        .parse(|s, g| {
            let hosts = HostAllowlist::parse(g.text()).map_err(|e| g.bad(&e));
            set(&mut s.alert_webhook_allowed_hosts, hosts)
        })
        .show(|s| s.alert_webhook_allowed_hosts.to_string()),
    Field::new("operator_alert_webhook_url")
        .help("webhook (generic, HMAC-signed) receiving system alerts; unset: no system alerts")
        .secret()
        .parse(|s, g| {
            s.operator_alert_webhook_url = g.trimmed();
            if let Some(u) = &s.operator_alert_webhook_url {
                crate::domain::alert::parse_webhook_url(u).map_err(|e| g.bad(&e))?;
            }
            Ok(())
        })
        .show(|s| set_or(&s.operator_alert_webhook_url, "(not set)")),
    Field::new("operator_alert_webhook_secret")
        .help("HMAC secret signing system alerts (x-agv-signature)")
        .secret()
        .parse(|s, g| set(&mut s.operator_alert_webhook_secret, Ok(g.trimmed())))
        .show(|s| set_or(&s.operator_alert_webhook_secret, "(not set)")),
    Field::new("system_alert_interval")
        .help("how often the system-alert checks run")
        .default("60s")
        .parse(|s, g| set(&mut s.system_alert_interval, g.nonzero_duration()))
        .show(|s| secs(s.system_alert_interval)),
    Field::new("system_alert_disk_percent")
        .help("alert when the data dir's filesystem is fuller than this (percent)")
        .default("80")
        .parse(|s, g| {
            let percent = g.text().trim().parse::<f64>().ok();
            let percent = percent.filter(|p| (0.0..=100.0).contains(p));
            let percent = percent.ok_or_else(|| g.bad("expected a number from 0 to 100"));
            set(&mut s.system_alert_disk_percent, percent)
        })
        .show(|s| s.system_alert_disk_percent.to_string()),
    Field::new("system_alert_queue_stuck")
        .help("alert when the oldest due job has waited longer than this")
        .default("10m")
        .parse(|s, g| set(&mut s.system_alert_queue_stuck, g.nonzero_duration()))
        .show(|s| secs(s.system_alert_queue_stuck)),
    Field::new("llm_base_url")
        .help("OpenAI-compatible API for incident narratives; unset: none are written")
        .parse(|s, g| set(&mut s.llm_base_url, g.url()))
        .show(|s| value_or(&s.llm_base_url, "(not set: no AI-written narratives)")),
    Field::new("llm_api_key")
        .help("API key for llm_base_url")
        .secret()
        .parse(|s, g| set(&mut s.llm_api_key, Ok(g.trimmed())))
        .show(|s| set_or(&s.llm_api_key, "(not set)")),
    Field::new("llm_model")
        .help("model writing incident narratives")
        .default("gpt-4o-mini")
        .parse(|s, g| set(&mut s.llm_model, Ok(g.trimmed_or_default())))
        .show(|s| s.llm_model.clone()),
    Field::new("update_source")
        .help(
            "where releases are looked for (the console's update check, agv-server update): an \
            http(s) URL, or on an air-gapped site a mirror's URL or a local release directory \
            (absolute path or file:// URL)",
        )
        .default(values::DEFAULT_SOURCE)
        .parse(|s, g| {
            s.update_source = g.trimmed_or_default().trim_end_matches('/').to_owned();
            if values::Source::parse(&s.update_source).is_err() {
                let why = format!("expected {}", values::SOURCE_FORMS);
                return Err(g.bad(&why));
            }
            Ok(())
        })
        .show(|s| values::redact_url(&s.update_source)),
    // oidc_issuer parses every oidc_* setting.
    Field::new("oidc_issuer")
        .help(
            "single sign-on: the OpenID Connect identity provider's issuer URL (its discovery \
            document is under /.well-known/openid-configuration); with oidc_client_id, turns on \
            \"Sign in with …\"; unset: off",
        )
        .parse(|s, g| set(&mut s.oidc, parse_oidc(g)))
        .show(|s| oidc_or(s, "(not set: single sign-on is off)", |o| o.issuer.clone())),
    Field::new("oidc_client_id")
        .help(
            "single sign-on: the client id agv-server is registered under at the identity provider",
        )
        .show(|s| oidc_or(s, "(not set)", |o| o.client_id.clone())),
    Field::new("oidc_client_secret")
        .help(
            "single sign-on: the client's secret (sent with client_secret_basic, or \
            client_secret_post when the provider offers only that or refuses Basic); unset: a \
            public client",
        )
        .secret()
        .show(|s| {
            let given = s.oidc.as_ref().is_some_and(|o| o.client_secret.is_some());
            if given { "(set)" } else { "(not set)" }.to_owned()
        }),
    Field::new("oidc_allowed_domains")
        .help(
            "single sign-on: comma-separated email domains that may sign in, e.g. example.com \
            (empty: any)",
        )
        .default("")
        .show(|s| {
            oidc_or(s, "(not used)", |o| match o.allowed_domains.join(",") {
                d if d.is_empty() => "(any domain)".to_owned(),
                d => d,
            })
        }),
    Field::new("oidc_default_role")
        .help(
            "single sign-on: the role (owner, admin or viewer) of a person made by their first \
            sign-in when none of their groups maps to one",
        )
        .default("viewer")
        .show(|s| oidc_or(s, "(not used)", |o| o.default_role.as_str().to_owned())),
    Field::new("oidc_tenant")
        .help(
            "single sign-on: the id of the tenant a person joins at their first sign-in; unset: \
            only people with an account already may sign in this way",
        )
        .show(|s| {
            oidc_or(s, "(not used)", |o| {
                o.tenant.as_ref().map_or(
                    "(not set: no account is made by signing in)".to_owned(),
                    |t| t.to_string(),
                )
            })
        }),
    Field::new("oidc_groups_claim")
        .help(
            "single sign-on: the claim holding the person's groups, e.g. groups (asked for as a \
            scope of that name when the provider offers one); unset: groups are not read",
        )
        .show(|s| oidc_or(s, "(not used)", |o| value_or(&o.groups_claim, "(not set)"))),
    Field::new("oidc_group_roles")
        .help(
            "single sign-on: comma-separated GROUP=ROLE pairs giving a person made by their first \
            sign-in the strongest role of their groups, e.g. agv-owners=owner,agv-admins=admin \
            (empty: everyone gets oidc_default_role)",
        )
        .default("")
        .show(|s| {
            oidc_or(s, "(not used)", |o| {
                let pairs: Vec<String> = o
                    .group_roles
                    .iter()
                    .map(|(g, r)| format!("{g}={}", r.as_str()))
                    .collect();
                if pairs.is_empty() {
                    "(none)".to_owned()
                } else {
                    pairs.join(",")
                }
            })
        }),
    Field::new("oidc_provider_name")
        .help("single sign-on: the provider's name on the sign-in button (\"Sign in with <name>\")")
        .default("SSO")
        .show(|s| oidc_or(s, "(not used)", |o| o.provider_name.clone())),
    Field::new("oidc_redirect_url")
        .help(
            "single sign-on: this server's callback URL as registered at the provider, e.g. \
            https://agv.example.com/api/auth/oidc/callback; unset: the address the browser used, \
            plus /api/auth/oidc/callback",
        )
        .show(|s| {
            oidc_or(s, "(not used)", |o| {
                value_or(&o.redirect_url, "(not set: from each request)")
            })
        }),
];

const HTTP_URL: &str = "expected an http:// or https:// URL, e.g. https://api.openai.com/v1";

/// Stores a parsed value, or passes its error on.
fn set<T>(slot: &mut T, value: Result<T, ConfigError>) -> Result<(), ConfigError> {
    *slot = value?;
    Ok(())
}

/// A secret as described: "(set)" or what being unset means.
fn set_or(secret: &Option<String>, unset: &str) -> String {
    secret.as_ref().map_or(unset, |_| "(set)").to_owned()
}

/// A value as described, or what being unset means.
fn value_or(value: &Option<String>, unset: &str) -> String {
    value.clone().unwrap_or_else(|| unset.to_owned())
}

/// One of the TLS files, or "(off)".
fn tls_or_off(s: &Settings, file: fn(&TlsFiles) -> &PathBuf) -> String {
    s.tls
        .as_ref()
        .map_or("(off)".into(), |t| file(t).display().to_string())
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn s3_or(s: &Settings, unset: &str, shown: fn(&BackupS3) -> String) -> String {
    s.backup_s3.as_ref().map_or_else(|| unset.to_owned(), shown)
}

fn oidc_or(s: &Settings, unset: &str, shown: fn(&Oidc) -> String) -> String {
    s.oidc.as_ref().map_or_else(|| unset.to_owned(), shown)
}

/// `tls_cert` and `tls_key`: both or neither.
fn tls(g: &Given) -> Result<Option<TlsFiles>, ConfigError> {
    let key = g.other("tls_key");
    match (
        g.trimmed().map(PathBuf::from),
        key.trimmed().map(PathBuf::from),
    ) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => {
            Err(key.bad("a TLS certificate needs its key: give --tls-key (AGV_TLS_KEY) too"))
        }
        (None, Some(_)) => {
            Err(g.bad("a TLS key needs its certificate: give --tls-cert (AGV_TLS_CERT) too"))
        }
    }
}

fn durability(g: &Given) -> Result<Option<values::Durability>, ConfigError> {
    use values::Durability;
    let Some(v) = g.trimmed() else {
        return Ok(None);
    };
    let why = format!(
        "expected {}: process commits survive a crash of agv-server, power commits a power cut too",
        Durability::CHOICES
    );
    Durability::parse(&v).map(Some).ok_or_else(|| g.bad(&why))
}

fn show_durability(s: &Settings) -> String {
    use values::{Backend, Durability};
    if let Some(level) = s.durability {
        return level.as_str().to_owned();
    }
    let backend = Backend::of_url(s.database_url.as_deref());
    let name = match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "Postgres",
    };
    let level = Durability::default_for(backend).as_str();
    format!("{level} (not set: the {name} default)")
}

/// The text every layer gave, by key, and where it came from.
struct Layers(BTreeMap<&'static str, (String, Source)>);

/// One setting's text, as its `apply` sees it.
struct Given<'a> {
    key: &'a str,
    layers: &'a Layers,
}

impl Given<'_> {
    /// Another setting of the same group.
    fn other<'k>(&'k self, key: &'k str) -> Given<'k> {
        Given {
            key,
            layers: self.layers,
        }
    }

    /// The text as given, if any layer (or the default) gave one.
    fn given(&self) -> Option<&str> {
        self.layers.0.get(self.key).map(|(v, _)| v.as_str())
    }

    fn text(&self) -> &str {
        self.given().unwrap_or_default()
    }

    /// The trimmed text; empty counts as unset.
    fn trimmed(&self) -> Option<String> {
        Some(self.text().trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// The trimmed text, or the default when it is empty.
    fn trimmed_or_default(&self) -> String {
        let default = field(self.key).and_then(|f| f.default).unwrap_or_default();
        self.trimmed().unwrap_or_else(|| default.to_owned())
    }

    /// An http(s) base URL without its trailing `/`; empty counts as unset.
    fn url(&self) -> Result<Option<String>, ConfigError> {
        let url = self.trimmed().map(|u| u.trim_end_matches('/').to_owned());
        match url {
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                Err(self.bad(HTTP_URL))
            }
            url => Ok(url),
        }
    }

    /// A whole number (`_` separators allowed) in `range` that fits `T`; else `why`.
    fn number_in<T: TryFrom<u64>>(
        &self,
        range: impl RangeBounds<u64>,
        why: &str,
    ) -> Result<T, ConfigError> {
        let Some(text) = self.given() else {
            return Err(self.bad("has no value (a setting without a default must be given)"));
        };
        let n = text
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| self.bad("expected a whole number"))?;
        Some(n)
            .filter(|n| range.contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| self.bad(why))
    }

    fn duration(&self) -> Result<Duration, ConfigError> {
        parse_duration(self.text()).map_err(|e| self.bad(&e.0))
    }

    fn nonzero_duration(&self) -> Result<Duration, ConfigError> {
        let d = self.duration()?;
        if d.is_zero() {
            return Err(self.bad("must be more than zero"));
        }
        Ok(d)
    }

    /// A cron schedule, or `None` when empty or "off".
    fn cron_or_off(&self) -> Result<Option<String>, ConfigError> {
        let v = self.text().trim();
        if v.is_empty() || v.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        validate_cron(v).map_err(|e| self.bad(&e))?;
        Ok(Some(v.to_owned()))
    }

    /// The error for this setting: its value (never a secret's) and where it came from,
    /// or its environment variable when no layer gave it.
    fn bad(&self, why: &str) -> ConfigError {
        let field = field(self.key);
        let Some((value, source)) = self.layers.0.get(self.key) else {
            let env = field.map_or(String::new(), |f| format!(" ({})", f.env()));
            return ConfigError(format!("missing {}{env}: {why}", self.key));
        };
        let shown = if field.is_some_and(|f| f.secret) {
            "(secret)"
        } else {
            value
        };
        ConfigError(format!(
            "invalid {} = '{shown}' (from {source}): {why}",
            self.key
        ))
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The effective, typed settings. `Default` is only the blank [`Settings::load_with`]
/// fills in from [`FIELDS`]; it is not a usable configuration.
#[derive(Clone, Default)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: String,
    /// Serve HTTPS with this certificate chain and key (both PEM), instead of HTTP.
    pub tls: Option<TlsFiles>,
    pub database_url: Option<String>,
    /// What a commit waits for; `None`: the backend's own default
    /// ([`values::Durability::default_for`]).
    pub durability: Option<values::Durability>,
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
    /// Single sign-on over OpenID Connect; `None`: off.
    pub oidc: Option<Oidc>,
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
        let (data_dir, data_source) = data_dir(data_flag, env);
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
        Pricing::with_overrides(prices.clone()).map_err(|e| {
            ConfigError(format!(
                "invalid [prices] in {}: {} — prices are USD per 1M tokens, finite and not negative",
                data_dir.join(CONFIG_FILE).display(),
                e.0
            ))
        })?;
        let mut settings = Self {
            data_dir,
            prices,
            sources,
            ..Self::default()
        };
        let layers = Layers(raw);
        for field in FIELDS {
            let given = Given {
                key: field.key,
                layers: &layers,
            };
            (field.apply)(&mut settings, &given)?;
        }
        Ok(settings)
    }

    /// Settings for a server in a fresh data dir with everything else at its default
    /// (tests and embedding). Listens on an ephemeral port.
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, ConfigError> {
        let mut flags = Flags::new();
        flags.insert("listen", "127.0.0.1:0".into());
        Self::load_with(Some(data_dir.to_path_buf()), &flags, &|_| None)
    }

    /// `(key, shown value, source)` for the data dir, every setting of [`FIELDS`] and the
    /// price overrides; secrets are shown as "(set)".
    pub fn describe(&self) -> Vec<(&'static str, String, String)> {
        let source = |k: &str| {
            self.sources
                .get(k)
                .map_or("default".into(), ToString::to_string)
        };
        let data = self.data_dir.display().to_string();
        let prices = format!("{} model price override(s)", self.prices.len());
        std::iter::once(("data", data, source("data")))
            .chain(
                FIELDS
                    .iter()
                    .map(|f| (f.key, (f.show)(self), source(f.key))),
            )
            .chain([("prices", prices, "config.toml".to_owned())])
            .collect()
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }
}

/// The data directory and where it came from: the `--data` flag, else `AGV_DATA`, else
/// [`DEFAULT_DATA_DIR`].
pub fn data_dir(flag: Option<PathBuf>, env: &dyn Fn(&str) -> Option<String>) -> (PathBuf, Source) {
    match (flag, env("AGV_DATA").filter(|v| !v.is_empty())) {
        (Some(p), _) => (p, Source::Flag),
        (None, Some(v)) => (PathBuf::from(v), Source::Env("AGV_DATA".into())),
        (None, None) => (PathBuf::from(DEFAULT_DATA_DIR), Source::Default),
    }
}

fn read_env(
    field: &Field,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, Source)>, ConfigError> {
    let var = field.env();
    let direct = env(&var).filter(|v| !v.is_empty());
    if !field.secret {
        return Ok(direct.map(|v| (v, Source::Env(var))));
    }
    let file_var = format!("{var}_FILE");
    match (direct, env(&file_var).filter(|v| !v.is_empty())) {
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "both {var} and {file_var} are set: set only one of them"
        ))),
        (Some(v), None) => Ok(Some((v, Source::Env(var)))),
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

    fn load_in(dir: &Path, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_with(Some(dir.to_path_buf()), &Flags::new(), &env_of(vars))
    }

    /// Settings loaded from `vars` alone, in an empty data directory.
    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        load_in(tempfile::tempdir().unwrap().path(), vars)
    }

    /// A valid, non-empty value for every setting: a sample, else its default.
    fn sample(field: &Field) -> &'static str {
        let samples = [
            ("tenant_upstream_allowlist", "https://api.openai.com/v1"),
            ("trusted_proxies", "10.0.0.0/8"),
            ("alert_webhook_allowed_hosts", "hooks.internal"),
            ("backup_s3_prefix", "agv/prod/"),
            ("tls_cert", "/etc/agv/cert.pem"),
            ("tls_key", "/etc/agv/key.pem"),
            ("database_url", "postgres://agv:sample-db-password@db/agv"),
            ("durability", "power"),
            ("upstream_api_key", "sample-upstream-key"),
            ("fallback_upstream_url", "https://fallback.example/v1"),
            ("fallback_upstream_api_key", "sample-fallback-key"),
            ("master_key", "sample-master-key"),
            ("metrics_token", "sample-metrics-token"),
            ("backup_dir", "/var/backups/agv"),
            ("backup_passphrase", "sample-passphrase"),
            ("backup_s3_endpoint", "https://s3.example.com"),
            ("backup_s3_bucket", "agv-backups"),
            ("backup_s3_access_key_id", "AKIDSAMPLE"),
            ("backup_s3_secret_access_key", "sample-s3-secret"),
            (
                "operator_alert_webhook_url",
                "https://hooks.example.com/sample-hook",
            ),
            ("operator_alert_webhook_secret", "sample-webhook-secret"),
            ("llm_base_url", "https://llm.example/v1"),
            ("llm_api_key", "sample-llm-key"),
            ("oidc_issuer", "https://login.example.com/realms/acme"),
            ("oidc_client_id", "agv-console"),
            ("oidc_client_secret", "sample-oidc-secret"),
            ("oidc_allowed_domains", "example.com,example.org"),
            ("oidc_tenant", "ten_0123456789abcdef0123456789abcdef"),
            ("oidc_groups_claim", "groups"),
            ("oidc_group_roles", "agv-owners=owner,agv-admins=admin"),
            (
                "oidc_redirect_url",
                "https://agv.example.com/api/auth/oidc/callback",
            ),
        ];
        let sample = samples
            .iter()
            .find(|(k, _)| *k == field.key)
            .map(|(_, v)| *v);
        sample
            .or(field.default)
            .unwrap_or_else(|| panic!("{} has neither a default nor a sample", field.key))
    }

    #[test]
    fn every_setting_is_read_from_each_layer_and_described_once_without_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let envs: Vec<(String, &str)> = FIELDS.iter().map(|f| (f.env(), sample(f))).collect();
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let from_env = load_in(dir.path(), &envs).unwrap();
        let file: String = FIELDS
            .iter()
            .map(|f| format!("{} = \"{}\"\n", f.key, sample(f)))
            .collect();
        std::fs::write(dir.path().join(CONFIG_FILE), file).unwrap();
        let flags: Flags = FIELDS
            .iter()
            .filter(|f| f.flag.is_some())
            .map(|f| (f.key, sample(f).to_owned()))
            .collect();
        let from_file_and_flags =
            Settings::load_with(Some(dir.path().into()), &flags, &env_of(&[])).unwrap();
        for field in FIELDS {
            let from_env_source = &from_env.sources[field.key];
            assert_eq!(from_env_source, &Source::Env(field.env()), "{}", field.key);
            let layer = if field.flag.is_some() {
                Source::Flag
            } else {
                Source::ConfigFile
            };
            assert_eq!(
                from_file_and_flags.sources[field.key], layer,
                "{}",
                field.key
            );
            assert!(!field.help.is_empty(), "{} has help", field.key);
            assert_eq!(field.env(), format!("AGV_{}", field.key.to_uppercase()));
            if let Some((long, _)) = field.flag {
                assert_eq!(long, field.key.replace('_', "-"));
            }
        }
        for s in [&from_env, &from_file_and_flags] {
            let described = s.describe();
            let keys: Vec<&str> = described.iter().map(|(k, _, _)| *k).collect();
            let mut expected = vec!["data"];
            expected.extend(FIELDS.iter().map(|f| f.key));
            expected.push("prices");
            assert_eq!(
                keys, expected,
                "every setting described once, in FIELDS order"
            );
            for (key, value, _) in &described {
                assert!(!value.is_empty(), "{key} is described");
            }
            let shown = format!("{described:?}");
            for field in FIELDS.iter().filter(|f| f.secret) {
                assert!(!shown.contains(sample(field)), "{}: {shown}", field.key);
            }
        }
    }

    #[test]
    fn the_readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        for field in FIELDS {
            assert!(
                readme.contains(&format!("`{}`", field.key)),
                "{}",
                field.key
            );
        }
    }

    #[test]
    fn the_update_source_defaults_to_github_and_takes_a_mirror_url_or_a_directory() {
        let s = load(&[]).unwrap();
        assert_eq!(s.update_source, values::DEFAULT_SOURCE);
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
    }

    #[test]
    fn retention_defaults_to_90_days_daily_and_can_be_switched_off() {
        let s = load(&[]).unwrap();
        assert_eq!(s.retention_days, 90);
        assert_eq!(s.retention_cron.as_deref(), Some("0 30 3 * * *"));
        let s = load(&[("AGV_RETENTION_DAYS", "0"), ("AGV_RETENTION_CRON", "off")]).unwrap();
        assert_eq!((s.retention_days, s.retention_cron), (0, None));
    }

    /// Each bad value is refused with the setting's key, the value, its variable and why.
    #[test]
    fn a_bad_value_is_refused_naming_the_setting_the_value_and_its_variable() {
        let not_a_cron = "fields, expected 6";
        for (var, value, why) in [
            ("AGV_RETENTION_DAYS", "-1", "expected a whole number"),
            ("AGV_RETENTION_DAYS", "abc", "expected a whole number"),
            ("AGV_RETENTION_DAYS", "99999", "and 36500 days"),
            ("AGV_RETENTION_CRON", "nightly", not_a_cron),
            ("AGV_HOUSEKEEPING_CRON", "every tuesday", not_a_cron),
            ("AGV_UPDATE_SOURCE", "mirror.example/agv", "absolute"),
            ("AGV_UPDATE_SOURCE", "releases", "absolute"),
            ("AGV_UPDATE_SOURCE", "ftp://mirror.example/agv", "absolute"),
            ("AGV_DURABILITY", "fsync", "'process' or 'power'"),
            ("AGV_DURABILITY", "FULL", "'process' or 'power'"),
            ("AGV_DURABILITY", "1", "'process' or 'power'"),
            ("AGV_LOG_FORMAT", "xml", "expected 'text' or 'json'"),
            ("AGV_UPSTREAM_FIRST_BYTE_TIMEOUT", "soon", "not a duration"),
            ("AGV_UPSTREAM_CONNECT_TIMEOUT", "0s", "more than zero"),
            ("AGV_FALLBACK_UPSTREAM_URL", "backup.example", HTTP_URL),
            (
                "AGV_TENANT_UPSTREAM_ALLOWLIST",
                "ftp://files.example",
                "only http:// and https:// upstreams are allowed",
            ),
            ("AGV_BACKUP_S3_UPLOAD_ATTEMPTS", "0", "between 1 and 100"),
            ("AGV_UPSTREAM_RETRIES", "11", "between 0 and 10"),
            ("AGV_MAX_BODY_BYTES", "5", "between 1024 and 1073741824"),
            ("AGV_QUEUE_MAX_BYTES", "1", "at least 1048576"),
            ("AGV_JOB_WORKERS", "0", "between 1 and 64"),
            ("AGV_BACKUP_KEEP_DAILY", "0", "keep at least 1"),
            ("AGV_SYSTEM_ALERT_DISK_PERCENT", "101", "from 0 to 100"),
            ("AGV_UPSTREAM_URL", "api.openai.com", HTTP_URL),
        ] {
            let key = var.trim_start_matches("AGV_").to_lowercase();
            let err = load(&[(var, value)]).unwrap_err().0;
            let named = format!("invalid {key} = '{value}' (from env {var}): ");
            assert!(
                err.contains(&named) && err.contains(why),
                "{var}={value}: {err}"
            );
        }
    }

    /// Each bad config.toml is refused with what is wrong in it.
    #[test]
    fn a_bad_config_file_is_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[&str]); 9] = [
            (
                "listen = \"127.0.0.1:1\"\nlisten_port = 9\n",
                &["unknown key 'listen_port'"],
            ),
            ("listen = ", &["not valid TOML"]),
            (
                "max_body_bytes = \"lots\"",
                &["max_body_bytes", "config.toml"],
            ),
            (
                "[prices.\"m\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\nouput = 3.0\n",
                &["ouput"],
            ),
            ("prices = 3\n", &["prices"]),
            ("[prices]\nm = 1.0\n", &["prices.\"m\""]),
            ("[prices.\"m\"]\ninput = 1.0\n", &["prices.\"m\""]),
            (
                "[prices.\"m\"]\ninput = -1.0\ncached_input = 0.5\noutput = 2.0\n",
                &["prices"],
            ),
            ("[listen]\nx = 1\n", &["listen"]),
        ];
        for (text, named) in cases {
            std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
            let err = load_in(dir.path(), &[]).unwrap_err();
            for name in named {
                assert!(err.0.contains(name), "{text:?}: {err}");
            }
        }
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
    fn durability_defaults_per_backend_and_takes_process_or_power() {
        use values::Durability;
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| load_in(dir.path(), vars);
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
    }

    #[test]
    fn secrets_are_unset_by_default_come_from_files_and_are_never_described() {
        let dir = tempfile::tempdir().unwrap();
        type Slot = fn(&Settings) -> &Option<String>;
        let secrets: [(&str, Slot); 5] = [
            ("upstream_api_key", |s| &s.upstream_api_key),
            ("fallback_upstream_api_key", |s| {
                &s.fallback_upstream_api_key
            }),
            ("master_key", |s| &s.master_key),
            ("operator_alert_webhook_secret", |s| {
                &s.operator_alert_webhook_secret
            }),
            ("llm_api_key", |s| &s.llm_api_key),
        ];
        for (key, value_of) in secrets {
            let s = load_in(dir.path(), &[]).unwrap();
            assert_eq!(value_of(&s), &None, "{key}");
            let var = format!("AGV_{}", key.to_uppercase());
            let file_var = format!("{var}_FILE");
            let secret = format!("{key}-very-secret");
            let file = dir.path().join(key);
            std::fs::write(&file, format!("{secret}\n")).unwrap();
            let s = load_in(dir.path(), &[(&file_var, file.to_str().unwrap())]).unwrap();
            assert_eq!(value_of(&s).as_deref(), Some(secret.as_str()), "{key}");
            let described = format!("{:?} {:?}", s.describe(), s);
            assert!(!described.contains(&secret), "{key}: {described}");
            let both = [(var.as_str(), "a"), (file_var.as_str(), "b")];
            assert!(load_in(dir.path(), &both).is_err(), "{key}");
        }
    }

    #[test]
    fn the_s3_upload_is_off_by_default_and_a_whole_block_turns_it_on() {
        let dir = tempfile::tempdir().unwrap();
        let load = |vars: &[(&str, &str)]| load_in(dir.path(), vars);
        let s = load(&[]).unwrap();
        assert!(s.backup_s3.is_none());
        assert_eq!(s.backup_s3_upload_attempts, 12);
        let secret_file = dir.path().join("s3-secret");
        std::fs::write(&secret_file, "s3-very-secret\n").unwrap();
        let block = |prefix| {
            let secret_file = secret_file.to_str().unwrap();
            vec![
                ("AGV_BACKUP_S3_ENDPOINT", "http://minio:9000"),
                ("AGV_BACKUP_S3_BUCKET", "agv-backups"),
                ("AGV_BACKUP_S3_PREFIX", prefix),
                ("AGV_BACKUP_S3_ACCESS_KEY_ID", "AKID"),
                ("AGV_BACKUP_S3_SECRET_ACCESS_KEY_FILE", secret_file),
            ]
        };
        let err = load(&block("/agv//prod/")).unwrap_err();
        assert!(err.0.contains("invalid backup_s3_prefix"), "{err}");
        let mut vars = block("/agv/prod");
        vars.push(("AGV_BACKUP_S3_UPLOAD_ATTEMPTS", "3"));
        let s = load(&vars).unwrap();
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
    }

    #[test]
    fn single_sign_on_is_off_until_an_issuer_and_a_client_id_are_set() {
        assert!(load(&[]).unwrap().oidc.is_none());
        let on = [
            ("AGV_OIDC_ISSUER", "https://login.example.com/realms/acme"),
            ("AGV_OIDC_CLIENT_ID", "agv-console"),
        ];
        let o = load(&on).unwrap().oidc.unwrap();
        assert_eq!(o.default_role, Role::Viewer);
        assert_eq!(o.provider_name, "SSO");
        assert!(o.allowed_domains.is_empty() && o.tenant.is_none() && o.client_secret.is_none());
        let full = load(&[
            on[0],
            on[1],
            ("AGV_OIDC_CLIENT_SECRET", "sample-oidc-secret"),
            ("AGV_OIDC_ALLOWED_DOMAINS", " Example.COM, @example.org ,"),
            ("AGV_OIDC_DEFAULT_ROLE", "admin"),
            ("AGV_OIDC_GROUPS_CLAIM", "groups"),
            ("AGV_OIDC_GROUP_ROLES", "agv-owners=owner, cn=ops=viewer"),
        ])
        .unwrap();
        let o = full.oidc.clone().unwrap();
        assert_eq!(o.allowed_domains, vec!["example.com", "example.org"]);
        assert_eq!(o.default_role, Role::Admin);
        assert_eq!(
            o.group_roles,
            vec![
                ("agv-owners".to_owned(), Role::Owner),
                ("cn=ops".to_owned(), Role::Viewer)
            ]
        );
        assert!(!format!("{o:?} {full:?}").contains("sample-oidc-secret"));
        for (vars, key) in [
            (vec![on[0]], "missing oidc_client_id"),
            (vec![on[1]], "missing oidc_issuer"),
            (
                vec![("AGV_OIDC_TENANT", "ten_0123456789abcdef0123456789abcdef")],
                "invalid oidc_tenant",
            ),
            (
                vec![on[0], on[1], ("AGV_OIDC_DEFAULT_ROLE", "operator")],
                "invalid oidc_default_role",
            ),
            (
                vec![on[0], on[1], ("AGV_OIDC_GROUP_ROLES", "admins=admin")],
                "oidc_groups_claim is not set",
            ),
            (
                vec![on[0], on[1], ("AGV_OIDC_TENANT", "acme")],
                "invalid oidc_tenant",
            ),
            (
                vec![("AGV_OIDC_ISSUER", "login.example.com"), on[1]],
                "invalid oidc_issuer",
            ),
            (
                vec![on[0], on[1], ("AGV_OIDC_ALLOWED_DOMAINS", "example")],
                "invalid oidc_allowed_domains",
            ),
        ] {
            let err = load(&vars).unwrap_err().0;
            assert!(err.contains(key), "{vars:?}: {err}");
        }
    }

    #[test]
    fn a_half_given_s3_block_names_the_missing_setting() {
        let refusal = |vars: &[(&str, &str)]| load(vars).unwrap_err().0;
        let endpoint = ("AGV_BACKUP_S3_ENDPOINT", "https://s3.example.com");
        let bucket = ("AGV_BACKUP_S3_BUCKET", "agv-backups");
        for (vars, expected) in [
            (
                vec![bucket],
                "missing backup_s3_endpoint (AGV_BACKUP_S3_ENDPOINT)",
            ),
            (vec![endpoint], "missing backup_s3_bucket"),
            (vec![endpoint, bucket], "missing backup_s3_access_key_id"),
        ] {
            let err = refusal(&vars);
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
        for bad in [
            "s3.example.com",
            "ftp://s3.example.com",
            "https://user:pw@s3.example.com",
            "https://s3.example.com/?x=1",
        ] {
            let err = refusal(&[("AGV_BACKUP_S3_ENDPOINT", bad), bucket]);
            assert!(err.contains("invalid backup_s3_endpoint"), "{bad}: {err}");
        }
        let err = refusal(&[("AGV_BACKUP_S3_ACCESS_KEY_ID", "AKID")]);
        assert!(
            err.contains("backup_s3_access_key_id")
                && err.contains("backup_s3_endpoint and backup_s3_bucket are not"),
            "{err}"
        );
        let err = refusal(&[("AGV_BACKUP_S3_SECRET_ACCESS_KEY", "s3-very-secret")]);
        assert!(!err.contains("s3-very-secret"), "{err}");
    }

    #[test]
    fn the_upstream_key_falls_back_to_openai_api_key() {
        let s = load(&[("OPENAI_API_KEY", "sk-x")]).unwrap();
        assert_eq!(s.upstream_api_key.as_deref(), Some("sk-x"));
        assert_eq!(
            s.sources["upstream_api_key"],
            Source::Env("OPENAI_API_KEY".into())
        );
    }

    #[test]
    fn database_url_passwords_are_redacted_in_the_description() {
        let s = load(&[("AGV_DATABASE_URL", "postgres://agv:hunter2@db/agv")]);
        let s = s.unwrap();
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
        let s = load(&[]).unwrap();
        assert_eq!(s.upstream_connect_timeout.as_secs(), 5);
        assert_eq!(s.upstream_first_byte_timeout.as_secs(), 30);
        let s = load(&[
            ("AGV_UPSTREAM_CONNECT_TIMEOUT", "2s"),
            ("AGV_UPSTREAM_FIRST_BYTE_TIMEOUT", "3s"),
        ])
        .unwrap();
        assert_eq!(s.upstream_connect_timeout.as_secs(), 2);
        assert_eq!(s.upstream_first_byte_timeout.as_secs(), 3);
    }

    #[test]
    fn the_fallback_upstream_is_optional() {
        let s = load(&[]).unwrap();
        assert_eq!(s.fallback_upstream_url, None);
        let url = [("AGV_FALLBACK_UPSTREAM_URL", "https://backup.example/v1/")];
        let s = load(&url).unwrap();
        assert_eq!(
            s.fallback_upstream_url.as_deref(),
            Some("https://backup.example/v1")
        );
    }

    #[test]
    fn the_tenant_upstream_allowlist_is_empty_by_default() {
        let s = load(&[]).unwrap();
        assert!(s.tenant_upstream_allowlist.is_empty());
        let s = load(&[(
            "AGV_TENANT_UPSTREAM_ALLOWLIST",
            "https://api.openai.com/v1,https://myco.openai.azure.com/",
        )])
        .unwrap();
        assert!(
            s.tenant_upstream_allowlist
                .check("https://api.openai.com/v1")
                .is_ok()
        );
    }

    #[test]
    fn prices_in_the_config_file_become_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = \"127.0.0.1:1\"\n[prices.\"my-model\"]\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n",
        )
        .unwrap();
        let s = load_in(dir.path(), &[]).unwrap();
        assert_eq!(s.prices["my-model"], ModelPrice::new(1.0, 0.5, 2.0));
        assert_eq!(s.listen, "127.0.0.1:1");
    }
}
