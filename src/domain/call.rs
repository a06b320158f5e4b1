//! A recorded call: everything agv-server knows about one request through the front door,
//! whether it was forwarded or stopped. Records are evidence, so they are written once
//! and never updated.

use super::{CallId, Decision, KeyId, Money, TenantId, Timestamp};
use serde::{Deserialize, Serialize};

/// The OpenAI-compatible endpoint a call used.
pub mod endpoint {
    pub const CHAT_COMPLETIONS: &str = "chat.completions";
    pub const EMBEDDINGS: &str = "embeddings";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: CallId,
    pub tenant_id: TenantId,
    pub key_id: KeyId,
    pub created_at: Timestamp,
    /// `chat.completions` or `embeddings`.
    pub endpoint: String,
    pub model: Option<String>,
    pub stream: bool,
    /// The end user: the OpenAI `user` field or the `x-agv-user-id` header.
    pub end_user: Option<String>,
    pub session_id: Option<String>,
    /// The `x-agv-metadata` header, a JSON object.
    pub metadata: Option<serde_json::Value>,

    /// The request body as received (up to the configured maximum).
    pub request_body: String,
    pub request_truncated: bool,
    /// SHA-256 (hex) of the whole request body, even when the stored body is truncated.
    pub request_sha256: String,
    /// The response body sent to the client (for a stream: the relayed SSE text).
    pub response_body: Option<String>,
    pub response_truncated: bool,
    pub response_sha256: Option<String>,

    /// The HTTP status returned to the client.
    pub status: u16,
    /// The error given to the client, if any.
    pub error: Option<String>,
    /// True when a check stopped the call before the upstream.
    pub blocked: bool,
    /// The policy that stopped it (`killswitch`, `dg-003`, `budget`, …).
    pub blocked_by: Option<String>,
    pub decisions: Vec<Decision>,

    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    /// `None` when the model's price is unknown — never recorded as zero.
    pub cost: Option<Money>,

    /// Time from the request's arrival to its last byte, in microseconds.
    pub latency_us: i64,
    /// Time the upstream took (all attempts), in microseconds; `None` if never called.
    pub upstream_latency_us: Option<i64>,
    /// Time the checks took, in microseconds.
    pub enforcement_us: i64,
    /// Upstream attempts made (0 when blocked).
    pub upstream_attempts: i32,
    /// The upstream base URL that served the call.
    pub upstream: Option<String>,

    /// SHA-256 (hex) of the request body exactly as stored (after truncation, redaction
    /// and U+0000 replacement), which `request_sha256` — the content as sent — may not
    /// be. Set by the store on every call it records; `None` on calls recorded before
    /// chain v2 (see `domain::chain`). Whatever a caller puts here is ignored on insert.
    #[serde(default)]
    pub request_body_sha256: Option<String>,
    /// The same for the response body; `None` also when no response body was stored.
    #[serde(default)]
    pub response_body_sha256: Option<String>,
    /// When retention removed the bodies (the request body is then empty, the response
    /// body empty or absent); `None` while they are kept. Metadata, tokens, cost,
    /// decisions and every SHA-256 stay.
    #[serde(default)]
    pub body_pruned_at: Option<Timestamp>,
}

impl CallRecord {
    /// A chat-completions call of `key` with nothing recorded yet: a fresh id, no body,
    /// status 0, no decisions, usage, timing or upstream. Callers set what they know with
    /// `CallRecord { .., ..CallRecord::new(..) }`.
    pub fn new(tenant_id: TenantId, key_id: KeyId, created_at: Timestamp) -> Self {
        let chat = endpoint::CHAT_COMPLETIONS.into();
        Self::blank(CallId::generate(), tenant_id, key_id, created_at, chat)
    }

    /// Call `id` of `key` at `endpoint` with nothing recorded yet (what [`CallRecord::new`]
    /// gives, for a caller that already has the id and endpoint, such as the proxy). Its
    /// empty strings and lists allocate nothing.
    pub fn blank(
        id: CallId,
        tenant_id: TenantId,
        key_id: KeyId,
        created_at: Timestamp,
        endpoint: String,
    ) -> Self {
        Self {
            id,
            tenant_id,
            key_id,
            created_at,
            endpoint,
            model: None,
            stream: false,
            end_user: None,
            session_id: None,
            metadata: None,
            request_body: String::new(),
            request_truncated: false,
            request_sha256: String::new(),
            response_body: None,
            response_truncated: false,
            response_sha256: None,
            status: 0,
            error: None,
            blocked: false,
            blocked_by: None,
            decisions: Vec::new(),
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            total_tokens: None,
            cost: None,
            latency_us: 0,
            upstream_latency_us: None,
            enforcement_us: 0,
            upstream_attempts: 0,
            upstream: None,
            request_body_sha256: None,
            response_body_sha256: None,
            body_pruned_at: None,
        }
    }
}

/// A recorded call as a policy replay (`guard::backtest`) reads it: the request, who sent
/// it and when, how it was decided and the usage it was settled with. Not the response
/// body, the decisions, the metadata or the hashes: a backtest over 200,000 calls reads
/// this, a page at a time, instead of whole records.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub id: CallId,
    pub key_id: KeyId,
    pub created_at: Timestamp,
    pub endpoint: String,
    pub model: Option<String>,
    pub end_user: Option<String>,
    pub request_body: String,
    pub request_truncated: bool,
    pub status: u16,
    pub blocked: bool,
    pub blocked_by: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
}

impl From<&CallRecord> for RecordedRequest {
    fn from(c: &CallRecord) -> Self {
        Self {
            id: c.id.clone(),
            key_id: c.key_id.clone(),
            created_at: c.created_at,
            endpoint: c.endpoint.clone(),
            model: c.model.clone(),
            end_user: c.end_user.clone(),
            request_body: c.request_body.clone(),
            request_truncated: c.request_truncated,
            status: c.status,
            blocked: c.blocked,
            blocked_by: c.blocked_by.clone(),
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            cached_tokens: c.cached_tokens,
        }
    }
}

impl RecordedRequest {
    /// Its position in a list of calls.
    pub fn cursor(&self) -> CallCursor {
        CallCursor {
            created_at: self.created_at,
            id: self.id.clone(),
        }
    }
}

/// Filters for listing calls; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub end_user: Option<String>,
    pub session_id: Option<String>,
    pub key_id: Option<KeyId>,
    pub model: Option<String>,
    pub status: Option<u16>,
    pub blocked: Option<bool>,
}

/// A position in a list of calls (newest first; oldest first for a policy replay): the
/// last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCursor {
    pub created_at: Timestamp,
    pub id: CallId,
}

impl CallCursor {
    /// An opaque text form for APIs: `<millis>.<id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.millis(), self.id)
    }

    pub fn decode(s: &str) -> Result<Self, super::ParseError> {
        let bad = || {
            super::ParseError::new(
                "invalid cursor: pass back the next_cursor value of the previous page",
            )
        };
        let (ms, id) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            created_at: Timestamp::from_millis(ms.parse().map_err(|_| bad())?),
            id: CallId::parse(id).map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = CallCursor {
            created_at: Timestamp::from_millis(1_700_000_000_123),
            id: CallId::generate(),
        };
        assert_eq!(CallCursor::decode(&c.encode()).unwrap(), c);
        for bad in [
            "",
            "x",
            "1.call_x",
            "abc.call_00000000000000000000000000000000",
        ] {
            assert!(CallCursor::decode(bad).is_err(), "{bad}");
        }
    }
}
