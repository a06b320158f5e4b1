//! People: the first-run setup, password change, the people of a tenant and invitations.
//!
//! There is no open sign-up. The first operator account is made either headless
//! (`agv-server user create --role operator`) or through the one-time setup URL the server
//! prints at start while no user exists (valid 30 minutes, kept only in memory). Everyone
//! else is invited by an owner or the operator: the invitation's token travels in a URL,
//! only its SHA-256 is stored, and accepting it creates the account and signs in.
//!
//! The same owners and the operator manage people: disable and enable them, change their
//! role, delete them, end their sessions, and revoke open invitations. The rules and the
//! audit entries live in `ops::people`, shared with the CLI; this module only decides who
//! is asking and maps the outcome to HTTP.

use super::access::{field, person, tenant_for};
use super::audit::{Console, ConsoleChange, Source, by_person, on_own_account, record};
use super::error::{ApiError, path_id, required_json};
use super::session::{COOKIE, person_json, sha256_hex, sign_in};
use crate::api::state::AppState;
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::user::{Email, Invitation, NewUser, PasswordHash, Role, User};
use crate::domain::{InvitationId, Timestamp, UserId};
use crate::error::Code;
use crate::ops::people::{Change, Manager, PeopleError};
use crate::store::StoreError;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use serde_json::json;

const INVITATION_DAYS: i64 = 7;

fn email_field(raw: &str) -> Result<Email, ApiError> {
    Email::parse(raw).map_err(|e| field(Code::InvalidEmail, "email", e.0))
}

/// Hashes a new password (see `session::password_work`); 400 naming the field when it is
/// not acceptable.
async fn password_field(raw: String, name: &'static str) -> Result<PasswordHash, ApiError> {
    super::session::password_work(move || Ok(PasswordHash::create(&raw)))
        .await?
        .map_err(|e| field(Code::InvalidPassword, name, e.0))
}

async fn count_users(state: &AppState) -> Result<i64, ApiError> {
    Ok(state.with_store(move |store| store.count_users()).await?)
}

#[get("/api/setup")]
pub async fn setup_needed(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({"needed": count_users(&state).await? == 0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupBody {
    token: String,
    email: String,
    password: String,
}

#[post("/api/setup")]
pub async fn setup(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = required_json::<SetupBody>(
        &raw,
        "send {\"token\": \"…\", \"email\": \"…\", \"password\": \"…\"}",
    )?;
    let email = email_field(&body.email)?;
    // Everything that costs nothing first: a password is hashed only for the one request
    // that holds the valid link of an instance not set up yet.
    if count_users(&state).await? > 0 {
        return Err(ApiError::new(
            Code::SetupDone,
            "this instance is set up already: sign in instead",
        ));
    }
    state.setup.take(&body.token)?;
    let create = async {
        let user = NewUser {
            id: UserId::generate(),
            email,
            password: password_field(body.password, "password").await?,
            role: Role::Operator,
            tenant_id: None,
            created_at: Timestamp::now(),
        };
        let created = state.with_store(move |store| store.create_user(&user));
        Ok::<_, ApiError>(created.await?)
    };
    // Nothing was made when this fails: the link still works.
    let created = create
        .await
        .inspect_err(|_| state.setup.put_back(&body.token))?;
    record(
        &state,
        by_person(
            None,
            &created.id,
            &source,
            AuditAction::UserCreate,
            created.id.as_str(),
        )
        .after(json!({"email": created.email, "role": created.role, "via": "setup"})),
    )
    .await;
    sign_in(&state, &req, &source, &created).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[post("/api/auth/password")]
pub async fn change_password(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let user = person(&state, &req).await?;
    let body = required_json::<PasswordBody>(
        &raw,
        "send {\"current_password\": \"…\", \"new_password\": \"…\"}",
    )?;
    let check = user.password.clone();
    let current_pw = body.current_password;
    if !super::session::password_work(move || Ok(check.verify(&current_pw))).await? {
        return Err(
            ApiError::new(Code::WrongPassword, "the current password is wrong")
                .param("current_password"),
        );
    }
    let new = password_field(body.new_password, "new_password").await?;
    let keep = req.cookie(COOKIE).map(|c| sha256_hex(c.value()));
    let id = user.id.clone();
    state
        .with_store(move |store| store.set_user_password(&id, &new, keep.as_deref()))
        .await?;
    record(
        &state,
        on_own_account(&user, &source, AuditAction::UserPasswordChange),
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({"changed": true})))
}

/// The signed-in person when they may manage people: an owner, or the operator.
async fn in_charge(state: &AppState, req: &HttpRequest) -> Result<User, ApiError> {
    let user = person(state, req).await?;
    if !matches!(user.role, Role::Owner | Role::Operator) {
        return Err(ApiError::new(
            Code::RoleNotAllowed,
            "only the tenant's owner (or the operator) manages its people",
        ));
    }
    Ok(user)
}

/// An owner of the tenant, or the operator, and the tenant.
async fn people_manager(
    state: &AppState,
    req: &HttpRequest,
) -> Result<(User, crate::domain::TenantId), ApiError> {
    let user = in_charge(state, req).await?;
    let tenant = tenant_for(state, req, &user, None).await?;
    Ok((user, tenant))
}

#[get("/api/users")]
pub async fn list_users((state, req): Console) -> Result<HttpResponse, ApiError> {
    let (_, tenant) = people_manager(&state, &req).await?;
    let (users, invitations) = state
        .with_tenant(&tenant, move |store, t| {
            Ok::<_, StoreError>((store.list_users(Some(t))?, store.list_invitations(t)?))
        })
        .await?;
    let now = Timestamp::now();
    Ok(HttpResponse::Ok().json(json!({
        "data": users.iter().map(person_json).collect::<Vec<_>>(),
        "invitations": invitations.iter().filter(|i| i.is_open(now)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: String,
}

/// A role a person of a tenant may have (not the operator's); 400 saying `else_say` if not.
fn tenant_role(raw: &str, else_say: &str) -> Result<Role, ApiError> {
    Role::parse(raw)
        .ok()
        .filter(|r| r.is_tenant_role())
        .ok_or_else(|| field(Code::InvalidRole, "role", else_say))
}

fn origin(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

#[post("/api/invitations")]
pub async fn invite(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (user, tenant) = people_manager(&state, &req).await?;
    let body = required_json::<InviteBody>(
        &raw,
        "send {\"email\": \"…\", \"role\": \"owner|admin|viewer\"}",
    )?;
    let email = email_field(&body.email)?;
    let role = tenant_role(&body.role, "invite as owner, admin or viewer")?;
    let mut raw_token = [0u8; 24];
    rand::fill(&mut raw_token);
    let token = hex::encode(raw_token);
    let now = Timestamp::now();
    let inv = Invitation {
        id: InvitationId::generate(),
        tenant_id: tenant.clone(),
        email,
        role,
        token_hash: sha256_hex(&token),
        created_by: format!("user:{}", user.id),
        created_at: now,
        expires_at: now.plus_millis(INVITATION_DAYS * 86_400_000),
        accepted_at: None,
        revoked_at: None,
    };
    let (to_store, e) = (inv.clone(), inv.email.clone());
    state
        .with_store(move |store| {
            if store.find_user_by_email(&e)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "{} has an account already",
                    e.as_str()
                )));
            }
            store.create_invitation(&to_store)
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::new(Code::UserExists, m).param("email"),
            other => other.into(),
        })?;
    record(
        &state,
        by_person(
            Some(tenant),
            &user.id,
            &source,
            AuditAction::UserInvite,
            inv.id.as_str(),
        )
        .after(json!({"email": inv.email, "role": inv.role})),
    )
    .await;
    let url = format!("{}/#/invite?token={token}", origin(&req));
    Ok(HttpResponse::Created().json(json!({"invitation": inv, "token": token, "url": url})))
}

async fn open_invitation(state: &AppState, token: &str) -> Result<Invitation, ApiError> {
    let hash = sha256_hex(token);
    match state
        .with_store(move |store| store.find_invitation(&hash))
        .await?
    {
        Some(inv) if inv.is_open(Timestamp::now()) => Ok(inv),
        // A revoked link says so, so that its holder knows to ask rather than retry.
        Some(inv) if inv.revoked_at.is_some() && inv.accepted_at.is_none() => Err(ApiError::new(
            Code::InvitationRevoked,
            "this invitation was revoked by an owner of the tenant or the operator; ask them for a new one",
        )),
        _ => Err(ApiError::not_found(
            "this invitation does not exist, was used already or has expired; ask for a new one",
        )),
    }
}

#[get("/api/invitations/{token}")]
pub async fn get_invitation(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let inv = open_invitation(&state, &path).await?;
    let tenant = state
        .with_tenant(&inv.tenant_id, move |store, t| store.get_tenant(t))
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "email": inv.email, "role": inv.role, "expires_at": inv.expires_at,
        "tenant": {"id": tenant.id, "name": tenant.name},
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    token: String,
    password: String,
}

#[post("/api/invitations/accept")]
pub async fn accept(
    (state, req, source): ConsoleChange,
    raw: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = required_json::<AcceptBody>(&raw, "send {\"token\": \"…\", \"password\": \"…\"}")?;
    let inv = open_invitation(&state, &body.token).await?;
    let password = password_field(body.password, "password").await?;
    let hash = sha256_hex(&body.token);
    let user = state
        .with_store(move |store| {
            store.accept_invitation(&hash, &UserId::generate(), &password, Timestamp::now())
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("this invitation does not exist"),
            StoreError::Conflict(m) => ApiError::new(Code::InvitationClosed, m),
            other => other.into(),
        })?;
    record(
        &state,
        by_person(
            Some(inv.tenant_id.clone()),
            &user.id,
            &source,
            AuditAction::UserCreate,
            user.id.as_str(),
        )
        .after(json!({"email": user.email, "role": user.role, "invitation": inv.id})),
    )
    .await;
    sign_in(&state, &req, &source, &user).await
}

/// Who manages people, and whose: an owner their tenant's people; the operator everyone,
/// or with the `x-agv-tenant` header that tenant's people only.
async fn manager(state: &AppState, req: &HttpRequest, source: Source) -> Result<Manager, ApiError> {
    let user = in_charge(state, req).await?;
    let everyone =
        user.role == Role::Operator && !req.headers().contains_key(super::access::TENANT_HEADER);
    let scope = match everyone {
        true => None,
        false => Some(tenant_for(state, req, &user, None).await?),
    };
    Ok(Manager {
        actor: Actor::User(user.id),
        scope,
        source: source.0,
    })
}

fn people_error<'a>(what: &'static str, id: &'a str) -> impl Fn(PeopleError) -> ApiError + 'a {
    move |e| match e {
        PeopleError::NotFound => ApiError::not_found(format!("no {what} {id}")),
        PeopleError::OwnAccount(_) => ApiError::new(Code::OwnAccount, e.to_string()),
        PeopleError::OperatorRole => ApiError::new(Code::OperatorRole, e.to_string()).param("role"),
        PeopleError::LastInCharge { operator, message } => ApiError::new(
            if operator {
                Code::LastOperator
            } else {
                Code::LastOwner
            },
            message,
        ),
        PeopleError::InvitationAccepted(m) => ApiError::new(Code::InvitationAccepted, m),
        PeopleError::Store(e) => e.into(),
    }
}

/// What every action on one person (or invitation) extracts, in this order: the state, the
/// request, where it came from and the id in the path.
type Action = (web::Data<AppState>, HttpRequest, Source, web::Path<String>);

/// Applies one change to the person in the path, as the signed-in manager, and answers with
/// the person as they are now (once deleted or signed out: their id and what happened).
async fn act((state, req, source, path): Action, change: Change) -> Result<HttpResponse, ApiError> {
    let by = manager(&state, &req, source).await?;
    let id = path_id("user", &path, UserId::parse)?;
    let done = state
        .with_store(move |store| crate::ops::people::change(store.as_ref(), &by, &id, change))
        .await
        .map_err(people_error("user", &path))?;
    let id = path.as_str();
    Ok(HttpResponse::Ok().json(match change {
        Change::Delete => json!({"id": id, "deleted": true}),
        Change::EndSessions => json!({"id": id, "ended": done.sessions_ended.unwrap_or(0)}),
        Change::Disable | Change::Enable | Change::Role(_) => {
            json!({"user": person_json(done.after.as_ref().unwrap_or(&done.before))})
        }
    }))
}

/// Disables a person: they cannot sign in, and every session of theirs ends at once.
#[post("/api/users/{id}/disable")]
pub async fn disable_user(on: Action) -> Result<HttpResponse, ApiError> {
    act(on, Change::Disable).await
}

#[post("/api/users/{id}/enable")]
pub async fn enable_user(on: Action) -> Result<HttpResponse, ApiError> {
    act(on, Change::Enable).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonBody {
    role: String,
}

/// Changes a person's role: `{"role": "owner|admin|viewer"}`, in force from their next request.
#[patch("/api/users/{id}")]
pub async fn update_user(on: Action, raw: web::Bytes) -> Result<HttpResponse, ApiError> {
    let body = required_json::<PersonBody>(&raw, "send {\"role\": \"owner|admin|viewer\"}")?;
    let role = tenant_role(&body.role, "a person's role is owner, admin or viewer")?;
    act(on, Change::Role(role)).await
}

/// Deletes a person and their sessions; the audit log keeps what they did.
#[delete("/api/users/{id}")]
pub async fn delete_user(on: Action) -> Result<HttpResponse, ApiError> {
    act(on, Change::Delete).await
}

/// Ends every session of a person (they may sign in again).
#[delete("/api/users/{id}/sessions")]
pub async fn end_sessions(on: Action) -> Result<HttpResponse, ApiError> {
    act(on, Change::EndSessions).await
}

/// Takes back an invitation that was not accepted: its link stops working at once.
#[post("/api/invitations/{id}/revoke")]
pub async fn revoke_invitation(
    (state, req, source, path): Action,
) -> Result<HttpResponse, ApiError> {
    let by = manager(&state, &req, source).await?;
    let id = path_id("invitation", &path, InvitationId::parse)?;
    let inv = state
        .with_store(move |store| crate::ops::people::revoke_invitation(store.as_ref(), &by, &id))
        .await
        .map_err(people_error("invitation", &path))?;
    Ok(HttpResponse::Ok().json(json!({"invitation": inv})))
}

/// Prints the setup URL when the instance has no user yet (at start).
pub fn announce_setup(state: &AppState, base_url: &str) -> Result<(), StoreError> {
    if state.store.count_users()? > 0 {
        return Ok(());
    }
    let token = state.setup.issue();
    let url = format!("{base_url}/#/setup?token={token}");
    tracing::warn!(
        url = %url,
        "no user exists yet: open the setup URL within 30 minutes to create the operator account (or run `agv-server user create --role operator`)"
    );
    eprintln!(
        "\n  agv-server has no user yet. Create the operator account within 30 minutes at:\n\n    {url}\n\n  (or headless: agv-server user create --email you@example.com --role operator)\n"
    );
    Ok(())
}
