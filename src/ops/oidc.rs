//! Single sign-on with the company's identity provider over OpenID Connect: the
//! authorization code flow with PKCE (S256), `state` and `nonce`.
//!
//! [`Sso`] talks to the provider (discovery document and JWKS, cached for an hour; the
//! token and userinfo endpoints) and keeps each sign-in in progress in memory for ten
//! minutes, usable once: its `state` is also in a cookie of the browser that started it,
//! so a callback from another browser is refused (no one can sign a victim in to an
//! account of theirs). The ID token is checked by `domain::oidc`. [`person`] then finds the
//! account of the provider's email, or makes one in `oidc_tenant` with the role the
//! person's groups give (audited like every new account); the caller starts the console
//! session exactly as a password sign-in does.
//!
//! Sign-ins in progress live in this process: behind a load balancer with several
//! instances the callback must reach the instance that started the sign-in (sticky
//! sessions), or the person is asked to start again. Every failure is an [`SsoError`] whose
//! message says what went wrong and what to do; nothing from the provider or the browser
//! can panic this module. No HTTP client here follows a redirect (`outbound`).

use crate::config::Oidc;
use crate::domain::audit::{Actor, AuditAction, NewAuditEntry};
use crate::domain::oidc::{
    Claims, Expected, Jwks, TokenError, domain_allowed, pkce_challenge, random_token, role_for,
    verify_id_token,
};
use crate::domain::user::{Email, NewUser, PasswordHash, User};
use crate::domain::{Timestamp, UserId};
use crate::store::{Store, StoreError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a sign-in may take at the provider.
pub const PENDING_TTL: Duration = Duration::from_secs(10 * 60);
/// Sign-ins in progress kept at most (each a few hundred bytes): a flood of starts is
/// refused rather than filling memory.
const MAX_PENDING: usize = 10_000;
/// How long the discovery document and the keys are reused.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Time for one request to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the provider.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// What an account made by single sign-on has instead of a password hash: not a PHC
/// string, so no password ever verifies against it.
const NO_PASSWORD: &str = "!oidc: signs in through the identity provider";

/// Why a sign-in with the identity provider failed; the message is shown to the person.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SsoError {
    /// The provider could not be reached or answered something unusable: the operator's
    /// matter.
    #[error("{0}")]
    Provider(String),
    /// The person may not sign in here (domain, unverified email, disabled account, no
    /// account and none is made).
    #[error("{0}")]
    Refused(String),
    /// The sign-in itself is not valid: expired, used, started elsewhere, tampered with.
    #[error("{0}")]
    Flow(String),
    #[error("the sign-in could not be completed: {0}")]
    Store(String),
}

impl From<StoreError> for SsoError {
    /// The cause goes to the log; the person is told only what to do.
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "single sign-on: the store failed");
        Self::Store("the server could not read or write its database; try again in a moment".into())
    }
}

fn provider(what: impl std::fmt::Display) -> SsoError {
    SsoError::Provider(format!(
        "the identity provider {what}; try again later or tell the operator"
    ))
}

/// The parts of the provider's discovery document that are used.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

/// One sign-in between the redirect to the provider and its callback.
struct Pending {
    nonce: String,
    verifier: String,
    redirect_uri: String,
    until: Instant,
}

/// What the provider said about the person who signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub email: Email,
    /// The provider's stable id of the person (`sub`).
    pub subject: String,
    pub groups: Vec<String>,
}

/// The identity provider as this process sees it: its documents and the sign-ins in
/// progress.
pub struct Sso {
    http: reqwest::Client,
    discovery: tokio::sync::Mutex<Option<(Discovery, Instant)>>,
    jwks: tokio::sync::Mutex<Option<(Jwks, Instant)>>,
    /// By the SHA-256 of their `state`.
    pending: Mutex<HashMap<String, Pending>>,
}

impl Sso {
    pub fn new() -> Result<Self, String> {
        let http = crate::outbound::builder()
            .timeout(PROVIDER_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build the identity provider's HTTP client: {e}"))?;
        Ok(Self {
            http,
            discovery: tokio::sync::Mutex::new(None),
            jwks: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Begins a sign-in: returns the provider's authorization URL to send the browser to,
    /// and the `state` to keep in the browser's cookie.
    pub async fn start(
        &self,
        cfg: &Oidc,
        redirect_uri: String,
    ) -> Result<(String, String), SsoError> {
        let disc = self.discovery(cfg).await?;
        let (state, nonce, verifier) = (random_token(), random_token(), random_token());
        let mut url = reqwest::Url::parse(&disc.authorization_endpoint)
            .map_err(|_| provider("names an authorization endpoint that is not a URL"))?;
        let mut scope = "openid email profile".to_owned();
        if let Some(claim) = &cfg.groups_claim
            && disc.scopes_supported.iter().any(|s| s == claim)
        {
            scope.push(' ');
            scope.push_str(claim);
        }
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &cfg.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        let now = Instant::now();
        let Ok(mut pending) = self.pending.lock() else {
            return Err(SsoError::Flow(
                "the sign-in could not be started; try again".into(),
            ));
        };
        pending.retain(|_, p| p.until > now);
        if pending.len() >= MAX_PENDING {
            return Err(SsoError::Flow(
                "too many sign-ins are in progress on this server; try again in a few minutes"
                    .into(),
            ));
        }
        pending.insert(
            state_key(&state),
            Pending {
                nonce,
                verifier,
                redirect_uri,
                until: now + PENDING_TTL,
            },
        );
        Ok((url.to_string(), state))
    }

    /// Completes a sign-in from the provider's callback: `state` and `code` (and `iss`
    /// when the provider sends it) from the query, `cookie_state` from the browser.
    pub async fn finish(
        &self,
        cfg: &Oidc,
        state: &str,
        cookie_state: Option<&str>,
        code: &str,
        iss: Option<&str>,
    ) -> Result<Identity, SsoError> {
        let again = "start the sign-in again from the sign-in page";
        // Used once, whatever happens next.
        let taken = match self.pending.lock() {
            Ok(mut pending) => pending.remove(&state_key(state)),
            Err(_) => None,
        };
        let Some(pending) = taken.filter(|p| p.until > Instant::now()) else {
            return Err(SsoError::Flow(format!(
                "this sign-in has expired, was used already or was not started here; {again}"
            )));
        };
        if cookie_state != Some(state) {
            return Err(SsoError::Flow(format!(
                "this sign-in was started in another browser (or its cookie was blocked); {again}"
            )));
        }
        if code.is_empty() {
            return Err(SsoError::Flow(format!(
                "the identity provider sent no authorization code; {again}"
            )));
        }
        let disc = self.discovery(cfg).await?;
        if let Some(iss) = iss
            && iss != disc.issuer
        {
            return Err(SsoError::Flow(format!(
                "the answer came from {iss}, not from the configured identity provider; {again}"
            )));
        }
        let tokens = self.redeem(cfg, &disc, code, &pending).await?;
        let id_token = tokens
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| provider("answered without an ID token (is the openid scope allowed for agv-server's client?)"))?;
        let want = Expected {
            issuer: &disc.issuer,
            client_id: &cfg.client_id,
            nonce: &pending.nonce,
            now: Timestamp::now().millis() / 1000,
        };
        let mut claims = match verify_id_token(id_token, &self.keys(&disc, false).await?, &want) {
            // The provider may have rotated its keys since they were fetched.
            Err(TokenError::UnknownKey(_)) => {
                verify_id_token(id_token, &self.keys(&disc, true).await?, &want)
            }
            other => other,
        }
        .map_err(|e| SsoError::Flow(format!("{e}; {again}")))?;
        let needs_groups = cfg
            .groups_claim
            .as_deref()
            .is_some_and(|c| claims.get(c).is_none());
        if (claims.get("email").is_none() || needs_groups)
            && let (Some(endpoint), Some(access)) = (
                &disc.userinfo_endpoint,
                tokens.get("access_token").and_then(Value::as_str),
            )
        {
            let info = self.userinfo(endpoint, access).await?;
            if info.get("sub").and_then(Value::as_str) != claims.subject() {
                return Err(provider(
                    "answered userinfo about another person than the ID token",
                ));
            }
            claims.fill_from(&info);
        }
        identity(cfg, &claims)
    }

    /// The discovery document, fetched once an hour.
    async fn discovery(&self, cfg: &Oidc) -> Result<Discovery, SsoError> {
        let mut cached = self.discovery.lock().await;
        if let Some((d, at)) = cached.as_ref()
            && at.elapsed() < CACHE_TTL
        {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let body = self.fetch(self.http.get(&url), &url).await?;
        let disc: Discovery = serde_json::from_slice(&body).map_err(|e| {
            provider(format!(
                "answered {url} with something that is not a discovery document ({e})"
            ))
        })?;
        if disc.issuer.trim_end_matches('/') != cfg.issuer.trim_end_matches('/') {
            return Err(provider(format!(
                "calls itself {} in its discovery document, not {} (oidc_issuer must be the issuer exactly)",
                disc.issuer, cfg.issuer
            )));
        }
        for endpoint in [
            &disc.authorization_endpoint,
            &disc.token_endpoint,
            &disc.jwks_uri,
        ] {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(provider(format!(
                    "names an endpoint that is not an http(s) URL: {endpoint}"
                )));
            }
        }
        if !disc.code_challenge_methods_supported.is_empty()
            && !disc
                .code_challenge_methods_supported
                .iter()
                .any(|m| m == "S256")
        {
            return Err(provider(
                "does not support PKCE with S256, which agv-server requires",
            ));
        }
        *cached = Some((disc.clone(), Instant::now()));
        Ok(disc)
    }

    /// The provider's signing keys, fetched once an hour or at once when `fresh`.
    async fn keys(&self, disc: &Discovery, fresh: bool) -> Result<Jwks, SsoError> {
        let mut cached = self.jwks.lock().await;
        if !fresh
            && let Some((k, at)) = cached.as_ref()
            && at.elapsed() < CACHE_TTL
        {
            return Ok(k.clone());
        }
        let body = self
            .fetch(self.http.get(&disc.jwks_uri), &disc.jwks_uri)
            .await?;
        let keys = Jwks::parse(&body).map_err(provider)?;
        *cached = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// Exchanges the code at the token endpoint with the PKCE verifier, authenticating as
    /// the provider offers: client_secret_basic (the default when it lists nothing), else
    /// client_secret_post; a public client sends only its id.
    async fn redeem(
        &self,
        cfg: &Oidc,
        disc: &Discovery,
        code: &str,
        pending: &Pending,
    ) -> Result<Map<String, Value>, SsoError> {
        let methods = &disc.token_endpoint_auth_methods_supported;
        let offers = |m: &str| methods.iter().any(|x| x == m);
        // The list says what the provider supports, not what this client was registered
        // with: a client registered for client_secret_post is refused with Basic
        // (`invalid_client`), and is then tried with its secret in the form.
        let attempts = match &cfg.client_secret {
            Some(secret) if methods.is_empty() || offers("client_secret_basic") => {
                let mut a = vec![ClientAuth::Basic(secret)];
                if offers("client_secret_post") {
                    a.push(ClientAuth::Post(secret));
                }
                a
            }
            Some(secret) if offers("client_secret_post") => vec![ClientAuth::Post(secret)],
            Some(_) => {
                return Err(provider(format!(
                    "accepts client authentication only by {} at its token endpoint; agv-server sends client_secret_basic or client_secret_post",
                    methods.join(", ")
                )));
            }
            None => vec![ClientAuth::Public],
        };
        let url = &disc.token_endpoint;
        let mut attempts = attempts.into_iter().peekable();
        while let Some(auth) = attempts.next() {
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", pending.redirect_uri.as_str()),
                ("code_verifier", pending.verifier.as_str()),
            ];
            let mut request = self.http.post(url);
            match auth {
                ClientAuth::Basic(secret) => {
                    request =
                        request.basic_auth(form_encode(&cfg.client_id), Some(form_encode(secret)));
                }
                ClientAuth::Post(secret) => {
                    form.push(("client_id", cfg.client_id.as_str()));
                    form.push(("client_secret", secret));
                }
                ClientAuth::Public => form.push(("client_id", cfg.client_id.as_str())),
            }
            let request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&form));
            let (status, body) = self.read(request, url).await?;
            if status.is_success() {
                return serde_json::from_slice::<Map<String, Value>>(&body).map_err(|_| {
                    provider("answered the token request with something that is not JSON")
                });
            }
            let wrong_method = oauth_error(&body).is_some_and(|(e, _)| e == "invalid_client");
            if !(wrong_method && attempts.peek().is_some()) {
                return Err(refusal(url, status, &body));
            }
        }
        Err(provider(format!("was not asked for a token at {url}")))
    }

    async fn userinfo(
        &self,
        endpoint: &str,
        access_token: &str,
    ) -> Result<Map<String, Value>, SsoError> {
        let body = self
            .fetch(self.http.get(endpoint).bearer_auth(access_token), endpoint)
            .await?;
        serde_json::from_slice::<Map<String, Value>>(&body).map_err(|_| {
            provider("answered userinfo with something that is not JSON (a signed userinfo answer is not supported)")
        })
    }

    /// Sends `request` and reads a successful answer of at most [`MAX_ANSWER_BYTES`]; an
    /// OAuth error answer is told with the provider's own words.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Vec<u8>, SsoError> {
        let (status, body) = self.read(request, url).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(refusal(url, status, &body))
        }
    }

    /// Sends `request` and reads its answer, at most [`MAX_ANSWER_BYTES`].
    async fn read(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), SsoError> {
        let mut res = request
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| provider(format!("could not be reached at {url} ({e})")))?;
        let status = res.status();
        let mut body = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(provider(format!("answered {url} with more than 1 MiB")));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(provider(format!("broke off its answer from {url} ({e})"))),
            }
        }
        Ok((status, body))
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy)]
enum ClientAuth<'a> {
    Basic(&'a str),
    Post(&'a str),
    Public,
}

/// An OAuth error answer's `error` and `error_description`.
fn oauth_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let m = serde_json::from_slice::<Map<String, Value>>(body).ok()?;
    let error = m.get("error").and_then(Value::as_str)?.to_owned();
    let detail = m
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| d.chars().take(300).collect());
    Some((error, detail))
}

/// The error for an unsuccessful answer from `url`, in the provider's own words when it
/// gave some.
fn refusal(url: &str, status: reqwest::StatusCode, body: &[u8]) -> SsoError {
    match oauth_error(body) {
        Some((error, Some(detail))) => {
            provider(format!("refused the request to {url} ({error}: {detail})"))
        }
        Some((error, None)) => provider(format!("refused the request to {url} ({error})")),
        None => provider(format!("answered {url} with HTTP {}", status.as_u16())),
    }
}

/// The key a sign-in in progress is kept under.
fn state_key(state: &str) -> String {
    crate::proxy::sha256_hex(state.as_bytes())
}

/// A form body, `application/x-www-form-urlencoded`.
fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `application/x-www-form-urlencoded`, as RFC 6749 (2.3.1) asks of the client id and
/// secret before they go into the Basic authorization header.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The person the accepted claims describe, if they may sign in here.
fn identity(cfg: &Oidc, claims: &Claims) -> Result<Identity, SsoError> {
    let subject = claims.subject().unwrap_or_default().to_owned();
    let email = claims.email().map_err(SsoError::Refused)?.ok_or_else(|| {
        SsoError::Refused(
            "the identity provider did not share your email address: the operator must allow the email scope for agv-server's client".into(),
        )
    })?;
    if claims.email_verified() == Some(false) {
        return Err(SsoError::Refused(format!(
            "the identity provider says {} is not verified: verify it there, then sign in again",
            email.as_str()
        )));
    }
    if !domain_allowed(&email, &cfg.allowed_domains) {
        return Err(SsoError::Refused(format!(
            "{} may not sign in here: only addresses at {} may; sign in with another account of the identity provider",
            email.as_str(),
            cfg.allowed_domains.join(", ")
        )));
    }
    let groups = cfg
        .groups_claim
        .as_deref()
        .map(|c| claims.groups(c))
        .unwrap_or_default();
    Ok(Identity {
        email,
        subject,
        groups,
    })
}

/// The account `who` signs in to: theirs, or one made now in `oidc_tenant` with the role
/// their groups give (audited as `user.create` via `oidc`). Blocking (the store).
pub fn person(
    store: &dyn Store,
    cfg: &Oidc,
    who: &Identity,
    source: Option<String>,
) -> Result<User, SsoError> {
    let usable = |u: User| {
        if u.is_disabled() {
            Err(SsoError::Refused(
                "this account is disabled; ask an owner of your tenant or the operator to enable it".into(),
            ))
        } else {
            Ok(u)
        }
    };
    if let Some(user) = store.find_user_by_email(&who.email)? {
        return usable(user);
    }
    let Some(tenant) = cfg.tenant.clone() else {
        return Err(SsoError::Refused(format!(
            "there is no account for {} here, and signing in makes none on this server: ask an owner of your tenant to invite you",
            who.email.as_str()
        )));
    };
    match store.get_tenant(&tenant) {
        Ok(_) => {}
        Err(StoreError::NotFound) => {
            tracing::error!(tenant = %tenant, "oidc_tenant names a tenant that does not exist");
            return Err(SsoError::Refused(format!(
                "there is no account for {} here, and the tenant new people join does not exist: tell the operator (oidc_tenant)",
                who.email.as_str()
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let role = role_for(&who.groups, &cfg.group_roles, cfg.default_role);
    let new = NewUser {
        id: UserId::generate(),
        email: who.email.clone(),
        password: PasswordHash::from_stored(NO_PASSWORD.to_owned()),
        role,
        tenant_id: Some(tenant.clone()),
        created_at: Timestamp::now(),
    };
    let created = match store.create_user(&new) {
        Ok(u) => u,
        // Made a moment ago by another callback of the same person.
        Err(StoreError::Conflict(_)) => {
            return match store.find_user_by_email(&who.email)? {
                Some(u) => usable(u),
                None => Err(SsoError::Store(
                    "the account could not be made; try again".into(),
                )),
            };
        }
        Err(e) => return Err(e.into()),
    };
    crate::evidence::audit::record(
        store,
        &NewAuditEntry::new(
            Some(tenant),
            Actor::User(created.id.clone()),
            AuditAction::UserCreate,
            created.id.as_str(),
        )
        .source(source)
        .after(json!({
            "email": created.email, "role": created.role, "via": "oidc",
            "issuer": cfg.issuer, "subject": who.subject, "groups": who.groups,
        })),
    );
    Ok(created)
}
