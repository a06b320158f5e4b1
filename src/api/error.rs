//! The API error: one status table, OpenAI's error shape everywhere.
//!
//! Bodies look like `{"error":{"message","type","code"}}` so the official OpenAI SDKs raise
//! their typed errors. A 500 tells the client little and logs the whole cause.

use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

/// What kind of failure, which fixes the status code and the OpenAI `type`.
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
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PaymentRequired => StatusCode::PAYMENT_REQUIRED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Locked => StatusCode::LOCKED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error `type` for this kind.
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

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
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
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            retry_after_secs: None,
            param: None,
        }
    }

    /// Names the request field that is wrong.
    pub fn param(mut self, field: &'static str) -> Self {
        self.param = Some(field);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(ErrorKind::TooManyRequests, "rate_limit_exceeded", message)
        }
    }

    pub fn service_unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServiceUnavailable, code, message)
    }

    /// An internal failure: the cause is logged in full, the client gets a short message.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorKind::Internal,
            "internal_error",
            "agv-server hit an internal error; the details are in its log",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.status(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        res.content_type("application/json").body(self.body_json())
    }
}

impl ApiError {
    /// The OpenAI-shaped body, as sent to the client (also inside an SSE error event and
    /// in the call record).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind.openai_type(),
                code: self.code,
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::Conflict(m) => Self::new(ErrorKind::Conflict, "conflict", m),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                Self::service_unavailable(
                    "store_unavailable",
                    "the database is unavailable; try again shortly",
                )
            }
            StoreError::Full(m) => {
                tracing::error!(error = %m, "store full");
                Self::service_unavailable(
                    "storage_full",
                    "agv-server's storage is full, so nothing can be saved; retry later (its operator must free disk space, after which it resumes by itself)",
                )
            }
            other => Self::internal(other),
        }
    }
}

/// Maps actix's own extractor failures (bad JSON, bad query, body too large) to our shape,
/// so malformed input gets a clear 4xx and never a bare text or a 500.
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
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))
}

pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::OverflowKnownLength { length, limit } => ApiError::new(
            ErrorKind::PayloadTooLarge,
            "request_too_large",
            format!("the request body is {length} bytes; the limit is {limit} bytes"),
        ),
        J::Overflow { limit } => ApiError::new(
            ErrorKind::PayloadTooLarge,
            "request_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        ),
        J::ContentType => ApiError::bad_request(
            "invalid_content_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        J::Deserialize(e) => ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON for this endpoint: {e}"),
        ),
        other => ApiError::bad_request(
            "invalid_body",
            format!("could not read the request body: {other}"),
        ),
    };
    api.into()
}

pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request("invalid_query", format!("invalid query string: {err}")).into()
}

pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request("invalid_path", format!("invalid path parameter: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn errors_have_the_openai_shape_and_retry_after() {
        let res = ApiError::too_many_requests("slow down", 7).error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get("retry-after").unwrap(), "7");
        let body = res.into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn store_errors_map_to_statuses() {
        assert_eq!(ApiError::from(StoreError::NotFound).kind.status(), 404);
        assert_eq!(
            ApiError::from(StoreError::Conflict("x".into()))
                .kind
                .status(),
            409
        );
        assert_eq!(
            ApiError::from(StoreError::Unavailable("x".into()))
                .kind
                .status(),
            503
        );
        assert_eq!(
            ApiError::from(StoreError::Full("x".into())).kind.status(),
            503
        );
        assert_eq!(
            ApiError::from(StoreError::Database("x".into()))
                .kind
                .status(),
            500
        );
    }
}
