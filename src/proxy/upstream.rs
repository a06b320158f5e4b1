//! The upstream client: one pooled HTTP client, timeouts (connect, first byte, total),
//! retries with backoff only while nothing has reached the client, and an optional fallback.
//!
//! It knows nothing about tenants or policies; it sends bytes and reports what happened in
//! a way the proxy can turn into an OpenAI-shaped 502/503/504.

use bytes::Bytes;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct UpstreamTarget {
    /// e.g. `https://api.openai.com/v1` (no trailing slash).
    pub base_url: String,
    pub api_key: Option<String>,
}

/// Never prints the key.
impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Until the response headers arrive.
    pub first_byte_timeout: Duration,
    /// The whole exchange, body included (streams too).
    pub total_timeout: Duration,
    /// Extra attempts after the first (so 3 means up to 4 tries).
    pub retries: u32,
    pub retry_base_delay: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(30),
            retries: 3,
            retry_base_delay: Duration::from_millis(100),
        }
    }
}

/// Why the upstream could not give a usable response.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    /// Could not connect (refused, DNS, TLS).
    Unreachable(String),
    /// No response headers within the first-byte timeout, or the total timeout passed.
    Timeout(String),
    /// The body could not be read or was cut off.
    Broken(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(m) => write!(f, "upstream unreachable: {m}"),
            Self::Timeout(m) => write!(f, "upstream timed out: {m}"),
            Self::Broken(m) => write!(f, "upstream response broken: {m}"),
        }
    }
}

/// A response whose headers have arrived; the body is still to be read.
pub struct UpstreamResponse {
    pub response: reqwest::Response,
    /// Which target answered (the primary or the fallback).
    pub base_url: String,
    pub attempts: u32,
    pub started: Instant,
}

/// One pooled client per thread that sends through it.
///
/// Each actix worker runs its own single-threaded runtime, and a pooled connection lives as
/// a task on the runtime that opened it. A client shared by every worker would hand a
/// request made on one worker to a connection task on another — a cross-thread wake-up on
/// the way out and another on the way back, for every call. With a client per thread the
/// connection, the request and the response stay on one thread.
struct Clients {
    connect_timeout: Duration,
    /// Built at start to surface a configuration error there; the stand-in if a thread's
    /// own client cannot be built.
    first: reqwest::Client,
    per_thread: thread_local::ThreadLocal<reqwest::Client>,
}

impl Clients {
    fn build(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
        // Never follows a redirect: an allowlisted host could otherwise send the call, and
        // its provider key, on to an internal address. A 3xx is an upstream error.
        crate::outbound::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
    }

    fn get(&self) -> &reqwest::Client {
        self.per_thread
            .get_or(|| Self::build(self.connect_timeout).unwrap_or_else(|_| self.first.clone()))
    }
}

pub struct Upstream {
    clients: std::sync::Arc<Clients>,
    settings: UpstreamSettings,
    primary: Prepared,
    fallback: Option<Prepared>,
}

/// A target with what every request to it repeats, made once: the parsed URLs of the two
/// POST endpoints and the `Authorization` header. Parsing the URL and formatting the
/// header for each call cost ~4% of the server's CPU at 1,000 req/s.
struct Prepared {
    target: UpstreamTarget,
    chat: Option<reqwest::Url>,
    embeddings: Option<reqwest::Url>,
    auth: Option<reqwest::header::HeaderValue>,
}

impl Prepared {
    fn new(target: UpstreamTarget) -> Self {
        let url = |path: &str| reqwest::Url::parse(&format!("{}{path}", target.base_url)).ok();
        let auth = target.api_key.as_ref().and_then(|key| {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Self {
            chat: url(CHAT_PATH),
            embeddings: url(EMBEDDINGS_PATH),
            auth,
            target,
        }
    }

    /// A POST of `body` to `path` below the target, with its credentials.
    fn post(&self, client: &reqwest::Client, path: &str, body: Bytes) -> reqwest::RequestBuilder {
        let url = match path {
            CHAT_PATH => self.chat.clone(),
            EMBEDDINGS_PATH => self.embeddings.clone(),
            _ => None,
        };
        let req = match url {
            Some(url) => client.post(url),
            // Another path, or a base URL that did not parse (the send reports it).
            None => client.post(format!("{}{path}", self.target.base_url)),
        }
        .header("content-type", "application/json")
        .body(body);
        match (&self.auth, &self.target.api_key) {
            (Some(auth), _) => req.header(reqwest::header::AUTHORIZATION, auth.clone()),
            (None, Some(key)) => req.bearer_auth(key),
            (None, None) => req,
        }
    }
}

/// The POST endpoints the proxy forwards to, below a target's base URL.
pub const CHAT_PATH: &str = "/chat/completions";
pub const EMBEDDINGS_PATH: &str = "/embeddings";

/// Statuses worth another try: the upstream is overloaded or briefly broken.
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

impl Upstream {
    pub fn new(
        primary: UpstreamTarget,
        fallback: Option<UpstreamTarget>,
        settings: UpstreamSettings,
    ) -> Result<Self, String> {
        let first = Clients::build(settings.connect_timeout)
            .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        Ok(Self {
            clients: std::sync::Arc::new(Clients {
                connect_timeout: settings.connect_timeout,
                first,
                per_thread: thread_local::ThreadLocal::new(),
            }),
            settings,
            primary: Prepared::new(primary),
            fallback: fallback.map(Prepared::new),
        })
    }

    /// An upstream for another target (a tenant's own) that shares this one's pooled
    /// clients and settings, without a fallback.
    pub fn sibling(&self, primary: UpstreamTarget) -> Self {
        self.sharing_clients(primary, None)
    }

    /// The same upstream with another primary target; clients, settings and the fallback
    /// stay (the operator replaced the instance upstream in the console).
    pub fn with_primary(&self, primary: UpstreamTarget) -> Self {
        let fallback = self.fallback.as_ref().map(|f| f.target.clone());
        self.sharing_clients(primary, fallback)
    }

    /// An upstream for `primary` and `fallback` with this one's pooled clients and settings.
    fn sharing_clients(&self, primary: UpstreamTarget, fallback: Option<UpstreamTarget>) -> Self {
        Self {
            clients: self.clients.clone(),
            settings: self.settings.clone(),
            primary: Prepared::new(primary),
            fallback: fallback.map(Prepared::new),
        }
    }

    pub fn primary(&self) -> &UpstreamTarget {
        &self.primary.target
    }

    pub fn fallback(&self) -> Option<&UpstreamTarget> {
        self.fallback.as_ref().map(|f| &f.target)
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// POSTs `body` to `path` (e.g. `/chat/completions`). Retries connection failures,
    /// first-byte timeouts and 500/502/503/504 with exponential backoff; after the last try
    /// on the primary, tries the fallback once if one is set. Returns the last response
    /// (even an error status) when one arrived.
    pub async fn post(
        &self,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
    ) -> Result<UpstreamResponse, (UpstreamError, u32)> {
        let started = Instant::now();
        let plan: Vec<&Prepared> =
            std::iter::repeat_n(&self.primary, self.settings.retries as usize + 1)
                .chain(self.fallback.iter())
                .collect();
        let mut last_err =
            UpstreamError::Timeout("the total timeout passed before the first try".into());
        for (i, target) in plan.iter().enumerate() {
            let attempts = i as u32 + 1;
            let is_last = i + 1 == plan.len();
            let remaining = self
                .settings
                .total_timeout
                .saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err((last_err, attempts - 1));
            }
            let mut req = target.post(self.clients.get(), path, body.clone());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let wait = self.settings.first_byte_timeout.min(remaining);
            match tokio::time::timeout(wait, req.send()).await {
                Ok(Ok(resp)) if retryable(resp.status()) && !is_last => {
                    last_err = UpstreamError::Broken(format!("status {}", resp.status()));
                }
                Ok(Ok(resp)) => {
                    return Ok(UpstreamResponse {
                        response: resp,
                        base_url: target.target.base_url.clone(),
                        attempts,
                        started,
                    });
                }
                Ok(Err(e)) => last_err = send_failed(&e),
                Err(_) => {
                    last_err = UpstreamError::Timeout(format!(
                        "no response within {} ms",
                        wait.as_millis()
                    ))
                }
            }
            if is_last {
                return Err((last_err, attempts));
            }
            // Back off before the next try on the primary; the fallback is tried at once.
            if std::ptr::eq(plan[i + 1], &self.primary) {
                let delay = self.settings.retry_base_delay.saturating_mul(1 << i.min(6));
                if started.elapsed() + delay >= self.settings.total_timeout {
                    return Err((last_err, attempts));
                }
                tokio::time::sleep(delay).await;
            }
        }
        Err((last_err, 0))
    }

    /// GETs `path` once (used for the model list).
    pub async fn get(&self, path: &str) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self
            .clients
            .get()
            .get(format!("{}{path}", self.primary.target.base_url));
        if let Some(key) = &self.primary.target.api_key {
            req = req.bearer_auth(key);
        }
        match tokio::time::timeout(self.settings.first_byte_timeout, req.send()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(send_failed(&e)),
            Err(_) => Err(UpstreamError::Timeout("no response".into())),
        }
    }
}

/// What [`probe`] found: whether the upstream answers its model list with the key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// A 2xx answer.
    pub ok: bool,
    /// The URL asked (`{base_url}/models`).
    pub url: String,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// How many models the answer lists, when it is OpenAI's list shape.
    pub models: Option<usize>,
    pub latency_ms: u64,
    /// One sentence for a person: what happened and, on failure, what to check.
    pub message: String,
}

/// Asks `GET {base_url}/models` once with the target's key, within `timeout`, following no
/// redirect (a redirect is reported, never followed: the operator gives the final URL).
/// Used by the console's "Test connection"; the proxy's pooled clients are not involved.
pub async fn probe(target: &UpstreamTarget, timeout: Duration) -> Probe {
    let url = format!("{}/models", target.base_url);
    let started = Instant::now();
    let done = |ok, status, models, message: String| Probe {
        ok,
        url: url.clone(),
        status,
        models,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        message,
    };
    let failed = |message| done(false, None, None, message);
    let client = match crate::outbound::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot build an HTTP client: {e}")),
    };
    let mut req = client.get(&url);
    if let Some(key) = &target.api_key {
        req = req.bearer_auth(key);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return failed(format!(
                "no answer from {url} within {} s: check the URL and that this server can reach it",
                timeout.as_secs()
            ));
        }
        Err(e) => {
            return failed(format!(
                "cannot connect to {url}: {}; check the URL and that this server can reach it",
                describe(&e)
            ));
        }
    };
    let status = resp.status();
    let code = Some(status.as_u16());
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match tokio::time::timeout(timeout, resp.bytes()).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) | Err(_) => Bytes::new(),
    };
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if status.is_success() {
        let models = parsed
            .as_ref()
            .and_then(|v| v.get("data"))
            .and_then(serde_json::Value::as_array)
            .map(Vec::len);
        let listed = models.map_or(String::new(), |n| {
            format!(" and lists {n} model{}", if n == 1 { "" } else { "s" })
        });
        return done(
            true,
            code,
            models,
            format!("the upstream answers: HTTP {status}{listed}"),
        );
    }
    // OpenAI's error shape, else nothing: an HTML error page says nothing useful here.
    let said = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(serde_json::Value::as_str)
        .map(|m| format!(" ({})", m.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    let hint = match status.as_u16() {
        300..=399 => format!(
            "; it redirects to {} and redirects are not followed: give the final URL",
            location.as_deref().unwrap_or("another address")
        ),
        401 | 403 => "; the upstream refused the key: check the API key".to_owned(),
        404 => "; check the base URL (it usually ends in /v1)".to_owned(),
        _ => String::new(),
    };
    done(
        false,
        code,
        None,
        format!("the upstream answered HTTP {status}{said}{hint}"),
    )
}

/// The largest answer read whole from an upstream (a chat completion, a batch of
/// embeddings, the model list). An upstream, a tenant's own included, must not be able to
/// make the server hold an unbounded body; 2,048 embeddings of 3,072 floats as JSON text
/// come to ~130 MB.
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// Reads `response`'s body whole, at most `max` bytes, by `deadline`.
pub async fn read_body(
    mut response: reqwest::Response,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<bytes::Bytes, UpstreamError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => {
                return Err(UpstreamError::Timeout(
                    "the body did not arrive in time".into(),
                ));
            }
            Ok(Err(e)) => return Err(UpstreamError::Broken(describe(&e))),
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > max {
                    return Err(too_large(max));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

fn too_large(max: usize) -> UpstreamError {
    UpstreamError::Broken(format!(
        "the upstream's answer is larger than {} MiB; agv-server does not read it",
        max >> 20
    ))
}

/// Why a request got no response: a timeout, or the host could not be reached.
fn send_failed(e: &reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout(e.to_string())
    } else {
        UpstreamError::Unreachable(describe(e))
    }
}

/// The innermost cause of a reqwest error, which is the useful part ("Connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answering 200 with a chunked body of `total` bytes, sent in 64 KiB chunks.
    fn chunked_server(total: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                );
                let piece = vec![b'a'; 64 << 10];
                let mut sent = 0;
                while sent < total {
                    let n = piece.len().min(total - sent);
                    let head = format!("{n:x}\r\n");
                    if stream.write_all(head.as_bytes()).is_err()
                        || stream.write_all(&piece[..n]).is_err()
                        || stream.write_all(b"\r\n").is_err()
                    {
                        break;
                    }
                    sent += n;
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_its_cap_and_no_further() {
        let client = agv_testkit::http_client();
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(10);
        let url = chunked_server(3 << 20);
        let small = client.get(&url).send().await.unwrap();
        match read_body(small, 1 << 20, deadline()).await {
            Err(UpstreamError::Broken(m)) => assert!(m.contains("larger than 1 MiB"), "{m}"),
            other => panic!(
                "expected the cap to stop the read: {:?}",
                other.map(|b| b.len())
            ),
        }
        let whole = client.get(&url).send().await.unwrap();
        assert_eq!(
            read_body(whole, 4 << 20, deadline()).await.unwrap().len(),
            3 << 20
        );
    }

    #[test]
    fn a_target_never_prints_its_key() {
        let t = UpstreamTarget {
            base_url: "https://x/v1".into(),
            api_key: Some("sk-hidden".into()),
        };
        assert!(!format!("{t:?}").contains("sk-hidden"));
    }
}
