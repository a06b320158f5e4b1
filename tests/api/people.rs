//! Managing people (docs/console-api.md, "People and sign-in"): owners and the operator
//! disable and enable people, change their roles, delete them, end their sessions and
//! revoke invitations — through the console's API and the CLI, each audited. A disabled
//! person's sessions end at once; a tenant keeps its last enabled owner and the instance
//! its last enabled operator; nobody removes their own account.

use crate::helpers::{Backend, ConsoleSession as Session, DataHome, TestApp, stderr};
use crate::on_both_backends;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "a long enough password";

/// A tenant with an owner, an admin and a viewer, another tenant with its owner, and the
/// operator; every user id by email.
struct People {
    app: TestApp,
    tenant_a: String,
    tenant_b: String,
    ids: std::collections::HashMap<&'static str, String>,
}

const OWNER: &str = "owner@a.example";
const ADMIN: &str = "admin@a.example";
const VIEWER: &str = "viewer@a.example";
const OWNER_B: &str = "owner@b.example";
const OPERATOR: &str = "op@example.com";

async fn people(backend: Backend) -> Option<People> {
    let home = DataHome::new(backend)?;
    let tenant_a = home.cli_ok(&["tenant", "create", "A"]);
    let tenant_b = home.cli_ok(&["tenant", "create", "B"]);
    let mut ids = std::collections::HashMap::new();
    for (email, role, tenant) in [
        (OWNER, "owner", Some(&tenant_a)),
        (ADMIN, "admin", Some(&tenant_a)),
        (VIEWER, "viewer", Some(&tenant_a)),
        (OWNER_B, "owner", Some(&tenant_b)),
        (OPERATOR, "operator", None),
    ] {
        ids.insert(
            email,
            home.make_user(email, role, tenant.map(String::as_str), PASSWORD),
        );
    }
    let app = TestApp::start_with(home, |s| s.unauth_rate_limit_per_minute = 0).await;
    Some(People {
        app,
        tenant_a,
        tenant_b,
        ids,
    })
}

/// [`people`], with a session for each of `who`, signed in in that order.
async fn people_with<const N: usize>(
    backend: Backend,
    who: [&str; N],
) -> Option<(People, [Session; N])> {
    let p = people(backend).await?;
    let mut sessions = Vec::with_capacity(N);
    for email in who {
        sessions.push(p.sign_in(email).await);
    }
    let Ok(sessions) = sessions.try_into() else {
        unreachable!("one session per person")
    };
    Some((p, sessions))
}

/// A change to person `id` as the console asks for it: "disable", "enable", "sessions"
/// (end them), "delete", or any other word as the role to give them.
fn action(what: &str, id: &str) -> (Method, String, Option<Value>) {
    match what {
        "disable" | "enable" => (Method::POST, format!("/api/users/{id}/{what}"), None),
        "sessions" => (Method::DELETE, format!("/api/users/{id}/sessions"), None),
        "delete" => (Method::DELETE, format!("/api/users/{id}"), None),
        role => (
            Method::PATCH,
            format!("/api/users/{id}"),
            Some(json!({"role": role})),
        ),
    }
}

impl People {
    fn id(&self, email: &str) -> &str {
        &self.ids[email]
    }

    async fn sign_in(&self, email: &str) -> Session {
        Session::sign_in(&self.app.client, &self.app.url(""), email, PASSWORD).await
    }

    /// A POST without a session.
    async fn post_anon(&self, path: &str, body: Value) -> reqwest::Response {
        let request = self.app.client.post(self.app.url(path)).json(&body);
        request.send().await.unwrap()
    }

    async fn login_status(&self, email: &str, password: &str) -> (u16, String) {
        let body = json!({"email": email, "password": password});
        status_and_code(self.post_anon("/api/auth/login", body).await).await
    }

    /// Accepts the invitation of `token` with [`PASSWORD`].
    async fn accept(&self, token: &str) -> reqwest::Response {
        let body = json!({"token": token, "password": PASSWORD});
        self.post_anon("/api/invitations/accept", body).await
    }

    /// Invites `email` as `role` in `who`'s tenant: the invitation's id and token.
    async fn invite(&self, who: &Session, email: &str, role: &str) -> (String, String) {
        let body = json!({"email": email, "role": role});
        let v = self
            .ok_as(201, who, Method::POST, "/api/invitations", Some(body))
            .await;
        let text = |v: &Value| v.as_str().unwrap().to_owned();
        (text(&v["invitation"]["id"]), text(&v["token"]))
    }

    /// One console request with the session's cookie and CSRF token.
    async fn send(
        &self,
        who: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        self.send_with(who, method, path, body, true, None).await
    }

    async fn send_with(
        &self,
        who: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
        csrf: bool,
        tenant: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self
            .app
            .client
            .request(method, self.app.url(path))
            .header("cookie", &who.cookie);
        if csrf {
            r = r.header("x-csrf-token", &who.csrf);
        }
        if let Some(t) = tenant {
            r = r.header("x-agv-tenant", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    /// A request that must answer `expected`; its JSON answer.
    async fn ok_as(
        &self,
        expected: u16,
        who: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let res = self.send(who, method.clone(), path, body).await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, expected, "{method} {path}: {v}");
        v
    }

    async fn status(&self, who: &Session, method: Method, path: &str) -> (u16, String) {
        status_and_code(self.send(who, method, path, None).await).await
    }

    /// [`action`] `what` on person `id`, as `who`.
    async fn act(&self, who: &Session, what: &str, id: &str) -> reqwest::Response {
        let (method, path, body) = action(what, id);
        self.send(who, method, &path, body).await
    }

    /// [`action`] `what` on person `id`, as `who`, which must succeed; its JSON answer.
    async fn act_ok(&self, who: &Session, what: &str, id: &str) -> Value {
        let (method, path, body) = action(what, id);
        self.ok_as(200, who, method, &path, body).await
    }

    async fn act_status(&self, who: &Session, what: &str, id: &str) -> (u16, String) {
        status_and_code(self.act(who, what, id).await).await
    }

    /// What `who` gets asking for a new API key.
    async fn create_key(&self, who: &Session) -> u16 {
        let body = Some(json!({"name": "k"}));
        let res = self.send(who, Method::POST, "/api/keys", body).await;
        res.status().as_u16()
    }

    /// Whether the session still works.
    async fn signed_in(&self, who: &Session) -> bool {
        let res = self
            .app
            .client
            .get(self.app.url("/api/auth/me"))
            .header("cookie", &who.cookie)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => true,
            401 => false,
            other => panic!("GET /api/auth/me answered {other}"),
        }
    }

    async fn people_list(&self, who: &Session) -> Value {
        self.ok_as(200, who, Method::GET, "/api/users", None).await
    }

    /// Person `id` as `who`'s people list shows them; `None` when not listed.
    async fn listed(&self, who: &Session, id: &str) -> Option<Value> {
        let list = self.people_list(who).await;
        let rows = list["data"].as_array().unwrap();
        rows.iter().find(|u| u["id"] == id).cloned()
    }

    /// The tenant's audit entries, newest first.
    async fn csv_audit(&self, who: &Session) -> String {
        let res = self
            .send(who, Method::GET, "/api/audit?limit=200&format=csv", None)
            .await;
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    async fn audit(&self, who: &Session) -> Vec<Value> {
        let path = "/api/audit?limit=200";
        let v = self.ok_as(200, who, Method::GET, path, None).await;
        v["data"].as_array().unwrap().clone()
    }
}

async fn status_and_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "an error says what is wrong: {body}"
        );
    }
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

/// The first (oldest) entry of `action` on `target`, from a newest-first page.
fn entry<'a>(audit: &'a [Value], action: &str, target: &str) -> &'a Value {
    audit
        .iter()
        .rev()
        .find(|e| e["action"] == action && e["target"] == target)
        .unwrap_or_else(|| panic!("no {action} of {target} in the audit log: {audit:?}"))
}

async fn a_disabled_person_is_signed_out_at_once_and_cannot_sign_in_until_enabled(
    backend: Backend,
) {
    let Some((p, [owner, admin, admin_again])) = people_with(backend, [OWNER, ADMIN, ADMIN]).await
    else {
        return;
    };
    assert!(p.signed_in(&admin).await);
    let admin_id = p.id(ADMIN).to_owned();
    // A live-event stream the admin holds open (each lasts about 15 s).
    let mut stream = p.send(&admin, Method::GET, "/api/events", None).await;
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());

    let v = p.act_ok(&owner, "disable", &admin_id).await;
    assert_eq!(v["user"]["id"], json!(admin_id));
    assert!(v["user"]["disabled_at"].is_i64(), "{v}");
    // The open stream ends at its next tick, long before its time is up.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(8), async {
        while stream.chunk().await.unwrap_or(None).is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the disabled person's event stream still runs"
    );
    // Every session of theirs ends with the answer: the next request is 401.
    assert!(!p.signed_in(&admin).await);
    assert!(!p.signed_in(&admin_again).await);
    assert_eq!(p.create_key(&admin).await, 401);
    // The right password tells them why; a wrong one answers like any wrong password.
    assert_eq!(
        p.login_status(ADMIN, PASSWORD).await,
        (403, "account_disabled".into())
    );
    assert_eq!(
        p.login_status(ADMIN, "not the password").await,
        (401, "invalid_credentials".into())
    );
    let row = p.listed(&owner, &admin_id).await.unwrap();
    assert!(row["disabled_at"].is_i64(), "{row}");
    // Disabling again is harmless and keeps the first time.
    let again = p.act_ok(&owner, "disable", &admin_id).await;
    assert_eq!(again["user"]["disabled_at"], v["user"]["disabled_at"]);

    let v = p.act_ok(&owner, "enable", &admin_id).await;
    assert!(v["user"]["disabled_at"].is_null(), "{v}");
    let back = p.sign_in(ADMIN).await;
    assert!(p.signed_in(&back).await);
    assert!(!p.signed_in(&admin).await, "old sessions stay ended");

    let audit = p.audit(&owner).await;
    for action in ["user.disable", "user.enable"] {
        let e = entry(&audit, action, &admin_id);
        assert_eq!(e["actor_kind"], "user", "{e}");
        assert_eq!(e["actor_id"], json!(p.id(OWNER)), "{e}");
        assert!(e["source"].as_str().unwrap().contains("127.0.0.1"), "{e}");
        // People are named by email beside their ids: who acted and who was acted on.
        assert_eq!(e["actor_email"], OWNER, "{e}");
        assert_eq!(e["target_email"], ADMIN, "{e}");
    }
    // The CSV export names them too, in its last two columns.
    let csv = p.csv_audit(&owner).await;
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(",actor_email,target_email"), "{header}");
    let row = csv
        .lines()
        .find(|l| l.contains(",user.disable,"))
        .expect("the CSV lists the disable");
    assert!(row.ends_with(&format!(",{OWNER},{ADMIN}")), "{row}");
    let disable = entry(&audit, "user.disable", &admin_id);
    assert!(disable["before"]["disabled_at"].is_null(), "{disable}");
    assert!(disable["after"]["disabled_at"].is_i64(), "{disable}");
}

async fn a_role_change_applies_from_the_next_request(backend: Backend) {
    let Some((p, [owner, viewer])) = people_with(backend, [OWNER, VIEWER]).await else {
        return;
    };
    let viewer_id = p.id(VIEWER).to_owned();
    let path = format!("/api/users/{viewer_id}");
    assert_eq!(p.create_key(&viewer).await, 403, "a viewer only reads");

    let v = p.act_ok(&owner, "admin", &viewer_id).await;
    assert_eq!(v["user"]["role"], "admin");
    // The same session, the next request: the new role holds.
    assert_eq!(p.create_key(&viewer).await, 201);
    let me = p
        .ok_as(200, &viewer, Method::GET, "/api/auth/me", None)
        .await;
    assert_eq!(me["user"]["role"], "admin");
    assert_eq!(p.status(&viewer, Method::GET, "/api/users").await.0, 403);
    p.act_ok(&owner, "owner", &viewer_id).await;
    assert_eq!(p.status(&viewer, Method::GET, "/api/users").await.0, 200);
    p.act_ok(&owner, "viewer", &viewer_id).await;
    assert_eq!(p.create_key(&viewer).await, 403, "a viewer again");

    // Bad input: 400 naming the field, nothing changes.
    for body in [
        json!({"role": "operator"}),
        json!({"role": "king"}),
        json!({"role": 5}),
        json!({}),
        json!({"role": "admin", "email": "x@a.example"}),
    ] {
        let res = p
            .send(&owner, Method::PATCH, &path, Some(body.clone()))
            .await;
        let (status, code) = status_and_code(res).await;
        assert_eq!(status, 400, "{body}: {code}");
    }
    let v = p.act(&owner, "king", &viewer_id).await;
    let v: Value = v.json().await.unwrap();
    assert_eq!(v["error"]["param"], "role", "{v}");
    let res = p
        .app
        .client
        .patch(p.app.url(&path))
        .header("cookie", &owner.cookie)
        .header("x-csrf-token", &owner.csrf)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let row = p.listed(&owner, &viewer_id).await.unwrap();
    assert_eq!(row["role"], "viewer");

    let audit = p.audit(&owner).await;
    let change = audit
        .iter()
        .find(|e| e["action"] == "user.role_change" && e["after"]["role"] == "admin")
        .unwrap_or_else(|| panic!("no role change to admin: {audit:?}"));
    assert_eq!(change["target"], json!(viewer_id));
    assert_eq!(change["before"]["role"], "viewer");
    assert_eq!(change["actor_id"], json!(p.id(OWNER)));
}

async fn ending_sessions_and_deleting_a_person_sign_them_out_and_keep_their_history(
    backend: Backend,
) {
    let Some((p, [owner, one, two, viewer])) =
        people_with(backend, [OWNER, ADMIN, ADMIN, VIEWER]).await
    else {
        return;
    };
    let admin_id = p.id(ADMIN).to_owned();

    let v = p.act_ok(&owner, "sessions", &admin_id).await;
    assert_eq!(v["ended"], 2, "{v}");
    assert!(!p.signed_in(&one).await && !p.signed_in(&two).await);
    assert!(p.signed_in(&viewer).await, "nobody else is signed out");
    assert!(p.signed_in(&owner).await);
    // Not disabled: they sign in again.
    let three = p.sign_in(ADMIN).await;
    // A viewer does not manage people, not even their own sessions.
    assert_eq!(
        p.act_status(&viewer, "sessions", p.id(VIEWER)).await,
        (403, "role_not_allowed".into())
    );

    let v = p.act_ok(&owner, "delete", &admin_id).await;
    assert_eq!(v["deleted"], true);
    assert!(!p.signed_in(&three).await);
    assert_eq!(
        p.login_status(ADMIN, PASSWORD).await,
        (401, "invalid_credentials".into())
    );
    assert_eq!(p.listed(&owner, &admin_id).await, None);
    for what in ["delete", "disable", "sessions"] {
        assert_eq!(p.act_status(&owner, what, &admin_id).await.0, 404, "{what}");
    }

    let audit = p.audit(&owner).await;
    let ended = entry(&audit, "user.sessions_end", &admin_id);
    assert_eq!(ended["after"]["sessions_ended"], 2, "{ended}");
    let deleted = entry(&audit, "user.delete", &admin_id);
    assert_eq!(deleted["before"]["email"], ADMIN, "{deleted}");
    assert_eq!(deleted["actor_id"], json!(p.id(OWNER)));
    // What the deleted person did stays, naming them.
    let signed_in = entry(&audit, "user.sign_in", &admin_id);
    assert_eq!(signed_in["actor_id"], json!(admin_id));

    // An owner may end their own sessions: signed out everywhere, this one too.
    let elsewhere = p.sign_in(OWNER).await;
    let v = p.act_ok(&owner, "sessions", p.id(OWNER)).await;
    assert_eq!(v["ended"], 2, "{v}");
    assert!(!p.signed_in(&owner).await && !p.signed_in(&elsewhere).await);
}

async fn a_revoked_invitation_cannot_be_accepted_and_says_so(backend: Backend) {
    let Some((p, [owner, owner_b])) = people_with(backend, [OWNER, OWNER_B]).await else {
        return;
    };
    let (inv, token) = p.invite(&owner, "new@a.example", "viewer").await;
    let listed = p.people_list(&owner).await;
    assert_eq!(listed["invitations"][0]["id"], json!(inv));

    // Another tenant's owner cannot see it.
    let path = format!("/api/invitations/{inv}/revoke");
    assert_eq!(p.status(&owner_b, Method::POST, &path).await.0, 404);
    let viewer = p.sign_in(VIEWER).await;
    assert_eq!(p.status(&viewer, Method::POST, &path).await.0, 403);
    let invitation = format!("/api/invitations/{token}");
    assert_eq!(p.app.get(&invitation).await.status(), 200);

    let v = p.ok_as(200, &owner, Method::POST, &path, None).await;
    assert!(v["invitation"]["revoked_at"].is_i64(), "{v}");
    let listed = p.people_list(&owner).await;
    assert_eq!(listed["invitations"], json!([]), "no longer open");
    let res = p.app.get(&invitation).await;
    assert_eq!(
        status_and_code(res).await,
        (404, "invitation_revoked".into())
    );
    let res = p.accept(&token).await;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "invitation_revoked");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    assert_eq!(
        p.login_status("new@a.example", PASSWORD).await.0,
        401,
        "no account was made"
    );

    // An accepted invitation is not revoked: the person is managed instead.
    let (used, token) = p.invite(&owner, "other@a.example", "viewer").await;
    assert_eq!(p.accept(&token).await.status(), 200);
    let path = format!("/api/invitations/{used}/revoke");
    assert_eq!(
        p.status(&owner, Method::POST, &path).await,
        (409, "invitation_accepted".into())
    );
    for bad in ["nonsense", "inv_00000000000000000000000000000000"] {
        let path = format!("/api/invitations/{bad}/revoke");
        assert_eq!(p.status(&owner, Method::POST, &path).await.0, 404);
    }

    let audit = p.audit(&owner).await;
    let e = entry(&audit, "invitation.revoke", &inv);
    assert_eq!(e["before"]["email"], "new@a.example", "{e}");
    assert_eq!(e["actor_id"], json!(p.id(OWNER)));
}

async fn only_owners_and_the_operator_manage_people_and_only_those_they_see(backend: Backend) {
    let Some((p, [owner_b, admin, viewer, owner, operator])) =
        people_with(backend, [OWNER_B, ADMIN, VIEWER, OWNER, OPERATOR]).await
    else {
        return;
    };
    let target = p.id(VIEWER).to_owned();
    let changes =
        |id: &str| ["disable", "enable", "admin", "sessions", "delete"].map(|w| action(w, id));
    for (method, path, body) in changes(&target) {
        // Another tenant's owner: as if the person did not exist.
        let res = p.send(&owner_b, method.clone(), &path, body.clone()).await;
        assert_eq!(status_and_code(res).await.0, 404, "{method} {path}");
        // The operator looking at another tenant: the same.
        let res = p
            .send_with(
                &operator,
                method.clone(),
                &path,
                body.clone(),
                true,
                Some(&p.tenant_b),
            )
            .await;
        assert_eq!(status_and_code(res).await.0, 404, "{method} {path}");
        // Admins and viewers do not manage people.
        for who in [&admin, &viewer] {
            let res = p.send(who, method.clone(), &path, body.clone()).await;
            assert_eq!(
                status_and_code(res).await,
                (403, "role_not_allowed".into()),
                "{method} {path}"
            );
        }
        // Without the CSRF header or a session: nothing.
        let res = p
            .send_with(&owner, method.clone(), &path, body.clone(), false, None)
            .await;
        assert_eq!(res.status(), 403, "{method} {path}");
        let mut r = p.app.client.request(method.clone(), p.app.url(&path));
        if let Some(b) = &body {
            r = r.json(b);
        }
        assert_eq!(r.send().await.unwrap().status(), 401, "{method} {path}");
    }
    // Ids that are no user's, or not ids at all: 404, never 500.
    for id in ["nonsense", "usr_00000000000000000000000000000000", "%00"] {
        for (method, path, body) in changes(id) {
            let res = p.send(&owner, method.clone(), &path, body).await;
            assert_eq!(status_and_code(res).await.0, 404, "{method} {path}");
        }
    }
    assert!(p.signed_in(&viewer).await, "nothing happened to the viewer");
    let row = p.listed(&owner, &target).await.unwrap();
    assert_eq!(
        (row["role"].clone(), row["disabled_at"].clone()),
        (json!("viewer"), Value::Null)
    );

    // The operator acts on anyone, with the tenant named or without.
    let path = format!("/api/users/{target}/disable");
    let res = p
        .send_with(
            &operator,
            Method::POST,
            &path,
            None,
            true,
            Some(&p.tenant_a),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(!p.signed_in(&viewer).await);
    p.act_ok(&operator, "enable", &target).await;
    // Their action is in the tenant's log, by the operator.
    let audit = p.audit(&owner).await;
    let e = entry(&audit, "user.disable", &target);
    assert_eq!(e["actor_id"], json!(p.id(OPERATOR)), "{e}");
}

async fn a_tenant_keeps_its_last_owner_the_instance_its_operator_and_nobody_removes_themselves(
    backend: Backend,
) {
    let Some((p, [owner, operator])) = people_with(backend, [OWNER, OPERATOR]).await else {
        return;
    };
    let owner_id = p.id(OWNER).to_owned();
    let op_id = p.id(OPERATOR).to_owned();
    // Nobody disables, deletes or re-roles their own account.
    for (who, id) in [(&owner, &owner_id), (&operator, &op_id)] {
        for what in ["disable", "delete", "viewer"] {
            let own = (409, "own_account".into());
            assert_eq!(p.act_status(who, what, id).await, own, "{what} {id}");
        }
    }
    // The operator cannot take away tenant A's only owner.
    for what in ["disable", "delete", "admin"] {
        let res = p.act(&operator, what, &owner_id).await;
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 409, "{what}: {v}");
        assert_eq!(v["error"]["code"], "last_owner", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("last enabled owner"),
            "{v}"
        );
    }
    assert!(p.signed_in(&owner).await);
    // Once there is a second owner, the first can go.
    p.act_ok(&owner, "owner", p.id(ADMIN)).await;
    let admin = p.sign_in(ADMIN).await;
    p.act_ok(&admin, "viewer", &owner_id).await;
    // The operator's role is the instance's: not changed here, nor given.
    let res = p.act(&admin, "operator", &owner_id).await;
    assert_eq!(res.status(), 400);
    let second_op = p
        .app
        .home
        .make_user("op2@example.com", "operator", None, PASSWORD);
    assert_eq!(
        p.act_status(&operator, "owner", &second_op).await,
        (409, "operator_role".into())
    );
    // An owner does not reach the operator.
    assert_eq!(p.act(&admin, "disable", &op_id).await.status(), 404);
    // Two operators: one may disable the other.
    p.act_ok(&operator, "disable", &second_op).await;
    assert_eq!(
        p.login_status("op2@example.com", PASSWORD).await,
        (403, "account_disabled".into())
    );
}

/// The CLI manages people on the data directory while the server runs; each change takes
/// effect on the server's next request and is audited as the CLI's.
async fn the_cli_disables_enables_re_roles_signs_out_deletes_and_revokes(backend: Backend) {
    let Some((p, [owner, admin])) = people_with(backend, [OWNER, ADMIN]).await else {
        return;
    };
    let home = &p.app.home;
    let admin_id = p.id(ADMIN).to_owned();

    assert_eq!(home.cli_ok(&["user", "disable", ADMIN]), admin_id);
    assert!(!p.signed_in(&admin).await, "signed out at once");
    assert_eq!(p.login_status(ADMIN, PASSWORD).await.0, 403);
    let listed = home.cli_ok(&["user", "list", "--tenant", &p.tenant_a]);
    let line = listed.lines().find(|l| l.starts_with(&admin_id)).unwrap();
    assert!(line.contains("disabled since"), "{listed}");
    assert_eq!(home.cli_ok(&["user", "enable", &admin_id]), admin_id);
    let admin = p.sign_in(ADMIN).await;

    assert_eq!(home.cli_ok(&["user", "role", ADMIN, "viewer"]), admin_id);
    let created = p.create_key(&admin).await;
    assert_eq!(created, 403, "a viewer from the next request");
    let _second = p.sign_in(ADMIN).await;
    assert_eq!(home.cli_ok(&["user", "logout", ADMIN]), "2");
    assert!(!p.signed_in(&admin).await);

    // An invitation made in the console, revoked from the CLI.
    let (inv_id, token) = p.invite(&owner, "new@a.example", "admin").await;
    let listed: Value =
        serde_json::from_str(&home.cli_ok(&["user", "list", "--tenant", &p.tenant_a, "--json"]))
            .unwrap();
    assert_eq!(listed["invitations"][0]["id"], json!(inv_id), "{listed}");
    assert_eq!(listed["users"].as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(home.cli_ok(&["user", "revoke-invitation", &inv_id]), inv_id);
    assert_eq!(
        status_and_code(p.accept(&token).await).await,
        (404, "invitation_revoked".into())
    );

    // Clear errors, nothing changed: (args, exit code, what stderr says).
    for (args, code, says) in [
        (vec!["user", "disable", "nobody@a.example"], 1, "no user"),
        (
            vec!["user", "disable", "usr_00000000000000000000000000000000"],
            1,
            "no user",
        ),
        (vec!["user", "disable", "bob"], 2, ""),
        (
            vec!["user", "role", ADMIN, "operator"],
            2,
            "owner, admin or viewer",
        ),
        (vec!["user", "role", OPERATOR, "owner"], 1, "operator"),
        (
            vec!["user", "delete", ADMIN, "--confirm", OWNER],
            2,
            "--confirm",
        ),
        (vec!["user", "disable", OWNER], 1, "last enabled owner"),
        (
            vec!["user", "disable", OPERATOR],
            1,
            "last enabled operator",
        ),
        (
            vec!["user", "delete", OPERATOR, "--confirm", OPERATOR],
            1,
            "last enabled operator",
        ),
        (
            vec![
                "user",
                "revoke-invitation",
                "inv_00000000000000000000000000000000",
            ],
            1,
            "no invitation",
        ),
    ] {
        let out = home.cli(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(p.signed_in(&owner).await);

    assert_eq!(
        home.cli_ok(&["user", "delete", ADMIN, "--confirm", ADMIN]),
        admin_id
    );
    assert_eq!(p.login_status(ADMIN, PASSWORD).await.0, 401);

    let audit = p.audit(&owner).await;
    for (action, target) in [
        ("user.disable", admin_id.as_str()),
        ("user.enable", admin_id.as_str()),
        ("user.role_change", admin_id.as_str()),
        ("user.sessions_end", admin_id.as_str()),
        ("user.delete", admin_id.as_str()),
        ("invitation.revoke", inv_id.as_str()),
    ] {
        let e = entry(&audit, action, target);
        assert_eq!(e["actor_kind"], "cli", "{e}");
        assert_eq!(e["source"], "local", "{e}");
    }
}

on_both_backends!(
    a_disabled_person_is_signed_out_at_once_and_cannot_sign_in_until_enabled,
    a_role_change_applies_from_the_next_request,
    ending_sessions_and_deleting_a_person_sign_them_out_and_keep_their_history,
    a_revoked_invitation_cannot_be_accepted_and_says_so,
    only_owners_and_the_operator_manage_people_and_only_those_they_see,
    a_tenant_keeps_its_last_owner_the_instance_its_operator_and_nobody_removes_themselves,
    the_cli_disables_enables_re_roles_signs_out_deletes_and_revokes,
);
