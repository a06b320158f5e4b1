//! Pure domain types and rules: ids, tenants, API keys, users and sessions.
//!
//! Nothing in here performs I/O. Every value that comes from a user is parsed into a
//! type with a private field (`parse`/`TryFrom`), so the rest of the code can trust it.

/// An enum whose variants each have one fixed name (stored, sent and shown): declares
/// the enum, `ALL` (every variant, in order), `as_str`, `from_name` (the variant of
/// exactly that name) and `Display` (the name).
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// The variant named exactly `s`.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

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
