//! The operator sets the instance up from the console (`/api/operator/…`, operator role
//! only): creates tenants, sets the instance upstream (URL and provider key) and tests it,
//! and reads the first-run checklist with the command-line prefix of this very server.
//!
//! Tenant creation is `ops::tenants::create`, the same code as `agv-server tenant create`.
//! The upstream key is sealed with the master key (as tenants' keys are for
//! `PUT /v1/upstream`), never answered back, and takes effect at once: the proxy's instance
//! upstream is replaced in memory, and other instances follow through the change feed. A
//! value set here overrides `upstream_url` / `upstream_api_key` from flags, environment or
//! config.toml until it is removed. Only the operator reaches these handlers: the instance's
//! own upstream is theirs to point anywhere, so no allowlist applies (unlike tenants').

use super::access::{field, operator};
use super::audit::{Console, ConsoleChange, by_person, record};
use super::error::{ApiError, optional_json};
use crate::api::state::AppState;
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::upstream_url::BaseUrl;
use crate::domain::{CallFilter, Scope, TenantName, Timestamp};
use crate::error::Code;
use crate::proxy::install::{configured_upstream, install_instance_upstream};
use crate::proxy::upstream::{UpstreamTarget, probe};
use crate::store::{INSTANCE_UPSTREAM_REF, InstanceUpstreamRow, StoreError};
use actix_web::{HttpResponse, delete, get, post, put, web};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use std::time::Duration;

/// How long "Test connection" waits for the upstream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys shorter than this never show their last characters.
const MIN_LEN_TO_HINT: usize = 12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenantBody {
    name: Option<String>,
}

/// Creates a tenant, audited like the CLI's `tenant create` (instance-wide chain).
#[post("/api/operator/tenants")]
pub async fn create_tenant(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let user = operator(&state, &req).await?;
    let body = optional_json::<NewTenantBody>(&raw)?;
    let name = body.and_then(|b| b.name).unwrap_or_default();
    let name = TenantName::parse(&name).map_err(|e| field(Code::InvalidName, "name", e.0))?;
    let tenant = state
        .with_store(move |store| {
            crate::ops::tenants::create(store.as_ref(), name, Actor::User(user.id), source.0)
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({"tenant": {
        "id": tenant.id, "name": tenant.name, "created_at": tenant.created_at,
    }})))
}

/// `…abcd` for a key long enough that four characters give nothing away.
fn last4(key: &str) -> Option<String> {
    let len = key.chars().count();
    (len >= MIN_LEN_TO_HINT).then(|| key.chars().skip(len - 4).collect())
}

fn setting_source(state: &AppState, key: &str) -> String {
    state
        .settings
        .sources
        .get(key)
        .map_or_else(|| "default".to_owned(), ToString::to_string)
}

/// The upstream in force and where each part comes from; never the key itself.
fn upstream_view(state: &AppState, row: Option<&InstanceUpstreamRow>) -> Value {
    let in_force = state.proxy.instance_upstream();
    let target = in_force.primary();
    let configured = configured_upstream(&state.settings);
    let key_from = |console: bool, key: &Option<String>| {
        key.as_ref().map(|_| {
            if console {
                "console".to_owned()
            } else {
                setting_source(state, "upstream_api_key")
            }
        })
    };
    json!({
        "base_url": target.base_url,
        "source": if row.is_some() { "console" } else { "configuration" },
        "base_url_from": if row.is_some() { "console".to_owned() } else { setting_source(state, "upstream_url") },
        "api_key_set": target.api_key.is_some(),
        "api_key_last4": target.api_key.as_deref().and_then(last4),
        "api_key_from": key_from(row.is_some(), &target.api_key),
        "updated_at": row.map(|r| r.updated_at),
        "configured": {
            "base_url": configured.base_url,
            "base_url_from": setting_source(state, "upstream_url"),
            "api_key_set": configured.api_key.is_some(),
            "api_key_from": key_from(false, &configured.api_key),
        },
    })
}

/// What the audit log keeps of an upstream: never the key.
fn audit_view(t: &UpstreamTarget, source: &str) -> Value {
    json!({"base_url": t.base_url, "api_key_set": t.api_key.is_some(), "source": source})
}

async fn stored_row(state: &AppState) -> Result<Option<InstanceUpstreamRow>, ApiError> {
    Ok(state
        .with_store(move |store| store.get_instance_upstream())
        .await?)
}

#[get("/api/operator/upstream")]
pub async fn get_upstream((state, req): Console) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let row = stored_row(&state).await?;
    Ok(HttpResponse::Ok().json(upstream_view(&state, row.as_ref())))
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamBody {
    base_url: Option<String>,
    /// Absent: keep the key in force; `null`: no key; a string: this key.
    #[serde(default, deserialize_with = "present")]
    api_key: Option<Option<String>>,
}

fn parse_key(raw: &str) -> Result<String, ApiError> {
    crate::domain::upstream_url::provider_key(raw).map_err(|e| {
        field(
            Code::InvalidProviderKey,
            "api_key",
            format!("{e}; send null when the upstream needs no key"),
        )
    })
}

/// Sets the instance upstream; the proxy uses it for the next call.
#[put("/api/operator/upstream")]
pub async fn put_upstream(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let user = operator(&state, &req).await?;
    let body = optional_json::<UpstreamBody>(&raw)?.ok_or_else(|| {
        field(
            Code::InvalidBaseUrl,
            "base_url",
            "give the upstream's base URL, e.g. https://api.openai.com/v1",
        )
    })?;
    let url = BaseUrl::parse(body.base_url.as_deref().unwrap_or_default())
        .map_err(|e| field(Code::InvalidBaseUrl, "base_url", e))?;
    let before = state.proxy.instance_upstream().primary().clone();
    let api_key = match body.api_key {
        None => before.api_key.clone(),
        Some(None) => None,
        Some(Some(k)) => Some(parse_key(&k)?),
    };
    let ciphertext = api_key
        .as_deref()
        .map(|k| state.master_key.seal(INSTANCE_UPSTREAM_REF, k))
        .transpose()
        .map_err(ApiError::internal)?;
    let row = InstanceUpstreamRow {
        base_url: url.as_str().to_owned(),
        api_key_ciphertext: ciphertext,
        updated_at: Timestamp::now(),
    };
    let applying = state.settings_lock.lock().await;
    let had = stored_row(&state).await?.is_some();
    let to_store = row.clone();
    state
        .with_store(move |store| store.put_instance_upstream(&to_store))
        .await?;
    install_instance_upstream(&state.proxy, &state.master_key, &state.settings, Some(&row));
    drop(applying);
    let after = state.proxy.instance_upstream().primary().clone();
    record(
        &state,
        by_person(
            None,
            &user.id,
            &source,
            AuditAction::UpstreamUpdate,
            INSTANCE_UPSTREAM_REF,
        )
        .before(audit_view(
            &before,
            if had { "console" } else { "configuration" },
        ))
        .after(audit_view(&after, "console")),
    )
    .await;
    Ok(HttpResponse::Ok().json(upstream_view(&state, Some(&row))))
}

/// Removes the console's upstream: the configured one applies again, at once.
#[delete("/api/operator/upstream")]
pub async fn delete_upstream(
    (state, req, source): ConsoleChange,
) -> Result<HttpResponse, ApiError> {
    let user = operator(&state, &req).await?;
    let before = state.proxy.instance_upstream().primary().clone();
    let applying = state.settings_lock.lock().await;
    let removed = state
        .with_store(move |store| store.delete_instance_upstream())
        .await?;
    install_instance_upstream(&state.proxy, &state.master_key, &state.settings, None);
    drop(applying);
    if removed {
        let after = state.proxy.instance_upstream().primary().clone();
        record(
            &state,
            by_person(
                None,
                &user.id,
                &source,
                AuditAction::UpstreamDelete,
                INSTANCE_UPSTREAM_REF,
            )
            .before(audit_view(&before, "console"))
            .after(audit_view(&after, "configuration")),
        )
        .await;
    }
    Ok(HttpResponse::Ok().json(upstream_view(&state, None)))
}

/// "Test connection": `GET {base_url}/models` on the upstream in force, with its key.
/// Always 200: whether the upstream answered is the answer (`ok`, `status`, `message`).
#[post("/api/operator/upstream/test")]
pub async fn test_upstream((state, req): Console) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let target = state.proxy.instance_upstream().primary().clone();
    Ok(HttpResponse::Ok().json(probe(&target, PROBE_TIMEOUT).await))
}

/// A word as a POSIX shell reads it back unchanged.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+=,".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How to run `agv-server` on this server's data: the data directory (absolute) and, on
/// Postgres, the database URL — spelled as `"$AGV_DATABASE_URL"` when it holds a password,
/// which is never shown.
fn cli_json(state: &AppState) -> Value {
    let settings = &state.settings;
    let dir = std::fs::canonicalize(&settings.data_dir)
        .unwrap_or_else(|_| settings.data_dir.clone())
        .display()
        .to_string();
    let mut prefix = format!("agv-server --data {}", shell_word(&dir));
    let mut shown_url = None;
    let mut password_hidden = false;
    if let Some(url) = &settings.database_url {
        let redacted = crate::store::redact_url(url);
        if redacted == *url {
            prefix.push_str(&format!(" --database-url {}", shell_word(url)));
        } else {
            prefix.push_str(" --database-url \"$AGV_DATABASE_URL\"");
            password_hidden = true;
        }
        shown_url = Some(redacted);
    }
    json!({
        "data_dir": dir,
        "database_url": shown_url,
        "database_url_has_password": password_hidden,
        "prefix": prefix,
    })
}

/// The first-run checklist (each step done or not) and the command-line prefix.
#[get("/api/operator/setup")]
pub async fn setup_state((state, req): Console) -> Result<HttpResponse, ApiError> {
    operator(&state, &req).await?;
    let now = Timestamp::now();
    let (tenants, key_tenant, called) = state
        .with_store(move |store| {
            let tenants = store.list_tenants()?;
            let mut key_tenant = None;
            let mut called = false;
            for t in &tenants {
                if key_tenant.is_none()
                    && store
                        .list_api_keys(&t.id)?
                        .iter()
                        .any(|k| k.scope == Scope::Proxy && k.is_active(now))
                {
                    key_tenant = Some(t.clone());
                }
                if !called {
                    called = !store
                        .list_calls(&t.id, &CallFilter::default(), None, 1)?
                        .is_empty();
                }
                if called && key_tenant.is_some() {
                    break;
                }
            }
            Ok::<_, StoreError>((tenants, key_tenant, called))
        })
        .await?;
    let row = stored_row(&state).await?;
    let in_force = state.proxy.instance_upstream();
    let default_url = crate::config::FIELDS
        .iter()
        .find(|f| f.key == "upstream_url")
        .and_then(|f| f.default);
    let upstream_set = row.is_some()
        || in_force.primary().api_key.is_some()
        || Some(in_force.primary().base_url.as_str()) != default_url;
    let proxy_key = key_tenant.is_some();
    // The tenant the next steps are about: the one with a proxy key, else the first.
    let tenant = key_tenant.or_else(|| tenants.first().cloned());
    Ok(HttpResponse::Ok().json(json!({
        "steps": {
            "tenant": !tenants.is_empty(),
            "upstream": upstream_set,
            "proxy_key": proxy_key,
            "call": called,
        },
        "tenant": tenant.map(|t| json!({"id": t.id, "name": t.name})),
        "tenants": tenants.len(),
        "cli": cli_json(&state),
    })))
}
