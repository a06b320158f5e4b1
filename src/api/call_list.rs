//! The body of `GET /v1/calls` (and `/api/calls`), written a slice of calls at a time.
//!
//! A list answers whole call records, bodies included, up to 500 of them. Reading them all,
//! turning them into one `serde_json::Value` tree and then into one string held each
//! record several times over at once: a page of 500 calls of 16 KiB prompts and answers
//! (17.5 MB of JSON) took +126–150 MB of heap, against +19–22 MB written this way
//! (`bench/memory.py`). Here the store is read [`SLICE`] calls at a time (strictly after the
//! previous slice's last call, as a client's own paging would), each slice is written out
//! as JSON and dropped before the next is read, and the next is read only when the client
//! has taken the previous one. The JSON is what one `json!` of the whole page gave
//! (each call with its preview).
//!
//! The first slice is read before the answer starts, so a bad query or a store outage is
//! still an ordinary error status. A store error after that ends the connection without
//! the closing bytes, which no client can mistake for a complete list.
//!
//! Each call in a list also carries `preview`: the start of its last user message (or its
//! prompt or input), whitespace folded, under the tenant's redaction as it is now — so a
//! list reads by what was asked without opening each call. `null` when the request has no
//! text to show (hashes only, pruned, not JSON).

use super::error::ApiError;
use crate::domain::redaction::{BodyStorage, Redactor};
use crate::domain::{CallCursor, CallFilter, CallRecord, CallSearch, TenantId};
use crate::store::{DynStore, StoreResult, run_blocking};
use actix_web::HttpResponse;
use actix_web::web::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// The most characters of a preview.
pub const PREVIEW_CHARS: usize = 120;

/// A call as a list answers it.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    call: &'a CallRecord,
    preview: Option<String>,
}

/// Text of a message's `content`: a string, or the text parts of an array.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str)))
                .collect();
            (!texts.is_empty()).then(|| texts.join(" "))
        }
        _ => None,
    }
}

/// The last user message of a `messages` (chat) or `input` (responses) array.
fn last_user(messages: &[Value]) -> Option<String> {
    messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .find_map(|m| m.get("content").and_then(content_text))
}

/// What a request asked, as it reads: the last user message, else the prompt or input.
fn asked(body: &Value) -> Option<String> {
    if let Some(text) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| last_user(m))
    {
        return Some(text);
    }
    for key in ["input", "prompt"] {
        match body.get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Array(items)) => {
                if let Some(text) = last_user(items) {
                    return Some(text);
                }
                if let Some(text) = items.iter().rev().find_map(Value::as_str) {
                    return Some(text.to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// The start of what a call asked, at most [`PREVIEW_CHARS`] characters with whitespace
/// folded, under `redactor` (the tenant's redaction now, which may be stricter than when
/// the call was stored).
pub fn preview(call: &CallRecord, redactor: Option<&Redactor>) -> Option<String> {
    if redactor.is_some_and(|r| r.mode() == BodyStorage::HashesOnly) {
        return None;
    }
    let body: Value = serde_json::from_str(&call.request_body).ok()?;
    let text = asked(&body)?;
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = match redactor.and_then(|r| r.redact(&folded)) {
        Some(redacted) => redacted,
        None => folded,
    };
    if text.is_empty() {
        return None;
    }
    let mut chars = text.char_indices();
    Some(match chars.nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text,
    })
}

/// Calls read from the store per query while a list is written: the console's page size,
/// so that its lists take one query as before.
pub const SLICE: u32 = 50;

/// Which calls a list holds.
pub enum Listing {
    Filter(CallFilter),
    Search(CallSearch),
}

/// Answers up to `limit` of the tenant's calls of `listing`, newest first, strictly after
/// `after` when given: `{"object": "list", "data": [...], "next_cursor": ...}`, with a
/// next cursor when the list is full.
pub async fn respond(
    store: DynStore,
    tenant: TenantId,
    listing: Listing,
    after: Option<CallCursor>,
    limit: u32,
    redactor: Option<Arc<Redactor>>,
) -> Result<HttpResponse, ApiError> {
    let mut writer = Writer {
        store,
        tenant,
        redactor,
        listing: Arc::new(listing),
        limit,
        written: 0,
        after,
        first: None,
        done: false,
    };
    let asked = writer.next_ask();
    writer.first = Some((writer.read(asked).await?, asked));
    let body = futures_util::stream::unfold(Some(writer), |writer| async move {
        let mut writer = writer?;
        if writer.done {
            return None;
        }
        match writer.next_chunk().await {
            Ok(chunk) => Some((Ok(chunk), Some(writer))),
            Err(e) => {
                tracing::error!(error = %e, "a call list ended early, while it was written");
                Some((Err(actix_web::Error::from(e)), None))
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

struct Writer {
    store: DynStore,
    tenant: TenantId,
    redactor: Option<Arc<Redactor>>,
    listing: Arc<Listing>,
    limit: u32,
    written: u32,
    /// The last call written (or the request's cursor before the first).
    after: Option<CallCursor>,
    /// The first slice, read before the answer started, and how many calls it asked for.
    first: Option<(Vec<CallRecord>, u32)>,
    done: bool,
}

impl Writer {
    fn next_ask(&self) -> u32 {
        self.limit.saturating_sub(self.written).min(SLICE)
    }

    async fn read(&self, n: u32) -> StoreResult<Vec<CallRecord>> {
        let (store, tenant, listing) = (
            self.store.clone(),
            self.tenant.clone(),
            self.listing.clone(),
        );
        let after = self.after.clone();
        run_blocking(move || match &*listing {
            Listing::Filter(f) => store.list_calls(&tenant, f, after.as_ref(), n),
            Listing::Search(s) => store.search_calls(&tenant, s, after.as_ref(), n),
        })
        .await
    }

    /// The JSON of the next slice: the opening before the first, the closing after the
    /// last (a slice shorter than asked, or the limit reached).
    async fn next_chunk(&mut self) -> Result<Bytes, ApiError> {
        let mut out = Vec::new();
        let (slice, asked) = match self.first.take() {
            Some(first) => {
                out.extend_from_slice(br#"{"object":"list","data":["#);
                first
            }
            None => {
                let asked = self.next_ask();
                (self.read(asked).await?, asked)
            }
        };
        let full = slice.len() == asked as usize;
        for call in slice {
            if self.written > 0 {
                out.push(b',');
            }
            let listed = Listed {
                call: &call,
                preview: preview(&call, self.redactor.as_deref()),
            };
            serde_json::to_writer(&mut out, &listed).map_err(ApiError::internal)?;
            self.written += 1;
            self.after = Some(CallCursor {
                created_at: call.created_at,
                id: call.id,
            });
        }
        if !full || self.written >= self.limit {
            let next = (self.written == self.limit)
                .then(|| self.after.as_ref().map(CallCursor::encode))
                .flatten();
            out.extend_from_slice(br#"],"next_cursor":"#);
            serde_json::to_writer(&mut out, &next).map_err(ApiError::internal)?;
            out.push(b'}');
            self.done = true;
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::redaction::RedactionConfig;

    fn call(body: &str) -> CallRecord {
        let mut c: CallRecord = serde_json::from_value(serde_json::json!({
            "id": crate::domain::CallId::generate(),
            "tenant_id": TenantId::generate(),
            "key_id": crate::domain::KeyId::generate(),
            "created_at": 1_700_000_000_000i64,
            "endpoint": "chat.completions",
            "model": "gpt-4o", "stream": false, "end_user": null, "session_id": null,
            "metadata": null, "request_body": "", "request_truncated": false,
            "request_sha256": "", "response_body": null, "response_truncated": false,
            "response_sha256": null, "status": 200, "error": null, "blocked": false,
            "blocked_by": null, "decisions": [], "prompt_tokens": null,
            "completion_tokens": null, "cached_tokens": null, "total_tokens": null,
            "cost": null, "latency_us": 0, "upstream_latency_us": null, "enforcement_us": 0,
            "upstream_attempts": 1, "upstream": null,
        }))
        .unwrap();
        c.request_body = body.to_owned();
        c
    }

    #[test]
    fn a_preview_is_the_last_user_message_folded_and_cut() {
        let body = serde_json::json!({"messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": "Where is\n\n my   refund?"}]},
        ]});
        assert_eq!(
            preview(&call(&body.to_string()), None).as_deref(),
            Some("Where is my refund?")
        );
        let long = "word ".repeat(100);
        let p = preview(
            &call(
                &serde_json::json!({"messages": [{"role": "user", "content": long}]}).to_string(),
            ),
            None,
        )
        .unwrap();
        assert!(
            p.ends_with('…') && p.chars().count() <= PREVIEW_CHARS + 1,
            "{p}"
        );
        // Prompts and inputs of the other endpoints; nothing to show is null.
        let p = |b: serde_json::Value| preview(&call(&b.to_string()), None);
        assert_eq!(
            p(serde_json::json!({"input": "embed me"})).as_deref(),
            Some("embed me")
        );
        assert_eq!(
            p(serde_json::json!({"prompt": ["a", "b"]})).as_deref(),
            Some("b")
        );
        assert_eq!(p(serde_json::json!({"model": "x"})), None);
        assert_eq!(
            preview(&call("{\"messages\": [{\"role\": \"us"), None),
            None
        );
        assert_eq!(preview(&call(""), None), None);
    }

    #[test]
    fn a_preview_follows_the_tenants_redaction_now() {
        let c = call(
            &serde_json::json!({"messages": [{"role": "user", "content": "mail me at dana@example.com"}]})
                .to_string(),
        );
        let redact: RedactionConfig =
            serde_json::from_value(serde_json::json!({"mode": "redact", "patterns": ["email"]}))
                .unwrap();
        let r = redact.compile().unwrap().unwrap();
        assert_eq!(
            preview(&c, Some(&r)).as_deref(),
            Some("mail me at [REDACTED:email]")
        );
        let hashes: RedactionConfig =
            serde_json::from_value(serde_json::json!({"mode": "hashes_only"})).unwrap();
        let r = hashes.compile().unwrap().unwrap();
        assert_eq!(preview(&c, Some(&r)), None);
    }
}
