//! Replay comparison: how a replayed call's answer relates to the original's.
//!
//! Pure rules, no I/O. [`ResponseOutcome::from_body`] reads a stored response — a
//! `chat.completion` JSON body, a relayed SSE stream, an embeddings list or an error — into
//! what matters for comparison; [`compare`] grades two of them:
//!
//! - **EXACT**: the *content hashes* are identical. The content hash is SHA-256 over the
//!   canonical JSON of the status, each choice's text, finish reason and tool calls (name
//!   and arguments as sent), and an embeddings `data` list. It leaves out what differs on
//!   every response by construction — `id`, `created`, `usage`, tool-call ids, the model
//!   snapshot and `system_fingerprint` (those two are reported as drift instead) — so an
//!   answer that says the same thing byte for byte is EXACT even though its raw body hash
//!   differs. Identical raw bodies are EXACT too.
//! - **LOGICAL**: the same decisions (policy and outcome, in order) and the same
//!   structured outcome: status, finish reasons, and tool calls with the same names and
//!   arguments (compared as JSON values, so spacing and key order do not matter). A
//!   choice without tool calls has its text as its outcome, which must then be equal.
//! - **SEMANTIC**: the text of every choice is the same after collapsing whitespace and
//!   lower-casing.
//! - **MISMATCH**: anything else, including an original whose stored body is truncated
//!   (then only the raw hashes can be compared).
//!
//! Model drift is reported separately: the served model or the `system_fingerprint`
//! changed between the original and the replay.

use super::{CallId, Decision, Outcome, ReplayId, TenantId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

named_enum! {
    /// How a call is replayed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum ReplayMode {
        /// Re-evaluate the stored request against today's guardrails; nothing is sent.
        Policy => "policy",
        /// Send the stored request to the upstream again, as a new call.
        Upstream => "upstream",
    }
}

impl ReplayMode {
    pub fn parse(s: &str) -> Result<Self, super::ParseError> {
        Self::from_name(s).ok_or_else(|| {
            super::ParseError::new(format!(
                "unknown replay mode '{}': use \"policy\" (re-check against today's guardrails, nothing sent) or \"upstream\" (send the request again)",
                s.chars().take(40).collect::<String>()
            ))
        })
    }
}

named_enum! {
    /// How closely a replay's answer matches the original's; best first.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum MatchLevel {
        Exact => "EXACT",
        Logical => "LOGICAL",
        Semantic => "SEMANTIC",
        Mismatch => "MISMATCH",
    }
}

impl MatchLevel {
    pub fn parse(s: &str) -> Option<Self> {
        Self::from_name(s)
    }
}

/// One tool call of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub name: String,
    /// The arguments exactly as the model sent them (a JSON text, normally).
    pub arguments: String,
}

impl ToolCall {
    /// Same name, and arguments equal as JSON values (as text when not JSON).
    fn same_logic(&self, other: &Self) -> bool {
        if self.name != other.name {
            return false;
        }
        match (
            serde_json::from_str::<Value>(&self.arguments),
            serde_json::from_str::<Value>(&other.arguments),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.arguments == other.arguments,
        }
    }
}

/// What one choice of an answer said and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ChoiceOutcome {
    pub index: u64,
    pub text: Option<String>,
    pub finish_reason: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// The comparable parts of one stored response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseOutcome {
    pub status: u16,
    /// False when the body is absent, truncated or not a response this module reads.
    pub readable: bool,
    pub model: Option<String>,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChoiceOutcome>,
    /// An embeddings (or other list) response: its `data`, as compact JSON.
    pub data: Option<String>,
    /// An error response: its `error.code` (or `type`).
    pub error_code: Option<String>,
}

impl ResponseOutcome {
    /// The stored response of `call`.
    pub fn of_call(call: &super::CallRecord) -> Self {
        Self::from_body(
            call.status,
            call.response_body.as_deref(),
            call.response_truncated,
        )
    }

    /// Reads a stored response body. `truncated` bodies are not readable: their content
    /// is incomplete, so only the hash of the whole body may be trusted.
    pub fn from_body(status: u16, body: Option<&str>, truncated: bool) -> Self {
        let mut out = Self {
            status,
            ..Self::default()
        };
        let Some(body) = body.filter(|_| !truncated) else {
            return out;
        };
        let trimmed = body.trim_start();
        if trimmed.starts_with("data:") || trimmed.starts_with("event:") {
            out.read_stream(body);
        } else if let Ok(v) = serde_json::from_str::<Value>(body) {
            out.read_json(&v);
        }
        out
    }

    fn read_json(&mut self, v: &Value) {
        let Some(obj) = v.as_object() else {
            return;
        };
        self.readable = true;
        self.model = text_at(v, "/model");
        self.system_fingerprint = text_at(v, "/system_fingerprint");
        if let Some(err) = obj.get("error") {
            self.error_code = text_at(err, "/code").or_else(|| text_at(err, "/type"));
        }
        if let Some(data) = obj.get("data") {
            self.data = Some(data.to_string());
        }
        for (i, c) in obj
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let message = c.get("message").unwrap_or(&Value::Null);
            let mut choice = ChoiceOutcome {
                index: c.get("index").and_then(Value::as_u64).unwrap_or(i as u64),
                text: message_text(message.get("content")).or_else(|| text_at(c, "/text")),
                finish_reason: text_at(c, "/finish_reason"),
                tool_calls: Vec::new(),
            };
            for t in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                choice.tool_calls.push(ToolCall {
                    name: text_at(t, "/function/name").unwrap_or_default(),
                    arguments: text_at(t, "/function/arguments").unwrap_or_default(),
                });
            }
            if let Some(f) = message.get("function_call").filter(|f| f.is_object()) {
                choice.tool_calls.push(ToolCall {
                    name: text_at(f, "/name").unwrap_or_default(),
                    arguments: text_at(f, "/arguments").unwrap_or_default(),
                });
            }
            self.choices.push(choice);
        }
    }

    /// An SSE transcript: `chat.completion.chunk` events, deltas appended in order.
    fn read_stream(&mut self, body: &str) {
        let mut any = false;
        for line in body.lines() {
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                // A broken event: the transcript cannot be trusted as a whole.
                self.readable = false;
                return;
            };
            any = true;
            if let Some(m) = text_at(&chunk, "/model") {
                self.model = Some(m);
            }
            if let Some(f) = text_at(&chunk, "/system_fingerprint") {
                self.system_fingerprint = Some(f);
            }
            if let Some(err) = chunk.get("error") {
                self.error_code = text_at(err, "/code").or_else(|| text_at(err, "/type"));
            }
            for c in chunk
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let pos = match self.choices.iter().position(|x| x.index == index) {
                    Some(p) => p,
                    None => {
                        self.choices.push(ChoiceOutcome {
                            index,
                            ..ChoiceOutcome::default()
                        });
                        self.choices.len() - 1
                    }
                };
                let choice = &mut self.choices[pos];
                let delta = c.get("delta").unwrap_or(&Value::Null);
                if let Some(piece) = message_text(delta.get("content")) {
                    choice.text.get_or_insert_with(String::new).push_str(&piece);
                }
                for t in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let ti = t.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                    while choice.tool_calls.len() <= ti {
                        choice.tool_calls.push(ToolCall {
                            name: String::new(),
                            arguments: String::new(),
                        });
                    }
                    if let Some(name) = text_at(t, "/function/name") {
                        choice.tool_calls[ti].name.push_str(&name);
                    }
                    if let Some(args) = text_at(t, "/function/arguments") {
                        choice.tool_calls[ti].arguments.push_str(&args);
                    }
                }
                if let Some(f) = text_at(c, "/finish_reason") {
                    choice.finish_reason = Some(f);
                }
            }
        }
        self.choices.sort_by_key(|c| c.index);
        self.readable = any;
    }

    /// SHA-256 (hex) of the content (see the module docs); `None` when unreadable.
    pub fn content_sha256(&self) -> Option<String> {
        if !self.readable {
            return None;
        }
        let canonical = json!({
            "status": self.status,
            "choices": self.choices,
            "data": self.data,
            "error_code": self.error_code,
        });
        Some(hex::encode(Sha256::digest(
            canonical.to_string().as_bytes(),
        )))
    }

    /// The text of every choice, in order (an absent text is empty).
    fn texts(&self) -> Vec<&str> {
        self.choices
            .iter()
            .map(|c| c.text.as_deref().unwrap_or(""))
            .collect()
    }
}

fn text_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A message `content`: a string, or the `text` of its parts joined.
fn message_text(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

/// Whitespace collapsed to single spaces, trimmed, lower-cased.
pub fn normalize_text(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The (policy, outcome) pairs of a decision list, in order: what "same decisions" means.
/// Measured values (rate-limit counts, estimated cost) differ on every call and are left out.
fn decision_keys(ds: &[Decision]) -> Vec<(&str, Outcome)> {
    ds.iter().map(|d| (d.policy.as_str(), d.outcome)).collect()
}

pub fn same_decisions(a: &[Decision], b: &[Decision]) -> bool {
    decision_keys(a) == decision_keys(b)
}

/// One side of a comparison: a stored call's answer and decisions.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub outcome: &'a ResponseOutcome,
    pub decisions: &'a [Decision],
    /// SHA-256 of the whole response body as sent.
    pub response_sha256: Option<&'a str>,
    /// The model recorded for the call (the served one when known).
    pub model: Option<&'a str>,
}

impl<'a> Side<'a> {
    /// The side of a stored call whose response reads as `outcome`.
    pub fn of(call: &'a super::CallRecord, outcome: &'a ResponseOutcome) -> Self {
        Self {
            outcome,
            decisions: &call.decisions,
            response_sha256: call.response_sha256.as_deref(),
            model: call.model.as_deref(),
        }
    }
}

/// Whether the model behind the answer changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub detected: bool,
    pub original_model: Option<String>,
    pub replay_model: Option<String>,
    pub original_system_fingerprint: Option<String>,
    pub replay_system_fingerprint: Option<String>,
    /// What changed, in words.
    pub reasons: Vec<String>,
}

/// The verdict on a replay, with the facts it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub match_level: MatchLevel,
    pub original_content_sha256: Option<String>,
    pub replay_content_sha256: Option<String>,
    pub same_decisions: bool,
    pub same_status: bool,
    pub same_finish_reasons: bool,
    pub same_tool_calls: bool,
    pub same_text: bool,
    pub same_normalized_text: bool,
    pub drift: Drift,
    pub notes: Vec<String>,
}

/// Grades a replay against its original (see the module docs for the levels).
pub fn compare(original: Side<'_>, replay: Side<'_>) -> Comparison {
    let (o, r) = (original.outcome, replay.outcome);
    let oc = o.content_sha256();
    let rc = r.content_sha256();
    let mut notes = Vec::new();
    let same_decisions = same_decisions(original.decisions, replay.decisions);
    let same_status = o.status == r.status;
    let paired = o.choices.len() == r.choices.len();
    let same_finish_reasons = paired
        && o.choices
            .iter()
            .zip(&r.choices)
            .all(|(a, b)| a.finish_reason == b.finish_reason);
    let same_tool_calls = paired
        && o.choices.iter().zip(&r.choices).all(|(a, b)| {
            a.tool_calls.len() == b.tool_calls.len()
                && a.tool_calls
                    .iter()
                    .zip(&b.tool_calls)
                    .all(|(x, y)| x.same_logic(y))
        });
    let same_text = paired && o.texts() == r.texts();
    let same_normalized_text = paired
        && o.texts()
            .iter()
            .zip(r.texts())
            .all(|(a, b)| normalize_text(a) == normalize_text(b));
    let texts_as_outcome = paired
        && o.choices.iter().zip(&r.choices).all(|(a, b)| {
            // With tool calls on both sides the calls are the outcome; otherwise the text.
            (!a.tool_calls.is_empty() && !b.tool_calls.is_empty()) || a.text == b.text
        });

    let raw_equal =
        matches!((original.response_sha256, replay.response_sha256), (Some(a), Some(b)) if a == b);
    let match_level = if raw_equal || (oc.is_some() && oc == rc) {
        MatchLevel::Exact
    } else if !o.readable || !r.readable {
        notes.push(
            if !o.readable {
                "the original response is not stored in full (truncated, absent or unreadable): only the hash of the whole body could be compared"
            } else {
                "the replay's response is not stored in full (truncated, absent or unreadable): only the hash of the whole body could be compared"
            }
            .to_owned(),
        );
        MatchLevel::Mismatch
    } else if same_decisions
        && same_status
        && same_finish_reasons
        && same_tool_calls
        && texts_as_outcome
        && o.data == r.data
        && o.error_code == r.error_code
    {
        MatchLevel::Logical
    } else if same_normalized_text && o.choices.iter().any(|c| c.text.is_some()) {
        MatchLevel::Semantic
    } else {
        MatchLevel::Mismatch
    };

    let original_model = o.model.clone().or(original.model.map(str::to_owned));
    let replay_model = r.model.clone().or(replay.model.map(str::to_owned));
    let mut reasons = Vec::new();
    if original_model != replay_model {
        reasons.push(format!(
            "model changed from {} to {}",
            original_model.as_deref().unwrap_or("(unknown)"),
            replay_model.as_deref().unwrap_or("(unknown)")
        ));
    }
    if o.system_fingerprint != r.system_fingerprint
        && (o.system_fingerprint.is_some() || r.system_fingerprint.is_some())
    {
        reasons.push(format!(
            "system_fingerprint changed from {} to {}",
            o.system_fingerprint.as_deref().unwrap_or("(none)"),
            r.system_fingerprint.as_deref().unwrap_or("(none)")
        ));
    }
    Comparison {
        match_level,
        original_content_sha256: oc,
        replay_content_sha256: rc,
        same_decisions,
        same_status,
        same_finish_reasons,
        same_tool_calls,
        same_text,
        same_normalized_text,
        drift: Drift {
            detected: !reasons.is_empty(),
            original_model,
            replay_model,
            original_system_fingerprint: o.system_fingerprint.clone(),
            replay_system_fingerprint: r.system_fingerprint.clone(),
            reasons,
        },
        notes,
    }
}

/// A policy decision that came out differently today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionChange {
    pub policy: String,
    /// `None`: the check was not reached (the call was stopped before it).
    pub original: Option<Outcome>,
    pub now: Option<Outcome>,
}

/// The checks whose outcome differs between two decision lists, in pipeline order.
pub fn decision_changes(original: &[Decision], now: &[Decision]) -> Vec<DecisionChange> {
    let mut policies: Vec<&str> = Vec::new();
    for d in now.iter().chain(original) {
        if !policies.contains(&d.policy.as_str()) {
            policies.push(&d.policy);
        }
    }
    // A policy may appear twice (dg-001 before and after the call): compare the worst.
    let worst = |ds: &[Decision], p: &str| {
        ds.iter()
            .filter(|d| d.policy == p)
            .map(|d| d.outcome)
            .max_by_key(|o| o.stops())
    };
    policies
        .into_iter()
        .filter_map(|p| {
            let (a, b) = (worst(original, p), worst(now, p));
            (a != b).then(|| DecisionChange {
                policy: p.to_owned(),
                original: a,
                now: b,
            })
        })
        .collect()
}

/// A stored replay: what was replayed, how, and the report given back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayRecord {
    pub id: ReplayId,
    pub tenant_id: TenantId,
    /// The original call.
    pub call_id: CallId,
    /// The new call an upstream replay made (`replay_of` = `call_id`).
    pub replay_call_id: Option<CallId>,
    pub mode: ReplayMode,
    pub match_level: Option<MatchLevel>,
    pub model_drift: bool,
    pub created_at: Timestamp,
    /// The report as returned by `POST /v1/replay/{call_id}`.
    pub report: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_body(text: Option<&str>, finish: &str, tools: &[(&str, &str)], fp: &str) -> String {
        let tool_calls: Vec<Value> = tools
            .iter()
            .enumerate()
            .map(|(i, (n, a))| json!({"id": format!("call_{i}{fp}"), "type": "function", "function": {"name": n, "arguments": a}}))
            .collect();
        let mut message = json!({"role": "assistant", "content": text});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        json!({
            "id": format!("chatcmpl-{fp}"), "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": fp,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        })
        .to_string()
    }

    fn outcome(body: &str) -> ResponseOutcome {
        ResponseOutcome::from_body(200, Some(body), false)
    }

    fn side<'a>(o: &'a ResponseOutcome, ds: &'a [Decision]) -> Side<'a> {
        Side {
            outcome: o,
            decisions: ds,
            response_sha256: None,
            model: None,
        }
    }

    fn level(a: &str, b: &str) -> MatchLevel {
        let ds = [Decision::pass("killswitch", "not frozen")];
        compare(side(&outcome(a), &ds), side(&outcome(b), &ds)).match_level
    }

    #[test]
    fn the_same_words_with_new_ids_and_times_are_exact() {
        let a = chat_body(Some("Paris."), "stop", &[], "fp_1");
        let b = chat_body(Some("Paris."), "stop", &[], "fp_1")
            .replace("\"created\":1", "\"created\":2");
        assert_eq!(level(&a, &b), MatchLevel::Exact);
    }

    #[test]
    fn the_same_tool_call_with_reformatted_arguments_is_logical() {
        let a = chat_body(
            None,
            "tool_calls",
            &[("get_weather", r#"{"city":"Paris","unit":"c"}"#)],
            "fp_1",
        );
        let b = chat_body(
            Some("Let me check."),
            "tool_calls",
            &[("get_weather", r#"{ "unit": "c", "city": "Paris" }"#)],
            "fp_1",
        );
        assert_eq!(level(&a, &b), MatchLevel::Logical);
        let c = chat_body(
            None,
            "tool_calls",
            &[("get_weather", r#"{"city":"Lyon","unit":"c"}"#)],
            "fp_1",
        );
        assert_eq!(level(&a, &c), MatchLevel::Mismatch);
    }

    #[test]
    fn text_differing_in_case_and_spacing_is_semantic_and_other_text_a_mismatch() {
        let a = chat_body(Some("Paris is the capital."), "stop", &[], "fp_1");
        let b = chat_body(Some("  paris IS the\n capital. "), "stop", &[], "fp_1");
        assert_eq!(level(&a, &b), MatchLevel::Semantic);
        let c = chat_body(Some("Lyon is the capital."), "stop", &[], "fp_1");
        assert_eq!(level(&a, &c), MatchLevel::Mismatch);
    }

    #[test]
    fn different_decisions_stop_a_logical_match() {
        let a = chat_body(None, "tool_calls", &[("f", "{}")], "fp_1");
        let b = chat_body(Some("x"), "tool_calls", &[("f", "{ }")], "fp_1");
        let before = [Decision::pass("dg-005", "ok")];
        let after = [Decision::new("dg-005", Outcome::Block, "matched")];
        let (oa, ob) = (outcome(&a), outcome(&b));
        let c = compare(side(&oa, &before), side(&ob, &after));
        assert!(!c.same_decisions);
        assert_eq!(c.match_level, MatchLevel::Mismatch);
    }

    #[test]
    fn a_changed_fingerprint_or_model_is_drift() {
        let a = chat_body(Some("x"), "stop", &[], "fp_1");
        let b = chat_body(Some("x"), "stop", &[], "fp_2");
        let (oa, ob) = (outcome(&a), outcome(&b));
        let c = compare(side(&oa, &[]), side(&ob, &[]));
        assert_eq!(c.match_level, MatchLevel::Exact);
        assert!(c.drift.detected);
        assert!(c.drift.reasons[0].contains("fp_1"), "{:?}", c.drift);
        let same = compare(side(&oa, &[]), side(&oa, &[]));
        assert!(!same.drift.detected);
    }

    #[test]
    fn a_streamed_answer_reads_like_the_same_full_answer() {
        let sse = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m\",\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let s = ResponseOutcome::from_body(200, Some(sse), false);
        assert!(s.readable);
        assert_eq!(s.choices.len(), 1);
        assert_eq!(s.choices[0].text.as_deref(), Some("Hello world"));
        assert_eq!(s.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            s.choices[0].tool_calls,
            vec![ToolCall {
                name: "f".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert_eq!(s.system_fingerprint.as_deref(), Some("fp"));
    }

    #[test]
    fn a_truncated_original_is_only_exact_by_its_raw_hash() {
        let a = ResponseOutcome::from_body(200, Some("{\"choices\":"), true);
        assert!(!a.readable);
        assert!(a.content_sha256().is_none());
        let b = outcome(&chat_body(Some("x"), "stop", &[], "f"));
        let mut c = compare(side(&a, &[]), side(&b, &[]));
        assert_eq!(c.match_level, MatchLevel::Mismatch);
        assert!(!c.notes.is_empty());
        let hashed = |o| Side {
            response_sha256: Some("abc"),
            ..side(o, &[])
        };
        c = compare(hashed(&a), hashed(&a));
        assert_eq!(c.match_level, MatchLevel::Exact);
    }

    #[test]
    fn json_objects_compare_regardless_of_key_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn decision_changes_name_the_checks_that_came_out_differently() {
        let before = [
            Decision::pass("killswitch", "ok"),
            Decision::pass("dg-005", "ok"),
        ];
        let now = [
            Decision::pass("killswitch", "ok"),
            Decision::new("dg-005", Outcome::Block, "matched"),
        ];
        let changes = decision_changes(&before, &now);
        assert_eq!(
            changes,
            vec![DecisionChange {
                policy: "dg-005".into(),
                original: Some(Outcome::Pass),
                now: Some(Outcome::Block)
            }]
        );
        assert!(decision_changes(&before, &before).is_empty());
    }

    #[test]
    fn modes_parse_and_unknown_ones_are_explained() {
        assert_eq!(ReplayMode::parse("policy").unwrap(), ReplayMode::Policy);
        assert_eq!(ReplayMode::parse("upstream").unwrap(), ReplayMode::Upstream);
        let err = ReplayMode::parse("both").unwrap_err();
        assert!(
            err.0.contains("policy") && err.0.contains("upstream"),
            "{err}"
        );
    }
}
