//! Reading the audit log: `GET /v1/audit` (and the console's `/api/audit`), filtered, paged
//! by cursor, as JSON or CSV, with people named by email.

use super::auth::{AdminCall, AdminKey};
use super::error::ApiError;
use super::page;
use super::v1::{given, query_time, query_value};
use crate::domain::ParseError;
use crate::domain::audit::{AuditAction, AuditEntry, AuditFilter};
use crate::error::Code;
use crate::incidents::timeline::People;
use crate::store::run_blocking;
use actix_web::{HttpResponse, get, web};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
    format: Option<String>,
}

/// The tenant's audit entries, newest first, with filters and a cursor; `format=csv`
/// gives the page as CSV with a header row.
#[get("/v1/audit")]
pub async fn list(
    (state, AdminKey(caller)): AdminCall,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let bad = |m: String| ApiError::new(Code::InvalidQuery, m);
    let csv = page::wants_csv(q.format.as_deref())?;
    let store = state.store.clone();
    let tenant = caller.tenant_id.clone();
    let actor = given(q.actor);
    // A person is filtered by their email as well as by their id.
    let actor = match actor
        .as_deref()
        .filter(|a| a.contains('@'))
        .map(crate::domain::Email::parse)
    {
        Some(Ok(email)) => {
            let (store, tenant) = (store.clone(), tenant.clone());
            let id =
                run_blocking(move || super::names::user_by_email(store.as_ref(), &tenant, &email))
                    .await?;
            // Nobody by that address: an id that matches no entry, so the page is empty.
            Some(id.map_or_else(|| "user:unknown".to_owned(), |id| id.to_string()))
        }
        Some(Err(e)) => return Err(bad(e.0)),
        None => actor,
    };
    let filter = AuditFilter {
        action: query_value(q.action.as_deref(), AuditAction::parse)?,
        actor,
        since: query_time("since", q.since.as_deref())?,
        until: query_time("until", q.until.as_deref())?,
    };
    let before = page::cursor(q.cursor.as_deref(), |c| {
        c.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
            ParseError::new(
                "the cursor is not one this API gave out: pass next_cursor from the previous page unchanged",
            )
        })
    })?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (entries, people) = run_blocking(move || {
        let entries = store.list_audit(Some(&tenant), &filter, before, limit)?;
        let people = People::look_up(
            store.as_ref(),
            &tenant,
            entries.iter().flat_map(|e| {
                // The person who acted, and the person acted on (a role change, a
                // disabled account).
                [person_of(e), crate::domain::UserId::parse(&e.target).ok()]
                    .into_iter()
                    .flatten()
            }),
        )?;
        Ok::<_, crate::store::StoreError>((entries, people))
    })
    .await?;
    let next_cursor = page::next_cursor(&entries, limit, |e| e.seq.to_string());
    if csv {
        return Ok(page::csv_page(
            "audit.csv",
            CSV_HEADER,
            entries.iter().map(|e| csv_row(e, &people)),
            next_cursor,
        ));
    }
    let data = entries
        .iter()
        .map(|e| {
            super::names::with_emails(
                e,
                &[
                    ("actor_email", actor_email(e, &people)),
                    ("target_email", people.email(&e.target)),
                ],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page::json_page(data, next_cursor))
}

/// The person who made an entry, if a person did.
fn person_of(e: &AuditEntry) -> Option<crate::domain::UserId> {
    (e.actor_kind == "user")
        .then(|| crate::domain::UserId::parse(&e.actor_id).ok())
        .flatten()
}

fn actor_email<'a>(e: &AuditEntry, people: &'a People) -> Option<&'a str> {
    (e.actor_kind == "user")
        .then(|| people.email(&e.actor_id))
        .flatten()
}

/// The chain's columns first, as they always were; the emails of the actor and of a person
/// acted on (reading aids, outside the chain) last.
const CSV_HEADER: &str = "id,seq,at,tenant_id,actor_kind,actor_id,action,target,source,before,after,prev_hash,hash,actor_email,target_email";

/// An entry's fields as a CSV row, in the order of [`CSV_HEADER`].
fn csv_row(e: &AuditEntry, people: &People) -> [String; 15] {
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    [
        e.id.to_string(),
        e.seq.to_string(),
        e.at.to_rfc3339(),
        e.tenant_id
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default(),
        e.actor_kind.clone(),
        e.actor_id.clone(),
        e.action.clone(),
        e.target.clone(),
        e.source.clone().unwrap_or_default(),
        json(&e.before),
        json(&e.after),
        e.prev_hash.clone(),
        e.hash.clone(),
        actor_email(e, people).unwrap_or_default().to_owned(),
        people.email(&e.target).unwrap_or_default().to_owned(),
    ]
}
