//! The OpenAI-compatible endpoints: parse the request (size, JSON, attribution headers),
//! hand it to the proxy, and turn its outcome into a response carrying `x-agv-call-id`.

use super::auth::ProxyKey;
use super::error::ApiError;
use crate::api::state::AppState;
use crate::domain::call::endpoint;
use crate::domain::{CallId, Timestamp};
use crate::error::Code;
use crate::proxy::{
    Attribution, CALL_ID_HEADER, Incoming, MAX_ATTRIBUTION_LEN, MAX_METADATA_BYTES, Outcome,
};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, get, post, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Instant;

/// Reads the body up to `limit` bytes: 413 past it (checked from Content-Length first, so
/// an oversized body is refused before it is read).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            Code::RequestTooLarge,
            format!("the request body is larger than the {limit} byte limit"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let timeout = req
        .app_data::<web::Data<crate::api::state::AppState>>()
        .map_or(std::time::Duration::from_secs(30), |s| {
            s.settings.body_read_timeout
        });
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    Code::InvalidBody,
                    format!("could not read the request body: {e}"),
                )
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    // A client that trickles its body must not hold the connection forever.
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s; send it at once",
                    timeout.as_secs_f64()
                ),
            ))
        })
}

/// Parses a JSON object body; the error says where the JSON is wrong.
pub fn parse_json_object(raw: &[u8]) -> Result<serde_json::Value, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::new(
            Code::InvalidJson,
            "the request body is empty; send a JSON object",
        ));
    }
    json_object(raw, Code::InvalidJson, "the request body")
}

/// `raw` as a JSON object; a failure is `code`, in words about `what` (the body, a header).
fn json_object(raw: &[u8], code: Code, what: &str) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::new(code, format!("{what} is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::new(code, format!("{what} must be a JSON object")));
    }
    Ok(value)
}

fn header_text(req: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(name) else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::new(
            Code::InvalidHeader,
            format!("the {name} header must be printable ASCII"),
        )
    })?;
    let s = s.trim();
    if s.len() > MAX_ATTRIBUTION_LEN {
        return Err(ApiError::new(
            Code::InvalidHeader,
            format!("the {name} header is longer than {MAX_ATTRIBUTION_LEN} characters"),
        ));
    }
    Ok((!s.is_empty()).then(|| s.to_owned()))
}

/// End user (header first, then the OpenAI `user` field), session and metadata.
pub fn attribution(req: &HttpRequest, body: &serde_json::Value) -> Result<Attribution, ApiError> {
    let user_field = match body.get("user") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.len() <= MAX_ATTRIBUTION_LEN => {
            Some(s.clone()).filter(|s| !s.is_empty())
        }
        Some(serde_json::Value::String(_)) => {
            return Err(ApiError::new(
                Code::InvalidUser,
                format!("the 'user' field is longer than {MAX_ATTRIBUTION_LEN} characters"),
            ));
        }
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidUser,
                "the 'user' field must be a string",
            ));
        }
    };
    let end_user = header_text(req, "x-agv-user-id")?.or(user_field);
    let session_id = header_text(req, "x-agv-session-id")?;
    let metadata = match req.headers().get("x-agv-metadata") {
        Some(v) if v.len() > MAX_METADATA_BYTES => {
            return Err(ApiError::new(
                Code::InvalidMetadata,
                format!("the x-agv-metadata header is larger than {MAX_METADATA_BYTES} bytes"),
            ));
        }
        Some(v) => Some(json_object(
            v.as_bytes(),
            Code::InvalidMetadata,
            "the x-agv-metadata header",
        )?),
        None => None,
    };
    Ok(Attribution {
        end_user,
        session_id,
        metadata,
    })
}

/// The shape of `messages` the guard reads the prompt from, and the upstream would insist
/// on: a non-empty list of objects, each with a string `role`. Anything else is refused
/// here, before it costs an upstream call or slips past the guard unread.
fn check_messages(body: &serde_json::Value) -> Result<(), ApiError> {
    let invalid =
        |message: String| Err(ApiError::new(Code::InvalidMessages, message).param("messages"));
    let Some(messages) = body.get("messages") else {
        return invalid(
            "'messages' is required: a list of {\"role\": …, \"content\": …} objects".into(),
        );
    };
    let Some(list) = messages.as_array() else {
        return invalid(
            "'messages' must be a list of {\"role\": …, \"content\": …} objects".into(),
        );
    };
    if list.is_empty() {
        return invalid("'messages' must hold at least one message".into());
    }
    for (i, m) in list.iter().enumerate() {
        match m.get("role") {
            Some(serde_json::Value::String(_)) => {}
            Some(_) => return invalid(format!("'messages[{i}].role' must be a string")),
            None if m.is_object() => return invalid(format!("'messages[{i}]' has no 'role'")),
            None => return invalid(format!("'messages[{i}]' must be an object with a 'role'")),
        }
    }
    Ok(())
}

async fn proxy_call(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    key: ProxyKey,
    which: &'static str,
) -> HttpResponse {
    let received = Instant::now();
    let incoming = async {
        let raw = read_body(&req, payload, state.settings.max_body_bytes).await?;
        let body = parse_json_object(&raw)?;
        if body.get("model").is_some_and(|m| !m.is_string()) {
            return Err(ApiError::new(
                Code::InvalidModel,
                "the 'model' field must be a string",
            ));
        }
        if body
            .get("stream")
            .is_some_and(|s| !s.is_boolean() && !s.is_null())
        {
            return Err(ApiError::new(
                Code::InvalidStream,
                "the 'stream' field must be true or false",
            ));
        }
        if which == endpoint::CHAT_COMPLETIONS {
            check_messages(&body)?;
        }
        if which == endpoint::EMBEDDINGS
            && body.get("stream").and_then(serde_json::Value::as_bool) == Some(true)
        {
            return Err(ApiError::new(
                Code::InvalidStream,
                "embeddings cannot be streamed",
            ));
        }
        let attribution = attribution(&req, &body)?;
        Ok(Incoming {
            call_id: CallId::generate(),
            tenant_id: key.0.tenant_id.clone(),
            key_id: key.0.key_id.clone().ok_or_else(|| {
                ApiError::new(Code::MissingApiKey, "LLM calls are made with an API key")
            })?,
            endpoint: which,
            received,
            created_at: Timestamp::now(),
            raw,
            body,
            attribution,
        })
    }
    .await;
    let incoming = match incoming {
        Ok(i) => i,
        Err(e) => return e.error_response(),
    };
    let call_id = incoming.call_id.to_string();
    let mut res = match state.proxy.handle(incoming).await {
        Outcome::Full {
            status,
            content_type,
            body,
            retry_after,
        } => {
            let mut b = HttpResponse::build(
                actix_web::http::StatusCode::from_u16(status)
                    .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
            );
            b.content_type(content_type);
            if let Some(r) = retry_after {
                b.insert_header((header::RETRY_AFTER, r));
            }
            b.body(body)
        }
        Outcome::Stream(stream) => HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(stream),
        Outcome::Error(e) => e.error_response(),
    };
    if let Ok(v) = header::HeaderValue::from_str(&call_id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static(CALL_ID_HEADER), v);
    }
    res
}

#[post("/v1/chat/completions")]
pub async fn chat_completions(
    req: HttpRequest,
    key: ProxyKey,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    proxy_call(req, payload, state, key, endpoint::CHAT_COMPLETIONS).await
}

#[post("/v1/embeddings")]
pub async fn embeddings(
    req: HttpRequest,
    key: ProxyKey,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    proxy_call(req, payload, state, key, endpoint::EMBEDDINGS).await
}

#[get("/v1/models")]
pub async fn models(key: ProxyKey, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state.proxy.models(&key.0.tenant_id).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
