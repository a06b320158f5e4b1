//! A mock OpenAI upstream: a real HTTP server on loopback that speaks the parts of the
//! OpenAI protocol agv-server forwards, with knobs for latency, failures and hit counting.
//!
//! It exists so that tests, examples and benchmarks exercise the real network path
//! (STYLE.md rule 17). It must stay deterministic: the same request always gets the same
//! answer, so tests can assert on exact bytes. It must not be used by the server itself.
//!
//! # Endpoints (all under `/v1`)
//! - `POST /v1/chat/completions`, non-streaming (`chat.completion`) and streaming SSE
//!   (`chat.completion.chunk` events, then `data: [DONE]`). A stream is: one role chunk
//!   (`delta: {"role":"assistant","content":""}`), the content chunks (see
//!   [`MockUpstream::set_chunks`]), one finish chunk (`delta: {}` with `finish_reason`),
//!   and, only when the request has `stream_options.include_usage: true`, a usage chunk
//!   with `choices: []`; in that case every other chunk carries `"usage": null`, as
//!   OpenAI does.
//! - `POST /v1/embeddings`: deterministic unit vectors derived from SHA-256 of each input,
//!   `dimensions` from the request (default 16), `encoding_format: "base64"` honoured
//!   (little-endian `f32`, as the official SDKs request by default).
//! - `GET /v1/models` (a `list` object) and `GET /v1/models/{id}`.
//! - Anything else: 404 with an OpenAI-shaped error.
//!
//! # Deterministic content and usage
//! - The reply is the words of the last `user` message joined by single spaces (or
//!   [`DEFAULT_REPLY`] when there is none), truncated to `max_completion_tokens` /
//!   `max_tokens` words when given, in which case `finish_reason` is `"length"`
//!   (otherwise `"stop"`).
//! - `prompt_tokens` = number of whitespace-separated words in the text of all messages
//!   (string contents and `text` parts); `completion_tokens` = number of words in the
//!   reply; `total_tokens` = their sum; `prompt_tokens_details.cached_tokens` = 0.
//! - Embeddings: `prompt_tokens` = `total_tokens` = words in all inputs (a token-id array
//!   counts one per id).
//! - Ids are `chatcmpl-mock-N` / `req_mock_N` where N is the hit number (1-based).
//! - [`MockUpstream::push_chat_reply`] queues crafted bodies that replace the reply of the
//!   next non-streaming chat completions.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The reply when the request has no `user` message with text.
pub const DEFAULT_REPLY: &str = "Hello from the mock upstream.";
/// Embedding length when the request does not say `dimensions`.
pub const DEFAULT_DIMENSIONS: usize = 16;
/// The model ids `GET /v1/models` lists.
pub const MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"];
const FINGERPRINT: &str = "fp_agv_mock";
/// Bodies larger than this are refused with 413 before they reach the handler.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How the mock answers; set at runtime with [`MockUpstream::set_mode`]. Latency, chunk
/// delay and chunk count are separate knobs and combine with every mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer normally.
    #[default]
    Normal,
    /// Answer every request with `status` and an OpenAI-shaped error body carrying
    /// `message`.
    Error { status: u16, message: String },
    /// Answer the first `n` requests after this mode is set with `status` (OpenAI-shaped
    /// error body), then answer normally. For retry tests.
    FailFirst { n: u64, status: u16 },
    /// Read the request and never answer (the connection stays open). For timeouts.
    Hang,
    /// Answer 200 with a body that is not valid JSON (`Content-Type: application/json`);
    /// a streaming request gets an SSE `data:` line that is not JSON, then `[DONE]`.
    MalformedJson,
    /// Streaming chat: send the first `after_chunks` SSE events (role chunk included),
    /// then close the connection without the terminating chunk and without `[DONE]`.
    /// Non-streaming requests are answered normally.
    CutStream { after_chunks: usize },
}

impl Mode {
    /// [`Mode::Error`] with a generic message for `status`.
    pub fn error(status: u16) -> Self {
        Mode::Error {
            status,
            message: format!("mock upstream error (status {status})"),
        }
    }
}

/// Start-up options. [`MockUpstream::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Where to listen; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// actix worker threads. Default 1 (tests); benchmarks want one per core.
    pub workers: usize,
    /// How many requests to keep for [`MockUpstream::requests`] (oldest dropped first);
    /// 0 records nothing (throughput mode). Default 10,000.
    pub record_limit: usize,
    /// Initial fixed latency before each response. Default zero.
    pub latency: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            record_limit: 10_000,
            latency: Duration::ZERO,
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    pub query: String,
    /// Header names lower-cased; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON, or `Value::Null` when it was empty or not JSON.
    pub body: Value,
    /// Raw body length in bytes.
    pub body_len: usize,
}

impl RecordedRequest {
    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, Default)]
struct Knobs {
    mode: Mode,
    latency: Duration,
    chunk_delay: Duration,
    chunks: Option<usize>,
    required_key: Option<String>,
}

struct Shared {
    knobs: Mutex<Knobs>,
    initial_latency: Duration,
    hits: AtomicU64,
    fail_remaining: AtomicU64,
    record_limit: usize,
    requests: Mutex<VecDeque<RecordedRequest>>,
    /// Crafted bodies for the next non-streaming chat completions, oldest first.
    canned: Mutex<VecDeque<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a test thread must not make every later assertion fail on poison.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn record(&self, req: &HttpRequest, body: &Value, body_len: usize) {
        if self.record_limit == 0 {
            return;
        }
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_ascii_lowercase())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let rec = RecordedRequest {
            method: req.method().as_str().to_owned(),
            path: req.path().to_owned(),
            query: req.query_string().to_owned(),
            headers,
            body: body.clone(),
            body_len,
        };
        let mut requests = lock(&self.requests);
        while requests.len() >= self.record_limit {
            requests.pop_front();
        }
        requests.push_back(rec);
    }

    /// True when this request is one of the first N of a `FailFirst` mode.
    fn take_failure(&self) -> bool {
        self.fail_remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Handle to a running mock upstream. Stops the server on drop.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: Option<ServerHandle>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts the mock on `127.0.0.1:0` with default options. Works from a plain thread
    /// and from inside a tokio runtime: the server runs on its own thread with its own
    /// actix system.
    ///
    /// # Panics
    /// When the server cannot start (no free port); use [`MockUpstream::try_start`] to
    /// handle that.
    pub fn start() -> Self {
        match Self::try_start(MockOptions::default()) {
            Ok(mock) => mock,
            Err(e) => panic!("mock upstream failed to start: {e}"),
        }
    }

    /// Starts the mock with `options`; returns once it accepts connections.
    pub fn try_start(options: MockOptions) -> io::Result<Self> {
        let listener = TcpListener::bind(options.listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            knobs: Mutex::new(Knobs {
                latency: options.latency,
                ..Knobs::default()
            }),
            initial_latency: options.latency,
            hits: AtomicU64::new(0),
            fail_remaining: AtomicU64::new(0),
            record_limit: options.record_limit,
            requests: Mutex::new(VecDeque::new()),
            canned: Mutex::new(VecDeque::new()),
        });
        let data = web::Data::from(Arc::clone(&shared));
        let workers = options.workers.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<ServerHandle>>();
        let thread = std::thread::Builder::new()
            .name(format!("mock-upstream-{}", addr.port()))
            .spawn(move || {
                let system = actix_web::rt::System::new();
                system.block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(MAX_BODY))
                            .default_service(web::to(dispatch))
                    })
                    .workers(workers)
                    .backlog(4096)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener);
                    match server {
                        Ok(server) => {
                            let server = server.run();
                            let _ = tx.send(Ok(server.handle()));
                            let _ = server.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("mock upstream thread exited during start"))??;
        Ok(Self {
            addr,
            shared,
            handle: Some(handle),
            thread: Some(thread),
        })
    }

    /// Base URL in the form OpenAI clients take: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The socket address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received since start or the last [`reset`](Self::reset), counted on
    /// arrival (a hanging or failed request counts too).
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// The recorded requests, oldest first (bounded by `record_limit`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// The most recent recorded request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).back().cloned()
    }

    /// Clears hits and recorded requests and puts every knob back to its start value.
    pub fn reset(&self) {
        *lock(&self.shared.knobs) = Knobs {
            latency: self.shared.initial_latency,
            ..Knobs::default()
        };
        self.shared.fail_remaining.store(0, Ordering::SeqCst);
        lock(&self.shared.requests).clear();
        lock(&self.shared.canned).clear();
        self.shared.hits.store(0, Ordering::SeqCst);
    }

    /// Answers the next non-streaming chat completion with exactly `body` (status 200),
    /// instead of the deterministic reply; several queue up, oldest first. For tests that
    /// need crafted answers (tool calls, other wording, another model or fingerprint).
    pub fn push_chat_reply(&self, body: Value) {
        lock(&self.shared.canned).push_back(body);
    }

    /// Changes how the mock answers from the next request on.
    pub fn set_mode(&self, mode: Mode) {
        let failures = match &mode {
            Mode::FailFirst { n, .. } => *n,
            _ => 0,
        };
        let mut knobs = lock(&self.shared.knobs);
        self.shared.fail_remaining.store(failures, Ordering::SeqCst);
        knobs.mode = mode;
    }

    /// Fixed delay before the response headers of every request.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.knobs).latency = latency;
    }

    /// Delay between consecutive SSE events of a stream.
    pub fn set_chunk_delay(&self, delay: Duration) {
        lock(&self.shared.knobs).chunk_delay = delay;
    }

    /// Number of content chunks in a stream (the reply is split across them at word
    /// boundaries; some may be empty when there are fewer words). `None` (the default)
    /// sends one chunk per word.
    pub fn set_chunks(&self, chunks: Option<usize>) {
        lock(&self.shared.knobs).chunks = chunks.map(|n| n.max(1));
    }

    /// When set, requests without `Authorization: Bearer <key>` get OpenAI's 401.
    pub fn set_required_key(&self, key: Option<&str>) {
        lock(&self.shared.knobs).required_key = key.map(str::to_owned);
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // The stop command is sent when `stop` is called; the returned future only
            // waits for completion, which joining the thread does instead.
            drop(handle.stop(false));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An upstream base URL (`http://127.0.0.1:PORT/v1`) whose server answers every request
/// with `302 Found` to the same path under `to` (`/v1` taken off): an allowlisted host that
/// tries to send its client on to another address.
pub fn redirector(to: String) -> io::Result<String> {
    use std::io::{Read, Write};
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let path = path.strip_prefix("/v1").unwrap_or(path);
            let _ = write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: {to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    Ok(format!("http://{addr}/v1"))
}

/// A loopback URL (`http://127.0.0.1:PORT/v1`) where nothing listens: connecting is
/// refused. The port was free a moment ago; another process could take it in between,
/// which is unlikely enough for tests.
pub fn refused_url() -> String {
    match TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => format!("http://{addr}/v1"),
        // Port 1 is privileged and unused on loopback in practice.
        Err(_) => "http://127.0.0.1:1/v1".to_owned(),
    }
}

async fn dispatch(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let hit = shared.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    shared.record(&req, &json, body.len());
    let knobs = lock(&shared.knobs).clone();

    if !knobs.latency.is_zero() {
        actix_web::rt::time::sleep(knobs.latency).await;
    }
    if let Some(key) = &knobs.required_key {
        let expected = format!("Bearer {key}");
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return error_response(401, "Incorrect API key provided.", hit);
        }
    }
    match &knobs.mode {
        Mode::Hang => {
            futures_util::future::pending::<()>().await;
            return error_response(504, "unreachable", hit);
        }
        Mode::Error { status, message } => return error_response(*status, message, hit),
        Mode::FailFirst { status, .. } if shared.take_failure() => {
            return error_response(*status, "mock upstream transient failure", hit);
        }
        _ => {}
    }

    let method = req.method().as_str();
    let path = req.path().trim_end_matches('/');
    match (method, path) {
        ("POST", "/v1/chat/completions") => {
            let canned = if json.get("stream").and_then(Value::as_bool) == Some(true) {
                None
            } else {
                lock(&shared.canned).pop_front()
            };
            match canned {
                Some(reply) => ok_json(&reply, hit),
                None => chat(&json, &body, &knobs, hit),
            }
        }
        ("POST", "/v1/embeddings") => embeddings(&json, &body, &knobs, hit),
        ("GET", "/v1/models") => {
            if knobs.mode == Mode::MalformedJson {
                return malformed(hit);
            }
            let data: Vec<Value> = MODELS.iter().map(|m| model_object(m)).collect();
            ok_json(&json!({"object": "list", "data": data}), hit)
        }
        ("GET", p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if MODELS.contains(&id) {
                ok_json(&model_object(id), hit)
            } else {
                error_response(404, &format!("The model `{id}` does not exist."), hit)
            }
        }
        _ => error_response(404, &format!("Invalid URL ({method} {})", req.path()), hit),
    }
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "agv-mock"})
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// OpenAI's error shape, with the `type`/`code` OpenAI uses for each status.
fn error_response(status: u16, message: &str, hit: u64) -> HttpResponse {
    let (kind, code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("invalid_request_error", None),
        429 => ("requests", Some("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    HttpResponse::build(status_code(status))
        .insert_header(("x-request-id", format!("req_mock_{hit}")))
        .json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

fn ok_json(value: &Value, hit: u64) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("x-request-id", format!("req_mock_{hit}")))
        .insert_header(("openai-processing-ms", "0"))
        .json(value)
}

fn malformed(hit: u64) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("x-request-id", format!("req_mock_{hit}")))
        .content_type("application/json")
        .body(r#"{"id": "chatcmpl-mock", "object": "chat.completion", "choices": [{"#)
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// The text of a message `content`: a string, or the `text` of its text parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn bad_request(message: &str, body: &[u8], hit: u64) -> HttpResponse {
    if serde_json::from_slice::<Value>(body).is_err() {
        return error_response(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly.)",
            hit,
        );
    }
    error_response(400, message, hit)
}

fn chat(req: &Value, raw: &[u8], knobs: &Knobs, hit: u64) -> HttpResponse {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return bad_request("you must provide a model parameter", raw, hit);
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return bad_request("Missing required parameter: 'messages'.", raw, hit);
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = stream
        && req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    if knobs.mode == Mode::MalformedJson {
        if stream {
            return sse(
                vec![
                    "data: {\"id\": \"chatcmpl-mock\", \"choices\": [\n\n".to_owned(),
                    "data: [DONE]\n\n".to_owned(),
                ],
                Duration::ZERO,
                false,
                hit,
            );
        }
        return malformed(hit);
    }

    let prompt_tokens: usize = messages
        .iter()
        .map(|m| words(&content_text(m.get("content").unwrap_or(&Value::Null))))
        .sum();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .filter(|t| words(t) > 0);
    let reply_source = last_user.unwrap_or_else(|| DEFAULT_REPLY.to_owned());
    let mut reply_words: Vec<&str> = reply_source.split_whitespace().collect();
    let limit = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64);
    let mut finish_reason = "stop";
    if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok())
        && reply_words.len() > limit
    {
        reply_words.truncate(limit);
        finish_reason = "length";
    }
    let completion_tokens = reply_words.len();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
        }
    });
    let id = format!("chatcmpl-mock-{hit}");
    let created = now_secs();

    if !stream {
        return ok_json(
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": reply_words.join(" "),
                        "refusal": null,
                        "annotations": []
                    },
                    "logprobs": null,
                    "finish_reason": finish_reason
                }],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": FINGERPRINT
            }),
            hit,
        );
    }

    // Content pieces whose concatenation is exactly the reply.
    let tokens: Vec<String> = reply_words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let n = knobs.chunks.unwrap_or(tokens.len()).max(1);
    let pieces: Vec<String> = (0..n)
        .map(|i| tokens[i * tokens.len() / n..(i + 1) * tokens.len() / n].concat())
        .collect();

    // One `data:` frame; with `include_usage`, every frame has a `usage` member.
    let frame = |choices: Value, usage: &Value| -> String {
        let mut obj = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices
        });
        if include_usage {
            obj["usage"] = usage.clone();
        }
        format!("data: {obj}\n\n")
    };
    let chunk = |delta: Value, finish: Option<&str>| {
        frame(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            &Value::Null,
        )
    };
    let mut frames = Vec::with_capacity(n + 4);
    frames.push(chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    ));
    for piece in &pieces {
        frames.push(chunk(json!({"content": piece}), None));
    }
    frames.push(chunk(json!({}), Some(finish_reason)));
    if include_usage {
        frames.push(frame(json!([]), &usage));
    }
    frames.push("data: [DONE]\n\n".to_owned());

    let cut = match knobs.mode {
        Mode::CutStream { after_chunks } => {
            frames.truncate(after_chunks.min(frames.len().saturating_sub(1)));
            true
        }
        _ => false,
    };
    sse(frames, knobs.chunk_delay, cut, hit)
}

type BodyStream = Pin<Box<dyn Stream<Item = Result<web::Bytes, io::Error>>>>;

/// An SSE response sending `frames` with `delay` between them; when `cut`, the body ends
/// in an error so that the connection is closed without a proper end of stream.
fn sse(frames: Vec<String>, delay: Duration, cut: bool, hit: u64) -> HttpResponse {
    let body = futures_util::stream::iter(frames.into_iter().enumerate()).then(
        move |(i, frame)| async move {
            if i > 0 && !delay.is_zero() {
                actix_web::rt::time::sleep(delay).await;
            }
            Ok::<_, io::Error>(web::Bytes::from(frame))
        },
    );
    let body: BodyStream = if cut {
        Box::pin(body.chain(futures_util::stream::once(async move {
            // Yield to the server at least once so that the headers and the frames sent
            // so far reach the socket before the connection is dropped.
            actix_web::rt::time::sleep(delay.max(Duration::from_millis(10))).await;
            Err(io::Error::other("mock upstream: stream cut on purpose"))
        })))
    } else {
        Box::pin(body)
    };
    HttpResponse::Ok()
        .insert_header(("x-request-id", format!("req_mock_{hit}")))
        .insert_header(("cache-control", "no-cache"))
        .content_type("text/event-stream; charset=utf-8")
        .streaming(body)
}

fn embeddings(req: &Value, raw: &[u8], knobs: &Knobs, hit: u64) -> HttpResponse {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return bad_request("you must provide a model parameter", raw, hit);
    };
    // (text to hash, token count) per input.
    let inputs: Vec<(String, usize)> = match req.get("input") {
        Some(Value::String(s)) => vec![(s.clone(), words(s))],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![(Value::Array(items.clone()).to_string(), items.len())]
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push((s.clone(), words(s))),
                    Value::Array(ids) => out.push((item.to_string(), ids.len())),
                    _ => {
                        return bad_request("'input' items must be strings or arrays", raw, hit);
                    }
                }
            }
            out
        }
        _ => return bad_request("Missing required parameter: 'input'.", raw, hit),
    };
    if knobs.mode == Mode::MalformedJson {
        return malformed(hit);
    }
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=8192).contains(d))
        .unwrap_or(DEFAULT_DIMENSIONS);
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let tokens: usize = inputs.iter().map(|(_, t)| t).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (text, _))| {
            let vector = embed(text, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    ok_json(
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
        }),
        hit,
    )
}

/// A deterministic unit vector of `dims` components derived from SHA-256 of `text`.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims);
    let mut block: u32 = 0;
    while out.len() < dims {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        for byte in digest.iter() {
            if out.len() == dims {
                break;
            }
            out.push(f32::from(*byte) / 127.5 - 1.0);
        }
        block += 1;
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut out {
            *x /= norm;
        }
    }
    out
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello", 40);
        assert_eq!(a, embed("hello", 40));
        assert_ne!(a, embed("hullo", 40));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
