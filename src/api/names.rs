//! People by their email in what the API answers. Incident histories, assignees and audit
//! entries record a person by id (`user:usr_…`); handlers look the ids up here, once per
//! answer, and answer the email beside the id. Only the tenant's own people and the
//! instance operator (who acts on every tenant) are named: any other id stays as it is,
//! so an id typed into an assignee never reveals another tenant's address.

use super::error::ApiError;
use crate::domain::{Email, TenantId, UserId};
use crate::incidents::timeline::People;
use crate::store::{Store, StoreResult};
use serde::Serialize;
use serde_json::Value;

/// The person `tenant` knows by this email, if any. Blocking.
pub fn user_by_email(
    store: &dyn Store,
    tenant: &TenantId,
    email: &Email,
) -> StoreResult<Option<UserId>> {
    Ok(store
        .find_user_by_email(email)?
        .filter(|u| People::visible_to(u, tenant))
        .map(|u| u.id))
}

/// `item` as answered, with each `(field, email)` whose email is known set beside its
/// fields (`actor_email`, `assignee_email`, …).
pub fn with_emails<T: Serialize>(
    item: &T,
    emails: &[(&str, Option<&str>)],
) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(item).map_err(|e| ApiError::internal(e.to_string()))?;
    for (field, email) in emails {
        if let Some(email) = email {
            v[*field] = Value::from(*email);
        }
    }
    Ok(v)
}

/// Nanodollars as dollars, for JSON.
pub fn usd(nanos: i64) -> f64 {
    crate::domain::Money::from_nanos(nanos).usd()
}
