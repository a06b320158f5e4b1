//! Pure domain types and rules: ids, tenants, API keys, users and sessions.
//!
//! Nothing in here performs I/O. Every value that comes from a user is parsed into a
//! type with a private field (`parse`/`TryFrom`), so the rest of the code can trust it.

pub mod alert;
pub mod audit;
pub mod call;
pub mod certificate;
pub mod chain;
pub mod decision;
pub mod evidence_pack;
pub mod freeze;
pub mod ids;
pub mod incident;
pub mod keys;
pub mod money;
pub mod oidc;
pub mod policy;
pub mod pricing;
pub mod quota;
pub mod redaction;
pub mod replay;
pub mod search;
pub mod secret_box;
pub mod task;
pub mod tenant;
pub mod time;
pub mod trusted_proxies;
pub mod upstream_url;
pub mod user;

pub use call::{CallCursor, CallFilter, CallRecord, RecordedRequest};
pub use decision::{Decision, Outcome};
pub use freeze::{FreezeAction, FreezeEvent};
pub use ids::{
    AlertRouteId, AuditId, CallId, CertificateId, FreezeId, IncidentEventId, IncidentId,
    InvitationId, KeyId, ReplayId, SessionId, TaskId, TenantId, UserId,
};
pub use incident::{Incident, IncidentStatus, Severity, Signal};
pub use keys::{ApiKeyRecord, KeyHash, KeySecret, NewApiKey, Scope};
pub use money::Money;
pub use policy::PolicyConfig;
pub use search::{CallSearch, SearchQuery};
pub use tenant::{Tenant, TenantName};
pub use time::Timestamp;
pub use user::{Email, NewSession, NewUser, PasswordHash, Role, Session, User};

/// A value from outside failed to parse; the message says what was wrong and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}
