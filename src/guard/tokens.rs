//! A cheap estimate of how many prompt tokens a request carries.
//!
//! This is an **estimate used only for admission checks** (max tokens, max cost, the
//! tokens-per-minute limits and the budget reservation) before the upstream has answered.
//! It never replaces the usage the upstream reports, which is what gets recorded and
//! charged. It must stay cheap: no tokenizer, no allocation, one pass over the JSON.
//!
//! The rule: about four bytes of text per token (bytes rather than characters, so text in
//! scripts that tokenize densely, such as CJK, is over- rather than under-estimated), plus
//! a small overhead per chat message and a flat amount per image part.

use serde_json::Value;

/// Bytes of text per token, rounded up.
const BYTES_PER_TOKEN: u64 = 4;
/// Role, separators and name framing of one chat message.
const PER_MESSAGE_OVERHEAD: u64 = 4;
/// The tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;
/// An image part at low detail; high-detail images cost more, and are caught by the
/// upstream's reported usage afterwards.
const PER_IMAGE_PART: u64 = 85;

fn text_tokens(s: &str) -> u64 {
    bytes_tokens(s.len() as u64)
}

/// Estimated tokens of `bytes` bytes of text (a streamed answer cut short, say).
pub fn bytes_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_TOKEN)
}

/// The sum of the tokens of every string inside `v` (tool definitions, tool-call
/// arguments), without serializing it.
fn nested_text_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => text_tokens(s),
        Value::Array(items) => items.iter().map(nested_text_tokens).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| text_tokens(k) + nested_text_tokens(v))
            .sum(),
        _ => 1,
    }
}

fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(s) => text_tokens(s),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::String(s) => text_tokens(s),
                Value::Object(o) => match o.get("text").and_then(Value::as_str) {
                    Some(t) => text_tokens(t),
                    None if o.contains_key("image_url") => PER_IMAGE_PART,
                    None => o
                        .get("refusal")
                        .and_then(Value::as_str)
                        .map_or(0, text_tokens),
                },
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Embeddings (and legacy completions) input: a string, an array of strings, an array of
/// token ids, or an array of arrays of token ids.
fn input_tokens(input: &Value) -> u64 {
    match input {
        Value::String(s) => text_tokens(s),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Number(_) => 1,
                other => input_tokens(other),
            })
            .sum(),
        _ => 0,
    }
}

/// Estimated prompt tokens of a chat completion, embeddings or completions request body.
pub fn estimate_prompt_tokens(body: &Value) -> u64 {
    let mut total = 0;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        total += REPLY_PRIMING;
        for m in messages {
            total += PER_MESSAGE_OVERHEAD;
            total += m.get("content").map_or(0, content_tokens);
            total += m.get("name").and_then(Value::as_str).map_or(0, text_tokens);
            total += m.get("tool_calls").map_or(0, nested_text_tokens);
        }
        for defs in ["tools", "functions"] {
            total += body.get(defs).map_or(0, nested_text_tokens);
        }
    }
    for field in ["input", "prompt"] {
        total += body.get(field).map_or(0, input_tokens);
    }
    total
}

/// The completion allowance the client asked for: `max_completion_tokens`, else the older
/// `max_tokens`; `None` when it set neither.
pub fn requested_max_completion(body: &Value) -> Option<u64> {
    body.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_messages_count_four_bytes_per_token_plus_overhead() {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "12345678"},
            {"role": "user", "content": "abcd"},
        ]});
        // priming 3 + 2 * 4 overhead + 2 + 1 text tokens.
        assert_eq!(estimate_prompt_tokens(&body), 3 + 8 + 3);
    }

    #[test]
    fn text_parts_count_and_images_count_a_flat_amount() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "abcdefgh"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        ]}]});
        assert_eq!(estimate_prompt_tokens(&body), 3 + 4 + 2 + PER_IMAGE_PART);
    }

    #[test]
    fn tool_definitions_and_calls_are_counted() {
        let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
        let with_tools = json!({"messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "lookup_weather",
                "parameters": {"type": "object"}}}]});
        assert!(estimate_prompt_tokens(&with_tools) > estimate_prompt_tokens(&plain));
    }

    #[test]
    fn embeddings_input_may_be_a_string_strings_or_token_ids() {
        assert_eq!(estimate_prompt_tokens(&json!({"input": "abcdefgh"})), 2);
        assert_eq!(estimate_prompt_tokens(&json!({"input": ["abcd", "ab"]})), 2);
        assert_eq!(estimate_prompt_tokens(&json!({"input": [1, 2, 3]})), 3);
        assert_eq!(estimate_prompt_tokens(&json!({"input": [[1, 2], [3]]})), 3);
    }

    #[test]
    fn multibyte_text_is_not_underestimated() {
        // Six CJK characters are eighteen bytes: five tokens, not two.
        assert_eq!(estimate_prompt_tokens(&json!({"input": "日本語の文章"})), 5);
    }

    #[test]
    fn odd_shapes_count_as_nothing_rather_than_failing() {
        assert_eq!(estimate_prompt_tokens(&json!({})), 0);
        assert_eq!(estimate_prompt_tokens(&json!([1, 2])), 0);
        assert_eq!(estimate_prompt_tokens(&json!({"messages": "nope"})), 0);
        assert_eq!(
            estimate_prompt_tokens(&json!({"messages": [{"content": 5}]})),
            3 + 4
        );
    }

    #[test]
    fn the_newer_max_completion_tokens_wins_over_max_tokens() {
        assert_eq!(
            requested_max_completion(&json!({"max_tokens": 10, "max_completion_tokens": 20})),
            Some(20)
        );
        assert_eq!(
            requested_max_completion(&json!({"max_tokens": 10})),
            Some(10)
        );
        assert_eq!(requested_max_completion(&json!({"max_tokens": -1})), None);
        assert_eq!(requested_max_completion(&json!({})), None);
    }
}
