//! Every error a client can see, in one table: its code, its HTTP status and its OpenAI
//! `type`.
//!
//! Bodies look like `{"error":{"message","type","code","param"}}` so the official OpenAI
//! SDKs raise their typed errors. The guard, the proxy, evidence and the handlers all
//! answer with [`ApiError`]; only `api::error` knows how it becomes an HTTP response. A
//! 500 tells the client little and logs the whole cause.

use crate::store::StoreError;
use serde::Serialize;
use std::fmt;

/// What kind of failure, which fixes the HTTP status and the OpenAI `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    PaymentRequired,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    /// The client was too slow sending its request.
    RequestTimeout,
    Locked,
    TooManyRequests,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
    Internal,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::PaymentRequired => 402,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::Locked => 423,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::BadGateway => 502,
            Self::ServiceUnavailable => 503,
            Self::GatewayTimeout => 504,
        }
    }

    /// The OpenAI error `type`.
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::BadRequest
            | Self::PayloadTooLarge
            | Self::RequestTimeout
            | Self::Conflict
            | Self::NotFound => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden | Self::Locked => "permission_error",
            Self::PaymentRequired | Self::TooManyRequests => "rate_limit_error",
            Self::BadGateway | Self::ServiceUnavailable | Self::GatewayTimeout | Self::Internal => {
                "server_error"
            }
        }
    }
}

/// Declares [`Code`]: each row names a variant, the code clients read, and its kind.
macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $kind:ident;)*) => {
        /// An error code: what clients match on. Its kind (status, OpenAI type) is fixed
        /// here, once.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $name,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &[Code] = &[$(Code::$name,)*];

            /// The code as clients read it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$name => $code,)*
                }
            }

            pub fn kind(self) -> ErrorKind {
                match self {
                    $(Code::$name => ErrorKind::$kind,)*
                }
            }
        }
    };
}

codes! {
    // The request itself.
    InvalidJson = "invalid_json", BadRequest;
    InvalidBody = "invalid_body", BadRequest;
    InvalidContentType = "invalid_content_type", BadRequest;
    InvalidQuery = "invalid_query", BadRequest;
    InvalidPath = "invalid_path", BadRequest;
    InvalidHeader = "invalid_header", BadRequest;
    InvalidCursor = "invalid_cursor", BadRequest;
    InvalidRange = "invalid_range", BadRequest;
    InvalidFormat = "invalid_format", BadRequest;
    InvalidFile = "invalid_file", BadRequest;
    RequestTooLarge = "request_too_large", PayloadTooLarge;
    RequestTimeout = "request_timeout", RequestTimeout;
    NotFound = "not_found", NotFound;
    Conflict = "conflict", Conflict;

    // Fields of a request.
    InvalidName = "invalid_name", BadRequest;
    InvalidScope = "invalid_scope", BadRequest;
    InvalidEmail = "invalid_email", BadRequest;
    InvalidPassword = "invalid_password", BadRequest;
    InvalidRole = "invalid_role", BadRequest;
    InvalidUser = "invalid_user", BadRequest;
    InvalidAssignee = "invalid_assignee", BadRequest;
    InvalidNote = "invalid_note", BadRequest;
    InvalidReason = "invalid_reason", BadRequest;
    InvalidSeverity = "invalid_severity", BadRequest;
    /// A list of ids to act on is empty, too long or malformed.
    InvalidIds = "invalid_ids", BadRequest;
    /// An action that is not one of those the endpoint offers.
    InvalidAction = "invalid_action", BadRequest;
    InvalidSubject = "invalid_subject", BadRequest;
    InvalidMetadata = "invalid_metadata", BadRequest;
    InvalidTenantId = "invalid_tenant_id", BadRequest;
    InvalidKeyId = "invalid_key_id", BadRequest;
    InvalidPolicy = "invalid_policy", BadRequest;
    InvalidConfirm = "invalid_confirm", BadRequest;
    InvalidMaxCalls = "invalid_max_calls", BadRequest;
    InvalidMode = "invalid_mode", BadRequest;
    InvalidScenario = "invalid_scenario", BadRequest;
    InvalidRoute = "invalid_route", BadRequest;
    InvalidWebhookUrl = "invalid_webhook_url", BadRequest;
    InvalidBaseUrl = "invalid_base_url", BadRequest;
    /// The upstream provider's key given in a setting is malformed.
    InvalidProviderKey = "invalid_api_key", BadRequest;
    TenantRequired = "tenant_required", BadRequest;
    NoKey = "no_key", BadRequest;
    UpstreamNotAllowed = "upstream_not_allowed", BadRequest;
    WrongPassword = "wrong_password", BadRequest;

    // OpenAI-shaped calls.
    InvalidModel = "invalid_model", BadRequest;
    InvalidMessages = "invalid_messages", BadRequest;
    InvalidStream = "invalid_stream", BadRequest;

    // Who is asking.
    MissingApiKey = "missing_api_key", Unauthorized;
    InvalidApiKey = "invalid_api_key", Unauthorized;
    ApiKeyRevoked = "api_key_revoked", Unauthorized;
    ApiKeyExpired = "api_key_expired", Unauthorized;
    InvalidCredentials = "invalid_credentials", Unauthorized;
    NotSignedIn = "not_signed_in", Unauthorized;
    MetricsTokenRequired = "metrics_token_required", Unauthorized;
    AccountDisabled = "account_disabled", Forbidden;
    CsrfTokenMissing = "csrf_token_missing", Forbidden;
    InsufficientScope = "insufficient_scope", Forbidden;
    RoleNotAllowed = "role_not_allowed", Forbidden;
    NoTenant = "no_tenant", Forbidden;
    TenantNotAllowed = "tenant_not_allowed", Forbidden;
    DemoOnly = "demo_only", Forbidden;
    FreezeNotYours = "freeze_not_yours", Forbidden;
    /// A frozen admin key asked to change something: it may only read.
    KeyFrozenReadOnly = "key_frozen", Forbidden;
    MetricsLoopbackOnly = "metrics_loopback_only", Forbidden;
    InvalidSetupToken = "invalid_setup_token", Forbidden;
    SetupTokenExpired = "setup_token_expired", Forbidden;

    // State that refuses the change.
    SetupDone = "setup_done", Conflict;
    BackupRunning = "backup_running", Conflict;
    TaskRunning = "task_running", Conflict;
    BudgetStopsTenant = "budget_stops_tenant", Conflict;
    UserExists = "user_exists", Conflict;
    OwnAccount = "own_account", Conflict;
    OperatorRole = "operator_role", Conflict;
    LastOwner = "last_owner", Conflict;
    LastOperator = "last_operator", Conflict;
    InvitationAccepted = "invitation_accepted", Conflict;
    InvitationClosed = "invitation_closed", Conflict;
    InvitationRevoked = "invitation_revoked", NotFound;
    /// Duplicates cannot go into this incident, or one of them is merged already.
    MergeRefused = "merge_refused", Conflict;

    // Replays.
    RequestNotStored = "request_not_stored", Conflict;
    RequestIncomplete = "request_incomplete", Conflict;
    RequestNotReplayable = "request_not_replayable", Conflict;
    OriginalKeyMissing = "original_key_missing", Conflict;
    OriginalKeyRevoked = "original_key_revoked", Conflict;
    OriginalKeyExpired = "original_key_expired", Conflict;

    // The guard's stops.
    TenantFrozen = "tenant_frozen", Locked;
    KeyFrozen = "key_frozen", Locked;
    MaxTokensExceeded = "max_tokens_exceeded", BadRequest;
    MaxCostExceeded = "max_cost_exceeded", BadRequest;
    PromptInjectionDetected = "prompt_injection_detected", BadRequest;
    RateLimitExceeded = "rate_limit_exceeded", TooManyRequests;
    BudgetExceeded = "budget_exceeded", PaymentRequired;

    // The upstream.
    UpstreamError = "upstream_error", BadGateway;
    UpstreamAuthFailed = "upstream_auth_failed", BadGateway;
    UpstreamInvalidResponse = "upstream_invalid_response", BadGateway;
    UpstreamRedirect = "upstream_redirect", BadGateway;
    UpstreamUnreachable = "upstream_unreachable", BadGateway;
    UpstreamTimeout = "upstream_timeout", GatewayTimeout;
    UpstreamUnavailable = "upstream_unavailable", ServiceUnavailable;

    // agv-server itself.
    RecordingFailed = "recording_failed", ServiceUnavailable;
    QueueFull = "queue_full", ServiceUnavailable;
    QueueUnavailable = "queue_unavailable", ServiceUnavailable;
    PasswordWorkBusy = "password_work_busy", ServiceUnavailable;
    StoreUnavailable = "store_unavailable", ServiceUnavailable;
    StorageFull = "storage_full", ServiceUnavailable;
    InternalError = "internal_error", Internal;
}

impl Code {
    /// The HTTP status of an error with this code.
    pub fn status(self) -> u16 {
        self.kind().status()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error as the client receives it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// The request field that is wrong (a form shows the message next to it).
    pub param: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
            param: None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.code.kind()
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// Names the request field that is wrong.
    pub fn param(mut self, field: &'static str) -> Self {
        self.param = Some(field);
        self
    }

    /// Tells the client when to try again (`retry-after`, at least a second).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(Code::RateLimitExceeded, message).retry_after(retry_after_secs)
    }

    /// An internal failure: the cause is logged in full, the client gets a short message.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            Code::InternalError,
            "agv-server hit an internal error; the details are in its log",
        )
    }

    /// The OpenAI-shaped body, as sent to the client (also inside an SSE error event and
    /// in the call record).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind().openai_type(),
                code: self.code.as_str(),
                param: self.param,
            },
        };
        // Serialising two strings and a null cannot fail; fall back to a fixed body anyway.
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","code":"internal_error"}}"#
                .to_owned()
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.status(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::Conflict(m) => Self::new(Code::Conflict, m),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                Self::new(
                    Code::StoreUnavailable,
                    "the database is unavailable; try again shortly",
                )
            }
            StoreError::Full(m) => {
                tracing::error!(error = %m, "store full");
                Self::new(
                    Code::StorageFull,
                    "agv-server's storage is full, so nothing can be saved; retry later (its operator must free disk space, after which it resumes by itself)",
                )
            }
            other => Self::internal(other),
        }
    }
}

/// Maps a store error to the API's, naming what was not found: `no incident inc_…`. Use
/// it where an id comes from the path, so another tenant's id reads as simply absent.
pub fn missing<'a>(what: &'a str, id: &'a str) -> impl Fn(StoreError) -> ApiError + 'a {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(format!("no {what} {id}")),
        other => other.into(),
    }
}

/// An optional JSON request body: empty (or only whitespace) is `None`, malformed is a
/// 400 that says why — never silently ignored, so a broken body cannot let an action go
/// ahead with defaults.
pub fn optional_json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<Option<T>, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(raw)
        .map(Some)
        .map_err(|e| ApiError::new(Code::InvalidJson, format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn store_errors_map_to_statuses() {
        let status = |e: StoreError| ApiError::from(e).status();
        assert_eq!(status(StoreError::NotFound), 404);
        assert_eq!(status(StoreError::Conflict("x".into())), 409);
        assert_eq!(status(StoreError::Unavailable("x".into())), 503);
        assert_eq!(status(StoreError::Full("x".into())), 503);
        assert_eq!(status(StoreError::Database("x".into())), 500);
    }

    /// A code clients read has one meaning: where two rows share it (the same condition
    /// met in two places), they differ only in status, and every code is snake_case.
    #[test]
    fn every_code_is_snake_case_and_shared_only_by_design() {
        let mut seen: HashMap<&str, Vec<Code>> = HashMap::new();
        for &c in Code::ALL {
            let s = c.as_str();
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            seen.entry(s).or_default().push(c);
        }
        let shared: Vec<_> = seen.into_iter().filter(|(_, v)| v.len() > 1).collect();
        let mut names: Vec<&str> = shared.iter().map(|(s, _)| *s).collect();
        names.sort_unstable();
        assert_eq!(names, ["invalid_api_key", "key_frozen"]);
        for (s, v) in shared {
            assert_ne!(v[0].status(), v[1].status(), "{s}");
        }
    }
}
