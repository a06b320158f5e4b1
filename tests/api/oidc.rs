//! Single sign-on over OpenID Connect, end to end against a real, certified provider:
//! panva's oidc-provider (`tests/oidc/provider.mjs`, installed by `tests/oidc/setup.sh`;
//! `.ci/run` runs it) on a free port, named `localhost` while agv-server is `127.0.0.1`.
//! A plain HTTP client plays the browser: it follows every redirect by hand, keeps each
//! site's cookies, and fills in the provider's sign-in form. Without Node.js or the
//! provider's packages the tests say SKIPPED — or fail when AGV_TEST_REQUIRE_ALL=1.

use crate::helpers::{
    Backend, DataHome, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider, TestApp, free_port,
    spawn_app,
};
use agv_server::config::Oidc;
use agv_server::domain::audit::AuditFilter;
use agv_server::domain::user::Role;
use agv_server::domain::{Email, TenantId, Timestamp};
use reqwest::Url;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// agv-server with single sign-on on, and the provider it trusts.
struct Sso {
    app: TestApp,
    tenant: String,
    _provider: OidcProvider,
}

/// `None` (after SKIPPED) when the provider cannot run here.
async fn sso_app(tweak: impl FnOnce(&mut Oidc)) -> Option<Sso> {
    sso_app_with("client_secret_basic", tweak).await
}

/// [`sso_app`] with agv-server registered at the provider for `auth_method`.
async fn sso_app_with(auth_method: &str, tweak: impl FnOnce(&mut Oidc)) -> Option<Sso> {
    let home = DataHome::new(Backend::Sqlite)?;
    let tenant = home.cli_ok(&["tenant", "create", "Acme"]);
    let port = free_port();
    let provider = OidcProvider::start(
        &format!("http://127.0.0.1:{port}/api/auth/oidc/callback"),
        auth_method,
    )?;
    let mut oidc = Oidc {
        issuer: provider.issuer.clone(),
        client_id: OIDC_CLIENT_ID.into(),
        client_secret: Some(OIDC_CLIENT_SECRET.into()),
        allowed_domains: Vec::new(),
        default_role: Role::Viewer,
        tenant: Some(TenantId::parse(&tenant).unwrap()),
        groups_claim: None,
        group_roles: Vec::new(),
        provider_name: "Test IdP".into(),
        redirect_url: None,
    };
    tweak(&mut oidc);
    let app = TestApp::start_with(home, |s| {
        s.listen = format!("127.0.0.1:{port}");
        s.unauth_rate_limit_per_minute = 0;
        s.oidc = Some(oidc);
    })
    .await;
    Some(Sso {
        app,
        tenant,
        _provider: provider,
    })
}

/// A browser without JavaScript: follows redirects by hand and keeps each host's cookies
/// (by host and port, ignoring paths: enough for two servers on one machine).
struct Browser {
    client: reqwest::Client,
    jar: HashMap<String, BTreeMap<String, String>>,
}

fn site(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

impl Browser {
    fn new() -> Self {
        Self {
            client: agv_testkit::http_builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: HashMap::new(),
        }
    }

    fn cookie(&self, url: &Url, name: &str) -> Option<String> {
        self.jar.get(&site(url))?.get(name).cloned()
    }

    async fn send(&mut self, url: &Url, req: reqwest::RequestBuilder) -> reqwest::Response {
        let cookies: Vec<String> = self
            .jar
            .get(&site(url))
            .map(|c| c.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        let req = if cookies.is_empty() {
            req
        } else {
            req.header("cookie", cookies.join("; "))
        };
        let res = req.send().await.unwrap();
        let jar = self.jar.entry(site(url)).or_default();
        for set in res.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap().to_owned();
            let first = set.split(';').next().unwrap_or_default();
            let (name, value) = first.split_once('=').unwrap_or((first, ""));
            let removed = value.is_empty() || set.to_ascii_lowercase().contains("max-age=0");
            if removed {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), value.to_owned());
            }
        }
        res
    }

    async fn get(&mut self, url: &Url) -> reqwest::Response {
        let req = self.client.get(url.clone());
        self.send(url, req).await
    }

    /// Follows redirects from `url` until agv-server sends the browser to its callback
    /// (`stop_at_callback`) or into the console (`/#/…`), or a page answers. Returns the
    /// last URL and, for a page, its answer.
    async fn follow(
        &mut self,
        app: &TestApp,
        mut url: Url,
        stop_at_callback: bool,
    ) -> (Url, Option<reqwest::Response>) {
        for _ in 0..20 {
            let console = site(&url) == site(&app_url(app, "/")) && url.path() == "/";
            let callback = url.path() == "/api/auth/oidc/callback";
            if console || (callback && stop_at_callback) {
                return (url, None);
            }
            let res = self.get(&url).await;
            if !res.status().is_redirection() {
                return (url, Some(res));
            }
            let location = res.headers()["location"].to_str().unwrap().to_owned();
            url = url.join(&location).unwrap();
        }
        panic!("too many redirects, at {url}");
    }

    /// Starts a sign-in with the identity provider on agv-server's sign-in page and signs
    /// in at the provider as `email` (in `groups`), up to the redirect back to agv-server's
    /// callback, which is returned unvisited. When agv-server refuses at once, the
    /// console URL it sent the browser to instead.
    async fn through_provider(
        &mut self,
        app: &TestApp,
        email: &str,
        groups: &str,
        unverified: bool,
    ) -> Url {
        let start = app_url(app, "/api/auth/oidc/start");
        let (url, page) = self.follow(app, start, true).await;
        let Some(page) = page else {
            return url;
        };
        assert_eq!(page.status(), 200, "the provider's sign-in page at {url}");
        let html = page.text().await.unwrap();
        let action = html
            .split("action=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no sign-in form at {url}: {html}"));
        let action = url.join(action).unwrap();
        let mut form = vec![("email", email), ("groups", groups)];
        if unverified {
            form.push(("unverified", "1"));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let req = self
            .client
            .post(action.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        let res = self.send(&action, req).await;
        assert!(
            res.status().is_redirection(),
            "the provider's answer to the sign-in form: {}",
            res.status()
        );
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let (url, page) = self
            .follow(app, action.join(&location).unwrap(), true)
            .await;
        if let Some(page) = page {
            panic!(
                "stuck at {url}: {} {}",
                page.status(),
                page.text().await.unwrap_or_default()
            );
        }
        url
    }

    /// A whole sign-in: where agv-server sent the browser in the end.
    async fn sign_in(&mut self, app: &TestApp, email: &str, groups: &str) -> Outcome {
        let callback = self.through_provider(app, email, groups, false).await;
        self.back(app, callback).await
    }

    /// Visits agv-server's callback (or any agv-server URL) and reads where it sends the
    /// browser.
    async fn back(&mut self, app: &TestApp, url: Url) -> Outcome {
        let (end, page) = self.follow(app, url, false).await;
        assert!(page.is_none(), "no redirect into the console from {end}");
        Outcome::of(&end)
    }

    /// `GET /api/auth/me` with this browser's session.
    async fn me(&mut self, app: &TestApp) -> (u16, Value) {
        let url = app_url(app, "/api/auth/me");
        let res = self.get(&url).await;
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

fn app_url(app: &TestApp, path: &str) -> Url {
    Url::parse(&app.url(path)).unwrap()
}

/// Where the console was sent: `#/login?sso=done`, or `#/login?sso_error=…`.
#[derive(Debug)]
struct Outcome {
    done: bool,
    error: Option<String>,
}

impl Outcome {
    fn of(url: &Url) -> Self {
        let fragment = url.fragment().unwrap_or_default();
        let (route, query) = fragment.split_once('?').unwrap_or((fragment, ""));
        assert_eq!(route, "/login", "sent to {url}");
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        Self {
            done: params.get("sso").is_some_and(|v| v == "done"),
            error: params.get("sso_error").cloned(),
        }
    }

    fn refused(&self, because: &str) {
        assert!(!self.done, "{self:?}");
        let error = self.error.as_deref().unwrap_or_default();
        assert!(error.contains(because), "expected {because:?} in {error:?}");
    }
}

async fn user(app: &TestApp, email: &str) -> Option<agv_server::domain::User> {
    let store = app.app_state.store.clone();
    let email = Email::parse(email).unwrap();
    tokio::task::spawn_blocking(move || store.find_user_by_email(&email))
        .await
        .unwrap()
        .unwrap()
}

async fn audit(app: &TestApp, tenant: &str) -> Vec<agv_server::domain::audit::AuditEntry> {
    let store = app.app_state.store.clone();
    let tenant = TenantId::parse(tenant).unwrap();
    tokio::task::spawn_blocking(move || {
        store.list_audit(Some(&tenant), &AuditFilter::default(), None, 100)
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn a_first_sign_in_makes_the_person_with_the_default_role_and_the_next_one_reuses_them() {
    let Some(sso) = sso_app(|_| {}).await else {
        return;
    };
    let app = &sso.app;
    let methods: Value = app.get("/api/auth/methods").await.json().await.unwrap();
    assert_eq!(methods["password"], true);
    assert_eq!(methods["sso"]["label"], "Sign in with Test IdP");
    assert_eq!(methods["sso"]["start"], "/api/auth/oidc/start");

    let mut browser = Browser::new();
    let outcome = browser.sign_in(app, "Ada@Example.com", "").await;
    assert!(outcome.done && outcome.error.is_none(), "{outcome:?}");
    let (status, me) = browser.me(app).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], "ada@example.com");
    assert_eq!(me["user"]["role"], "viewer");
    assert_eq!(me["user"]["tenant_id"], sso.tenant.as_str());
    assert_eq!(me["tenant"]["name"], "Acme");
    // The sign-in's state cookie is gone once it is over.
    assert!(browser.cookie(&app_url(app, "/"), "agv_oidc").is_none());
    let ada = user(app, "ada@example.com").await.unwrap();
    assert!(
        !ada.password.verify(""),
        "an account made by sign-in has no password"
    );
    let entries = audit(app, &sso.tenant).await;
    let created = entries
        .iter()
        .find(|e| e.action == "user.create")
        .expect("the new account is audited");
    let after = created.after.as_ref().unwrap();
    assert_eq!(after["via"], "oidc");
    assert_eq!(after["role"], "viewer");
    assert_eq!(after["subject"], "ada@example.com");
    assert!(entries.iter().any(
        |e| e.action == "user.sign_in" && e.after.as_ref().is_some_and(|a| a["via"] == "oidc")
    ));

    // Another browser, another sign-in at the provider: the same account.
    let mut again = Browser::new();
    assert!(again.sign_in(app, "ada@example.com", "").await.done);
    let (_, me2) = again.me(app).await;
    assert_eq!(me2["user"]["id"], me["user"]["id"]);
    let store = app.app_state.store.clone();
    let users = tokio::task::spawn_blocking(move || store.count_users())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(users, 1);
    let creations = audit(app, &sso.tenant)
        .await
        .iter()
        .filter(|e| e.action == "user.create")
        .count();
    assert_eq!(creations, 1);
}

#[tokio::test]
async fn an_address_outside_the_allowed_domains_is_refused_with_a_message() {
    let Some(sso) = sso_app(|o| o.allowed_domains = vec!["example.com".into()]).await else {
        return;
    };
    let app = &sso.app;
    let mut browser = Browser::new();
    let outcome = browser.sign_in(app, "mallory@example.net", "").await;
    outcome.refused("mallory@example.net may not sign in here: only addresses at example.com");
    assert!(browser.cookie(&app_url(app, "/"), "agv_session").is_none());
    assert_eq!(browser.me(app).await.0, 401);
    assert!(user(app, "mallory@example.net").await.is_none());
    // A subdomain is another domain.
    let outcome = Browser::new()
        .sign_in(app, "eve@mail.example.com", "")
        .await;
    outcome.refused("may not sign in here");
    // The allowed domain gets in.
    assert!(
        Browser::new()
            .sign_in(app, "ada@example.com", "")
            .await
            .done
    );
}

#[tokio::test]
async fn a_tampered_replayed_or_foreign_callback_is_refused() {
    let Some(sso) = sso_app(|_| {}).await else {
        return;
    };
    let app = &sso.app;
    let mut browser = Browser::new();
    let callback = browser
        .through_provider(app, "ada@example.com", "", false)
        .await;
    assert_eq!(callback.path(), "/api/auth/oidc/callback");
    let with_state = |state: &str| {
        let mut url = callback.clone();
        let pairs: Vec<(String, String)> = callback
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "state" {
                    state.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url
    };
    let state: String = callback
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();

    // The state changed on the way: refused, and nobody is signed in.
    let outcome = browser.back(app, with_state(&format!("{state}x"))).await;
    outcome.refused("this sign-in has expired, was used already or was not started here");
    assert_eq!(browser.me(app).await.0, 401);
    assert!(user(app, "ada@example.com").await.is_none());

    // Another browser (without the state cookie) brings the real callback: refused, and
    // the sign-in is used up.
    let mut other = Browser::new();
    other
        .back(app, callback.clone())
        .await
        .refused("this sign-in was started in another browser");
    assert_eq!(other.me(app).await.0, 401);
    let outcome = browser.back(app, callback.clone()).await;
    outcome.refused("was used already");
    assert!(user(app, "ada@example.com").await.is_none());

    // A fresh sign-in works, once.
    let callback = browser
        .through_provider(app, "ada@example.com", "", false)
        .await;
    assert!(browser.back(app, callback.clone()).await.done);
    assert_eq!(browser.me(app).await.0, 200);
    browser
        .back(app, callback)
        .await
        .refused("was used already");

    // A callback without a sign-in, and the provider's own refusal.
    let bare = app_url(app, "/api/auth/oidc/callback");
    Browser::new()
        .back(app, bare)
        .await
        .refused("lacks its state or code");
    let denied = app_url(
        app,
        "/api/auth/oidc/callback?error=access_denied&error_description=End-User%20aborted%20interaction&state=x",
    );
    Browser::new()
        .back(app, denied)
        .await
        .refused("the sign-in was cancelled or refused at the identity provider (End-User aborted interaction)");
}

#[tokio::test]
async fn groups_map_to_roles_at_the_first_sign_in() {
    let Some(sso) = sso_app(|o| {
        o.groups_claim = Some("groups".into());
        o.group_roles = vec![
            ("agv-admins".into(), Role::Admin),
            ("agv-owners".into(), Role::Owner),
        ];
    })
    .await
    else {
        return;
    };
    let app = &sso.app;
    for (email, groups, role) in [
        ("grace@example.com", "staff,agv-admins", "admin"),
        ("linus@example.com", "agv-admins,agv-owners", "owner"),
        ("nobody@example.com", "staff", "viewer"),
        ("none@example.com", "", "viewer"),
    ] {
        let mut browser = Browser::new();
        let outcome = browser.sign_in(app, email, groups).await;
        assert!(outcome.done, "{email}: {outcome:?}");
        let (_, me) = browser.me(app).await;
        assert_eq!(me["user"]["role"], role, "{email} in {groups:?}");
    }
    let entries = audit(app, &sso.tenant).await;
    let grace = entries
        .iter()
        .find(|e| {
            e.action == "user.create"
                && e.after
                    .as_ref()
                    .is_some_and(|a| a["email"] == "grace@example.com")
        })
        .unwrap();
    assert_eq!(
        grace.after.as_ref().unwrap()["groups"],
        serde_json::json!(["staff", "agv-admins"])
    );
}

#[tokio::test]
async fn unverified_emails_disabled_accounts_and_strangers_without_a_tenant_are_refused() {
    let Some(sso) = sso_app(|o| o.tenant = None).await else {
        return;
    };
    let app = &sso.app;
    // An account made beforehand signs in; nobody else gets one.
    app.home.make_user(
        "owner@example.com",
        "owner",
        Some(&sso.tenant),
        "a long enough password",
    );
    let mut browser = Browser::new();
    assert!(browser.sign_in(app, "owner@example.com", "").await.done);
    assert_eq!(browser.me(app).await.1["user"]["role"], "owner");
    Browser::new()
        .sign_in(app, "stranger@example.com", "")
        .await
        .refused("ask an owner of your tenant to invite you");
    assert!(user(app, "stranger@example.com").await.is_none());

    // The provider says the address is not verified.
    let mut unverified = Browser::new();
    let callback = unverified
        .through_provider(app, "owner@example.com", "", true)
        .await;
    unverified
        .back(app, callback)
        .await
        .refused("the identity provider says owner@example.com is not verified");
    assert_eq!(unverified.me(app).await.0, 401);

    // A disabled account (not the tenant's last owner: that one cannot be disabled).
    app.home.make_user(
        "viewer@example.com",
        "viewer",
        Some(&sso.tenant),
        "a long enough password",
    );
    assert!(
        Browser::new()
            .sign_in(app, "viewer@example.com", "")
            .await
            .done
    );
    let id = user(app, "viewer@example.com").await.unwrap().id;
    let store = app.app_state.store.clone();
    tokio::task::spawn_blocking(move || store.set_user_disabled(None, &id, Some(Timestamp::now())))
        .await
        .unwrap()
        .unwrap();
    Browser::new()
        .sign_in(app, "viewer@example.com", "")
        .await
        .refused("this account is disabled");
}

#[tokio::test]
async fn a_client_registered_for_client_secret_post_signs_in_too() {
    // The provider lists both methods but refuses Basic for this client (invalid_client):
    // agv-server tries Basic first, then sends the secret in the form.
    let Some(sso) = sso_app_with("client_secret_post", |_| {}).await else {
        return;
    };
    let app = &sso.app;
    let mut browser = Browser::new();
    let outcome = browser.sign_in(app, "ada@example.com", "").await;
    assert!(outcome.done, "{outcome:?}");
    assert_eq!(browser.me(app).await.1["user"]["email"], "ada@example.com");
}

#[tokio::test]
async fn the_redirect_to_the_provider_carries_pkce_state_nonce_and_the_configured_callback() {
    let Some(sso) = sso_app(|o| {
        o.redirect_url = Some("https://agv.example.com/api/auth/oidc/callback".into());
        o.groups_claim = Some("groups".into());
    })
    .await
    else {
        return;
    };
    let res = sso.app.get("/api/auth/oidc/start").await;
    assert_eq!(res.status(), 302);
    let to = Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.path(), "/auth");
    let sent: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(
        sent["redirect_uri"],
        "https://agv.example.com/api/auth/oidc/callback"
    );
    assert_eq!(sent["client_id"], OIDC_CLIENT_ID);
    assert_eq!(sent["response_type"], "code");
    assert_eq!(sent["code_challenge_method"], "S256");
    // The provider offers a groups scope: it is asked for.
    assert_eq!(sent["scope"], "openid email profile groups");
    assert_eq!(sent["code_challenge"].len(), 43);
    assert_eq!(sent["state"].len(), 43);
    assert!(sent["nonce"].len() == 43 && sent["nonce"] != sent["state"]);
    // The state cookie: for these paths only, Lax (it must come back with the provider's
    // redirect from another site), HttpOnly, and holding the state.
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("agv_oidc={};", sent["state"])),
        "{cookie}"
    );
    for part in ["Path=/api/auth/oidc", "HttpOnly", "SameSite=Lax"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
}

#[tokio::test]
async fn without_an_issuer_single_sign_on_is_off_and_says_so() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let methods: Value = app.get("/api/auth/methods").await.json().await.unwrap();
    assert_eq!(methods["password"], true);
    assert!(methods["sso"].is_null(), "{methods}");
    for path in [
        "/api/auth/oidc/start",
        "/api/auth/oidc/callback?code=x&state=y",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 302, "{path}");
        let to = res.headers()["location"].to_str().unwrap().to_owned();
        Outcome::of(&app_url(&app, "/").join(&to).unwrap())
            .refused("single sign-on is not set up on this server");
    }
}

#[tokio::test]
async fn an_unreachable_provider_sends_the_browser_back_with_the_reason() {
    let home = DataHome::new(Backend::Sqlite).unwrap();
    let app = TestApp::start_with(home, |s| {
        s.unauth_rate_limit_per_minute = 0;
        s.oidc = Some(Oidc {
            issuer: agv_testkit::upstream::refused_url(),
            client_id: OIDC_CLIENT_ID.into(),
            client_secret: None,
            allowed_domains: Vec::new(),
            default_role: Role::Viewer,
            tenant: None,
            groups_claim: None,
            group_roles: Vec::new(),
            provider_name: "Nowhere".into(),
            redirect_url: None,
        });
    })
    .await;
    let res = app.get("/api/auth/oidc/start").await;
    assert_eq!(res.status(), 302);
    let to = res.headers()["location"].to_str().unwrap().to_owned();
    Outcome::of(&app_url(&app, "/").join(&to).unwrap())
        .refused("the identity provider could not be reached");
}
