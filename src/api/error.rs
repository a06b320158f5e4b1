//! How an [`ApiError`] becomes an HTTP response, and actix's own extractor failures (bad
//! JSON, bad query, body too large) in the same shape, so malformed input gets a clear 4xx
//! and never a bare text or a 500. The codes and their statuses are in [`crate::error`].

pub use crate::error::{ApiError, Code, ErrorKind, missing, optional_json};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        res.content_type("application/json").body(self.body_json())
    }
}

/// A JSON request body that must be there: empty is a 400 `invalid_json` whose message
/// says what to send.
pub fn required_json<T: serde::de::DeserializeOwned>(
    raw: &[u8],
    what_to_send: &str,
) -> Result<T, ApiError> {
    optional_json(raw)?.ok_or_else(|| ApiError::new(Code::InvalidJson, what_to_send))
}

/// A JSON request body that must be there, where every 400 (malformed or empty) ends with
/// `hint`, what to send.
pub fn hinted_json<T: serde::de::DeserializeOwned>(raw: &[u8], hint: &str) -> Result<T, ApiError> {
    optional_json(raw)
        .map_err(|e| ApiError::new(Code::InvalidJson, format!("{}; {hint}", e.message)))?
        .ok_or_else(|| {
            ApiError::new(
                Code::InvalidJson,
                format!("the request body is empty; {hint}"),
            )
        })
}

/// The id of a `what` in a request's path. A malformed id cannot exist, in this tenant or
/// any other: it is a 404 `no {what} {raw}`, like an id that is not found.
pub fn path_id<T, E>(
    what: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ApiError> {
    parse(raw).map_err(|_| ApiError::not_found(format!("no {what} {raw}")))
}

pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match &err {
        J::OverflowKnownLength { length, limit } => ApiError::new(
            Code::RequestTooLarge,
            format!("the request body is {length} bytes; the limit is {limit} bytes"),
        ),
        J::Overflow { limit } => ApiError::new(
            Code::RequestTooLarge,
            format!("the request body exceeds the limit of {limit} bytes"),
        ),
        J::ContentType => ApiError::new(
            Code::InvalidContentType,
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        J::Deserialize(e) => ApiError::new(
            Code::InvalidJson,
            format!("the request body is not valid JSON for this endpoint: {e}"),
        ),
        other => ApiError::new(
            Code::InvalidBody,
            format!("could not read the request body: {other}"),
        ),
    };
    api.into()
}

pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::new(Code::InvalidQuery, format!("invalid query string: {err}")).into()
}

pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::new(Code::InvalidPath, format!("invalid path parameter: {err}")).into()
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
    fn every_code_has_a_status_actix_knows() {
        for &c in Code::ALL {
            let e = ApiError::new(c, "x");
            assert_eq!(e.status_code().as_u16(), c.status(), "{c}");
        }
    }
}
