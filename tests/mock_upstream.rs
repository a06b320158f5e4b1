//! Tests of the mock OpenAI upstream itself (`agv_testkit::upstream`): what it
//! answers, what it records, and every failure knob, over real HTTP with reqwest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use agv_testkit::upstream::{DEFAULT_REPLY, MockUpstream, Mode, refused_url};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    agv_testkit::http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn chat_body(text: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": text}
        ]
    })
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.url()))
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Reads a whole SSE body; returns the `data:` payloads in order and whether reading
/// ended in a transport error.
async fn read_sse(resp: reqwest::Response) -> (Vec<String>, bool) {
    let mut buf = String::new();
    let mut failed = false;
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => buf.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let data = buf
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (data, failed)
}

fn chunks(data: &[String]) -> Vec<Value> {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn chat_echoes_the_last_user_message_with_documented_usage() {
    let mock = MockUpstream::start();
    let resp = post(&mock, "/chat/completions", &chat_body("tell me a joke")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["system_fingerprint"].is_string());
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "tell me a joke");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "Be brief." (2) + "tell me a joke" (4); reply is 4 words.
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 10);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    assert_eq!(mock.hits(), 1);
    let rec = mock.last_request().unwrap();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.header("Authorization"), Some("Bearer sk-test"));
    assert_eq!(rec.body, chat_body("tell me a joke"));
}

#[tokio::test]
async fn chat_without_a_user_message_gets_the_default_reply_and_max_tokens_truncates() {
    let mock = MockUpstream::start();
    let body = json!({"model": "m", "messages": [{"role": "system", "content": "x"}]});
    let resp: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["choices"][0]["message"]["content"], DEFAULT_REPLY);

    let mut body = chat_body("one two three four five");
    body["max_tokens"] = json!(2);
    let resp: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["choices"][0]["message"]["content"], "one two");
    assert_eq!(resp["choices"][0]["finish_reason"], "length");
    assert_eq!(resp["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn chat_rejects_bodies_that_are_not_json_or_lack_a_model() {
    let mock = MockUpstream::start();
    let resp = client()
        .post(format!("{}/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.hits(), 1);
    assert_eq!(mock.last_request().unwrap().body, Value::Null);

    let resp = post(&mock, "/chat/completions", &json!({"messages": []})).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn streaming_without_include_usage_has_no_usage_field_and_ends_with_done() {
    let mock = MockUpstream::start();
    let mut body = chat_body("alpha beta gamma");
    body["stream"] = json!(true);
    let resp = post(&mock, "/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (data, failed) = read_sse(resp).await;
    assert!(!failed);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = chunks(&data);
    // role chunk + one chunk per word + finish chunk
    assert_eq!(chunks.len(), 1 + 3 + 1);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert!(c.get("usage").is_none(), "usage only when asked: {c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "alpha beta gamma");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn streaming_with_include_usage_ends_with_a_usage_chunk_without_choices() {
    let mock = MockUpstream::start();
    mock.set_chunks(Some(2));
    let mut body = chat_body("alpha beta gamma");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (data, failed) = read_sse(post(&mock, "/chat/completions", &body).await).await;
    assert!(!failed);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = chunks(&data);
    // role + 2 content + finish + usage
    assert_eq!(chunks.len(), 5);
    for c in &chunks[..4] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    let usage_chunk = &chunks[4];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 8);
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "alpha beta gamma");
}

#[tokio::test]
async fn embeddings_are_deterministic_in_float_and_base64() {
    let mock = MockUpstream::start();
    let body = json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"], "dimensions": 4});
    let resp: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["object"], "list");
    assert_eq!(resp["model"], "text-embedding-3-small");
    assert_eq!(resp["data"].as_array().unwrap().len(), 2);
    assert_eq!(resp["data"][1]["index"], 1);
    let v = resp["data"][0]["embedding"].as_array().unwrap();
    assert_eq!(v.len(), 4);
    assert_eq!(resp["usage"]["prompt_tokens"], 3);
    assert_eq!(resp["usage"]["total_tokens"], 3);

    let again: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["data"], resp["data"]);

    let b64 =
        json!({"model": "m", "input": "hello world", "dimensions": 4, "encoding_format": "base64"});
    let resp: Value = post(&mock, "/embeddings", &b64).await.json().await.unwrap();
    let s = resp["data"][0]["embedding"].as_str().unwrap();
    // 4 f32 = 16 bytes = 24 base64 characters with padding.
    assert_eq!(s.len(), 24);
}

#[tokio::test]
async fn models_lists_a_list_object() {
    let mock = MockUpstream::start();
    let resp = client()
        .get(format!("{}/models", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini" && m["object"] == "model")
    );
    let unknown = client()
        .get(format!("{}/nope", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let err: Value = unknown.json().await.unwrap();
    assert!(err["error"]["message"].is_string());
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn error_mode_answers_with_the_status_and_openai_error_shape() {
    let mock = MockUpstream::start();
    mock.set_mode(Mode::error(429));
    let resp = post(&mock, "/chat/completions", &chat_body("hi")).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"].as_object().unwrap().contains_key("param"));

    mock.set_mode(Mode::Error {
        status: 500,
        message: "boom".into(),
    });
    let resp = post(&mock, "/embeddings", &json!({"model": "m", "input": "x"})).await;
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "boom");
    assert_eq!(body["error"]["type"], "server_error");
}

#[tokio::test]
async fn fail_first_fails_n_requests_then_succeeds() {
    let mock = MockUpstream::start();
    mock.set_mode(Mode::FailFirst { n: 2, status: 503 });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            post(&mock, "/chat/completions", &chat_body("hi"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![503, 503, 200, 200]);
    assert_eq!(mock.hits(), 4);
}

#[tokio::test]
async fn hang_never_answers_but_counts_the_hit() {
    let mock = MockUpstream::start();
    mock.set_mode(Mode::Hang);
    let started = Instant::now();
    let result = agv_testkit::http_client()
        .post(format!("{}/chat/completions", mock.url()))
        .json(&chat_body("hi"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    let err = result.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn malformed_json_mode_sends_a_body_that_does_not_parse() {
    let mock = MockUpstream::start();
    mock.set_mode(Mode::MalformedJson);
    let resp = post(&mock, "/chat/completions", &chat_body("hi")).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let (data, _) = read_sse(post(&mock, "/chat/completions", &body).await).await;
    assert!(serde_json::from_str::<Value>(&data[0]).is_err());
}

#[tokio::test]
async fn cut_stream_closes_the_connection_without_done() {
    let mock = MockUpstream::start();
    mock.set_mode(Mode::CutStream { after_chunks: 2 });
    let mut body = chat_body("a b c d e f");
    body["stream"] = json!(true);
    let (data, failed) = read_sse(post(&mock, "/chat/completions", &body).await).await;
    assert!(failed, "the body must end in a transport error");
    assert_eq!(data.len(), 2);
    assert!(!data.iter().any(|d| d == "[DONE]"));

    // Non-streaming requests are unaffected.
    let resp = post(&mock, "/chat/completions", &chat_body("hi")).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn refused_url_refuses_connections() {
    let url = refused_url();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"));
    let err = client()
        .get(format!("{url}/models"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[tokio::test]
async fn latency_and_chunk_delay_slow_the_answer_down() {
    let mock = MockUpstream::start();
    mock.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    let resp = post(&mock, "/chat/completions", &chat_body("hi")).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    mock.set_latency(Duration::ZERO);
    mock.set_chunk_delay(Duration::from_millis(40));
    mock.set_chunks(Some(3));
    let mut body = chat_body("a b c");
    body["stream"] = json!(true);
    let started = Instant::now();
    let (data, failed) = read_sse(post(&mock, "/chat/completions", &body).await).await;
    assert!(!failed);
    // role + 3 content + finish + [DONE] = 6 frames, 5 delays between them.
    assert_eq!(data.len(), 6);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn required_key_is_enforced_and_reset_restores_defaults() {
    let mock = MockUpstream::start();
    mock.set_required_key(Some("sk-right"));
    let resp = post(&mock, "/chat/completions", &chat_body("hi")).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    mock.set_mode(Mode::error(500));
    mock.reset();
    assert_eq!(mock.hits(), 0);
    assert!(mock.requests().is_empty());
    let resp = post(&mock, "/chat/completions", &chat_body("hi")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests().len(), 1);
}

/// Started and queried from a plain thread, without any async runtime, over a raw socket.
#[test]
fn works_from_a_plain_thread_and_stops_on_drop() {
    let mock = MockUpstream::start();
    let addr = mock.addr();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /v1/models HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"object\":\"list\""));
    assert_eq!(mock.hits(), 1);

    drop(mock);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn crafted_chat_replies_answer_the_next_non_streaming_calls_in_order() {
    let mock = MockUpstream::start();
    let first = json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "one"}, "finish_reason": "stop"}]});
    let second = json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": []}, "finish_reason": "tool_calls"}]});
    mock.push_chat_reply(first.clone());
    mock.push_chat_reply(second.clone());
    // A stream is answered as usual and leaves the queue alone.
    let mut streamed = chat_body("hi");
    streamed["stream"] = json!(true);
    let (data, failed) = read_sse(post(&mock, "/chat/completions", &streamed).await).await;
    assert!(!failed);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for expected in [&first, &second] {
        let resp = post(&mock, "/chat/completions", &chat_body("anything")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&resp.json::<Value>().await.unwrap(), expected);
    }
    // The queue is empty again: the deterministic reply is back.
    let body: Value = post(&mock, "/chat/completions", &chat_body("back again"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "back again");
    mock.push_chat_reply(first);
    mock.reset();
    let body: Value = post(&mock, "/chat/completions", &chat_body("after reset"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "after reset");
}
